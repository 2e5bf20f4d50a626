#![allow(clippy::unwrap_used)]
//! De-identification of the whole shared DICOM set: nothing the profile removes or replaces
//! survives anywhere, what it keeps is kept, output is deterministic and readable by pydicom.
#![allow(clippy::disallowed_methods)]
mod common;

use std::collections::{BTreeMap, BTreeSet};

use dicom_core::header::Header;
use dicom_dictionary_std::tags;
use dicom_object::InMemDicomObject;
use medinfer_core::deid::{DeidKey, DeidOptions, PixelCleaning, deidentify};

fn key() -> DeidKey {
    DeidKey::new(b"test-key-0123456789abcdef").unwrap()
}

/// `path → value` for every textual element, recursively. Decimal and integer strings (DS,
/// IS) are measurements, not identifiers, and coincide with other numbers by nature: left out.
fn strings(obj: &InMemDicomObject, prefix: &str, out: &mut BTreeMap<String, String>) {
    for e in obj {
        let path = format!("{prefix}({:04X},{:04X})", e.tag().group(), e.tag().element());
        if let Some(items) = e.value().items() {
            for (i, item) in items.iter().enumerate() {
                strings(item, &format!("{path}[{i}]/"), out);
            }
        } else if e.tag() != tags::PIXEL_DATA
            && e.vr().to_string().len() == 2
            && matches!(
                e.vr(),
                dicom_core::VR::AE
                    | dicom_core::VR::AS
                    | dicom_core::VR::CS
                    | dicom_core::VR::DA
                    | dicom_core::VR::DT
                    | dicom_core::VR::LO
                    | dicom_core::VR::LT
                    | dicom_core::VR::PN
                    | dicom_core::VR::SH
                    | dicom_core::VR::ST
                    | dicom_core::VR::TM
                    | dicom_core::VR::UC
                    | dicom_core::VR::UI
                    | dicom_core::VR::UR
                    | dicom_core::VR::UT
            )
            && let Ok(s) = e.value().to_str()
        {
            out.insert(path, s.trim_end_matches(['\0', ' ']).trim().to_string());
        }
    }
}

fn parse(bytes: &[u8]) -> dicom_object::DefaultDicomObject {
    medinfer_core::DicomImage::parse(bytes).unwrap().into_object()
}

fn dicom_files() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(common::root().join("testdata/dicom"))
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.ends_with(".dcm"))
        .collect();
    v.sort();
    v
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// The output with its pixel data removed (pixel bytes could match short strings by chance).
fn bytes_without_pixels(out: &[u8]) -> Vec<u8> {
    let mut obj = parse(out);
    obj.remove_element(tags::PIXEL_DATA);
    let mut v = Vec::new();
    obj.write_all(&mut v).unwrap();
    v
}

/// Identifying attributes the shared set carries (its manifest's `phi_fields`): each must be
/// gone, empty or changed, at every depth.
const PHI: &[dicom_core::Tag] = &[
    tags::PATIENT_NAME,
    tags::PATIENT_ID,
    tags::PATIENT_BIRTH_DATE,
    tags::PATIENT_SEX,
    tags::PATIENT_ADDRESS,
    tags::INSTITUTION_NAME,
    tags::INSTITUTION_ADDRESS,
    tags::REFERRING_PHYSICIAN_NAME,
    tags::ACCESSION_NUMBER,
    tags::STUDY_DATE,
    tags::SERIES_DATE,
    tags::ACQUISITION_DATE,
    tags::CONTENT_DATE,
    tags::STUDY_TIME,
    tags::OPERATORS_NAME,
    tags::PERFORMING_PHYSICIAN_NAME,
    tags::DEVICE_SERIAL_NUMBER,
    tags::STUDY_INSTANCE_UID,
    tags::SERIES_INSTANCE_UID,
    tags::SOP_INSTANCE_UID,
    tags::FRAME_OF_REFERENCE_UID,
    tags::STUDY_ID,
];

