//! The Debian package: `scripts/package-deb.sh` builds it from the test binaries, `dpkg`
//! installs it on this machine, and a 3-keeper cluster runs from what it installed: the
//! programs in /usr/bin started by the systemd units' own command lines: each unit's
//! `ExecStart` under the unit's user with the variables of its `EnvironmentFile`, as
//! systemd would run it (systemd is not PID 1 in the containers the tests run in). Needs
//! root (dpkg); the package is purged at the end, and before the test when an earlier run
//! left it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;
use stolon_testkit::{
    bin_dir, connect_as, free_port, pg_bin_dir, wait_until, EtcdServer, Process, SU_PASSWORD,
};

const BOOT: Duration = Duration::from_secs(120);
const PACKAGE: &str = "stolon-rs";
const SU_USER: &str = "postgres";
const REPL_PASSWORD: &str = "package-repl-secret";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn purge() {
    let _ = Command::new("dpkg").args(["--purge", PACKAGE]).output();
}

/// What the test put on the machine, taken away however the test ends: the package, the
/// keepers' environment files and state directories, the package's own environment files
/// as they were.
#[derive(Default)]
struct Installed {
    restore: Vec<(PathBuf, String)>,
    remove: Vec<PathBuf>,
    processes: Vec<(String, Process)>,
}

impl Drop for Installed {
    fn drop(&mut self) {
        for (name, p) in &mut self.processes {
            p.stop(Duration::from_secs(30));
            if std::thread::panicking() {
                eprintln!("----- {name}\n{}", p.log_text());
            }
        }
        for (path, text) in &self.restore {
            let _ = std::fs::write(path, text);
        }
        for path in &self.remove {
            let _ = std::fs::remove_file(path).or_else(|_| std::fs::remove_dir_all(path));
        }
        purge();
        // Only when empty: it is where every keeper unit keeps its data.
        let _ = std::fs::remove_dir("/var/lib/stolon");
    }
}

