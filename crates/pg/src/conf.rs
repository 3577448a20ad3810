//! Pure rendering of the instance's configuration files. The keeper owns them entirely:
//! whatever is on disk is replaced by what these functions return.

use std::collections::BTreeMap;

/// Everything the rendered configuration depends on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfInput<'a> {
    pub listen_address: &'a str,
    pub port: u16,
    pub socket_dir: &'a str,
    pub max_standbys: u16,
    pub additional_wal_senders: u16,
    pub user_parameters: &'a BTreeMap<String, String>,
    /// Set for a standby: where it gets its WAL.
    pub standby: Option<WalSource<'a>>,
    /// The standbys a primary waits for on commit (application names).
    pub synchronous_standbys: &'a [String],
    /// pg_rewind needs hint bits logged.
    pub wal_log_hints: bool,
}

/// Where a standby gets its WAL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalSource<'a> {
    /// A db of the same cluster, through its slot there.
    Db(StandbySettings<'a>),
    /// A standby cluster's remote primary and archive, as the operator's standbyConfig says.
    Remote(RemoteSource<'a>),
}

/// The operator's standbyConfig, for a standby cluster's standby leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteSource<'a> {
    /// The remote primary's libpq connection string; none: only the archive.
    pub conninfo: Option<&'a str>,
    /// A slot on the remote primary.
    pub slot: Option<&'a str>,
    pub min_apply_delay: Option<&'a str>,
    pub restore_command: Option<&'a str>,
    /// How the remote primary's `pg_stat_replication` names this standby, unless the
    /// connection string says otherwise.
    pub application_name: &'a str,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StandbySettings<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    /// The password file the connection reads its password from ([`crate::ctl::PgCtl::write_replication_passfile`]):
    /// `primary_conninfo` can be read by any superuser (`SHOW`, `pg_settings`), a file
    /// only by the postgres user.
    pub passfile: &'a str,
    pub tls: &'a ReplicationTls,
    pub application_name: &'a str,
    pub slot: &'a str,
}

/// Parameters the keeper decides; a user value for them is ignored.
pub const MANAGED_PARAMETERS: &[&str] = &[
    "listen_addresses",
    "port",
    "unix_socket_directories",
    "wal_level",
    "hot_standby",
    "max_wal_senders",
    "max_replication_slots",
    "wal_keep_size",
    "synchronous_standby_names",
    "primary_conninfo",
    "primary_slot_name",
    "recovery_target_timeline",
    "wal_log_hints",
];

fn quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "''"))
}

