//! DICOM de-identification: PS3.15 Annex E Basic Application Level Confidentiality Profile
//! (Table E.1-1) with its options, keyed pseudonyms and deterministic UIDs.
//!
//! Every attribute of the table gets its action (recursively, inside sequences); private
//! attributes are removed (unless Retain Safe Private keeps a known-safe one); curves and
//! overlays are removed (Clean Graphics); UIDs become `2.25.<decimal>` from a keyed hash, so a
//! study stays a study across files and runs with the same key; PatientID/PatientName become
//! a keyed pseudonym. The [`Report`] says what happened to each attribute — never its value.

mod redact;
mod table;
mod text;

pub use redact::EXPLICIT_VR_LE;
pub use text::{TextBox, TextDetector};

use std::collections::BTreeSet;

use dicom_core::header::Header;
use dicom_core::value::{DataSetSequence, PrimitiveValue, Value};
use dicom_core::{DataElement, Length, Tag, VR};
use dicom_dictionary_std::tags;
use dicom_object::{DefaultDicomObject, InMemDicomObject};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::{Error, Result};

/// An action code of Table E.1-1 (PS3.15 E.1.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[allow(clippy::upper_case_acronyms)]
pub(crate) enum Action {
    /// Replace with a non-zero length dummy value.
    D,
    /// Replace with a zero-length value.
    Z,
    /// Remove.
    X,
    /// Keep (sequences are still processed recursively).
    K,
    /// Clean: replace with values of similar meaning that carry no identifying information.
    C,
    /// Replace UIDs with consistent, non-identifying UIDs.
    U,
    /// Z unless D is required (Type 1).
    ZD,
    /// X unless Z is required (Type 2).
    XZ,
    /// X unless D is required.
    XD,
    /// X unless Z or D is required.
    XZD,
    /// X unless Z or U is required (referenced UIDs in sequences).
    XZU,
}

impl Action {
    /// Without per-IOD type information, the combined codes resolve to the choice that keeps
    /// the attribute present (so Type 1/2 attributes stay valid) while removing its content:
    /// Z/D→Z, X/Z→Z, X/D→D, X/Z/D→Z, X/Z/U*→U.
    fn resolve(self) -> Action {
        match self {
            Action::ZD | Action::XZ | Action::XZD => Action::Z,
            Action::XD => Action::D,
            Action::XZU => Action::U,
            a => a,
        }
    }
}

/// The options of PS3.15 Table E.1-1 that can be chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(default)]
pub struct DeidOptions {
    /// Retain Safe Private Option (113111): keep private attributes known to be safe.
    pub retain_safe_private: bool,
    /// Retain UIDs Option (113110).
    pub retain_uids: bool,
    /// Retain Device Identity Option (113109).
    pub retain_device_identity: bool,
    /// Retain Institution Identity Option (113112).
    pub retain_institution_identity: bool,
    /// Retain Patient Characteristics Option (113108).
    pub retain_patient_characteristics: bool,
    /// Retain Longitudinal Temporal Information with Full Dates Option (113106).
    pub retain_full_dates: bool,
    /// Retain Longitudinal Temporal Information with Modified Dates Option (113107): dates
    /// shifted by a per-patient keyed offset, intervals preserved.
    pub retain_modified_dates: bool,
    /// Clean Descriptors Option (113105). Free text cannot be cleaned automatically with
    /// certainty, so descriptors this option would keep "cleaned" are emptied.
    pub clean_descriptors: bool,
    /// Clean Graphics Option (113103): remove curves (50xx) and overlays (60xx). On by default.
    pub clean_graphics: bool,
}

impl Default for DeidOptions {
    fn default() -> Self {
        DeidOptions {
            retain_safe_private: false,
            retain_uids: false,
            retain_device_identity: false,
            retain_institution_identity: false,
            retain_patient_characteristics: false,
            retain_full_dates: false,
            retain_modified_dates: false,
            clean_descriptors: false,
            clean_graphics: true,
        }
    }
}

