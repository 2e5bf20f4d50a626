//! The API conformance suite, run against every target: the native server
//! (`api_native.rs`) and the Spin component under the wasmtime host (`api_spin.rs`).
//! Same requests, same JSON shapes, same statuses.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

pub mod harness;

use std::collections::BTreeMap;
use std::path::PathBuf;

use harness::{Client, Reply, Server};
use medinfer_service::auth::mint_hs256;
use serde_json::{Value, json};

pub const SECRET: &str = "conformance-secret-0123456789abcdef";
pub const DEID_KEY: &str = "conformance-deid-key-0123456789";
pub const ISSUER: &str = "medinfer-tests";
pub const AUDIENCE: &str = "medinfer-api";
pub const CHEST: &str = "testdata/dicom/RG1_chest_mono1_uncompressed_s4_DERIVED.dcm";
pub const FAST: &str = "mobilenetv2-chexnet";

/// Raw identifiers in the DICOM files the suite sends: none may ever come back or be stored.
pub const PHI: &[&str] = &["9RG1", "CompressedSamples", "1CT1", "8NM1", "4MR1"];

/// The settings every shared test server runs with.
pub fn settings() -> Vec<(&'static str, String)> {
    vec![
        ("jwt_hs256_secret", SECRET.into()),
        ("deid_key", DEID_KEY.into()),
        ("jwt_issuer", ISSUER.into()),
        ("jwt_audience", AUDIENCE.into()),
        ("max_body_bytes", (8 * 1024 * 1024).to_string()),
    ]
}

pub fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn file(path: &str) -> Vec<u8> {
    std::fs::read(root().join(path)).unwrap()
}

pub fn now() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs()
}

pub fn token(role: &str) -> String {
    mint_hs256(SECRET.as_bytes(), role, role, 3600, now(), Some(ISSUER), Some(AUDIENCE)).unwrap()
}

pub fn bearer(role: &str) -> String {
    format!("Bearer {}", token(role))
}

/// A real image as PNG or JPEG: the chest radiograph's pixels, downscaled to 256².
pub fn chest_raster(format: medinfer_core::image::ImageFormat) -> Vec<u8> {
    use medinfer_core::image::{GrayImage, imageops};
    let decoded = medinfer_core::decode(
        &file(CHEST),
        &medinfer_core::Limits::default(),
        &medinfer_core::DecodeOptions::default(),
    )
    .unwrap();
    let px = decoded.image.display();
    let gray = GrayImage::from_fn(px.width, px.height, |x, y| {
        let v = px.data[(y * px.width + x) as usize * px.channels as usize];
        medinfer_core::image::Luma([(v * 255.0).round() as u8])
    });
    let small = imageops::resize(&gray, 256, 256, imageops::FilterType::Triangle);
    let mut out = std::io::Cursor::new(Vec::new());
    small.write_to(&mut out, format).unwrap();
    out.into_inner()
}

/// The seed's float array for a 64×64 gray gradient.
pub fn seed_array(patient: &str) -> Value {
    let data: Vec<f64> = (0..64 * 64).map(|i| f64::from(i % 64) / 63.0).collect();
    json!({"data": data, "width": 64, "height": 64, "patient_id": patient, "model_id": FAST})
}

pub fn assert_error(reply: &Reply, status: u16, code: &str) {
    assert_eq!(reply.status, status, "{} body: {}", code, reply.text());
    let body = reply.json();
    assert_eq!(body["error"]["code"], code, "{body}");
    assert!(body["error"]["message"].as_str().is_some_and(|m| !m.is_empty()));
}

pub fn assert_no_phi(text: &str) {
    for phi in PHI {
        assert!(!text.contains(phi), "PHI {phi:?} leaked: {}", &text[..text.len().min(400)]);
    }
}

