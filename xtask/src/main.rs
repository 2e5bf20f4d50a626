//! Build and CI orchestration: `cargo xtask test` runs every check, cheapest first.

use std::process::Command;

use anyhow::{Context, Result, bail};

mod bench;
mod load;
mod web;

const USAGE: &str = "usage: cargo xtask <test|lint|web|web-test|wasi-test|spin|bench|bench-http>
  test       everything CI runs: rustfmt, clippy (inside the builds), the Spin component
             and host, native tests and the API suite on both targets, core's tests on
             wasip2, the browser bundle and its tests in headless Chromium
  lint       rustfmt --check and clippy -D warnings
  spin       build the Spin component and the wasmtime host (wasm-host), then the component
             pre-initialised with the bundled models (what spin.toml serves)
  web        build the browser bundle into web/ (pkg/, models/, samples/) and report its size
  web-test   the browser tests: wasm-bindgen-test and Playwright in Debian's Chromium
             (needs `web` built, and target/release/medinfer for the parity reference)
  wasi-test  run core's tests compiled for wasm32-wasip2 under wasmtime (wasm-host run)
  bench [N]  medinfer vs onnxruntime (native, 1 and 2 threads, 100 images end to end), the
             GPU executor, /infer under load (wrk) on the native server and the Spin
             component, and, when `web` is built, the browser bundle vs onnxruntime-web;
             N timed runs (default 20); prints Markdown and rewrites BENCHMARKS.md's
             generated part
  bench-http [N]  only the /infer load rows, printed";

fn main() -> Result<()> {
    let task = std::env::args().nth(1).unwrap_or_default();
    match task.as_str() {
        "test" => {
            let t0 = std::time::Instant::now();
            // Each build is done once: the native build makes the host the Spin stage and
            // the wasip2 tests run on, and the wasip2 tests reuse the component's build.
            // clippy runs inside those builds (see `clippy_in_builds`), not as a stage.
            clippy_in_builds()?;
            let stages: [(&str, Stage); 7] = [
                ("format", format),
                ("native build", native_build),
                ("spin", || spin(Host::Built)),
                ("native tests", native_tests),
                ("wasi tests", || wasi_tests(Host::Built)),
                ("web build", web::build),
                ("web tests", web::test),
            ];
            for (name, stage) in stages {
                let t = std::time::Instant::now();
                stage()?;
                // Where CI's time goes, in the log.
                eprintln!("xtask: {name} done in {:.0} s", t.elapsed().as_secs_f64());
            }
            println!("xtask: all checks passed in {:.0} s", t0.elapsed().as_secs_f64());
            Ok(())
        }
        "lint" => lint(),
        "spin" => spin(Host::Build),
        "web" => web::build(),
        "web-test" => web::test(),
        "wasi-test" => wasi_tests(Host::Build),
        "bench" => bench::run(iterations()?),
        "bench-http" => {
            // The HTTP rows alone, printed (BENCHMARKS.md is left as it is).
            print!("{}", load::run(iterations()?)?);
            Ok(())
        }
        _ => {
            eprintln!("{USAGE}");
            bail!("unknown task {task:?}")
        }
    }
}

/// `cargo xtask bench N`: N timed runs (default 20).
fn iterations() -> Result<usize> {
    Ok(std::env::args().nth(2).map(|n| n.parse()).transpose()?.unwrap_or(20))
}

/// One step of `cargo xtask test`.
type Stage = fn() -> Result<()>;

/// Natively the tests also cover JPEG-LS (CharLS; needs cmake and a C++ compiler).
const NATIVE_FEATURES: &str = "medinfer-core/jpeg-ls";

pub(crate) fn cargo(args: &[&str]) -> Result<()> {
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO")).args(args).status().context("running cargo")?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn format() -> Result<()> {
    cargo(&["fmt", "--all", "--check"])
}

/// `cargo xtask lint`, on its own: rustfmt, then clippy over everything.
fn lint() -> Result<()> {
    format()?;
    // Same profile as the tests so that dependencies are compiled once per run.
    // The Spin component is linted natively too (spin-sdk's bindings compile everywhere):
    // a wasip2 clippy would check every dependency a second time.
    cargo(&[
        "clippy",
        "--release",
        "--workspace",
        "--all-targets",
        "--features",
        NATIVE_FEATURES,
        "--",
        "-D",
        "warnings",
    ])?;
    // The browser crate's wasm-only code (the libc shims) is linted on its own target.
    cargo(&[
        "clippy",
        "--release",
        "-p",
        "medinfer-browser",
        "--target",
        "wasm32-unknown-unknown",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])
}

/// Makes every later cargo command of this process (and its children) compile the workspace's
/// crates with clippy-driver, `-D warnings`: clippy's lints run inside the builds `cargo xtask
/// test` does anyway, on each crate's real target (the Spin component on wasip2, the browser
/// crate on wasm32, its `threads` code included). A separate `cargo clippy` type-checks every
/// dependency once more (7 of CI's minutes on two cores). This is what `cargo clippy` itself
/// does, with `check` instead of `build`; dependencies are compiled by plain rustc either way.
fn clippy_in_builds() -> Result<()> {
    let out = Command::new("rustc")
        .args(["--print", "sysroot"])
        .output()
        .context("running rustc --print sysroot")?;
    if !out.status.success() {
        bail!("rustc --print sysroot failed ({})", out.status);
    }
    let sysroot = String::from_utf8(out.stdout).context("rustc's sysroot is not UTF-8")?;
    let driver = std::path::Path::new(sysroot.trim()).join("bin/clippy-driver");
    if !driver.is_file() {
        bail!("{} is missing: `rustup component add clippy`", driver.display());
    }
    // SAFETY: called first in `main`'s task, before this process starts any thread.
    unsafe {
        std::env::set_var("RUSTC_WORKSPACE_WRAPPER", &driver);
        // cargo-clippy's encoding of clippy's own arguments.
        std::env::set_var("CLIPPY_ARGS", "-D__CLIPPY_HACKERY__warnings__CLIPPY_HACKERY__");
    }
    Ok(())
}