/// A libpq connection string value, quoted when it needs to be.
fn conninfo_value(value: &str) -> String {
    if !value.is_empty() && !value.contains([' ', '\'', '\\']) {
        return value.to_string();
    }
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Every listed standby must confirm a commit: `N (a, b, ...)` with N the whole list, so
/// that any one of them is a safe failover candidate.
pub fn synchronous_standby_names(names: &[String]) -> String {
    match names {
        [] => String::new(),
        [one] => format!("\"{one}\""),
        many => format!(
            "{} ({})",
            many.len(),
            many.iter()
                .map(|n| format!("\"{n}\""))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// libpq parameters that make a replication connection give up on an upstream that stopped
/// answering (a network partition drops packets, it does not close connections): 10 s to
/// connect, unacknowledged data for 15 s, or an idle connection whose keepalives go
/// unanswered for 5 + 3 x 2 s. Without them a WAL receiver waits for wal_receiver_timeout
/// and a pg_basebackup or pg_rewind for the kernel's retransmissions, minutes, with the
/// keeper blocked behind it while the cluster has moved to another primary.
pub const DEAD_UPSTREAM_PARAMS: &str = "connect_timeout=10 tcp_user_timeout=15000 keepalives=1 keepalives_idle=5 keepalives_interval=2 keepalives_count=3";

pub fn primary_conninfo(s: &StandbySettings<'_>) -> String {
    format!(
        "host={} port={} user={} passfile={} application_name={} {} {DEAD_UPSTREAM_PARAMS}",
        conninfo_value(s.host),
        s.port,
        conninfo_value(s.user),
        conninfo_value(s.passfile),
        conninfo_value(s.application_name),
        s.tls.conninfo(),
    )
}

/// libpq's `sslmode`, for the replication connections to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SslMode {
    Disable,
    Allow,
    #[default]
    Prefer,
    Require,
    /// The primary's certificate is signed by the CA given.
    VerifyCa,
    /// ... and holds the host name or address the standby connects to.
    VerifyFull,
}

impl SslMode {
    pub fn parse(text: &str) -> Result<SslMode, String> {
        Ok(match text {
            "disable" => SslMode::Disable,
            "allow" => SslMode::Allow,
            "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "unknown sslmode {other:?} (disable, allow, prefer, require, verify-ca or verify-full)"
                ))
            }
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }

    pub fn verifies(self) -> bool {
        matches!(self, SslMode::VerifyCa | SslMode::VerifyFull)
    }
}

/// TLS of the replication connections (streaming, pg_basebackup, pg_rewind).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ReplicationTls {
    pub mode: SslMode,
    /// The CA that signed the primaries' certificates, for the verify modes.
    pub root_cert: Option<String>,
}

impl ReplicationTls {
    /// The connection string's TLS part.
    pub fn conninfo(&self) -> String {
        let mut conninfo = format!("sslmode={}", self.mode.as_str());
        if let Some(root_cert) = &self.root_cert {
            conninfo += &format!(" sslrootcert={}", conninfo_value(root_cert));
        }
        conninfo
    }
}

/// The whole `postgresql.conf`.
pub fn render_postgresql_conf(input: &ConfInput<'_>) -> String {
    let mut params: BTreeMap<String, String> = input
        .user_parameters
        .iter()
        .filter(|(k, _)| !MANAGED_PARAMETERS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let wal_level = match input.user_parameters.get("wal_level").map(String::as_str) {
        Some("logical") => "logical",
        _ => "replica",
    };
    let max_wal_senders =
        2 * u32::from(input.max_standbys) + 2 + u32::from(input.additional_wal_senders);
    for (k, v) in [
        ("listen_addresses", input.listen_address.to_string()),
        ("port", input.port.to_string()),
        ("unix_socket_directories", input.socket_dir.to_string()),
        ("wal_level", wal_level.to_string()),
        ("hot_standby", "on".to_string()),
        ("max_wal_senders", max_wal_senders.to_string()),
        ("max_replication_slots", input.max_standbys.to_string()),
        ("wal_keep_size", "128MB".to_string()),
        (
            "synchronous_standby_names",
            synchronous_standby_names(input.synchronous_standbys),
        ),
        (
            "wal_log_hints",
            if input.wal_log_hints { "on" } else { "off" }.to_string(),
        ),
    ] {
        params.insert(k.to_string(), v);
    }
    // On a primary too: it only matters in recovery, but it needs a restart to change, and
    // a promoted standby must not report a restart pending for it.
    params.insert("recovery_target_timeline".into(), "latest".into());
    // Defaults for fast hand-overs, unless the spec sets them: a synchronous commit is
    // released on the standby's next reply (by default every 10 s when it has nothing new
    // to flush), and a standby whose upstream changed retries streaming every 5 s.
    for (k, v) in [
        ("wal_receiver_status_interval", "1s"),
        ("wal_retrieve_retry_interval", "1s"),
    ] {
        params.entry(k.into()).or_insert_with(|| v.into());
    }
    match &input.standby {
        Some(WalSource::Db(standby)) => {
            params.insert("primary_conninfo".into(), primary_conninfo(standby));
            params.insert("primary_slot_name".into(), standby.slot.to_string());
        }
        Some(WalSource::Remote(remote)) => {
            // libpq takes the last of a repeated keyword: the operator's settings win over
            // our defaults.
            if let Some(conninfo) = remote.conninfo {
                params.insert(
                    "primary_conninfo".into(),
                    format!(
                        "application_name={} {DEAD_UPSTREAM_PARAMS} {conninfo}",
                        conninfo_value(remote.application_name)
                    ),
                );
            }
            for (name, value) in [
                ("primary_slot_name", remote.slot),
                ("recovery_min_apply_delay", remote.min_apply_delay),
                ("restore_command", remote.restore_command),
            ] {
                if let Some(value) = value {
                    params.insert(name.into(), value.to_string());
                }
            }
        }
        None => {}
    }
    let mut out = String::from("# Generated by stolon-keeper: every change here is overwritten.\n");
    for (k, v) in params {
        out.push_str(&format!("{k} = {}\n", quote(&v)));
    }
    out
}

/// Archive recovery of a restored backup (initMode pitr), for the time of the recovery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArchiveRecovery<'a> {
    pub restore_command: &'a str,
    /// The recovery targets asked for, as (parameter, value): `recovery_target_time`, ...
    pub targets: Vec<(&'static str, &'a str)>,
    /// `recovery_target_timeline`, when not the default `latest`.
    pub timeline: Option<&'a str>,
}

/// Lines to append to a generated `postgresql.conf` (the last setting of a parameter
/// wins): recovery stops at the first target reached and the instance is promoted.
pub fn render_archive_recovery(recovery: &ArchiveRecovery<'_>) -> String {
    let mut lines = vec![
        "# Archive recovery (initMode pitr): removed once it is over.".to_string(),
        format!("restore_command = {}", quote(recovery.restore_command)),
    ];
    for (parameter, value) in &recovery.targets {
        lines.push(format!("{parameter} = {}", quote(value)));
    }
    if !recovery.targets.is_empty() {
        lines.push("recovery_target_action = 'promote'".into());
    }
    if let Some(timeline) = recovery.timeline {
        lines.push(format!("recovery_target_timeline = {}", quote(timeline)));
    }
    lines.join("\n") + "\n"
}

/// The whole `pg_hba.conf`. The superuser and the replication user may connect from
/// anywhere with a password; `user_rules` are the operator's `pgHBA` (absent means
/// password access for every user from anywhere).
/// With `internal_only`, clients other than the superuser and the replication user are
/// kept out (the synchronous replication gate after a primary restart).
/// `su_repl_sources`: where the superuser and replication user may connect from over TCP:
/// everywhere (`defaultSUReplAccessMode: all`), or only the listed addresses (`strict`).
pub fn render_pg_hba(
    users: &HbaUsers<'_>,
    su_repl_sources: &SuReplSources,
    user_rules: Option<&[String]>,
    internal_only: bool,
) -> String {
    let HbaUsers {
        su,
        su_auth,
        repl,
        repl_auth,
    } = users;
    let (su_auth, repl_auth) = (su_auth.as_hba(), repl_auth.as_hba());
    let mut lines = vec![
        "# Generated by stolon-keeper: every change here is overwritten.".to_string(),
        format!("local postgres {su} {su_auth}"),
        format!("local replication {repl} {repl_auth}"),
    ];
    let nets: Vec<String> = match su_repl_sources {
        SuReplSources::Anywhere => vec!["0.0.0.0/0".into(), "::0/0".into()],
        SuReplSources::Only(addresses) => addresses
            .iter()
            .map(|a| {
                if a.contains(':') {
                    format!("{a}/128")
                } else {
                    format!("{a}/32")
                }
            })
            .collect(),
    };
    for net in nets {
        lines.push(format!("host all {su} {net} {su_auth}"));
        lines.push(format!("host replication {repl} {net} {repl_auth}"));
    }
    match user_rules {
        _ if internal_only => {}
        Some(rules) => lines.extend(rules.iter().cloned()),
        None => {
            lines.push("host all all 0.0.0.0/0 md5".into());
            lines.push("host all all ::0/0 md5".into());
        }
    }
    lines.join("\n") + "\n"
}

/// How the superuser and the replication user authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AuthMethod {
    Md5,
    #[default]
    ScramSha256,
    /// No password at all: only for networks the operator trusts.
    Trust,
}

