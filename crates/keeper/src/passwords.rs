//! Rotating the superuser's and the replication user's passwords on a live cluster. The
//! keeper rereads the password files every loop. A changed file becomes the password it
//! logs in with, the replaced one staying a fallback until the instance holds the new one.
//! The primary's keeper sets the new password on its role (roles replicate to the
//! standbys); a standby's keeper waits for that. The replication passfile names the
//! password the primary holds: the one a streaming standby holds, the file's otherwise.

use std::path::PathBuf;
use stolon_pg::conf::AuthMethod;
use stolon_pg::probe::{LocalConn, Observed};
use stolon_pg::secret::{verifier_accepts, Password};

/// One role whose password the keeper keeps in step with a file.
#[derive(Debug, Clone)]
pub struct RolePassword {
    pub role: String,
    pub auth: AuthMethod,
    pub password: Password,
    /// Reread every loop; none when the password was given inline (fixed until a restart).
    pub file: Option<PathBuf>,
}

/// What the keeper does for one role, from what its instance stores.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    /// The instance holds the file's password.
    Holds,
    /// A primary that holds another one: set it.
    Set,
    /// A standby that holds another one: its primary sets it, and the change replicates.
    Wait,
}

fn step(stored: Option<&str>, role: &str, current: &str, primary: bool) -> Step {
    if stored.is_some_and(|stored| verifier_accepts(stored, role, current)) {
        Step::Holds
    } else if primary {
        Step::Set
    } else {
        Step::Wait
    }
}

/// The replication password for the passfile of an instance whose role holds `stored`:
/// while its walreceiver streams, the primary holds what it holds (it replays the
/// primary's roles); when it does not, the file's, which the primary's keeper sets.
fn passfile_password(stored: Option<&str>, repl: &RolePassword, streaming: bool) -> String {
    let candidates = repl.password.candidates();
    let held = stored.and_then(|stored| {
        candidates
            .iter()
            .find(|candidate| verifier_accepts(stored, &repl.role, candidate))
    });
    match held {
        Some(held) if streaming => held.clone(),
        _ => repl.password.current(),
    }
}

pub(crate) struct Passwords {
    su: RolePassword,
    /// `None` when the replication user is the superuser.
    repl: Option<RolePassword>,
    /// Whether the instance was found holding every file's password since the keeper
    /// started or a file last changed.
    checked: bool,
    /// The password in the replication passfile.
    passfile: String,
    /// The roles a standby waits for, to log the wait once.
    waiting: Vec<String>,
    unreadable: Vec<PathBuf>,
}

impl Passwords {
    pub fn new(su: RolePassword, repl: RolePassword) -> Passwords {
        let passfile = repl.password.current();
        let repl = (repl.role != su.role).then_some(repl);
        Passwords {
            su,
            repl,
            checked: false,
            passfile,
            waiting: Vec::new(),
            unreadable: Vec::new(),
        }
    }

    /// The replication password to write in the passfile.
    pub fn passfile(&self) -> &str {
        &self.passfile
    }

    fn roles(&self) -> impl Iterator<Item = &RolePassword> {
        std::iter::once(&self.su)
            .chain(self.repl.as_ref())
            .filter(|r| r.auth != AuthMethod::Trust)
    }

