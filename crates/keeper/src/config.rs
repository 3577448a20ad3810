//! The keeper's configuration, from its command line: the roles and their passwords, the
//! addresses it advertises, the OS user postgres runs as, its uid.

use crate::cli::Cli;
use crate::{RolePassword, StoreLoss};
use anyhow::bail;
use std::net::SocketAddr;
use std::path::PathBuf;
use stolon_pg::conf::{AuthMethod, ReplicationTls, SslMode};
use stolon_pg::ctl::OsUser;
use stolon_pg::secret::Password;

#[derive(Debug, Clone)]
pub struct KeeperConfig {
    pub uid: Option<String>,
    pub data_dir: PathBuf,
    pub listen_address: String,
    pub advertise_address: String,
    pub port: u16,
    /// The port the other components use (default: `port`).
    pub advertise_port: u16,
    pub bin_dir: Option<PathBuf>,
    /// The superuser: its password empty with the trust method.
    pub su: RolePassword,
    /// The replication user: the superuser's own password when they are one role.
    pub repl: RolePassword,
    /// TLS of the connections to the primary: streaming, pg_basebackup and pg_rewind.
    pub repl_tls: ReplicationTls,
    pub can_be_master: bool,
    pub can_be_synchronous_replica: bool,
    /// Among equally advanced failover candidates, the higher priority wins.
    pub priority: i32,
    /// The OS user PostgreSQL runs as, when the keeper runs as root.
    pub run_as: Option<OsUser>,
    /// Names the cluster in `/metrics`.
    pub cluster_name: String,
    /// Where to serve `/metrics`, `/health`, `/primary` and `/replica`, when asked for.
    pub http: Option<SocketAddr>,
    /// Whether a primary stops its postgres when it cannot store its info.
    pub store_loss: StoreLoss,
}

impl TryFrom<&Cli> for KeeperConfig {
    type Error = anyhow::Error;

    /// Checks the flags as a whole (a role given twice must agree with itself, TLS modes
    /// that verify need their CA, ...) and reads the password files.
    fn try_from(cli: &Cli) -> anyhow::Result<KeeperConfig> {
        let run_as = if nix::unistd::geteuid().is_root() {
            match OsUser::lookup(&cli.pg_os_user) {
                Some(user) => Some(user),
                None => bail!(
                    "the keeper runs as root and PostgreSQL refuses to, but there is no OS user {:?} \
                     to run it as: create that user, choose another with --pg-os-user, or run the \
                     keeper as an unprivileged user",
                    cli.pg_os_user
                ),
            }
        } else {
            None
        };
        let os_user_name = if run_as.is_some() {
            cli.pg_os_user.clone()
        } else {
            nix::unistd::User::from_uid(nix::unistd::geteuid())
                .ok()
                .flatten()
                .map(|u| u.name)
                .unwrap_or_else(|| "postgres".into())
        };
        let su_username = cli.pg_su_username.clone().unwrap_or(os_user_name);
        let su_password = password_for(
            "superuser",
            "--pg-su-password",
            cli.pg_su_auth_method,
            cli.pg_su_password.as_deref(),
            cli.pg_su_passwordfile.as_deref(),
        )?;
        let repl_password = password_for(
            "replication",
            "--pg-repl-password",
            cli.pg_repl_auth_method,
            cli.pg_repl_password.as_deref(),
            cli.pg_repl_passwordfile.as_deref(),
        )?;
        let same_role = su_username == cli.pg_repl_username;
        if same_role {
            if cli.pg_su_auth_method != cli.pg_repl_auth_method {
                bail!("provided superuser name and replication user name are the same but provided auth methods are different");
            }
            if su_password != repl_password {
                bail!("provided superuser name and replication user name are the same but provided passwords are different");
            }
        }
        let su = RolePassword {
            role: su_username,
            auth: cli.pg_su_auth_method,
            password: Password::new(su_password),
            file: cli.pg_su_passwordfile.clone(),
        };
        let uid = match &cli.uid_prefix {
            Some(prefix) => {
                let pod = std::env::var("POD_NAME").unwrap_or_default();
                match uid_from_pod(prefix, &pod) {
                    Some(uid) => Some(uid),
                    None => bail!(
                        "--uid-prefix needs $POD_NAME to end with a StatefulSet ordinal (like stolon-keeper-0), found {pod:?}"
                    ),
                }
            }
            None => cli.uid.clone(),
        };
        Ok(KeeperConfig {
            uid,
            data_dir: cli.data_dir.clone(),
            advertise_address: cli
                .pg_advertise_address
                .clone()
                .unwrap_or_else(|| cli.pg_listen_address.clone()),
            listen_address: cli.pg_listen_address.clone(),
            port: cli.pg_port,
            advertise_port: cli.pg_advertise_port.unwrap_or(cli.pg_port),
            bin_dir: cli.pg_bin_path.clone(),
            repl: if same_role {
                su.clone()
            } else {
                RolePassword {
                    role: cli.pg_repl_username.clone(),
                    auth: cli.pg_repl_auth_method,
                    password: Password::new(repl_password),
                    file: cli.pg_repl_passwordfile.clone(),
                }
            },
            su,
            repl_tls: replication_tls(cli.pg_repl_sslmode, cli.pg_repl_sslrootcert.as_deref())?,
            can_be_master: cli.can_be_master,
            can_be_synchronous_replica: cli.can_be_synchronous_replica,
            priority: cli.priority,
            run_as,
            cluster_name: cli.common.cluster_name.clone(),
            http: cli.metrics_listen_address,
            store_loss: cli.store_loss,
        })
    }
}

