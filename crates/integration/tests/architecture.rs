//! The arrows between crates are part of the design (ARCHITECTURE.md): this test reads
//! `cargo metadata` and fails on any dependency between workspace crates not listed here.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// For each workspace package, the workspace packages it may depend on (normal and build
/// dependencies; dev-dependencies of tests are free).
const ALLOWED: &[(&str, &[&str])] = &[
    ("stolon-cluster", &[]),
    ("stolon-engine", &["stolon-cluster"]),
    ("stolon-store", &["stolon-cluster"]),
    ("stolon-store-etcd", &["stolon-store"]),
    ("stolon-store-k8s", &["stolon-store"]),
    ("stolon-pg", &[]),
    (
        "stolon-daemon",
        &[
            "stolon-cluster",
            "stolon-store",
            "stolon-store-etcd",
            "stolon-store-k8s",
        ],
    ),
    (
        "stolon-keeper",
        &[
            "stolon-cluster",
            "stolon-engine",
            "stolon-store",
            "stolon-pg",
            "stolon-daemon",
        ],
    ),
    (
        "stolon-sentinel",
        &[
            "stolon-cluster",
            "stolon-engine",
            "stolon-store",
            "stolon-daemon",
        ],
    ),
    (
        "stolon-proxy",
        &[
            "stolon-cluster",
            "stolon-engine",
            "stolon-store",
            "stolon-daemon",
        ],
    ),
    (
        "stolon-ctl",
        &[
            "stolon-cluster",
            "stolon-engine",
            "stolon-store",
            "stolon-daemon",
        ],
    ),
    (
        "stolon-testkit",
        &[
            "stolon-cluster",
            "stolon-store",
            "stolon-store-etcd",
            "stolon-store-k8s",
        ],
    ),
    ("stolon-integration", &[]),
    (
        "stolon-dist",
        &[
            "stolon-keeper",
            "stolon-sentinel",
            "stolon-proxy",
            "stolon-ctl",
            "stolon-daemon",
        ],
    ),
    ("stolon-sim", &["stolon-cluster", "stolon-engine"]),
    ("stolon-bench", &["stolon-testkit", "stolon-sim"]),
];

#[test]
fn workspace_dependencies_follow_the_architecture() {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--no-deps",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("running cargo metadata");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let meta: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let allowed: BTreeMap<&str, BTreeSet<&str>> = ALLOWED
        .iter()
        .map(|(pkg, deps)| (*pkg, deps.iter().copied().collect()))
        .collect();
    let packages = meta["packages"].as_array().unwrap();
    let names: BTreeSet<&str> = packages
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    let mut violations = Vec::new();
    for pkg in packages {
        let name = pkg["name"].as_str().unwrap();
        let Some(ok) = allowed.get(name) else {
            violations.push(format!("{name} is not in the architecture table"));
            continue;
        };
        for dep in pkg["dependencies"].as_array().unwrap() {
            let dep_name = dep["name"].as_str().unwrap();
            let is_dev = dep["kind"].as_str() == Some("dev");
            if names.contains(dep_name) && !is_dev && !ok.contains(dep_name) {
                violations.push(format!("{name} -> {dep_name}"));
            }
        }
    }
    assert!(
        violations.is_empty(),
        "dependencies outside the architecture:\n{}",
        violations.join("\n")
    );
}

/// Runs clippy, warnings denied as CI runs it, on a one-file crate that has the engine's
/// `clippy.toml` beside its manifest, as the engine has; returns whether it passed, and
/// what clippy said.
fn clippy_with_the_engines_rules(lib: &str) -> (bool, String) {
    let dir = tempfile::tempdir().unwrap();
    let engine = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../engine");
    std::fs::copy(engine.join("clippy.toml"), dir.path().join("clippy.toml")).unwrap();
    std::fs::write(
        dir.path().join("Cargo.toml"),
        "[package]\nname = \"engine-rules\"\nversion = \"0.0.0\"\nedition = \"2021\"\n\n[workspace]\n",
    )
    .unwrap();
    std::fs::create_dir(dir.path().join("src")).unwrap();
    std::fs::write(dir.path().join("src/lib.rs"), lib).unwrap();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let out = Command::new(cargo)
        .args(["clippy", "--offline", "--quiet", "--", "-D", "warnings"])
        .current_dir(dir.path())
        .env("CARGO_TARGET_DIR", dir.path().join("target"))
        .output()
        .expect("running cargo clippy");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_clock_read_or_a_sleep_in_the_engine_fails_the_build() {
    let (passed, said) = clippy_with_the_engines_rules(
        "//! Decisions.\n\n/// A pure decision.\npub fn later(now: std::time::Duration) -> std::time::Duration {\n    now * 2\n}\n",
    );
    assert!(passed, "time taken as an argument is fine:\n{said}");
    for clock in [
        "std::time::Instant::now().elapsed()",
        "std::time::SystemTime::now().elapsed().unwrap_or_default()",
    ] {
        let (passed, said) = clippy_with_the_engines_rules(&format!(
            "//! Decisions.\n\n/// Reads the clock.\npub fn elapsed() -> std::time::Duration {{\n    {clock}\n}}\n"
        ));
        assert!(!passed, "{clock} passed clippy");
        assert!(
            said.contains("disallowed") && said.contains("the engine takes time as an argument"),
            "{clock}: {said}"
        );
    }
    let (passed, said) = clippy_with_the_engines_rules(
        "//! Decisions.\n\n/// Waits.\npub fn wait() {\n    std::thread::sleep(std::time::Duration::from_millis(1));\n}\n",
    );
    assert!(!passed && said.contains("the engine never waits"), "{said}");
}