impl DeidOptions {
    /// Parses an option by its CLI name (`retain-uids`, `clean-descriptors`, …).
    pub fn set(&mut self, name: &str) -> Result<()> {
        match name {
            "retain-safe-private" => self.retain_safe_private = true,
            "retain-uids" => self.retain_uids = true,
            "retain-device-identity" => self.retain_device_identity = true,
            "retain-institution-identity" => self.retain_institution_identity = true,
            "retain-patient-characteristics" => self.retain_patient_characteristics = true,
            "retain-full-dates" => self.retain_full_dates = true,
            "retain-modified-dates" => self.retain_modified_dates = true,
            "clean-descriptors" => self.clean_descriptors = true,
            "no-clean-graphics" => self.clean_graphics = false,
            _ => return Err(Error::DeidOption { name: name.chars().take(40).collect() }),
        }
        Ok(())
    }

    /// The CID 7050 codes of the profile and the options applied, with their meanings.
    fn codes(&self, pixels_cleaned: bool) -> Vec<(&'static str, &'static str)> {
        let mut codes = vec![("113100", "Basic Application Confidentiality Profile")];
        let flags = [
            (pixels_cleaned, "113101", "Clean Pixel Data Option"),
            (self.clean_graphics, "113103", "Clean Graphics Option"),
            (self.clean_descriptors, "113105", "Clean Descriptors Option"),
            (
                self.retain_full_dates,
                "113106",
                "Retain Longitudinal Temporal Information Full Dates Option",
            ),
            (
                self.retain_modified_dates && !self.retain_full_dates,
                "113107",
                "Retain Longitudinal Temporal Information Modified Dates Option",
            ),
            (
                self.retain_patient_characteristics,
                "113108",
                "Retain Patient Characteristics Option",
            ),
            (self.retain_device_identity, "113109", "Retain Device Identity Option"),
            (self.retain_uids, "113110", "Retain UIDs Option"),
            (self.retain_safe_private, "113111", "Retain Safe Private Option"),
            (self.retain_institution_identity, "113112", "Retain Institution Identity Option"),
        ];
        codes.extend(flags.into_iter().filter(|f| f.0).map(|f| (f.1, f.2)));
        codes
    }

    /// The effective action for a table row under these options: an enabled option's column
    /// overrides the Basic Profile.
    fn action(&self, row: &table::Row) -> Action {
        let options = [
            (self.retain_safe_private, row.safe_private),
            (self.retain_uids, row.uids),
            (self.retain_device_identity, row.device),
            (self.retain_patient_characteristics, row.patient_chars),
            (self.retain_institution_identity, row.institution),
            (self.retain_full_dates, row.long_full_dates),
            (self.retain_modified_dates, row.long_modified_dates),
            (self.clean_descriptors, row.clean_descriptors),
            // Clean Graphics is applied by removing groups 50xx/60xx before rows are consulted.
        ];
        options
            .into_iter()
            .find_map(|(on, a)| if on { a } else { None })
            .unwrap_or(row.basic)
            .resolve()
    }
}

/// The deployment secret behind pseudonyms, UIDs and date shifts.
#[derive(Clone)]
pub struct DeidKey(Vec<u8>);

impl std::fmt::Debug for DeidKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("DeidKey(..)")
    }
}

impl DeidKey {
    /// A key from secret bytes (at least 16).
    pub fn new(secret: &[u8]) -> Result<DeidKey> {
        if secret.len() < 16 {
            return Err(Error::DeidKey);
        }
        Ok(DeidKey(secret.to_vec()))
    }

    fn mac(&self, domain: &str, data: &[u8]) -> [u8; 32] {
        let mut mac =
            <Hmac<Sha256> as Mac>::new_from_slice(&self.0).expect("HMAC takes any key length");
        mac.update(domain.as_bytes());
        mac.update(&[0]);
        mac.update(data);
        mac.finalize().into_bytes().into()
    }

    /// The keyed pseudonym of a patient identifier: `PT-` and 24 hex digits of
    /// HMAC-SHA-256(key, id). The same id and key always give the same pseudonym.
    pub fn pseudonym(&self, patient_id: &str) -> String {
        let mac = self.mac("medinfer/patient", patient_id.trim().as_bytes());
        format!("PT-{}", hex::encode_upper(&mac[..12]))
    }

    /// Whether `s` has the shape of a pseudonym (`PT-` and 24 uppercase hex digits).
    pub fn is_pseudonym(s: &str) -> bool {
        s.len() == 27
            && s.starts_with("PT-")
            && s[3..].bytes().all(|b| b.is_ascii_digit() || (b'A'..=b'F').contains(&b))
    }

