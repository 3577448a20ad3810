//! The PostgreSQL programs the keeper runs, with timeouts and captured output.

use crate::conf::AuthMethod;
use crate::PgError;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;
use tokio::process::Command;

/// The OS identity PostgreSQL runs as when the keeper itself runs as root: PostgreSQL
/// refuses to run as root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OsUser {
    pub uid: u32,
    pub gid: u32,
}

impl OsUser {
    pub fn lookup(name: &str) -> Option<OsUser> {
        let user = nix::unistd::User::from_name(name).ok().flatten()?;
        Some(OsUser {
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        })
    }
}

/// One instance's programs and data directory.
#[derive(Debug, Clone)]
pub struct PgCtl {
    pub bin_dir: Option<PathBuf>,
    pub pgdata: PathBuf,
    pub log_file: PathBuf,
    pub run_as: Option<OsUser>,
}

/// initdb's options for a new cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InitOptions {
    /// How the superuser authenticates: also how initdb stores its password.
    pub su_auth: AuthMethod,
    pub locale: Option<String>,
    pub encoding: Option<String>,
    pub data_checksums: bool,
}

/// Credentials for an upstream connection.
#[derive(Debug, Clone)]
pub struct Upstream<'a> {
    pub host: &'a str,
    pub port: u16,
    pub user: &'a str,
    pub password: &'a str,
    pub tls: &'a crate::conf::ReplicationTls,
}

impl PgCtl {
    fn program(&self, name: &str) -> PathBuf {
        match &self.bin_dir {
            Some(dir) => dir.join(name),
            None => PathBuf::from(name),
        }
    }

    fn command(&self, name: &str) -> Command {
        self.command_for(self.program(name))
    }

    /// `program` run as PostgreSQL's OS user, with a clean libpq environment.
    fn command_for(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .env_remove("PGDATA")
            .env_remove("PGHOST")
            .env_remove("PGPORT")
            .env_remove("PGUSER")
            .env_remove("PGPASSWORD")
            .env("LC_ALL", "C");
        if let Some(user) = self.run_as {
            cmd.uid(user.uid).gid(user.gid);
            // HOME of root is not readable by the postgres user; libpq looks there.
            cmd.env("HOME", &self.pgdata);
        }
        cmd
    }