#[test]
fn no_removed_or_replaced_value_survives_anywhere() {
    let mut files = 0;
    for name in dicom_files() {
        let input = common::dicom(&name);
        let result = match deidentify(
            &input,
            &key(),
            DeidOptions::default(),
            PixelCleaning::Auto,
            Some(common::detector()),
        ) {
            Ok(r) => r,
            // Unparseable: covered by `malformed_files_fail_cleanly`.
            Err(e) if name == "MR_truncated.dcm" => {
                assert_eq!(e.code(), "decode.dicom");
                continue;
            }
            Err(e) => panic!("{name}: {e}"),
        };
        files += 1;
        let (original, output) = (parse(&input), parse(&result.bytes));
        let (mut before, mut after) = (BTreeMap::new(), BTreeMap::new());
        strings(&original, "", &mut before);
        strings(&output, "", &mut after);
        let kept_values: BTreeSet<&String> =
            before.iter().filter(|(p, v)| after.get(*p) == Some(*v)).map(|(_, v)| v).collect();
        let hay = bytes_without_pixels(&result.bytes);
        let mut leaked = Vec::new();
        for (path, value) in &before {
            if after.get(path) == Some(value) {
                continue; // kept as it was
            }
            let mut parts: Vec<&str> = value.split(['^', '\\', '=']).map(str::trim).collect();
            parts.push(value);
            for part in parts {
                // A value that is also (part of) an attribute the profile keeps — e.g.
                // InstitutionName "TOSHIBA" and Manufacturer "TOSHIBA_MEC" — is not a leak.
                let in_kept = kept_values.iter().any(|k| k.contains(part));
                // Short all-digit identifiers ("0010") occur by chance inside the decimal UIDs
                // we write: for those, look for the whole token among the output's values.
                let found = if part.bytes().all(|b| b.is_ascii_digit()) {
                    after
                        .values()
                        .any(|v| v.split(|c: char| !c.is_ascii_alphanumeric()).any(|t| t == part))
                } else {
                    contains(&hay, part.as_bytes())
                };
                if part.len() >= 4 && !in_kept && found {
                    leaked.push(format!("{path}: a removed/replaced value survives"));
                }
            }
        }
        assert!(leaked.is_empty(), "{name}: {leaked:#?}");
        // The identifying attributes themselves: changed or gone, wherever they were.
        for (path, value) in &before {
            let is_phi = PHI
                .iter()
                .any(|t| path.ends_with(&format!("({:04X},{:04X})", t.group(), t.element())));
            if is_phi && !value.is_empty() {
                assert_ne!(after.get(path), Some(value), "{name}: {path} kept its original value");
            }
        }
        // No private attribute, no overlay/curve group at the top level.
        for e in output.iter() {
            let g = e.tag().group();
            assert!(g % 2 == 0, "{name}: private {:?} kept", e.tag());
            assert!(
                !(0x5000..=0x50FF).contains(&g) && !(0x6000..=0x60FF).contains(&g),
                "{name}: graphics kept"
            );
        }
        assert_eq!(
            output.get(tags::PATIENT_IDENTITY_REMOVED).unwrap().to_str().unwrap().trim(),
            "YES"
        );
        assert_eq!(
            output.get(tags::PATIENT_ID).unwrap().to_str().unwrap().trim(),
            result.report.patient_pseudonym
        );
    }
    assert_eq!(files, dicom_files().len() - 1, "every file but the truncated one de-identifies");
}

#[test]
fn kept_attributes_and_pixels_are_kept() {
    for name in ["CT_small.dcm", "RG1_J2KI.dcm", "examples_ybr_color.dcm", "emri_small.dcm"] {
        let input = common::dicom(name);
        let out =
            deidentify(&input, &key(), DeidOptions::default(), PixelCleaning::Never, None).unwrap();
        let (a, b) = (parse(&input), parse(&out.bytes));
        for tag in [
            tags::MODALITY,
            tags::ROWS,
            tags::COLUMNS,
            tags::SOP_CLASS_UID,
            tags::PHOTOMETRIC_INTERPRETATION,
            tags::BITS_STORED,
        ] {
            assert_eq!(
                a.get(tag).map(|e| e.to_str().unwrap().into_owned()),
                b.get(tag).map(|e| e.to_str().unwrap().into_owned()),
                "{name} {tag:?}"
            );
        }
        assert_eq!(a.meta().transfer_syntax(), b.meta().transfer_syntax());
        let px = |o: &dicom_object::DefaultDicomObject| {
            let v = o.get(tags::PIXEL_DATA).unwrap().value();
            match v.fragments() {
                Some(f) => f.concat(),
                None => v.to_bytes().unwrap().into_owned(),
            }
        };
        assert!(px(&a) == px(&b), "{name}: pixel data changed");
        let f0 = medinfer_core::DicomImage::parse(&out.bytes).unwrap().frame(0).unwrap();
        let g0 = medinfer_core::DicomImage::parse(&input).unwrap().frame(0).unwrap();
        assert!(f0.values == g0.values, "{name}: decoded pixels differ");
    }
}

