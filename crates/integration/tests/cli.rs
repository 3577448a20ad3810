//! Command-line behaviour that needs no running cluster.

use std::process::Command;
use stolon_testkit::bin_dir;

fn run(bin: &str, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(bin_dir().join(bin))
        .args(args)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    (out.status.code(), text)
}

/// Runs a keeper that must stop before it reaches the store: the common flags and a fresh
/// data dir, then `args`.
fn run_keeper(args: &[&str]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("k");
    let mut all = vec![
        "--cluster-name",
        "c",
        "--store-backend",
        "etcdv3",
        "--data-dir",
        data.to_str().unwrap(),
        "--pg-listen-address",
        "127.0.0.1",
    ];
    all.extend_from_slice(args);
    run("stolon-keeper", &all)
}

#[test]
fn unsupported_store_backends_are_refused_with_exit_code_1() {
    for bin in ["stolonctl", "stolon-sentinel", "stolon-proxy"] {
        for backend in ["etcd", "etcdv2", "consul"] {
            let mut args = vec!["--cluster-name", "c", "--store-backend", backend];
            if bin == "stolonctl" {
                args.push("status");
            }
            let (code, text) = run(bin, &args);
            assert_eq!(code, Some(1), "{bin} {backend}: {text}");
            assert!(text.contains("not supported"), "{bin} {backend}: {text}");
        }
    }
}

#[test]
fn keeper_as_root_without_an_os_user_for_postgres_says_so() {
    if !nix::unistd::geteuid().is_root() {
        return;
    }
    let (code, text) = run_keeper(&[
        "--pg-su-password",
        "x",
        "--pg-repl-username",
        "r",
        "--pg-repl-password",
        "y",
        "--pg-os-user",
        "no_such_os_user_here",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(
        text.contains("runs as root") && text.contains("no_such_os_user_here"),
        "{text}"
    );
}

#[test]
fn same_superuser_and_replication_user_with_different_passwords_is_fatal() {
    let (code, text) = run_keeper(&[
        "--pg-su-username",
        "same",
        "--pg-su-password",
        "x",
        "--pg-repl-username",
        "same",
        "--pg-repl-password",
        "y",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("passwords are different"), "{text}");
}

#[test]
fn env_vars_with_the_binary_prefix_set_flags() {
    let out = Command::new(bin_dir().join("stolonctl"))
        .env("STOLONCTL_CLUSTER_NAME", "c")
        .env("STOLONCTL_STORE_BACKEND", "consul")
        .arg("status")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("\"consul\" is not supported"), "{text}");
}

#[test]
fn a_password_with_the_trust_method_is_fatal() {
    let (code, text) = run_keeper(&[
        "--pg-su-auth-method",
        "trust",
        "--pg-su-password",
        "x",
        "--pg-repl-username",
        "r",
        "--pg-repl-password",
        "y",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("auth method trust"), "{text}");
}