    async fn run(
        &self,
        mut cmd: Command,
        tool: &str,
        timeout: Duration,
    ) -> Result<String, PgError> {
        let child = cmd
            .spawn()
            .map_err(PgError::io(format!("spawning {tool}")))?;
        let out = tokio::time::timeout(timeout, child.wait_with_output())
            .await
            .map_err(|_| PgError::Timeout {
                tool: tool.to_string(),
                timeout,
            })?
            .map_err(PgError::io(format!("waiting for {tool}")))?;
        if !out.status.success() {
            return Err(PgError::Tool {
                tool: tool.to_string(),
                status: out.status.to_string(),
                code: out.status.code(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Gives a path to the OS user PostgreSQL runs as.
    pub fn chown(&self, path: &Path) -> Result<(), PgError> {
        if let Some(user) = self.run_as {
            std::os::unix::fs::chown(path, Some(user.uid), Some(user.gid))
                .map_err(PgError::io(format!("chown {}", path.display())))?;
        }
        Ok(())
    }

    /// A private file only PostgreSQL's OS user can read; removed when dropped.
    fn secret_file(&self, dir: &Path, name: &str, content: &str) -> Result<SecretFile, PgError> {
        let path = dir.join(name);
        let _ = std::fs::remove_file(&path);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&path)
            .map_err(PgError::io(format!("creating {}", path.display())))?;
        f.write_all(content.as_bytes())
            .map_err(PgError::io(format!("writing {}", path.display())))?;
        self.chown(&path)?;
        Ok(SecretFile(path))
    }

    /// An empty data directory with the permissions PostgreSQL insists on. Whatever was
    /// there is removed: callers only get here when the cluster data asks for a new db.
    pub fn wipe_and_create_pgdata(&self) -> Result<(), PgError> {
        if self.pgdata.exists() {
            std::fs::remove_dir_all(&self.pgdata)
                .map_err(PgError::io(format!("removing {}", self.pgdata.display())))?;
        }
        std::fs::create_dir_all(&self.pgdata)
            .map_err(PgError::io(format!("creating {}", self.pgdata.display())))?;
        self.secure_pgdata()
    }

    /// Gives the data directory the mode and owner PostgreSQL insists on.
    pub fn secure_pgdata(&self) -> Result<(), PgError> {
        std::fs::set_permissions(&self.pgdata, std::fs::Permissions::from_mode(0o700))
            .map_err(PgError::io("chmod pgdata"))?;
        self.chown(&self.pgdata)
    }

    pub fn is_initialized(&self) -> bool {
        self.pgdata.join("PG_VERSION").exists() && self.pgdata.join("global").is_dir()
    }

    pub fn has_standby_signal(&self) -> bool {
        self.pgdata.join("standby.signal").exists()
    }

    /// A new cluster: superuser `su` with its password (through a private file, never on
    /// the command line), and the locale, encoding and data checksums asked for.
    pub async fn initdb(
        &self,
        su: &str,
        su_password: &str,
        options: &InitOptions,
        timeout: Duration,
    ) -> Result<(), PgError> {
        let scratch = self.pgdata.parent().unwrap_or(Path::new("/tmp"));
        let mut cmd = self.command("initdb");
        cmd.arg("-D").arg(&self.pgdata).arg("-U").arg(su);
        // The keeper replaces initdb's pg_hba.conf before the first start.
        let _pwfile = if su_password.is_empty() {
            cmd.arg("--auth=trust");
            None
        } else {
            let pwfile = self.secret_file(scratch, ".initdb-pwfile", su_password)?;
            cmd.arg("--pwfile")
                .arg(&pwfile.0)
                .arg(format!("--auth={}", options.su_auth.as_hba()));
            Some(pwfile)
        };
        if let Some(locale) = &options.locale {
            cmd.arg("--locale").arg(locale);
        }
        if let Some(encoding) = &options.encoding {
            cmd.arg("--encoding").arg(encoding);
        }
        if options.data_checksums {
            cmd.arg("--data-checksums");
        }
        self.run(cmd, "initdb", timeout).await.map(drop)
    }

    /// Copies the upstream's data directory through `slot`, leaving a standby ready to
    /// start (`standby.signal` written by `-R`).
    pub async fn basebackup(
        &self,
        from: &Upstream<'_>,
        slot: &str,
        timeout: Duration,
    ) -> Result<(), PgError> {
        let scratch = self.pgdata.parent().unwrap_or(Path::new("/tmp"));
        let passfile = self.secret_file(
            scratch,
            ".basebackup-pgpass",
            &pgpass_line(from.user, from.password),
        )?;
        let mut cmd = self.command("pg_basebackup");
        cmd.env("PGPASSFILE", &passfile.0)
            .arg("-D")
            .arg(&self.pgdata)
            .arg("-d")
            .arg(format!(
                "host={} port={} user={} {} {}",
                from.host,
                from.port,
                from.user,
                from.tls.conninfo(),
                crate::conf::DEAD_UPSTREAM_PARAMS
            ))
            .arg("-X")
            .arg("stream")
            .arg("-S")
            .arg(slot)
            .arg("-c")
            .arg("fast")
            .arg("-R")
            .arg("-w");
        self.run(cmd, "pg_basebackup", timeout)
            .await
            .map(drop)
            .map_err(|e| match e {
                PgError::Tool { stderr, .. } if names_missing_slot(&stderr, slot) => {
                    PgError::MissingSlot {
                        slot: slot.to_string(),
                        stderr,
                    }
                }
                other => other,
            })
    }

    /// `pg_ctl <action> -D <pgdata>`, waiting up to `timeout` for the action to complete.
    fn pg_ctl(&self, action: &str, timeout: Duration) -> Command {
        let mut cmd = self.command("pg_ctl");
        cmd.arg(action)
            .arg("-w")
            .arg("-t")
            .arg(timeout.as_secs().max(1).to_string())
            .arg("-D")
            .arg(&self.pgdata);
        cmd
    }

    /// Rewinds a stopped data directory that diverged from `source` (a primary of the same
    /// system) so that it can follow it. pg_rewind recovers an uncleanly stopped target
    /// first, and copies the source's configuration files: the caller rewrites them.
    pub async fn rewind(&self, source: &Upstream<'_>, timeout: Duration) -> Result<(), PgError> {
        let scratch = self.pgdata.parent().unwrap_or(Path::new("/tmp"));
        let passfile = self.secret_file(
            scratch,
            ".rewind-pgpass",
            &pgpass_line(source.user, source.password),
        )?;
        let mut cmd = self.command("pg_rewind");
        cmd.env("PGPASSFILE", &passfile.0)
            .arg("-D")
            .arg(&self.pgdata)
            .arg(format!(
                "--source-server=host={} port={} user={} dbname=postgres {} {}",
                source.host,
                source.port,
                source.user,
                source.tls.conninfo(),
                crate::conf::DEAD_UPSTREAM_PARAMS
            ));
        if let Some(dir) = &self.bin_dir {
            // pg_rewind starts `postgres --single` to recover the target: same version.
            cmd.env(
                "PATH",
                format!(
                    "{}:{}",
                    dir.display(),
                    std::env::var("PATH").unwrap_or_default()
                ),
            );
        }
        self.run(cmd, "pg_rewind", timeout).await.map(drop)
    }

    /// Makes `ALTER SYSTEM` fail: its file becomes a link to /dev/null, which PostgreSQL
    /// reads as empty and cannot replace (it fsyncs the old file first, and /dev/null
    /// refuses). The keeper owns the whole configuration.
    /// Where a standby's replication connection finds its password: beside the data
    /// directory, so that no backup or copy of it carries the password along.
    pub fn replication_passfile(&self) -> PathBuf {
        self.pgdata
            .parent()
            .unwrap_or(Path::new("/tmp"))
            .join("replication.pgpass")
    }

    /// Writes the replication password file (mode 0600, owned by the postgres user) when
    /// it does not already hold `user`'s `password`.
    pub fn write_replication_passfile(&self, user: &str, password: &str) -> Result<(), PgError> {
        let path = self.replication_passfile();
        let line = pgpass_line(user, password);
        if std::fs::read_to_string(&path).is_ok_and(|now| now == line) {
            return Ok(());
        }
        let dir = path.parent().unwrap_or(Path::new("/tmp"));
        let written = self.secret_file(dir, ".replication.pgpass.tmp", &line)?;
        std::fs::rename(&written.0, &path)
            .map_err(PgError::io(format!("renaming to {}", path.display())))
    }

    pub fn block_alter_system(&self) -> Result<(), PgError> {
        let path = self.pgdata.join("postgresql.auto.conf");
        if self.alter_system_blocked() {
            return Ok(());
        }
        self.remove_file("postgresql.auto.conf")?;
        std::os::unix::fs::symlink("/dev/null", &path)
            .map_err(PgError::io("linking postgresql.auto.conf to /dev/null"))
    }

    pub fn alter_system_blocked(&self) -> bool {
        std::fs::read_link(self.pgdata.join("postgresql.auto.conf"))
            .is_ok_and(|target| target == Path::new("/dev/null"))
    }

    /// The system identifier in the control file (its first field), as PostgreSQL prints it.
    pub fn system_id(&self) -> Option<String> {
        let bytes = std::fs::read(self.pgdata.join("global/pg_control")).ok()?;
        let id: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
        Some(u64::from_le_bytes(id).to_string())
    }

    /// Where a cleanly stopped instance's WAL ends: its shutdown checkpoint's timeline and
    /// location (`pg_controldata`). None when the instance did not shut down cleanly.
    pub async fn shutdown_checkpoint(
        &self,
        timeout: Duration,
    ) -> Result<Option<(u32, String)>, PgError> {
        let mut cmd = self.command("pg_controldata");
        cmd.arg(&self.pgdata);
        let out = self.run(cmd, "pg_controldata", timeout).await?;
        Ok(parse_shutdown_checkpoint(&out))
    }

    pub async fn start(&self, timeout: Duration) -> Result<(), PgError> {
        // A volume mounted with an fsGroup (Kubernetes) comes back group-writable at each
        // mount, and PostgreSQL refuses to start on such a directory.
        self.secure_pgdata()?;
        let mut cmd = self.pg_ctl("start", timeout);
        cmd.arg("-l")
            .arg(&self.log_file)
            // pg_ctl's own stdout would keep our pipe open for the postmaster's lifetime.
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        self.run(cmd, "pg_ctl start", timeout + Duration::from_secs(5))
            .await
            .map_err(|e| match e {
                PgError::Tool {
                    tool, status, code, ..
                } => PgError::Tool {
                    tool,
                    status,
                    code,
                    stderr: self.log_tail(),
                },
                other => other,
            })
            .map(drop)
    }

    /// The last lines PostgreSQL logged, to explain a failed start.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_file).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    }

    /// A fast shutdown: every session ends at once, then a shutdown checkpoint.
    pub async fn stop(&self, timeout: Duration) -> Result<(), PgError> {
        self.stop_in_mode("fast", timeout).await
    }

    /// An immediate shutdown: every process exits at once, without a checkpoint; the next
    /// start recovers from the WAL. For when a fast one hangs: its walsenders wait to send
    /// the shutdown checkpoint to standbys that a partition made unreachable.
    pub async fn stop_immediately(&self, timeout: Duration) -> Result<(), PgError> {
        self.stop_in_mode("immediate", timeout).await
    }

    async fn stop_in_mode(&self, mode: &str, timeout: Duration) -> Result<(), PgError> {
        let mut cmd = self.pg_ctl("stop", timeout);
        cmd.arg("-m").arg(mode);
        match self
            .run(cmd, "pg_ctl stop", timeout + Duration::from_secs(5))
            .await
        {
            Ok(_) => Ok(()),
            // A postmaster that died without removing its pid file makes pg_ctl fail; what
            // matters is that nothing runs any more.
            Err(e) => match self.is_running(timeout).await {
                Ok(false) => Ok(()),
                _ => Err(e),
            },
        }
    }

    pub async fn promote(&self, timeout: Duration) -> Result<(), PgError> {
        let cmd = self.pg_ctl("promote", timeout);
        self.run(cmd, "pg_ctl promote", timeout + Duration::from_secs(5))
            .await
            .map(drop)
    }

    pub async fn reload(&self, timeout: Duration) -> Result<(), PgError> {
        let mut cmd = self.command("pg_ctl");
        cmd.arg("reload").arg("-D").arg(&self.pgdata);
        self.run(cmd, "pg_ctl reload", timeout).await.map(drop)
    }

    /// Whether a postmaster runs on this data directory (`pg_ctl status`).
    pub async fn is_running(&self, timeout: Duration) -> Result<bool, PgError> {
        if !self.pgdata.join("postmaster.pid").exists() {
            return Ok(false);
        }
        let mut cmd = self.command("pg_ctl");
        cmd.arg("status").arg("-D").arg(&self.pgdata);
        match self.run(cmd, "pg_ctl status", timeout).await {
            Ok(_) => Ok(true),
            // pg_ctl's documented answer for "no server running".
            Err(PgError::Tool { code: Some(3), .. }) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Returns once the postmaster that runs now has exited (crash, kill or stop), so that
    /// the keeper reports it at once instead of at its next loop.
    pub async fn wait_for_exit(&self) {
        let pid = self
            .read_file("postmaster.pid")
            .and_then(|text| text.lines().next()?.trim().parse::<u32>().ok());
        let Some(pid) = pid else {
            return;
        };
        loop {
            tokio::time::sleep(EXIT_POLL).await;
            // Gone, or a zombie waiting for its parent: either way it serves no one.
            match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
                Ok(stat)
                    if !stat
                        .rsplit(')')
                        .next()
                        .unwrap_or("")
                        .trim_start()
                        .starts_with('Z') => {}
                _ => return,
            }
        }
    }

    /// Runs an operator's shell command (a `dataRestoreCommand`, say) as PostgreSQL's OS
    /// user, waiting up to `timeout` (None: as long as it takes).
    pub async fn run_shell(
        &self,
        script: &str,
        what: &str,
        timeout: Option<Duration>,
    ) -> Result<(), PgError> {
        let mut cmd = self.command_for("/bin/sh");
        cmd.arg("-c").arg(script);
        self.run(cmd, what, timeout.unwrap_or(Duration::MAX))
            .await
            .map(drop)
    }

    /// Whether PostgreSQL still has archive recovery to do (`recovery.signal`).
    pub fn has_recovery_signal(&self) -> bool {
        self.pgdata.join("recovery.signal").exists()
    }

    /// Writes a file PostgreSQL reads, owned by its OS user.
    pub fn write_file(&self, name: &str, content: &str) -> Result<(), PgError> {
        let path = self.pgdata.join(name);
        let tmp = self.pgdata.join(format!(".{name}.tmp"));
        std::fs::write(&tmp, content).map_err(PgError::io(format!("writing {}", tmp.display())))?;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
            .map_err(PgError::io("chmod"))?;
        self.chown(&tmp)?;
        std::fs::rename(&tmp, &path).map_err(PgError::io(format!("renaming {}", path.display())))
    }

    pub fn read_file(&self, name: &str) -> Option<String> {
        std::fs::read_to_string(self.pgdata.join(name)).ok()
    }

    pub fn remove_file(&self, name: &str) -> Result<(), PgError> {
        match std::fs::remove_file(self.pgdata.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(PgError::io(format!("removing {name}"))(e))
            }
            _ => Ok(()),
        }
    }
}

/// How often the keeper looks for its postmaster's exit: cheap (one small /proc read).
const EXIT_POLL: Duration = Duration::from_millis(100);

fn parse_shutdown_checkpoint(controldata: &str) -> Option<(u32, String)> {
    let field = |name: &str| {
        controldata
            .lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    // A standby stopped cleanly says "shut down in recovery": its WAL may go on elsewhere.
    if field("Database cluster state")? != "shut down" {
        return None;
    }
    let timeline = field("Latest checkpoint's TimeLineID")?.parse().ok()?;
    Some((timeline, field("Latest checkpoint location")?.to_string()))
}

struct SecretFile(PathBuf);

/// A password file's line for `user` on any server (its `:` and `\` escaped).
fn pgpass_line(user: &str, password: &str) -> String {
    let escape = |field: &str| field.replace('\\', "\\\\").replace(':', "\\:");
    format!("*:*:*:{}:{}\n", escape(user), escape(password))
}

impl Drop for SecretFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Whether pg_basebackup's complaint is that the server has no slot `slot`: the server's
/// own error, `replication slot "NAME" does not exist`, which pg_basebackup passes on.
fn names_missing_slot(stderr: &str, slot: &str) -> bool {
    stderr.contains(&format!("replication slot \"{slot}\" does not exist"))
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_missing_slot_is_told_apart_from_other_failures_of_pg_basebackup() {
        let said = "pg_basebackup: error: could not send replication command \"START_REPLICATION\": ERROR:  replication slot \"stolon_db1\" does not exist";
        assert!(super::names_missing_slot(said, "stolon_db1"));
        assert!(!super::names_missing_slot(said, "stolon_db2"));
        assert!(!super::names_missing_slot(
            "pg_basebackup: error: connection to server failed: Connection refused",
            "stolon_db1"
        ));
    }

    use super::{parse_shutdown_checkpoint, pgpass_line};

    #[test]
    fn a_password_file_line_escapes_its_separators() {
        assert_eq!(pgpass_line("repl", "plain"), "*:*:*:repl:plain\n");
        assert_eq!(pgpass_line("re:pl", r"a:b\c"), "*:*:*:re\\:pl:a\\:b\\\\c\n");
    }

    const STOPPED: &str = "pg_control version number:            1300
Database cluster state:               shut down
Latest checkpoint location:           0/3000028
Latest checkpoint's REDO location:    0/3000028
Latest checkpoint's TimeLineID:       2
";

    #[test]
    fn reads_the_shutdown_checkpoint_of_a_cleanly_stopped_primary() {
        assert_eq!(
            parse_shutdown_checkpoint(STOPPED),
            Some((2, "0/3000028".to_string()))
        );
    }

    #[test]
    fn no_shutdown_checkpoint_after_a_crash_or_for_a_standby() {
        for state in [
            "in production",
            "shut down in recovery",
            "in crash recovery",
        ] {
            let text = STOPPED.replace("shut down\n", &format!("{state}\n"));
            assert_eq!(parse_shutdown_checkpoint(&text), None, "{state}");
        }
        assert_eq!(parse_shutdown_checkpoint("garbage"), None);
    }
}
