#![allow(clippy::unwrap_used)]
//! spin.toml stays in step with the code: every setting is a variable passed to the
//! component, the models it mounts exist, the source is the pre-initialised component
//! `cargo xtask spin` builds, and its build command is that.

use std::path::PathBuf;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..")
}

#[test]
fn spin_toml_matches_the_component() {
    let text = std::fs::read_to_string(root().join("spin.toml")).unwrap();
    let manifest: toml::Table = text.parse().unwrap();
    assert_eq!(manifest["spin_manifest_version"].as_integer(), Some(2));
    let variables = manifest["variables"].as_table().unwrap();
    let component = manifest["component"]["medinfer"].as_table().unwrap();
    let passed = component["variables"].as_table().unwrap();
    for name in medinfer_service::config::NAMES {
        assert!(variables.contains_key(*name), "variable {name} is declared");
        assert_eq!(passed[*name].as_str(), Some(format!("{{{{ {name} }}}}").as_str()), "{name}");
    }
    assert_eq!(variables.len(), medinfer_service::config::NAMES.len());
    assert_eq!(variables["deid_key"]["secret"].as_bool(), Some(true));
    assert_eq!(
        component["source"].as_str(),
        Some("target/wasm32-wasip2/release/medinfer_spin.preinit.wasm")
    );
    let stores = component["key_value_stores"].as_array().unwrap();
    assert!(stores.iter().any(|s| s.as_str() == Some("default")));
    for file in component["files"].as_array().unwrap() {
        let source = file["source"].as_str().unwrap();
        assert!(root().join(source).join("model.toml").is_file(), "{source}");
        assert!(file["destination"].as_str().unwrap().starts_with("/models/"));
    }
    assert_eq!(component["build"]["command"].as_str(), Some("cargo xtask spin"));
    // xtask builds and pre-initialises exactly these.
    let xtask = std::fs::read_to_string(root().join("xtask/src/main.rs")).unwrap();
    assert!(xtask.contains(&format!("\"{}\"", component["source"].as_str().unwrap())));
    assert!(
        xtask.contains("\"preinit\", SPIN_COMPONENT, SPIN_PREINIT, \"--dir\", \"models::/models\"")
    );
}