    /// A replacement UID: `2.25.` and the decimal value of 128 bits of HMAC-SHA-256(key, uid).
    pub fn uid(&self, original: &str) -> String {
        let mac = self.mac("medinfer/uid", original.trim_end_matches(['\0', ' ']).as_bytes());
        let mut bytes = [0u8; 16];
        bytes.copy_from_slice(&mac[..16]);
        format!("2.25.{}", u128::from_be_bytes(bytes))
    }

    /// Days every date of this patient moves back: 1..=3650, from the key and the patient.
    fn date_shift(&self, patient_id: &str) -> i64 {
        let mac = self.mac("medinfer/date-shift", patient_id.trim().as_bytes());
        1 + i64::from(u16::from_be_bytes([mac[0], mac[1]])) % 3650
    }
}

/// What happened to one attribute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Removed (X).
    Removed,
    /// Emptied (Z).
    Emptied,
    /// Replaced by a dummy value (D).
    Replaced,
    /// Replaced by the keyed pseudonym.
    Pseudonymised,
    /// UID replaced by its keyed hash (U).
    UidReplaced,
    /// Dates shifted (C under Retain Modified Dates).
    DateShifted,
    /// Kept (K, or an option retaining it).
    Kept,
}

/// One line of the report: where, which attribute, what happened. Never the value.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ReportEntry {
    /// Path of the attribute: sequence items as `(gggg,eeee)[i]/`, then the tag.
    pub path: String,
    /// The attribute's keyword (from Table E.1-1), or `""` for private attributes.
    pub keyword: &'static str,
    /// What was done.
    pub outcome: Outcome,
}

/// The machine-readable account of a de-identification.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Report {
    /// The profile and option codes written into DeidentificationMethodCodeSequence.
    pub method_codes: Vec<String>,
    /// One entry per Table E.1-1 attribute present in the input.
    pub attributes: Vec<ReportEntry>,
    /// Private attributes removed (private creators included).
    pub private_removed: usize,
    /// Private attributes kept under Retain Safe Private.
    pub private_kept: usize,
    /// Curve and overlay attributes removed (Clean Graphics).
    pub graphics_removed: usize,
    /// The keyed pseudonym that replaced PatientID and PatientName.
    pub patient_pseudonym: String,
    /// Clean Pixel Data: `applied` (the detector ran), `not_required` (auto mode, nothing
    /// suggests burned-in text) or `disabled`.
    pub pixel_cleaning: &'static str,
    /// Frames the detector examined (0-based).
    pub frames_scanned: Vec<u32>,
    /// Boxes blacked out in every frame, in pixels.
    pub redactions: Vec<TextBox>,
}

struct Ctx<'a> {
    key: &'a DeidKey,
    options: DeidOptions,
    pseudonym: String,
    date_shift: i64,
    report: Report,
}

/// The identifier a pseudonym is derived from: PatientID, else PatientName (trimmed, non-empty).
fn patient_identifier(obj: &DefaultDicomObject) -> Option<String> {
    text(obj, tags::PATIENT_ID)
        .filter(|s| !s.trim().is_empty())
        .or_else(|| text(obj, tags::PATIENT_NAME))
        .filter(|s| !s.trim().is_empty())
}

/// The keyed pseudonym [`deidentify_attributes`] gives this object's patient, or `None` when
/// the object names no patient (empty PatientID and PatientName). Reads nothing else.
/// An identifier that already has a pseudonym's shape (a file this crate de-identified) is
/// kept as it is, so results of the original and the de-identified file link up.
pub fn patient_pseudonym(obj: &DefaultDicomObject, key: &DeidKey) -> Option<String> {
    patient_identifier(obj).map(|id| {
        let id = id.trim();
        if DeidKey::is_pseudonym(id) { id.to_string() } else { key.pseudonym(id) }
    })
}