impl AuthMethod {
    pub fn parse(text: &str) -> Result<AuthMethod, String> {
        match text {
            "md5" => Ok(AuthMethod::Md5),
            "scram-sha-256" => Ok(AuthMethod::ScramSha256),
            "trust" => Ok(AuthMethod::Trust),
            other => Err(format!(
                "unknown auth method {other:?} (md5, scram-sha-256 or trust)"
            )),
        }
    }

    /// What a role's password is stored as, computed here so that the password itself never
    /// reaches the server (where a failed statement would log it), and so that it matches
    /// the method whatever `password_encryption` says; `None` for trust.
    pub fn verifier(self, user: &str, password: &str) -> Option<String> {
        match self {
            AuthMethod::Md5 => Some(postgres_protocol::password::md5(password.as_bytes(), user)),
            AuthMethod::ScramSha256 => Some(postgres_protocol::password::scram_sha_256(
                password.as_bytes(),
            )),
            AuthMethod::Trust => None,
        }
    }

    pub fn as_hba(self) -> &'static str {
        match self {
            AuthMethod::Md5 => "md5",
            AuthMethod::ScramSha256 => "scram-sha-256",
            AuthMethod::Trust => "trust",
        }
    }
}

/// The two users the keeper manages, with their authentication methods.
#[derive(Debug, Clone, Copy)]
pub struct HbaUsers<'a> {
    pub su: &'a str,
    pub su_auth: AuthMethod,
    pub repl: &'a str,
    pub repl_auth: AuthMethod,
}