#[test]
fn deterministic_and_keyed() {
    let input = common::dicom("ctbrain1.dcm");
    let a = deidentify(&input, &key(), DeidOptions::default(), PixelCleaning::Never, None).unwrap();
    let b = deidentify(&input, &key(), DeidOptions::default(), PixelCleaning::Never, None).unwrap();
    assert!(a.bytes == b.bytes, "same input and key give the same bytes");
    let other = DeidKey::new(b"another-key-0123456789").unwrap();
    let c = deidentify(&input, &other, DeidOptions::default(), PixelCleaning::Never, None).unwrap();
    let uid = |bytes: &[u8], tag| parse(bytes).get(tag).unwrap().to_str().unwrap().into_owned();
    assert_ne!(uid(&a.bytes, tags::STUDY_INSTANCE_UID), uid(&c.bytes, tags::STUDY_INSTANCE_UID));
    assert_ne!(a.report.patient_pseudonym, c.report.patient_pseudonym);
}

#[test]
fn uids_stay_consistent_across_files_of_a_study() {
    // The MR_small variants are one study/series written with different transfer syntaxes.
    let names =
        ["MR_small.dcm", "MR_small_implicit.dcm", "MR_small_bigendian.dcm", "MR_small_RLE.dcm"];
    let mut studies = BTreeSet::new();
    let mut series = BTreeSet::new();
    let mut originals = BTreeSet::new();
    for n in names {
        let input = common::dicom(n);
        originals.insert(
            parse(&input).get(tags::STUDY_INSTANCE_UID).unwrap().to_str().unwrap().into_owned(),
        );
        let out = parse(
            &deidentify(&input, &key(), DeidOptions::default(), PixelCleaning::Never, None)
                .unwrap()
                .bytes,
        );
        studies.insert(out.get(tags::STUDY_INSTANCE_UID).unwrap().to_str().unwrap().into_owned());
        series.insert(out.get(tags::SERIES_INSTANCE_UID).unwrap().to_str().unwrap().into_owned());
        assert_eq!(
            out.meta().media_storage_sop_instance_uid(),
            out.get(tags::SOP_INSTANCE_UID).unwrap().to_str().unwrap().trim_end_matches('\0')
        );
    }
    assert_eq!(originals.len(), 1, "fixture: one original study");
    assert_eq!(studies.len(), 1, "one study after de-identification");
    assert_eq!(series.len(), 1);
    assert!(studies.iter().all(|s| s.starts_with("2.25.") && !originals.contains(s)));
}

#[test]
fn options_change_what_is_kept() {
    let input = common::dicom("examples_overlay.dcm");
    let original = parse(&input);
    let opts = DeidOptions {
        retain_uids: true,
        retain_patient_characteristics: true,
        retain_modified_dates: true,
        ..Default::default()
    };
    let out = deidentify(&input, &key(), opts, PixelCleaning::Never, None).unwrap();
    let o = parse(&out.bytes);
    let s = |obj: &InMemDicomObject, t| {
        obj.get(t).map(|e| e.to_str().unwrap().trim_end_matches(['\0', ' ']).to_string())
    };
    assert_eq!(
        s(&o, tags::STUDY_INSTANCE_UID),
        s(&original, tags::STUDY_INSTANCE_UID),
        "UIDs retained"
    );
    assert_eq!(
        s(&o, tags::PATIENT_SEX),
        s(&original, tags::PATIENT_SEX),
        "patient characteristics retained"
    );
    let (d0, d1) = (s(&original, tags::STUDY_DATE).unwrap(), s(&o, tags::STUDY_DATE).unwrap());
    assert_eq!(d1.len(), 8);
    assert_ne!(d0, d1, "dates shifted");
    assert!(
        out.report.method_codes.iter().any(|c| c == "113107")
            && out.report.method_codes.iter().any(|c| c == "113110")
    );
    assert_eq!(
        s(&o, tags::LONGITUDINAL_TEMPORAL_INFORMATION_MODIFIED).as_deref(),
        Some("MODIFIED")
    );
    let mut bad = DeidOptions::default();
    assert_eq!(bad.set("retain-everything").unwrap_err().code(), "deid.unknown_option");
}

#[test]
fn malformed_files_fail_cleanly() {
    for name in ["MR_truncated.dcm", "bad_sequence.dcm"] {
        let input = common::dicom(name);
        // Either a clean error or a readable output — never a panic.
        if let Ok(out) =
            deidentify(&input, &key(), DeidOptions::default(), PixelCleaning::Never, None)
        {
            parse(&out.bytes);
        }
    }
    let input = common::dicom("CT_small.dcm");
    for cut in [10, 140, 400, input.len() / 2] {
        if let Ok(out) =
            deidentify(&input[..cut], &key(), DeidOptions::default(), PixelCleaning::Never, None)
        {
            parse(&out.bytes);
        }
    }
    assert_eq!(
        deidentify(b"not dicom at all", &key(), DeidOptions::default(), PixelCleaning::Never, None)
            .unwrap_err()
            .code(),
        "decode.dicom"
    );
}