/// De-identifies `obj` in place and returns the report. The pixel data is untouched here
/// (Clean Pixel Data is a separate step).
pub fn deidentify_attributes(
    obj: &mut DefaultDicomObject,
    key: &DeidKey,
    options: DeidOptions,
) -> Result<Report> {
    let patient_id = patient_identifier(obj).unwrap_or_default();
    let pseudonym = key.pseudonym(&patient_id);
    let mut ctx = Ctx {
        key,
        options,
        date_shift: key.date_shift(&patient_id),
        pseudonym: pseudonym.clone(),
        report: Report {
            method_codes: Vec::new(),
            attributes: Vec::new(),
            private_removed: 0,
            private_kept: 0,
            graphics_removed: 0,
            patient_pseudonym: pseudonym,
            pixel_cleaning: "disabled",
            frames_scanned: Vec::new(),
            redactions: Vec::new(),
        },
    };
    let dataset = std::mem::replace(&mut **obj, InMemDicomObject::new_empty());
    **obj = process(dataset, "", &mut ctx);

    // File meta: the instance UID follows the data set, application fields are ours.
    let sop_instance = text(obj, tags::SOP_INSTANCE_UID).unwrap_or_default();
    obj.update_meta(|meta| {
        meta.media_storage_sop_instance_uid = sop_instance;
        meta.implementation_class_uid = IMPLEMENTATION_CLASS_UID.to_string();
        meta.implementation_version_name = Some("MEDINFER".to_string());
        meta.source_application_entity_title = None;
        meta.sending_application_entity_title = None;
        meta.receiving_application_entity_title = None;
        meta.private_information_creator_uid = None;
        meta.private_information = None;
    });
    Ok(ctx.report)
}

/// Implementation Class UID of medinfer's writer (a UUID-derived `2.25` UID).
pub const IMPLEMENTATION_CLASS_UID: &str = "2.25.181062306520467427870938532866451740587";

/// Writes PatientIdentityRemoved, DeidentificationMethod(+CodeSequence) and
/// LongitudinalTemporalInformationModified, and records the codes in the report.
pub fn mark_deidentified(
    obj: &mut DefaultDicomObject,
    options: &DeidOptions,
    pixels_cleaned: bool,
    report: &mut Report,
) {
    let codes = options.codes(pixels_cleaned);
    let method = codes.iter().map(|c| c.1).collect::<Vec<_>>().join("; ");
    put_str(obj, tags::PATIENT_IDENTITY_REMOVED, VR::CS, "YES");
    put_str(
        obj,
        tags::DEIDENTIFICATION_METHOD,
        VR::LO,
        &format!("medinfer PS3.15 E.1-1 {}", truncate(&method, 40)),
    );
    let items: Vec<InMemDicomObject> = codes
        .iter()
        .map(|(value, meaning)| {
            InMemDicomObject::from_element_iter([
                DataElement::new(tags::CODE_VALUE, VR::SH, PrimitiveValue::from(*value)),
                DataElement::new(
                    tags::CODING_SCHEME_DESIGNATOR,
                    VR::SH,
                    PrimitiveValue::from("DCM"),
                ),
                DataElement::new(tags::CODE_MEANING, VR::LO, PrimitiveValue::from(*meaning)),
            ])
        })
        .collect();
    obj.put(DataElement::new(
        tags::DEIDENTIFICATION_METHOD_CODE_SEQUENCE,
        VR::SQ,
        Value::from(DataSetSequence::new(items, Length::UNDEFINED)),
    ));
    let temporal = if options.retain_full_dates {
        "UNMODIFIED"
    } else if options.retain_modified_dates {
        "MODIFIED"
    } else {
        "REMOVED"
    };
    put_str(obj, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED, VR::CS, temporal);
    report.method_codes = codes.iter().map(|c| c.0.to_string()).collect();
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

fn put_str(obj: &mut InMemDicomObject, tag: Tag, vr: VR, value: &str) {
    obj.put(DataElement::new(tag, vr, PrimitiveValue::from(value)));
}

fn text(obj: &InMemDicomObject, tag: Tag) -> Option<String> {
    obj.get(tag)?.to_str().ok().map(|s| s.trim_end_matches(['\0', ' ']).to_string())
}

/// The Table E.1-1 row for `tag` (exact rows by binary search, then the repeating groups).
fn lookup(tag: Tag) -> Option<&'static table::Row> {
    let key = |t: (u16, u16)| (u32::from(t.0) << 16) | u32::from(t.1);
    let want = key((tag.group(), tag.element()));
    let exact =
        table::TABLE.binary_search_by(|r| key(r.tag).cmp(&want)).ok().map(|i| &table::TABLE[i]);
    exact.filter(|r| r.mask == u32::MAX).or_else(|| {
        table::TABLE.iter().find(|r| r.mask != u32::MAX && want & r.mask == key(r.tag) & r.mask)
    })
}