fn assert_result_shape(r: &Value) {
    for key in [
        "inference_id",
        "batch_id",
        "model_id",
        "model_version",
        "patient_id",
        "predictions",
        "top_label",
        "confidence_score",
        "created_at",
        "timing_ms",
        "record_hash",
    ] {
        assert!(r.get(key).is_some(), "missing {key}: {r}");
    }
    let preds = r["predictions"].as_object().unwrap();
    let scores: Vec<f64> = preds.values().map(|v| v.as_f64().unwrap()).collect();
    assert!(scores.windows(2).all(|w| w[0] >= w[1]), "sorted: {r}");
    assert_eq!(r["confidence_score"].as_f64().unwrap(), scores[0]);
    assert_eq!(preds.keys().next().unwrap(), r["top_label"].as_str().unwrap());
    assert!(r["created_at"].as_str().unwrap().ends_with('Z'));
    assert_eq!(r["record_hash"].as_str().unwrap().len(), 64);
    if let Some(p) = r["patient_id"].as_str() {
        assert!(medinfer_core::deid::DeidKey::is_pseudonym(p), "{p}");
    }
}

/// The library's own answer for a file, the oracle the API must match.
pub fn oracle(bytes: &[u8], model_id: &str) -> BTreeMap<String, f64> {
    let dir = root().join("models").join(model_id);
    let manifest = medinfer_core::ModelManifest::from_toml(
        &std::fs::read_to_string(dir.join("model.toml")).unwrap(),
    )
    .unwrap();
    let model =
        medinfer_core::LoadedModel::load(manifest, &std::fs::read(dir.join("model.onnx")).unwrap())
            .unwrap();
    let (_, prediction, _) = medinfer_core::infer_bytes(
        &model,
        bytes,
        &medinfer_core::Limits::default(),
        &medinfer_core::DecodeOptions::default(),
        &medinfer_core::NoTimer,
    )
    .unwrap();
    prediction.predictions.into_iter().map(|s| (s.label, f64::from(s.score))).collect()
}

fn result_by_id(c: &Client, id: &str) -> Value {
    let r = c.get(&format!("/results?inference_id={id}"), Some(&bearer("viewer")));
    assert_eq!(r.status, 200, "{}", r.text());
    let items = r.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 1, "result {id} is retrievable");
    items[0].clone()
}

fn verify(c: &Client) -> Value {
    let r = c.get("/audit/verify", Some(&bearer("auditor")));
    assert_eq!(r.status, 200, "{}", r.text());
    let v = r.json();
    assert_eq!(v["valid"], true, "{v}");
    assert!(v["first_broken_seq"].is_null());
    v
}

// ---------------------------------------------------------------- the suite

pub fn health_is_public(s: &Server) {
    let r = s.client().get("/health", None);
    assert_eq!(r.status, 200, "{}", r.text());
    let h = r.json();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["store"]["reachable"], true);
    let ids: Vec<_> =
        h["models"].as_array().unwrap().iter().map(|m| m["model_id"].clone()).collect();
    assert!(ids.contains(&json!("densenet121-chexnet")) && ids.contains(&json!(FAST)), "{h}");
    assert!(h["models"].as_array().unwrap().iter().all(|m| m["loaded"] == true));
}

pub fn models_list_and_detail(s: &Server) {
    let c = s.client();
    let r = c.get("/models", Some(&bearer("viewer")));
    assert_eq!(r.status, 200);
    let items = r.json()["items"].as_array().unwrap().clone();
    assert_eq!(items.len(), 2);
    for m in &items {
        for key in
            ["model_id", "version", "file_path", "input_shape", "output_shape", "status", "sha256"]
        {
            assert!(m.get(key).is_some(), "{key}: {m}");
        }
    }
    let r = c.get(&format!("/models/{FAST}"), Some(&bearer("viewer")));
    assert_eq!(r.status, 200);
    let m = r.json();
    assert_eq!(m["model_id"], FAST);
    assert_eq!(m["input"]["height"], 224);
    assert_eq!(m["output"]["labels"].as_array().unwrap().len(), 14);
    assert_eq!(m["preprocessing"]["mean"].as_array().unwrap().len(), 3);
    assert_error(&c.get("/models/nope", Some(&bearer("viewer"))), 404, "model.not_found");
}

pub fn openapi_lists_every_route(s: &Server) {
    let r = s.client().get("/openapi.json", Some(&bearer("viewer")));
    assert_eq!(r.status, 200);
    let doc = r.json();
    for (method, path, _) in medinfer_service::ROUTES {
        assert!(doc["paths"][path][method.to_lowercase()].is_object(), "{method} {path}");
    }
}

