//! Hashes core's sources and the workspace's `Cargo.lock` into `MEDINFER_CORE_SOURCE_HASH`:
//! part of the plan form's key (src/plan_form.rs), so that a form written by another build —
//! whose operators may read their packed kernels differently — is never read.
#![allow(clippy::disallowed_methods)] // the build script reads the sources; core itself does no I/O

use std::path::{Path, PathBuf};

fn main() {
    let root = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let mut files = Vec::new();
    collect(&root.join("src"), &mut files);
    files.sort();
    let lock = root.join("../Cargo.lock");
    if lock.is_file() {
        files.push(lock);
    }
    // FNV-1a, 64 bits: enough to tell builds apart (this is no security boundary: the form
    // carries its own sha256).
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for file in &files {
        let name = file.strip_prefix(&root).unwrap_or(file).to_string_lossy().into_owned();
        let bytes = std::fs::read(file).expect("readable source");
        for b in name.bytes().chain([0]).chain(bytes) {
            hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
        }
        println!("cargo:rerun-if-changed={}", file.display());
    }
    println!("cargo:rerun-if-changed=src");
    println!("cargo:rustc-env=MEDINFER_CORE_SOURCE_HASH={hash:016x}");
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).expect("readable sources").flatten() {
        let path = entry.path();
        if path.is_dir() {
            collect(&path, out);
        } else {
            out.push(path);
        }
    }
}