fn keyword(tag: Tag) -> &'static str {
    lookup(tag).map_or("", |r| r.keyword)
}

/// Private attributes known to be safe (PS3.15 E.3.10). None is listed yet: every candidate
/// needs review against its vendor's conformance statement, so Retain Safe Private currently
/// keeps nothing and says so in the report (`private_kept` = 0).
fn is_safe_private(_elem: &Elem) -> bool {
    false
}

fn tag_path(prefix: &str, tag: Tag) -> String {
    format!("{prefix}({:04X},{:04X})", tag.group(), tag.element())
}

fn is_graphics_group(group: u16) -> bool {
    (0x5000..=0x501E).contains(&group) || (0x6000..=0x601E).contains(&group)
}

/// Applies the profile to every element of a data set (recursively).
fn process(dataset: InMemDicomObject, prefix: &str, ctx: &mut Ctx) -> InMemDicomObject {
    let mut out = Vec::new();
    for elem in dataset {
        let tag = elem.tag();
        if tag.group() == 0x0002 {
            continue;
        }
        if !tag.group().is_multiple_of(2) {
            if ctx.options.retain_safe_private && is_safe_private(&elem) {
                ctx.report.private_kept += 1;
                out.push(elem);
            } else {
                ctx.report.private_removed += 1;
            }
            continue;
        }
        if ctx.options.clean_graphics && is_graphics_group(tag.group()) {
            ctx.report.graphics_removed += 1;
            continue;
        }
        let path = tag_path(prefix, tag);
        if tag == tags::PATIENT_ID || tag == tags::PATIENT_NAME {
            let vr = elem.vr();
            out.push(DataElement::new(tag, vr, PrimitiveValue::from(ctx.pseudonym.as_str())));
            ctx.report.attributes.push(ReportEntry {
                path,
                keyword: keyword(tag),
                outcome: Outcome::Pseudonymised,
            });
            continue;
        }
        match lookup(tag) {
            None => out.push(recurse(elem, &path, ctx)),
            Some(row) => {
                let action = ctx.options.action(row);
                let (elem, outcome) = apply(elem, action, &path, ctx);
                ctx.report.attributes.push(ReportEntry { path, keyword: row.keyword, outcome });
                out.extend(elem);
            }
        }
    }
    InMemDicomObject::from_element_iter(out)
}

type Elem = DataElement<InMemDicomObject>;

/// Processes the items of a sequence element; other elements pass through.
fn recurse(elem: Elem, path: &str, ctx: &mut Ctx) -> Elem {
    let (header, value) = elem.into_parts();
    match value {
        Value::Sequence(seq) => {
            let items: Vec<_> = seq
                .into_items()
                .into_iter()
                .enumerate()
                .map(|(i, item)| process(item, &format!("{path}[{i}]/"), ctx))
                .collect();
            DataElement::new(
                header.tag,
                header.vr,
                Value::from(DataSetSequence::new(items, Length::UNDEFINED)),
            )
        }
        v => DataElement::new(header.tag, header.vr, v),
    }
}