/// Every input form gives a result whose scores match the library's, and the result is
/// stored under a pseudonym.
pub fn every_input_form_infers(s: &Server) {
    let c = s.client();
    let op = bearer("operator");
    let dicom = file(CHEST);
    let png = chest_raster(medinfer_core::image::ImageFormat::Png);
    let jpeg = chest_raster(medinfer_core::image::ImageFormat::Jpeg);
    let b64 = {
        use base64_engine::encode;
        encode(&dicom)
    };
    let cases: Vec<(&str, Reply, Option<&[u8]>)> = vec![
        ("seed array", c.post_json("/infer", &seed_array("PT-00042"), Some(&op)), None),
        (
            "raw dicom",
            c.post(&format!("/infer?model_id={FAST}"), "application/dicom", &dicom, Some(&op)),
            Some(&dicom),
        ),
        (
            "raw png",
            c.post(
                &format!("/infer?model_id={FAST}&patient_id=MRN-7"),
                "image/png",
                &png,
                Some(&op),
            ),
            Some(&png),
        ),
        (
            "raw jpeg",
            c.post(&format!("/infer?model_id={FAST}"), "image/jpeg", &jpeg, Some(&op)),
            Some(&jpeg),
        ),
        (
            "base64 dicom",
            c.post_json("/infer", &json!({"image_base64": b64, "model_id": FAST}), Some(&op)),
            Some(&dicom),
        ),
    ];
    let mut dicom_patients = Vec::new();
    for (name, reply, bytes) in cases {
        assert_eq!(reply.status, 200, "{name}: {}", reply.text());
        assert_no_phi(&reply.text());
        let r = reply.json();
        assert_result_shape(&r);
        assert_eq!(r["model_id"], FAST, "{name}");
        if let Some(bytes) = bytes {
            let expected = oracle(bytes, FAST);
            let got = r["predictions"].as_object().unwrap();
            assert_eq!(got.len(), expected.len());
            for (label, score) in &expected {
                let diff = (got[label].as_f64().unwrap() - score).abs();
                assert!(diff <= 1e-4, "{name}: {label} differs by {diff}");
            }
        }
        if name.contains("dicom") {
            dicom_patients.push(r["patient_id"].clone());
        }
        if name == "raw png" {
            // A supplied identifier is stored only as its pseudonym, and found by either.
            let p = r["patient_id"].as_str().unwrap().to_string();
            assert_ne!(p, "MRN-7");
            for q in ["MRN-7", p.as_str()] {
                let found = c.get(&format!("/results?patient_id={q}"), Some(&bearer("viewer")));
                let items = found.json()["items"].as_array().unwrap().clone();
                assert!(items.iter().any(|i| i["inference_id"] == r["inference_id"]), "{q}");
            }
        }
        assert_eq!(
            result_by_id(&c, r["inference_id"].as_str().unwrap()),
            r,
            "{name}: stored as answered"
        );
    }
    // The same patient's files share one pseudonym.
    assert_eq!(dicom_patients[0], dicom_patients[1]);
    assert!(dicom_patients[0].is_string());
}

mod base64_engine {
    pub fn encode(bytes: &[u8]) -> String {
        const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
        let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
        for chunk in bytes.chunks(3) {
            let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
            let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
            for i in 0..4 {
                if i <= chunk.len() {
                    out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
                } else {
                    out.push('=');
                }
            }
        }
        out
    }
}