// WASI has no processes to spawn; natively this runs on every CI run.
#[cfg(not(target_family = "wasm"))]
#[test]
fn pydicom_reads_every_output() {
    let dir = std::env::temp_dir().join(format!("medinfer-deid-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut paths = Vec::new();
    for name in dicom_files() {
        if let Ok(out) = deidentify(
            &common::dicom(&name),
            &key(),
            DeidOptions::default(),
            PixelCleaning::Auto,
            Some(common::detector()),
        ) {
            let p = dir.join(&name);
            std::fs::write(&p, &out.bytes).unwrap();
            paths.push(p);
        }
    }
    let output = std::process::Command::new("python3")
        .arg(common::root().join("testdata/pydicom_read.py"))
        .args(&paths)
        .output()
        .expect("python3 runs (pip install -r testdata/requirements.txt)");
    std::fs::remove_dir_all(&dir).ok();
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    let lines: Vec<serde_json::Value> = String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), paths.len());
    for l in &lines {
        assert_eq!(l["ok"], true, "{l}");
        assert_eq!(l["identity_removed"], "YES", "{l}");
        assert_eq!(l["private"], 0, "{l}");
        assert!(l["patient_id"].as_str().unwrap().starts_with("PT-"), "{l}");
        assert_eq!(l["sop_uid"], l["meta_sop_uid"], "{l}");
        assert_eq!(l["method_codes"][0], "113100", "{l}");
    }
}

#[test]
fn burned_in_text_is_redacted_where_it_is_visible() {
    // GREYSCALE_IMAGE.dcm: ultrasound, BurnedInAnnotation=YES, a banner with the patient's
    // name and birth date along the top and acquisition text down the left.
    let input = common::dicom("GREYSCALE_IMAGE.dcm");
    let out = deidentify(
        &input,
        &key(),
        DeidOptions::default(),
        PixelCleaning::Auto,
        Some(common::detector()),
    )
    .unwrap();
    assert_eq!(out.report.pixel_cleaning, "applied");
    assert!(out.report.method_codes.iter().any(|c| c == "113101"));
    let boxes = &out.report.redactions;
    assert!(boxes.len() >= 10, "{} boxes", boxes.len());
    let before = medinfer_core::DicomImage::parse(&input).unwrap().frame(0).unwrap();
    let after = medinfer_core::DicomImage::parse(&out.bytes).unwrap().frame(0).unwrap();
    let (w, h) = (before.columns as usize, before.rows as usize);
    let inside = |x: usize, y: usize| {
        boxes.iter().any(|b| {
            (b.x as usize..(b.x + b.width) as usize).contains(&x)
                && (b.y as usize..(b.y + b.height) as usize).contains(&y)
        })
    };
    // Outside the boxes nothing changed; inside, everything is black.
    for y in 0..h {
        for x in 0..w {
            let (a, b) = (before.values[y * w + x], after.values[y * w + x]);
            if inside(x, y) {
                assert_eq!(b, 0.0, "({x},{y}) inside a box is not black");
            } else {
                assert_eq!(a, b, "({x},{y}) outside the boxes changed");
            }
        }
    }
    // The visible text: every bright glyph pixel of the top banner (name, ID, birth date,
    // institution, date/time) and of the left annotation column is covered by a box.
    let mut glyph_pixels = 0;
    for y in 0..24 {
        for x in 0..w {
            if before.values[y * w + x] >= 160.0 {
                glyph_pixels += 1;
                assert!(inside(x, y), "banner text pixel ({x},{y}) not redacted");
            }
        }
    }
    assert!(glyph_pixels > 500, "the banner has text ({glyph_pixels} bright pixels)");
    // Run the detector again on the cleaned image: no text is left where it found some.
    let again = common::detector().detect(&after.to_pixels(None)).unwrap();
    for b in &again {
        assert!(b.y >= 24, "text still detected in the banner after redaction: {b:?}");
    }
}

#[test]
fn a_clean_ct_gets_no_boxes() {
    for name in ["CT_small.dcm", "693_UNCR.dcm"] {
        let input = common::dicom(name);
        let out = deidentify(
            &input,
            &key(),
            DeidOptions::default(),
            PixelCleaning::Always,
            Some(common::detector()),
        )
        .unwrap();
        assert_eq!(out.report.pixel_cleaning, "applied");
        assert!(out.report.redactions.is_empty(), "{name}: {:?}", out.report.redactions);
    }
}

#[test]
fn cleaning_without_a_detector_is_an_error_not_a_skip() {
    let input = common::dicom("GREYSCALE_IMAGE.dcm");
    let err =
        deidentify(&input, &key(), DeidOptions::default(), PixelCleaning::Auto, None).unwrap_err();
    assert_eq!(err.code(), "deid.detector_missing");
}