/// The Spin component's package: built for wasm32-wasip2 only.
const SPIN_PACKAGE: &str = "medinfer-spin";
/// Where the component lands.
const SPIN_COMPONENT: &str = "target/wasm32-wasip2/release/medinfer_spin.wasm";
/// The same, pre-initialised with the bundled models: what spin.toml serves.
const SPIN_PREINIT: &str = "target/wasm32-wasip2/release/medinfer_spin.preinit.wasm";
/// The wasmtime host (test runner and Spin-like server).
const WASM_HOST: &str = "target/release/wasm-host";

/// cargo resolves dependency features per command line: two commands that select different
/// packages or targets compile the shared dependencies twice (wasmtime, tract: minutes each on
/// CI's two cores). So each target has one selection, used by its build and its tests.
///
/// Native: the whole workspace but the component, with tests (dev-dependencies' features).
const NATIVE_SELECTION: &[&str] =
    &["--release", "--workspace", "--exclude", SPIN_PACKAGE, "--features", NATIVE_FEATURES];
/// wasm32-wasip2: the component with core and the service, whose tests run on this target.
/// The component itself has no test targets (`test = false`).
const WASIP2_SELECTION: &[&str] = &[
    "--release",
    "--target",
    "wasm32-wasip2",
    "-p",
    SPIN_PACKAGE,
    "-p",
    "medinfer-core",
    "-p",
    "medinfer-service",
];

/// Everything native that `cargo xtask test` runs, the host and the CLI included, compiled
/// once, exactly as `cargo test` with the same selection compiles it.
fn native_build() -> Result<()> {
    cargo(&[&["build"], NATIVE_SELECTION, &["--all-targets"]].concat())
}

/// Where the wasmtime host comes from.
#[derive(Clone, Copy)]
pub(crate) enum Host {
    /// `cargo xtask test`: `native_build` made it, with the workspace's features.
    Built,
    /// A task run on its own: build just the host (lighter than the whole workspace).
    Build,
}

fn host(host: Host) -> Result<()> {
    match host {
        Host::Built => Ok(()),
        Host::Build => cargo(&["build", "--release", "-p", "wasm-host"]),
    }
}

/// Builds the Spin component (with core's and the service's wasip2 tests: see
/// `WASIP2_SELECTION`), then, with the host (built here or already), the pre-initialised
/// component spin.toml serves. `cargo xtask spin` (what `spin build` runs) builds the host.
pub(crate) fn spin(with: Host) -> Result<()> {
    cargo(&[&["build"], WASIP2_SELECTION, &["--lib", "--tests"]].concat())?;
    host(with)?;
    let status = Command::new(WASM_HOST)
        .args(["preinit", SPIN_COMPONENT, SPIN_PREINIT, "--dir", "models::/models"])
        .status()
        .context("running wasm-host preinit")?;
    if !status.success() {
        bail!("pre-initialising the Spin component failed ({status})");
    }
    Ok(())
}

/// The de-identification tests read our output back with pydicom, an independent reader;
/// the API tests run the seed's Python example (requests, Pillow, numpy).
pub(crate) fn python_deps() -> Result<()> {
    let ok = Command::new("python3")
        .args(["-c", "import pydicom, numpy, PIL, requests"])
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        eprintln!("xtask: installing testdata/requirements.txt for the tests");
        let status = Command::new("python3")
            .args(["-m", "pip", "install", "-q", "-r", "testdata/requirements.txt"])
            .status()
            .context("running pip")?;
        if !status.success() {
            bail!("pip install -r testdata/requirements.txt failed");
        }
    }
    Ok(())
}

fn native_tests() -> Result<()> {
    python_deps()?;
    // Release: the tests run real models.
    // The API suite's Spin target (cli/tests/api_spin.rs) serves the component built by
    // `spin` with the host built by `native_build`.
    let root = std::env::current_dir()?;
    let args = [&["test"], NATIVE_SELECTION].concat();
    eprintln!("xtask: cargo {}", args.join(" "));
    let status = Command::new(env!("CARGO"))
        .args(&args)
        .env("MEDINFER_SPIN_COMPONENT", root.join(SPIN_PREINIT))
        .env("MEDINFER_SPIN_COMPONENT_LAZY", root.join(SPIN_COMPONENT))
        .env("MEDINFER_WASM_HOST", root.join(WASM_HOST))
        .status()
        .context("running cargo test")?;
    if !status.success() {
        bail!("the native tests failed ({status})");
    }
    Ok(())
}

/// core's and the service's unit and integration tests, compiled for wasm32-wasip2 and run
/// by `wasm-host run` (wasmtime in-process, the workspace preopened), so the very code the
/// Spin component runs is tested on its target.
fn wasi_tests(with: Host) -> Result<()> {
    host(with)?;
    let runner = format!("{} run", std::env::current_dir()?.join(WASM_HOST).display());
    eprintln!("xtask: CARGO_TARGET_WASM32_WASIP2_RUNNER={runner}");
    let status = Command::new(env!("CARGO"))
        .args([&["test"], WASIP2_SELECTION, &["--tests"]].concat())
        .env("CARGO_TARGET_WASM32_WASIP2_RUNNER", &runner)
        .status()
        .context("running cargo test for wasip2")?;
    if !status.success() {
        bail!("core's tests failed on wasm32-wasip2 ({status})");
    }
    Ok(())
}