pub fn batch_isolates_bad_items(s: &Server) {
    let c = s.client();
    let mut images: Vec<Value> = (0..5).map(|i| seed_array(&format!("PT-{i:05}"))).collect();
    images.insert(2, json!({"data": [0.5, 0.5], "width": 64, "height": 64}));
    images.push(json!({"data": vec![2.0; 64 * 64], "width": 64, "height": 64}));
    images.push(json!({"image_base64": "AAAA"}));
    let body = json!({"images": images, "priority": "high"});
    let r = c.post_json("/infer/batch", &body, Some(&bearer("operator")));
    assert_eq!(r.status, 200, "{}", r.text());
    let b = r.json();
    assert_eq!(b["total_images"], 8);
    assert_eq!(b["successful"], 5);
    assert_eq!(b["failed"], 3);
    assert_eq!(b["priority"], "high");
    let items = b["items"].as_array().unwrap();
    assert_eq!(items.len(), 8);
    for (i, item) in items.iter().enumerate() {
        assert_eq!(item["index"], i);
    }
    assert_eq!(items[2]["error"]["code"], "input.shape");
    assert_eq!(items[6]["error"]["code"], "input.pixel_range");
    assert_eq!(items[7]["error"]["code"], "input.unsupported_format");
    let batch_id = b["batch_id"].as_str().unwrap();
    let ok: Vec<&Value> = items.iter().filter(|i| i.get("error").is_none()).collect();
    for item in &ok {
        assert_eq!(item["batch_id"], batch_id);
        assert_result_shape(item);
    }
    // /results by batch_id: the successful items, in batch order, without `index`.
    let r = c.get(&format!("/results?batch_id={batch_id}"), Some(&bearer("viewer")));
    assert_eq!(r.status, 200);
    let stored = r.json()["items"].as_array().unwrap().clone();
    let ids: Vec<_> = stored.iter().map(|i| i["inference_id"].clone()).collect();
    let expected: Vec<_> = ok.iter().map(|i| i["inference_id"].clone()).collect();
    assert_eq!(ids, expected);
    // Paging walks the same list.
    let mut paged = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let url = match &cursor {
            Some(c) => format!("/results?batch_id={batch_id}&limit=2&cursor={c}"),
            None => format!("/results?batch_id={batch_id}&limit=2"),
        };
        let page = c.get(&url, Some(&bearer("viewer"))).json();
        paged.extend(page["items"].as_array().unwrap().iter().map(|i| i["inference_id"].clone()));
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => break,
        }
    }
    assert_eq!(paged, expected);
    // The five patients of the batch got distinct pseudonyms.
    let mut patients: Vec<_> = stored.iter().map(|i| i["patient_id"].to_string()).collect();
    patients.sort();
    patients.dedup();
    assert_eq!(patients.len(), 5);
}

pub fn batch_limits(s: &Server) {
    let c = s.client();
    let op = bearer("operator");
    let too_many: Vec<Value> = (0..101).map(|_| json!({"image_base64": "AAAA"})).collect();
    let r = c.post_json("/infer/batch", &json!({"images": too_many}), Some(&op));
    assert_error(&r, 422, "batch.too_many_images");
    let r = c.post_json("/infer/batch", &json!({"images": []}), Some(&op));
    assert_error(&r, 422, "batch.empty");
    let r = c.post_json(
        "/infer/batch",
        &json!({"images": [seed_array("x")], "priority": "asap"}),
        Some(&op),
    );
    assert_error(&r, 422, "batch.invalid_priority");
    let r = c.post("/infer/batch", "image/png", b"\x89PNG", Some(&op));
    assert_error(&r, 415, "request.unsupported_media_type");
}