/// `prefix` and the ordinal at the end of a StatefulSet pod's name.
fn uid_from_pod(prefix: &str, pod: &str) -> Option<String> {
    let (_, ordinal) = pod.rsplit_once('-')?;
    let ordinal: u32 = ordinal.parse().ok()?;
    Some(format!("{prefix}{ordinal}"))
}

/// The verify modes check the primary's certificate against a CA, which must be given:
/// libpq would otherwise look in the postgres user's home, a file no one manages.
fn replication_tls(
    mode: SslMode,
    root_cert: Option<&std::path::Path>,
) -> anyhow::Result<ReplicationTls> {
    if mode.verifies() && root_cert.is_none() {
        bail!(
            "--pg-repl-sslmode {} needs --pg-repl-sslrootcert (the CA that signed the primaries' certificates)",
            mode.as_str()
        );
    }
    if let Some(path) = root_cert {
        if !path.is_file() {
            bail!("--pg-repl-sslrootcert {}: no such file", path.display());
        }
    }
    Ok(ReplicationTls {
        mode,
        root_cert: root_cert.map(|p| p.to_string_lossy().into_owned()),
    })
}

/// The password of a user: none with trust (giving one is an error, as it would be silently
/// ignored), required otherwise.
fn password_for(
    what: &str,
    flag: &str,
    method: AuthMethod,
    inline: Option<&str>,
    file: Option<&std::path::Path>,
) -> anyhow::Result<String> {
    if method == AuthMethod::Trust {
        if inline.is_some() || file.is_some() {
            bail!("a {what} password was given with auth method trust, which uses none");
        }
        return Ok(String::new());
    }
    stolon_daemon::read_password(what, flag, inline, file)
}

#[cfg(test)]
mod tests {
    use super::uid_from_pod;

    #[test]
    fn a_statefulset_pod_ordinal_names_the_keeper() {
        assert_eq!(
            uid_from_pod("keeper", "stolon-stolon-keeper-2").as_deref(),
            Some("keeper2")
        );
        assert_eq!(uid_from_pod("k", "x-10").as_deref(), Some("k10"));
        assert_eq!(uid_from_pod("keeper", "stolon-keeper"), None);
        assert_eq!(uid_from_pod("keeper", "keeper-x1"), None);
        assert_eq!(uid_from_pod("keeper", ""), None);
    }
}