/// Where the superuser and the replication user may connect from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SuReplSources {
    Anywhere,
    Only(Vec<String>),
}

/// The parameters a `postgresql.conf` sets (not commented out), without the ones the keeper
/// manages: what initdb chose for this machine, for `mergePgParameters`.
pub fn parse_parameters(conf: &str) -> BTreeMap<String, String> {
    conf.lines()
        .filter_map(|line| {
            let line = line.trim();
            if line.starts_with('#') {
                return None;
            }
            let (name, rest) = line.split_once('=')?;
            let name = name.trim();
            let rest = rest.trim();
            let value = if let Some(quoted) = rest.strip_prefix('\'') {
                quoted.split_once('\'').map(|(v, _)| v)?.to_string()
            } else {
                rest.split('#').next()?.trim().to_string()
            };
            Some((name.to_string(), value))
        })
        .filter(|(name, _)| !name.is_empty() && !MANAGED_PARAMETERS.contains(&name.as_str()))
        .collect()
}

/// The upstream host and port named by a rendered configuration, if it has one.
pub fn parse_upstream(conf: &str) -> Option<(String, u16)> {
    let line = conf
        .lines()
        .find_map(|l| l.strip_prefix("primary_conninfo = "))?;
    let inner = line
        .trim()
        .strip_prefix('\'')?
        .strip_suffix('\'')?
        .replace("''", "'");
    let mut host = None;
    let mut port = None;
    for part in inner.split_whitespace() {
        if let Some(v) = part.strip_prefix("host=") {
            host = Some(v.trim_matches('\'').to_string());
        } else if let Some(v) = part.strip_prefix("port=") {
            port = v.parse().ok();
        }
    }
    Some((host?, port?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const USERS: HbaUsers<'static> = HbaUsers {
        su: "su",
        su_auth: AuthMethod::Md5,
        repl: "repl",
        repl_auth: AuthMethod::Md5,
    };

    #[test]
    fn parses_what_initdb_writes() {
        let text = "# comment\nmax_connections = 100\t\t\t# (change requires restart)\n\
                    #port = 5432\nshared_buffers = 128MB\nlc_messages = 'C.UTF-8'  # locale\n\
                    listen_addresses = 'x'\n";
        let params = parse_parameters(text);
        assert_eq!(
            params.get("max_connections").map(String::as_str),
            Some("100")
        );
        assert_eq!(
            params.get("shared_buffers").map(String::as_str),
            Some("128MB")
        );
        assert_eq!(
            params.get("lc_messages").map(String::as_str),
            Some("C.UTF-8")
        );
        assert!(!params.contains_key("port"));
        assert!(!params.contains_key("listen_addresses"), "managed");
    }

    #[test]
    fn auth_methods_reach_the_rules() {
        let users = HbaUsers {
            su_auth: AuthMethod::ScramSha256,
            repl_auth: AuthMethod::Trust,
            ..USERS
        };
        let hba = render_pg_hba(&users, &SuReplSources::Anywhere, None, false);
        assert!(hba.contains("local postgres su scram-sha-256"));
        assert!(hba.contains("host all su 0.0.0.0/0 scram-sha-256"));
        assert!(hba.contains("host replication repl ::0/0 trust"));
        assert_eq!(
            AuthMethod::parse("scram-sha-256"),
            Ok(AuthMethod::ScramSha256)
        );
        assert!(AuthMethod::parse("password").is_err());
    }

    fn input<'a>(params: &'a BTreeMap<String, String>) -> ConfInput<'a> {
        ConfInput {
            listen_address: "127.0.0.1",
            port: 5433,
            socket_dir: "/tmp",
            max_standbys: 20,
            additional_wal_senders: 5,
            user_parameters: params,
            standby: None,
            synchronous_standbys: &[],
            wal_log_hints: false,
        }
    }

    #[test]
    fn managed_parameters_win_over_user_ones() {
        let mut params = BTreeMap::new();
        params.insert("port".to_string(), "9999".to_string());
        params.insert("work_mem".to_string(), "8MB".to_string());
        params.insert("wal_level".to_string(), "minimal".to_string());
        let conf = render_postgresql_conf(&input(&params));
        assert!(conf.contains("port = '5433'"));
        assert!(!conf.contains("9999"));
        assert!(conf.contains("work_mem = '8MB'"));
        assert!(conf.contains("wal_level = 'replica'"));
        assert!(conf.contains("max_wal_senders = '47'"));
        assert!(!conf.contains("primary_conninfo"));
    }

    #[test]
    fn fast_handover_defaults_yield_to_the_spec() {
        let mut params = BTreeMap::new();
        let conf = render_postgresql_conf(&input(&params));
        assert!(conf.contains("wal_receiver_status_interval = '1s'"));
        assert!(conf.contains("wal_retrieve_retry_interval = '1s'"));
        assert!(conf.contains("recovery_target_timeline = 'latest'"));
        params.insert("wal_retrieve_retry_interval".to_string(), "5s".to_string());
        let conf = render_postgresql_conf(&input(&params));
        assert!(conf.contains("wal_retrieve_retry_interval = '5s'"));
    }

    #[test]
    fn user_may_ask_for_logical_wal() {
        let mut params = BTreeMap::new();
        params.insert("wal_level".to_string(), "logical".to_string());
        assert!(render_postgresql_conf(&input(&params)).contains("wal_level = 'logical'"));
    }

    /// A standby leader: the operator's connection string after our defaults (libpq keeps
    /// the last of a keyword), the operator's slot, delay and archive.
    #[test]
    fn a_standby_leader_follows_the_remote_of_the_standby_config() {
        let mut params = BTreeMap::new();
        params.insert("restore_command".to_string(), "false".to_string());
        let mut i = input(&params);
        i.standby = Some(WalSource::Remote(RemoteSource {
            conninfo: Some("host=site-a port=5433 user=repl application_name=site_b"),
            slot: Some("site_b"),
            min_apply_delay: Some("5min"),
            restore_command: Some("cp /archive/%f %p"),
            application_name: "stolon_abc",
        }));
        let conf = render_postgresql_conf(&i);
        assert!(
            conf.contains(&format!(
                "primary_conninfo = 'application_name=stolon_abc {DEAD_UPSTREAM_PARAMS} host=site-a port=5433 user=repl application_name=site_b'"
            )),
            "{conf}"
        );
        assert!(conf.contains("primary_slot_name = 'site_b'"), "{conf}");
        assert!(conf.contains("recovery_min_apply_delay = '5min'"), "{conf}");
        assert!(
            conf.contains("restore_command = 'cp /archive/%f %p'"),
            "{conf}"
        );
        assert_eq!(parse_upstream(&conf), Some(("site-a".to_string(), 5433)));
        let archive_only = RemoteSource {
            conninfo: None,
            slot: None,
            min_apply_delay: None,
            restore_command: Some("cp /archive/%f %p"),
            application_name: "stolon_abc",
        };
        i.standby = Some(WalSource::Remote(archive_only));
        let conf = render_postgresql_conf(&i);
        assert!(!conf.contains("primary_conninfo"), "{conf}");
        assert!(!conf.contains("primary_slot_name"), "{conf}");
    }

    #[test]
    fn standby_conf_names_its_upstream_and_parses_back() {
        let params = BTreeMap::new();
        let tls = ReplicationTls {
            mode: SslMode::VerifyFull,
            root_cert: Some("/etc/ca.pem".into()),
        };
        let mut i = input(&params);
        i.standby = Some(WalSource::Db(StandbySettings {
            host: "127.0.0.1",
            port: 5432,
            user: "repl",
            passfile: "/data/keeper's/replication.pgpass",
            tls: &tls,
            application_name: "stolon_abc",
            slot: "stolon_abc",
        }));
        let conf = render_postgresql_conf(&i);
        assert!(conf.contains("primary_slot_name = 'stolon_abc'"), "{conf}");
        assert!(!conf.contains("password"), "{conf}");
        assert!(
            conf.contains("sslmode=verify-full sslrootcert=/etc/ca.pem"),
            "{conf}"
        );
        assert!(
            conf.contains(r"passfile=''/data/keeper\\''s/replication.pgpass''"),
            "{conf}"
        );
        assert_eq!(parse_upstream(&conf), Some(("127.0.0.1".to_string(), 5432)));
    }

    #[test]
    fn archive_recovery_stops_at_its_target_and_promotes() {
        let to_a_time = render_archive_recovery(&ArchiveRecovery {
            restore_command: "cp /archive/%f '%p'",
            targets: vec![("recovery_target_time", "2026-11-25 00:00:00+00")],
            timeline: None,
        });
        assert_eq!(
            to_a_time,
            "# Archive recovery (initMode pitr): removed once it is over.\n\
             restore_command = 'cp /archive/%f ''%p'''\n\
             recovery_target_time = '2026-11-25 00:00:00+00'\n\
             recovery_target_action = 'promote'\n"
        );
        // Without a target, recovery replays the whole archive on the timeline asked for.
        let to_the_end = render_archive_recovery(&ArchiveRecovery {
            restore_command: "true",
            targets: Vec::new(),
            timeline: Some("2"),
        });
        assert!(
            !to_the_end.contains("recovery_target_action"),
            "{to_the_end}"
        );
        assert!(
            to_the_end.ends_with("recovery_target_timeline = '2'\n"),
            "{to_the_end}"
        );
        let parsed = parse_parameters(&to_the_end);
        assert_eq!(
            parsed.get("restore_command").map(String::as_str),
            Some("true")
        );
    }

    #[test]
    fn hba_defaults_to_password_access_for_all() {
        let hba = render_pg_hba(&USERS, &SuReplSources::Anywhere, None, false);
        assert!(hba.contains("local postgres su md5"));
        assert!(hba.contains("host replication repl 0.0.0.0/0 md5"));
        assert!(hba.contains("host all all 0.0.0.0/0 md5"));
        let strict = render_pg_hba(&USERS, &SuReplSources::Anywhere, Some(&[]), false);
        assert!(!strict.contains("host all all"));
        let gated = render_pg_hba(
            &USERS,
            &SuReplSources::Anywhere,
            Some(&["host all app 0.0.0.0/0 md5".into()]),
            true,
        );
        assert!(gated.contains("host all su 0.0.0.0/0 md5"));
        assert!(!gated.contains("app"));
    }

    #[test]
    fn strict_access_lists_only_the_given_addresses() {
        let only = SuReplSources::Only(vec!["10.0.0.2".into(), "fd00::3".into()]);
        let hba = render_pg_hba(&USERS, &only, None, false);
        assert!(hba.contains("host all su 10.0.0.2/32 md5"));
        assert!(hba.contains("host replication repl fd00::3/128 md5"));
        assert!(!hba.contains("host all su 0.0.0.0/0"));
        let none = render_pg_hba(&USERS, &SuReplSources::Only(vec![]), None, false);
        assert!(!none.contains("host all su"));
    }

    #[test]
    fn synchronous_names_require_every_listed_standby() {
        assert_eq!(synchronous_standby_names(&[]), "");
        assert_eq!(
            synchronous_standby_names(&["stolon_a".into()]),
            "\"stolon_a\""
        );
        assert_eq!(
            synchronous_standby_names(&["stolon_a".into(), "stolonfakestandby".into()]),
            "2 (\"stolon_a\", \"stolonfakestandby\")"
        );
        let params = BTreeMap::new();
        let names = vec!["stolon_a".to_string()];
        let mut i = input(&params);
        i.synchronous_standbys = &names;
        i.wal_log_hints = true;
        let conf = render_postgresql_conf(&i);
        assert!(
            conf.contains("synchronous_standby_names = '\"stolon_a\"'"),
            "{conf}"
        );
        assert!(conf.contains("wal_log_hints = 'on'"));
    }
}