/// 401 for every kind of bad token, always with a challenge.
pub fn bad_tokens_are_401(s: &Server) {
    let c = s.client();
    let t = now();
    let sign = |secret: &str, iss: Option<&str>, aud: Option<&str>, valid: u64, at: u64| {
        format!(
            "Bearer {}",
            mint_hs256(secret.as_bytes(), "mallory", "admin", valid, at, iss, aud).unwrap()
        )
    };
    let good = token("admin");
    let (header, rest) = good.split_once('.').unwrap();
    let _ = header;
    let none_header = base64_url(br#"{"alg":"none","typ":"JWT"}"#);
    let payload = rest.split('.').next().unwrap();
    let cases: Vec<(&str, Option<String>, &str)> = vec![
        ("missing", None, "auth.missing_token"),
        ("not bearer", Some("Basic YWxhZGRpbjpvcGVuc2VzYW1l".into()), "auth.missing_token"),
        ("malformed", Some("Bearer not-a-jwt".into()), "auth.invalid_token"),
        (
            "wrong signature",
            Some(sign("another-secret-0123456789abcdefghij", Some(ISSUER), Some(AUDIENCE), 600, t)),
            "auth.invalid_token",
        ),
        (
            "expired",
            Some(sign(SECRET, Some(ISSUER), Some(AUDIENCE), 60, t - 3600)),
            "auth.token_expired",
        ),
        (
            "wrong audience",
            Some(sign(SECRET, Some(ISSUER), Some("someone-else"), 600, t)),
            "auth.invalid_token",
        ),
        (
            "wrong issuer",
            Some(sign(SECRET, Some("evil"), Some(AUDIENCE), 600, t)),
            "auth.invalid_token",
        ),
        ("alg none", Some(format!("Bearer {none_header}.{payload}.")), "auth.invalid_token"),
        (
            "tampered payload",
            Some(format!(
                "Bearer {header}.{}.{}",
                base64_url(br#"{"sub":"x","role":"admin","exp":99999999999}"#),
                good.rsplit('.').next().unwrap()
            )),
            "auth.invalid_token",
        ),
    ];
    for (name, auth, code) in cases {
        for path in ["/models", "/results", "/audit"] {
            let r = c.get(path, auth.as_deref());
            assert_error(&r, 401, code);
            let challenge =
                r.header("www-authenticate").unwrap_or_else(|| panic!("{name}: no challenge"));
            assert!(challenge.starts_with("Bearer"), "{name}: {challenge}");
        }
        let r = c.post_json("/infer", &seed_array("x"), auth.as_deref());
        assert_error(&r, 401, code);
    }
}

pub fn base64_url(bytes: &[u8]) -> String {
    base64_engine::encode(bytes).trim_end_matches('=').replace('+', "-").replace('/', "_")
}

/// Each role against each route.
pub fn rbac_matrix(s: &Server) {
    let c = s.client();
    let batch = json!({"images": [seed_array("PT-rbac")]});
    // route → roles allowed
    let routes: Vec<(&str, &str, Vec<&str>)> = vec![
        ("GET", "/openapi.json", vec!["viewer", "operator", "auditor", "admin"]),
        ("GET", "/models", vec!["viewer", "operator", "admin"]),
        ("GET", "/models/mobilenetv2-chexnet", vec!["viewer", "operator", "admin"]),
        ("POST", "/infer", vec!["operator", "admin"]),
        ("POST", "/infer/batch", vec!["operator", "admin"]),
        ("GET", "/results", vec!["viewer", "operator", "admin"]),
        ("GET", "/audit", vec!["auditor", "admin"]),
        ("GET", "/audit/verify", vec!["auditor", "admin"]),
    ];
    for (method, path, allowed) in &routes {
        for role in ["viewer", "operator", "auditor", "admin", "intern"] {
            let auth = bearer(role);
            let r = match (*method, *path) {
                ("POST", "/infer") => c.post_json(path, &seed_array("PT-rbac"), Some(&auth)),
                ("POST", _) => c.post_json(path, &batch, Some(&auth)),
                _ => c.get(path, Some(&auth)),
            };
            if allowed.contains(&role) {
                assert_eq!(r.status, 200, "{role} {method} {path}: {}", r.text());
            } else {
                assert_error(&r, 403, "auth.forbidden");
            }
        }
    }
    // /health needs nothing, even with a bad token.
    assert_eq!(c.get("/health", Some("Bearer junk")).status, 200);
}

/// Bad input on every route: the right 4xx and code, and the chain still verifies.
pub fn bad_input_gets_clear_errors(s: &Server) {
    let c = s.client();
    let op = bearer("operator");
    let viewer = bearer("viewer");
    let dims = json!({"data": vec![0.5; 32 * 32], "width": 32, "height": 32});
    let cases: Vec<(&str, Reply, u16, &str)> = vec![
        ("bad json", c.post("/infer", "application/json", b"{\"data\": [0.1,", Some(&op)), 400, "request.malformed_json"),
        ("nan", c.post("/infer", "application/json", br#"{"data":[NaN],"width":64,"height":64}"#, Some(&op)), 400, "request.malformed_json"),
        ("wrong type", c.post("/infer", "application/json", br#"{"data":"x","width":64,"height":64}"#, Some(&op)), 422, "input.invalid_json"),
        ("no width", c.post("/infer", "application/json", br#"{"data":[0.5]}"#, Some(&op)), 422, "input.missing_field"),
        ("dimensions", c.post_json("/infer", &dims, Some(&op)), 422, "input.dimensions"),
        ("range", c.post_json("/infer", &json!({"data": vec![1.5; 64 * 64], "width": 64, "height": 64}), Some(&op)), 422, "input.pixel_range"),
        ("shape", c.post_json("/infer", &json!({"data": vec![0.5; 100], "width": 64, "height": 64}), Some(&op)), 422, "input.shape"),
        ("dtype", c.post_json("/infer", &json!({"data": vec![0.5; 64 * 64], "width": 64, "height": 64, "dtype": "complex64"}), Some(&op)), 422, "input.dtype"),
        ("channels", c.post_json("/infer", &json!({"data": vec![0.5; 64 * 64 * 2], "width": 64, "height": 64, "channels": 2}), Some(&op)), 422, "input.channels"),
        ("media type", c.post("/infer", "text/plain", b"hello", Some(&op)), 415, "request.unsupported_media_type"),
        ("not an image", c.post("/infer", "image/png", b"GIF89a not an image at all", Some(&op)), 415, "input.unsupported_format"),
        ("empty", c.post("/infer", "application/dicom", b"", Some(&op)), 400, "input.empty"),
        ("truncated dicom", c.post("/infer", "application/dicom", &file("testdata/dicom/MR_truncated.dcm"), Some(&op)), 422, "decode.dicom"),
        ("cut dicom", c.post("/infer", "application/dicom", &file(CHEST)[..4000], Some(&op)), 422, "decode.dicom"),
        ("unknown model", c.post_json("/infer", &json!({"data": vec![0.5; 64 * 64], "width": 64, "height": 64, "model_id": "nope"}), Some(&op)), 404, "model.not_found"),
        ("bad frame", c.post(&format!("/infer?frame=99&model_id={FAST}"), "application/dicom", &file(CHEST), Some(&op)), 422, "dicom.frame_out_of_range"),
        ("bad frame query", c.post("/infer?frame=x", "application/dicom", &file(CHEST), Some(&op)), 422, "input.invalid_query"),
        ("bad base64", c.post_json("/infer", &json!({"image_base64": "%%%"}), Some(&op)), 422, "input.invalid_base64"),
        ("results limit", c.get("/results?limit=0", Some(&viewer)), 422, "input.invalid_query"),
        ("results cursor", c.get("/results?cursor=abc", Some(&viewer)), 422, "input.invalid_query"),
        ("results id", c.get("/results?batch_id=../../etc", Some(&viewer)), 422, "input.invalid_query"),
        ("audit limit", c.get("/audit?limit=100000", Some(&bearer("auditor"))), 422, "input.invalid_query"),
        ("unknown route", c.get("/nope", Some(&viewer)), 404, "route.not_found"),
        ("wrong method", c.get("/infer", Some(&op)), 405, "route.method_not_allowed"),
        ("body on GET", c.post("/results", "application/json", b"{}", Some(&viewer)), 405, "route.method_not_allowed"),
    ];
    for (name, reply, status, code) in &cases {
        assert_eq!(reply.status, *status, "{name}: {}", reply.text());
        assert_error(reply, *status, code);
        assert_no_phi(&reply.text());
    }
    // Oversized: refused from the declared length, before the body is read.
    let r = c.raw_oversized("/infer", 60 * 1024 * 1024, &op);
    assert_error(&r, 413, "input.too_large");
    let r = c.raw_oversized("/infer/batch", 1024 * 1024 * 1024, &op);
    assert_error(&r, 413, "input.too_large");
    verify(&c);
}

/// Many simultaneous `/infer`: every 200 is stored once, the chain stays linear.
pub fn concurrent_inference_loses_nothing(s: &Server, n: usize) {
    let c = s.client();
    let before = verify(&c)["records"].as_u64().unwrap();
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let c = s.client();
            std::thread::spawn(move || {
                let r = c.post_json(
                    "/infer",
                    &seed_array(&format!("PT-C{i}")),
                    Some(&bearer("operator")),
                );
                assert_eq!(r.status, 200, "{}", r.text());
                r.json()["inference_id"].as_str().unwrap().to_string()
            })
        })
        .collect();
    let ids: Vec<String> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let mut unique = ids.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), n);
    for id in &ids {
        result_by_id(&c, id);
    }
    let after = verify(&c)["records"].as_u64().unwrap();
    // Other tests share the server, so at least: our n completions, n + 1 result reads.
    assert!(after > before + 2 * n as u64, "{before} → {after}");
    // Each inference has exactly one INFERENCE_COMPLETED record.
    let mut completed = BTreeMap::new();
    let mut cursor = Some("1".to_string());
    while let Some(cur) = cursor {
        let page =
            c.get(&format!("/audit?limit=1000&cursor={cur}"), Some(&bearer("auditor"))).json();
        for r in page["items"].as_array().unwrap() {
            if r["action"] == "INFERENCE_COMPLETED"
                && let Some(id) = r["inference_id"].as_str()
            {
                *completed.entry(id.to_string()).or_insert(0) += 1;
            }
        }
        cursor = page["next_cursor"].as_str().map(str::to_string);
    }
    for id in &ids {
        assert_eq!(completed.get(id), Some(&1), "{id}");
    }
}

/// The audit log names who did what, chains, and holds no PHI.
pub fn audit_records_actions(s: &Server) {
    let c = s.client();
    let r = c.post(
        &format!("/infer?model_id={FAST}"),
        "application/dicom",
        &file(CHEST),
        Some(&bearer("operator")),
    );
    assert_eq!(r.status, 200);
    let id = r.json()["inference_id"].as_str().unwrap().to_string();
    let _ = c.get("/audit", Some(&bearer("viewer"))); // denied
    let _ = c.get(&format!("/results?inference_id={id}"), Some(&bearer("viewer")));
    let _ = c.get("/audit?limit=1", Some(&bearer("auditor")));
    let mut all = Vec::new();
    let mut cursor = Some("1".to_string());
    while let Some(cur) = cursor {
        let page = c.get(&format!("/audit?limit=500&cursor={cur}"), Some(&bearer("auditor")));
        assert_eq!(page.status, 200);
        assert_no_phi(&page.text());
        let page = page.json();
        all.extend(page["items"].as_array().unwrap().iter().cloned());
        cursor = page["next_cursor"].as_str().map(str::to_string);
    }
    for w in all.windows(2) {
        assert_eq!(w[1]["seq"].as_u64().unwrap(), w[0]["seq"].as_u64().unwrap() + 1);
        assert_eq!(w[1]["prev_hash"], w[0]["hash"]);
    }
    let has = |action: &str, pred: &dyn Fn(&Value) -> bool| {
        all.iter().any(|r| r["action"] == action && pred(r))
    };
    assert!(has("INFERENCE_COMPLETED", &|r| r["inference_id"] == id.as_str()
        && r["user_id"] == "operator"
        && r["model_id"] == FAST));
    assert!(has("ACCESS_DENIED", &|r| r["user_id"] == "viewer"
        && r["detail"].as_str().unwrap().contains("/audit")));
    assert!(has("RESULTS_READ", &|r| r["user_id"] == "viewer" && r["inference_id"] == id.as_str()));
    assert!(has("AUDIT_READ", &|r| r["user_id"] == "auditor"));
}

/// With a public key configured, tokens signed by its private key pass; an HS256 token
/// whose "secret" is the public key (key confusion) and `alg: none` fail. For RS256 and ES256.
pub fn public_key_tokens_and_key_confusion(target: harness::Target) {
    use jwt_simple::prelude::*;
    let claims = || {
        Claims::with_custom_claims(json!({"role": "viewer"}), Duration::from_secs(600))
            .with_subject("pk-user")
            .with_issuer(ISSUER)
            .with_audience(AUDIENCE)
    };
    let rsa = RS256KeyPair::generate(2048).unwrap();
    let ec = ES256KeyPair::generate();
    let cases = [
        ("rs256", rsa.public_key().to_pem().unwrap(), rsa.sign(claims()).unwrap()),
        ("es256", ec.public_key().to_pem().unwrap(), ec.sign(claims()).unwrap()),
    ];
    for (name, pem, good) in cases {
        let mut settings: Vec<(&str, String)> =
            settings().into_iter().filter(|(k, _)| *k != "jwt_hs256_secret").collect();
        settings.push(("jwt_public_key", pem.clone()));
        let server = Server::start(target, &harness::temp_dir(name), &settings);
        let c = server.client();
        let r = c.get("/models", Some(&format!("Bearer {good}")));
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        let confused = HS256Key::from_bytes(pem.as_bytes()).authenticate(claims()).unwrap();
        assert_error(
            &c.get("/models", Some(&format!("Bearer {confused}"))),
            401,
            "auth.invalid_token",
        );
        let payload = good.split('.').nth(1).unwrap();
        let none = format!("Bearer {}.{payload}.", base64_url(br#"{"alg":"none","typ":"JWT"}"#));
        assert_error(&c.get("/models", Some(&none)), 401, "auth.invalid_token");
        // HS256 tokens with the old shared secret are refused too.
        assert_error(&c.get("/models", Some(&bearer("viewer"))), 401, "auth.invalid_token");
        server.stop();
    }
}

/// Results and the audit chain survive a restart (native: the redb file; Spin host: its
/// key-value log).
pub fn restart_keeps_results_and_chain(target: harness::Target) {
    let dir = harness::temp_dir(&format!("restart-{target:?}"));
    let first = Server::start(target, &dir, &settings());
    let c = first.client();
    let r = c.post_json("/infer", &seed_array("PT-RESTART"), Some(&bearer("operator")));
    assert_eq!(r.status, 200, "{}", r.text());
    let id = r.json()["inference_id"].as_str().unwrap().to_string();
    let before = verify(&c);
    first.stop();

    let second = Server::start(target, &dir, &settings());
    let c = second.client();
    let r = c.get(&format!("/results?inference_id={id}"), Some(&bearer("viewer")));
    assert_eq!(r.json()["items"][0]["inference_id"], id.as_str());
    let after = verify(&c);
    // The chain continued: the earlier records plus the verify and the read just made.
    assert_eq!(after["records"].as_u64().unwrap(), before["records"].as_u64().unwrap() + 2);
}

/// Nothing identifying reaches the store or the log, even when sent in a query.
pub fn no_phi_in_the_store_or_the_log(target: harness::Target) {
    let dir = harness::temp_dir(&format!("phi-{target:?}"));
    let server = Server::start(target, &dir, &settings());
    let c = server.client();
    for name in ["RG1_chest_mono1_uncompressed_s4_DERIVED.dcm", "CT_small.dcm", "JPEG2000.dcm"] {
        let bytes = file(&format!("testdata/dicom/{name}"));
        let r = c.post(
            &format!("/infer?model_id={FAST}&patient_id=9RG1"),
            "application/dicom",
            &bytes,
            Some(&bearer("operator")),
        );
        assert_eq!(r.status, 200, "{name}: {}", r.text());
        assert_no_phi(&r.text());
    }
    let r = c.post(
        "/infer?patient_id=CompressedSamples%5ERG1",
        "application/dicom",
        &file("testdata/dicom/MR_truncated.dcm"),
        Some(&bearer("operator")),
    );
    assert_eq!(r.status, 422);
    server.stop();
    let store = std::fs::read(server.store_file()).unwrap();
    let store = String::from_utf8_lossy(&store);
    assert!(store.contains("PT-") || store.contains(&hex_of("PT-")), "the store holds pseudonyms");
    assert_no_phi(&store);
    // The Spin host's log keeps values in hex: look for the identifiers in hex too.
    for phi in PHI {
        assert!(!store.contains(&hex_of(phi)), "PHI {phi:?} in the store (hex)");
    }
    assert_no_phi(&server.log());
}

fn hex_of(s: &str) -> String {
    s.bytes().map(|b| format!("{b:02x}")).collect()
}

/// Defines one `#[test]` per suite case for a target; `$server` is a fn returning
/// `&'static Server`.
#[macro_export]
macro_rules! conformance_tests {
    ($server:path) => {
        #[test]
        fn health_is_public() {
            api::health_is_public($server());
        }
        #[test]
        fn models_list_and_detail() {
            api::models_list_and_detail($server());
        }
        #[test]
        fn openapi_lists_every_route() {
            api::openapi_lists_every_route($server());
        }
        #[test]
        fn every_input_form_infers() {
            api::every_input_form_infers($server());
        }
        #[test]
        fn batch_isolates_bad_items() {
            api::batch_isolates_bad_items($server());
        }
        #[test]
        fn batch_limits() {
            api::batch_limits($server());
        }
        #[test]
        fn bad_tokens_are_401() {
            api::bad_tokens_are_401($server());
        }
        #[test]
        fn rbac_matrix() {
            api::rbac_matrix($server());
        }
        #[test]
        fn bad_input_gets_clear_errors() {
            api::bad_input_gets_clear_errors($server());
        }
        #[test]
        fn concurrent_inference_loses_nothing() {
            api::concurrent_inference_loses_nothing($server(), 24);
        }
        #[test]
        fn audit_records_actions() {
            api::audit_records_actions($server());
        }
    };
}