    /// While a rotation is under way, brings the instance's roles and the passfile in step
    /// with the files last read. Whether the passfile's password changed.
    pub async fn sync(&mut self, conn: &LocalConn, probe: &Observed) -> bool {
        if self.checked && !self.roles().any(|r| r.password.rotating()) {
            return false;
        }
        let names: Vec<&str> = self.roles().map(|r| r.role.as_str()).collect();
        if names.is_empty() {
            self.checked = true;
            return false;
        }
        let stored = match conn.role_passwords(&names).await {
            Ok(stored) => stored,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the roles' passwords to check them against their files");
                return false;
            }
        };
        let stored_of = |role: &str| {
            stored
                .iter()
                .find(|(name, _)| name == role)
                .and_then(|(_, p)| p.clone())
        };
        let primary = !probe.in_recovery;
        let mut all_held = true;
        let mut repl_held = false;
        let roles: Vec<RolePassword> = self.roles().cloned().collect();
        for role in &roles {
            let stored = stored_of(&role.role);
            let held = match step(
                stored.as_deref(),
                &role.role,
                &role.password.current(),
                primary,
            ) {
                Step::Holds => true,
                Step::Set => self.set(conn, role).await,
                Step::Wait => {
                    if !self.waiting.contains(&role.role) {
                        tracing::info!(role = %role.role, "waiting for the primary to set this role's new password (its file changed); logging in with the previous one meanwhile");
                        self.waiting.push(role.role.clone());
                    }
                    false
                }
            };
            if held {
                if role.password.rotating() {
                    tracing::info!(role = %role.role, "the instance holds this role's new password: the previous one is forgotten");
                }
                role.password.settle();
                self.waiting.retain(|r| r != &role.role);
            }
            all_held &= held;
            if self.repl_role().role == role.role {
                repl_held = held;
            }
        }
        self.checked = all_held;
        let repl = self.repl_role();
        let passfile = if repl.auth == AuthMethod::Trust || repl_held {
            repl.password.current()
        } else {
            passfile_password(
                stored_of(&repl.role).as_deref(),
                repl,
                probe.receiving.is_some(),
            )
        };
        if passfile == self.passfile {
            return false;
        }
        tracing::info!(role = %repl.role, "the replication passfile takes the password the primary holds now");
        self.passfile = passfile;
        true
    }

    fn repl_role(&self) -> &RolePassword {
        self.repl.as_ref().unwrap_or(&self.su)
    }

    async fn set(&self, conn: &LocalConn, role: &RolePassword) -> bool {
        let Some(verifier) = role.auth.verifier(&role.role, &role.password.current()) else {
            return true;
        };
        match conn.set_role_password(&role.role, &verifier).await {
            Ok(()) => {
                tracing::info!(role = %role.role, auth = role.auth.as_hba(), "set this role's password from its file, which changed");
                true
            }
            Err(e) => {
                tracing::warn!(role = %role.role, error = %e, "cannot set this role's new password");
                false
            }
        }
    }

    /// Rereads the files: before the keeper logs in to its instance, which may hold only
    /// the new password already (a standby replays its primary's roles).
    pub fn reread(&mut self) {
        for role in std::iter::once(&self.su).chain(self.repl.as_ref()) {
            let Some(file) = &role.file else { continue };
            match stolon_daemon::read_password_file(file) {
                Ok(password) => {
                    self.unreadable.retain(|f| f != file);
                    if role.password.rotate(&password) {
                        tracing::info!(role = %role.role, file = %file.display(), "the password file changed: logging in with the new password, the previous one kept until the instance holds the new one");
                        self.checked = false;
                    }
                }
                Err(e) => {
                    if !self.unreadable.contains(file) {
                        tracing::warn!(role = %role.role, error = %format!("{e:#}"), "cannot reread the password file: keeping the password read before");
                        self.unreadable.push(file.clone());
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repl(current: &str, previous: Option<&str>) -> RolePassword {
        let password = Password::new(previous.unwrap_or(current));
        password.rotate(current);
        RolePassword {
            role: "repl".into(),
            auth: AuthMethod::ScramSha256,
            password,
            file: None,
        }
    }

    fn scram(password: &str) -> String {
        AuthMethod::ScramSha256.verifier("repl", password).unwrap()
    }

    #[test]
    fn a_primary_sets_a_password_it_does_not_hold_and_a_standby_waits() {
        let old = scram("old");
        assert_eq!(step(Some(&old), "repl", "old", true), Step::Holds);
        assert_eq!(step(Some(&old), "repl", "new", true), Step::Set);
        assert_eq!(step(Some(&old), "repl", "new", false), Step::Wait);
        // A role without a password is given one.
        assert_eq!(step(None, "repl", "new", true), Step::Set);
    }

    #[test]
    fn a_streaming_standby_keeps_the_password_its_primary_still_holds() {
        let rotating = repl("new", Some("old"));
        assert_eq!(
            passfile_password(Some(&scram("old")), &rotating, true),
            "old"
        );
        assert_eq!(
            passfile_password(Some(&scram("new")), &rotating, true),
            "new"
        );
    }

    #[test]
    fn a_standby_that_does_not_stream_tries_the_new_password() {
        // Its own roles may be stale for good: it cannot replay what it cannot receive.
        let rotating = repl("new", Some("old"));
        assert_eq!(
            passfile_password(Some(&scram("old")), &rotating, false),
            "new"
        );
        // Holding neither: the file's.
        assert_eq!(passfile_password(Some(&scram("x")), &rotating, true), "new");
        assert_eq!(passfile_password(None, &rotating, true), "new");
    }
}