fn apply(elem: Elem, action: Action, path: &str, ctx: &mut Ctx) -> (Option<Elem>, Outcome) {
    let (tag, vr) = (elem.tag(), elem.vr());
    match action {
        Action::X => (None, Outcome::Removed),
        Action::K => (Some(recurse(elem, path, ctx)), Outcome::Kept),
        Action::Z => (Some(empty(tag, vr)), Outcome::Emptied),
        Action::D => (Some(dummy(tag, vr, ctx)), Outcome::Replaced),
        Action::U => match elem.value().to_multi_str() {
            Ok(uids) if vr == VR::UI => {
                let new: Vec<String> = uids.iter().map(|u| ctx.key.uid(u)).collect();
                (
                    Some(DataElement::new(tag, vr, PrimitiveValue::Strs(new.into()))),
                    Outcome::UidReplaced,
                )
            }
            // U on a sequence (e.g. referenced instances): process its items, whose UIDs the
            // table covers.
            _ if vr == VR::SQ => (Some(recurse(elem, path, ctx)), Outcome::Kept),
            _ => (Some(empty(tag, vr)), Outcome::Emptied),
        },
        Action::C => match vr {
            VR::DA | VR::DT if ctx.options.retain_modified_dates => {
                let shifted = shift_dates(&elem, vr, ctx.date_shift);
                (
                    Some(DataElement::new(tag, vr, PrimitiveValue::from(shifted.as_str()))),
                    Outcome::DateShifted,
                )
            }
            VR::SQ => (Some(recurse(elem, path, ctx)), Outcome::Kept),
            _ => (Some(empty(tag, vr)), Outcome::Emptied),
        },
        Action::ZD | Action::XZ | Action::XD | Action::XZD | Action::XZU => {
            apply(elem, action.resolve(), path, ctx)
        }
    }
}

fn empty(tag: Tag, vr: VR) -> Elem {
    if vr == VR::SQ {
        DataElement::new(tag, vr, Value::from(DataSetSequence::<InMemDicomObject>::empty()))
    } else {
        DataElement::new(tag, vr, PrimitiveValue::Empty)
    }
}

fn dummy(tag: Tag, vr: VR, ctx: &Ctx) -> Elem {
    let s = match vr {
        VR::PN => "ANONYMIZED",
        VR::DA => "19000101",
        VR::TM => "000000",
        VR::DT => "19000101000000",
        VR::AS => "000D",
        VR::IS | VR::DS => "0",
        VR::UI => {
            return DataElement::new(
                tag,
                vr,
                PrimitiveValue::from(ctx.key.uid(&format!("dummy:{tag}")).as_str()),
            );
        }
        VR::SQ
        | VR::OB
        | VR::OW
        | VR::OF
        | VR::OD
        | VR::OL
        | VR::OV
        | VR::UN
        | VR::US
        | VR::SS
        | VR::UL
        | VR::SL
        | VR::FL
        | VR::FD
        | VR::AT
        | VR::UV
        | VR::SV => return empty(tag, vr),
        VR::CS => "ANONYMIZED",
        _ => "ANONYMIZED",
    };
    DataElement::new(tag, vr, PrimitiveValue::from(s))
}