/// A systemd unit's `[Service]` settings, each key's last value.
fn unit(path: &str) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}"));
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with('['))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// `KEY=VALUE` lines of an environment file.
fn environment(path: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// What systemd would run for `unit_path` with instance `instance`: its `ExecStart` with
/// `%i` replaced, the variables of its `EnvironmentFile`, under its `User` (or, for a
/// `DynamicUser`, an unprivileged one: nobody), its `StateDirectory` made for that user.
fn unit_command(unit_path: &str, instance: &str) -> Command {
    let settings = unit(unit_path);
    let expand = |v: &str| v.replace("%i", instance);
    let exec = expand(&settings["ExecStart"]);
    let mut words = exec.split_whitespace();
    let mut cmd = Command::new(words.next().unwrap());
    cmd.args(words).env_clear().env("PATH", "/usr/bin:/bin");
    if let Some(file) = settings.get("EnvironmentFile") {
        for (k, v) in environment(Path::new(&expand(file))) {
            cmd.env(k, v);
        }
    }
    let user = match (settings.get("User"), settings.get("DynamicUser")) {
        (Some(user), _) => user.clone(),
        (None, Some(yes)) if yes == "yes" => "nobody".to_string(),
        _ => "root".to_string(),
    };
    let user = nix::unistd::User::from_name(&user)
        .unwrap()
        .expect("the unit's user");
    if let Some(dir) = settings.get("StateDirectory") {
        let dir = Path::new("/var/lib").join(expand(dir));
        std::fs::create_dir_all(&dir).unwrap();
        std::os::unix::fs::chown(&dir, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    }
    std::os::unix::process::CommandExt::uid(&mut cmd, user.uid.as_raw());
    std::os::unix::process::CommandExt::gid(&mut cmd, user.gid.as_raw());
    cmd
}

fn write_owned(path: &Path, text: &str, owner: Option<&nix::unistd::User>, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    if let Some(user) = owner {
        std::os::unix::fs::chown(path, Some(user.uid.as_raw()), Some(user.gid.as_raw())).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn the_package_installs_and_its_units_run_a_cluster() {
    assert!(
        nix::unistd::geteuid().is_root(),
        "installing a package needs root"
    );
    purge();
    // Declared first, dropped last: the logs stay for the clean-up to print.
    let dir = tempfile::tempdir().unwrap();
    let mut installed = Installed::default();
    let out = run(Command::new("bash")
        .arg(workspace_root().join("scripts/package-deb.sh"))
        .arg("--bin-dir")
        .arg(bin_dir())
        .arg("--out")
        .arg(dir.path())
        .args(["--compression", "none"]));
    let deb = out.lines().last().expect("the package's path").to_string();
    run(Command::new("dpkg").args(["-i", &deb]));
    let files = run(Command::new("dpkg").args(["-L", PACKAGE]));
    for file in [
        "/usr/bin/stolon-keeper",
        "/usr/bin/stolon-sentinel",
        "/usr/bin/stolon-proxy",
        "/usr/bin/stolonctl",
        "/lib/systemd/system/stolon-keeper@.service",
        "/lib/systemd/system/stolon-sentinel.service",
        "/lib/systemd/system/stolon-proxy.service",
        "/etc/stolon/sentinel.env",
        "/etc/stolon/proxy.env",
        "/usr/share/doc/stolon-rs/examples/keeper.env",
        "/usr/share/man/man1/stolon-keeper.1.gz",
        "/usr/share/man/man1/stolonctl-switchover.1.gz",
        "/usr/share/bash-completion/completions/stolonctl",
        "/usr/share/zsh/vendor-completions/_stolon-keeper",
        "/usr/share/fish/vendor_completions.d/stolon-proxy.fish",
    ] {
        assert!(
            files.lines().any(|l| l == file),
            "{file} not installed:\n{files}"
        );
    }
    let conffiles = run(Command::new("dpkg-query").args(["-W", "-f=${Conffiles}", PACKAGE]));
    assert!(conffiles.contains("/etc/stolon/proxy.env"), "{conffiles}");
    for unit_path in [
        "/lib/systemd/system/stolon-keeper@.service",
        "/lib/systemd/system/stolon-sentinel.service",
        "/lib/systemd/system/stolon-proxy.service",
    ] {
        let settings = unit(unit_path);
        for (key, value) in [
            ("NoNewPrivileges", "yes"),
            ("ProtectSystem", "strict"),
            ("PrivateTmp", "yes"),
            ("Restart", "on-failure"),
        ] {
            assert_eq!(
                settings.get(key).map(String::as_str),
                Some(value),
                "{unit_path} {key}"
            );
        }
    }
    assert_eq!(
        unit("/lib/systemd/system/stolon-keeper@.service")["User"],
        "postgres"
    );

    // The cluster, from the units.
    eprintln!(
        "systemd is PID 1: {}; the units' command lines run as systemd would run them",
        Path::new("/run/systemd/system").exists()
    );
    let logs = dir.path().join("logs");
    std::fs::create_dir_all(&logs).unwrap();
    let etcd = EtcdServer::start(dir.path(), &logs);
    let cluster = format!("pkg{}", std::process::id());
    let postgres = nix::unistd::User::from_name("postgres")
        .unwrap()
        .expect("postgres user");
    let secrets = dir.path().join("secrets");
    std::fs::create_dir_all(&secrets).unwrap();
    std::os::unix::fs::chown(&secrets, Some(postgres.uid.as_raw()), None).unwrap();
    write_owned(&secrets.join("su"), SU_PASSWORD, Some(&postgres), 0o600);
    write_owned(&secrets.join("repl"), REPL_PASSWORD, Some(&postgres), 0o600);
    let store = format!(
        "CLUSTER_NAME={cluster}\nSTORE_BACKEND=etcdv3\nSTORE_ENDPOINTS={}\n",
        etcd.endpoint
    );
    let with_prefix = |prefix: &str, text: &str| -> String {
        text.lines().map(|l| format!("{prefix}_{l}\n")).collect()
    };
    let proxy_port = free_port();
    let sentinel_env = with_prefix("STSENTINEL", &store);
    let proxy_env = with_prefix(
        "STPROXY",
        &format!("{store}LISTEN_ADDRESS=127.0.0.1\nPORT={proxy_port}\n"),
    );
    // The package's own files, set as an operator would: kept aside and put back after.
    installed.restore = ["/etc/stolon/sentinel.env", "/etc/stolon/proxy.env"]
        .iter()
        .map(|p| (PathBuf::from(p), std::fs::read_to_string(p).unwrap()))
        .collect();
    write_owned(
        Path::new("/etc/stolon/sentinel.env"),
        &sentinel_env,
        None,
        0o644,
    );
    write_owned(Path::new("/etc/stolon/proxy.env"), &proxy_env, None, 0o644);
    let uids: Vec<String> = (0..3).map(|i| format!("{cluster}k{i}")).collect();
    for uid in &uids {
        let env = with_prefix(
            "STKEEPER",
            &format!(
                "{store}PG_LISTEN_ADDRESS=127.0.0.1\nPG_PORT={}\nPG_BIN_PATH={}\nPG_SU_USERNAME={SU_USER}\nPG_SU_PASSWORDFILE={}\nPG_REPL_USERNAME=repluser\nPG_REPL_PASSWORDFILE={}\n",
                free_port(),
                pg_bin_dir().display(),
                secrets.join("su").display(),
                secrets.join("repl").display(),
            ),
        );
        let path = PathBuf::from(format!("/etc/stolon/keeper-{uid}.env"));
        write_owned(&path, &env, None, 0o640);
        installed.remove.push(path);
        installed
            .remove
            .push(Path::new("/var/lib/stolon").join(uid));
    }
    let init = run(Command::new("/usr/bin/stolonctl")
        .args([
            "init",
            "-y",
            r#"{"initMode":"new","sleepInterval":"1s","failInterval":"5s"}"#,
        ])
        .env("STOLONCTL_CLUSTER_NAME", &cluster)
        .env("STOLONCTL_STORE_BACKEND", "etcdv3")
        .env("STOLONCTL_STORE_ENDPOINTS", &etcd.endpoint));
    eprintln!("{init}");
    let units = std::iter::once(("sentinel".to_string(), "stolon-sentinel.service", ""))
        .chain(
            uids.iter()
                .map(|uid| (uid.clone(), "stolon-keeper@.service", uid.as_str())),
        )
        .chain([("proxy".to_string(), "stolon-proxy.service", "")]);
    for (name, unit_file, instance) in units {
        let cmd = unit_command(&format!("/lib/systemd/system/{unit_file}"), instance);
        installed
            .processes
            .push((name.clone(), Process::spawn(&name, cmd, &logs)));
    }

    let address = std::net::SocketAddr::from(([127, 0, 0, 1], proxy_port));
    wait_until(
        "two standbys streaming, seen through the proxy",
        BOOT,
        || async {
            let client = connect_as(address, SU_USER, SU_PASSWORD).await.ok()?;
            (stolon_testkit::streaming_standbys(&client).await? == 2).then_some(())
        },
    )
    .await;
    drop(installed);
    assert!(
        !Path::new("/usr/bin/stolon-keeper").exists(),
        "the purged package left its programs"
    );
}
