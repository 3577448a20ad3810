//! Role passwords that may be rotated while the keeper runs: the keeper holds the one its
//! file gives now and, until the cluster has taken that one, the one it replaced.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use std::sync::{Arc, RwLock};

/// A role's password, shared by everything that connects with it.
#[derive(Clone, Default)]
pub struct Password(Arc<RwLock<Passwords>>);

#[derive(Default)]
struct Passwords {
    current: String,
    /// The passwords `current` replaced, newest first, while the server may still hold
    /// one of them.
    previous: Vec<String>,
}

/// More rotations than this before the server takes one are not remembered.
const REMEMBERED: usize = 3;

// Never print a password, even in a debug dump.
impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let rotating = !self.0.read().unwrap().previous.is_empty();
        write!(f, "Password {{ rotating: {rotating} }}")
    }
}

impl Password {
    pub fn new(current: impl Into<String>) -> Password {
        Password(Arc::new(RwLock::new(Passwords {
            current: current.into(),
            previous: Vec::new(),
        })))
    }

    pub fn current(&self) -> String {
        self.0.read().unwrap().current.clone()
    }

    pub fn rotating(&self) -> bool {
        !self.0.read().unwrap().previous.is_empty()
    }

    /// The passwords to try, the current one first.
    pub fn candidates(&self) -> Vec<String> {
        let p = self.0.read().unwrap();
        std::iter::once(&p.current)
            .chain(&p.previous)
            .cloned()
            .collect()
    }

    /// Takes `new` as the current password, keeping the one it replaces until the server
    /// holds the new one. Whether it changed anything.
    pub fn rotate(&self, new: &str) -> bool {
        let mut p = self.0.write().unwrap();
        if p.current == new {
            return false;
        }
        let replaced = std::mem::replace(&mut p.current, new.to_string());
        p.previous.retain(|old| old != new && old != &replaced);
        p.previous.insert(0, replaced);
        p.previous.truncate(REMEMBERED);
        true
    }

    /// The server holds the current password: the others are of no more use.
    pub fn settle(&self) {
        self.0.write().unwrap().previous.clear();
    }
}

/// Whether a role's stored password (`pg_authid.rolpassword`: an md5 hash or a SCRAM
/// verifier) accepts `password`: the check the server makes at login, done here so the
/// keeper can tell which password a server holds without logging in as every role.
pub fn verifier_accepts(stored: &str, user: &str, password: &str) -> bool {
    if stored.starts_with("md5") {
        return stored == postgres_protocol::password::md5(password.as_bytes(), user);
    }
    scram_accepts(stored, password).unwrap_or(false)
}

/// `SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>` (RFC 5803), checked as
/// RFC 5802 says: StoredKey = H(HMAC(Hi(password, salt, i), "Client Key")).
fn scram_accepts(stored: &str, password: &str) -> Option<bool> {
    let rest = stored.strip_prefix("SCRAM-SHA-256$")?;
    let (params, keys) = rest.split_once('$')?;
    let (iterations, salt) = params.split_once(':')?;
    let (stored_key, _server_key) = keys.split_once(':')?;
    let iterations: u32 = iterations.parse().ok()?;
    let salt = STANDARD.decode(salt).ok()?;
    let stored_key = STANDARD.decode(stored_key).ok()?;
    // As the server: SASLprep when the password allows it, its bytes as they are otherwise.
    let prepared = stringprep::saslprep(password)
        .map(|p| p.into_owned())
        .unwrap_or_else(|_| password.to_string());
    let salted = hi(prepared.as_bytes(), &salt, iterations);
    let client_key = hmac(&salted, b"Client Key");
    Some(Sha256::digest(client_key).as_slice() == stored_key.as_slice())
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any size");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

/// PBKDF2 with HMAC-SHA-256, one block: SCRAM's Hi().
fn hi(password: &[u8], salt: &[u8], iterations: u32) -> [u8; 32] {
    let mut block = salt.to_vec();
    block.extend_from_slice(&1u32.to_be_bytes());
    let mut u = hmac(password, &block);
    let mut out = u;
    for _ in 1..iterations {
        u = hmac(password, &u);
        for (o, x) in out.iter_mut().zip(u) {
            *o ^= x;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scram_verifier_accepts_its_password_only() {
        let stored = postgres_protocol::password::scram_sha_256(b"s3cret: new");
        assert!(verifier_accepts(&stored, "repl", "s3cret: new"));
        assert!(!verifier_accepts(&stored, "repl", "s3cret: old"));
    }

    #[test]
    fn an_md5_hash_accepts_its_password_for_its_user_only() {
        let stored = postgres_protocol::password::md5(b"pw", "repl");
        assert!(verifier_accepts(&stored, "repl", "pw"));
        assert!(!verifier_accepts(&stored, "repl", "other"));
        assert!(!verifier_accepts(&stored, "su", "pw"));
    }

    #[test]
    fn what_is_not_a_verifier_accepts_nothing() {
        for stored in ["", "SCRAM-SHA-256$x", "SCRAM-SHA-256$4096:!!$a:b", "plain"] {
            assert!(!verifier_accepts(stored, "u", "plain"), "{stored}");
        }
    }

    #[test]
    fn a_rotation_keeps_what_the_server_may_still_hold() {
        let password = Password::new("one");
        assert!(!password.rotate("one"));
        assert!(password.rotate("two"));
        assert_eq!(password.candidates(), ["two", "one"]);
        // A second change before the first was taken: the server holds one of the others.
        assert!(password.rotate("three"));
        assert_eq!(password.candidates(), ["three", "two", "one"]);
        // Back to one: it is tried first, and once only.
        assert!(password.rotate("one"));
        assert_eq!(password.candidates(), ["one", "three", "two"]);
        assert!(password.rotating());
        password.settle();
        assert_eq!(password.candidates(), ["one"]);
        assert_eq!(format!("{password:?}"), "Password { rotating: false }");
    }
}