/// Shifts every date (DA) or the date part of every date-time (DT) back by `days`.
fn shift_dates(elem: &Elem, vr: VR, days: i64) -> String {
    let Ok(values) = elem.value().to_multi_str() else { return String::new() };
    let shifted: Vec<String> = values
        .iter()
        .filter_map(|v| {
            let v = v.trim();
            let date = v.get(..8)?;
            let y: i64 = date.get(..4)?.parse().ok()?;
            let m: i64 = date.get(4..6)?.parse().ok()?;
            let d: i64 = date.get(6..8)?.parse().ok()?;
            let (y, m, d) = civil_from_days(days_from_civil(y, m, d) - days);
            let rest = if vr == VR::DT { v.get(8..).unwrap_or("") } else { "" };
            Some(format!("{y:04}{m:02}{d:02}{rest}"))
        })
        .collect();
    shifted.join("\\")
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// Tags present in a data set, recursively (for tests and reports).
pub fn tags_present(obj: &InMemDicomObject) -> BTreeSet<Tag> {
    let mut out = BTreeSet::new();
    for e in obj {
        out.insert(e.tag());
        if let Some(items) = e.value().items() {
            for item in items {
                out.extend(tags_present(item));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secondary_capture_classes() {
        assert!(is_secondary_capture("1.2.840.10008.5.1.4.1.1.7"));
        assert!(is_secondary_capture("1.2.840.10008.5.1.4.1.1.7.4"));
        assert!(!is_secondary_capture("1.2.840.10008.5.1.4.1.1.77.1.1"), "VL endoscopic is not SC");
    }

    #[test]
    fn calendar_round_trips() {
        for (y, m, d) in [(1970, 1, 1), (2000, 2, 29), (1900, 3, 1), (2024, 12, 31)] {
            assert_eq!(civil_from_days(days_from_civil(y, m, d)), (y, m, d));
        }
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(days_from_civil(2000, 3, 1) - days_from_civil(2000, 2, 28), 2);
    }

    #[test]
    fn pseudonyms_and_uids_are_keyed_and_stable() {
        let a = DeidKey::new(b"0123456789abcdef-key-a").unwrap();
        let b = DeidKey::new(b"0123456789abcdef-key-b").unwrap();
        assert_eq!(a.pseudonym("PAT1"), a.pseudonym("PAT1"));
        assert_ne!(a.pseudonym("PAT1"), a.pseudonym("PAT2"));
        assert_ne!(a.pseudonym("PAT1"), b.pseudonym("PAT1"));
        let uid = a.uid("1.2.3.4");
        assert!(
            uid.starts_with("2.25.")
                && uid.len() <= 64
                && uid[5..].bytes().all(|c| c.is_ascii_digit())
        );
        assert_eq!(uid, a.uid("1.2.3.4\0"));
        assert_ne!(uid, b.uid("1.2.3.4"));
        assert!(DeidKey::new(b"short").is_err());
    }
}

/// A de-identified file: its bytes and the report.
#[derive(Debug, Clone)]
pub struct Deidentified {
    /// The new DICOM Part 10 file (preamble, meta, data set).
    pub bytes: Vec<u8>,
    /// What was done.
    pub report: Report,
}

/// When to run Clean Pixel Data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PixelCleaning {
    /// When BurnedInAnnotation is YES, the modality is US, or the object is a Secondary
    /// Capture — the images that typically carry burned-in text.
    #[default]
    Auto,
    /// Always.
    Always,
    /// Never.
    Never,
}

/// Whether `Auto` cleaning applies to a file.
pub fn suggests_burned_in_text(info: &crate::DicomInfo) -> bool {
    info.burned_in_annotation.as_deref() == Some("YES")
        || info.modality.as_deref() == Some("US")
        || info.sop_class_uid.as_deref().is_some_and(is_secondary_capture)
}

/// Secondary Capture Image Storage (`…1.1.7`) and its multi-frame variants (`…1.1.7.1`–`.4`).
fn is_secondary_capture(sop_class: &str) -> bool {
    const SC: &str = "1.2.840.10008.5.1.4.1.1.7";
    sop_class == SC || sop_class.strip_prefix(SC).is_some_and(|rest| rest.starts_with('.'))
}

/// De-identifies a DICOM file held in memory: Clean Pixel Data (with `detector`) when
/// `cleaning` asks for it, then the attributes. On error nothing is returned, so a caller
/// never sees a half-written file. Cleaning that is required but has no detector is an
/// error, never a silent skip.
pub fn deidentify(
    bytes: &[u8],
    key: &DeidKey,
    options: DeidOptions,
    cleaning: PixelCleaning,
    detector: Option<&TextDetector>,
) -> Result<Deidentified> {
    let image = crate::DicomImage::parse(bytes)?;
    let apply = match cleaning {
        PixelCleaning::Always => true,
        PixelCleaning::Never => false,
        PixelCleaning::Auto => suggests_burned_in_text(image.info()),
    };
    let mut boxes = Vec::new();
    let mut scanned = Vec::new();
    if apply {
        let detector = detector.ok_or(Error::DetectorMissing)?;
        let last = image.info().frames - 1;
        scanned = if last > 0 { vec![0, last] } else { vec![0] };
        for &f in &scanned {
            boxes.extend(detector.detect(&image.frame(f)?.to_pixels(None))?);
        }
    }
    let mut obj =
        if boxes.is_empty() { image.into_object() } else { redact::redact(image, &boxes)? };
    let mut report = deidentify_attributes(&mut obj, key, options)?;
    mark_deidentified(&mut obj, &options, apply, &mut report);
    report.pixel_cleaning = match (apply, cleaning) {
        (true, _) => "applied",
        (false, PixelCleaning::Auto) => "not_required",
        (false, _) => "disabled",
    };
    report.frames_scanned = scanned;
    report.redactions = boxes;
    let mut out = Vec::with_capacity(bytes.len());
    obj.write_all(&mut out)
        .map_err(|_| Error::DicomWrite { reason: "encoding the data set failed" })?;
    Ok(Deidentified { bytes: out, report })
}
