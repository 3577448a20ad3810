//! PostgreSQL's programs with one of them replaced, for fault injection: one that always
//! fails, or one that is slow to start its work.

use crate::pg_bin_dir;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A copy of PostgreSQL's bin directory in `dir` where `program` always fails: the others
/// are links to the real ones.
pub fn failing_pg_bin_dir(dir: &Path, program: &str) -> PathBuf {
    pg_bin_dir_with(
        dir,
        program,
        &format!("echo \"{program}: fault injected by the test\" >&2\nexit 1"),
    )
}

/// PostgreSQL's programs, `program` taking `delay` more than usual to start its work.
pub fn slow_pg_bin_dir(dir: &Path, program: &str, delay: Duration) -> PathBuf {
    let real = pg_bin_dir().join(program);
    pg_bin_dir_with(
        dir,
        program,
        &format!("sleep {}\nexec {} \"$@\"", delay.as_secs(), real.display()),
    )
}

/// PostgreSQL's programs in `dir`, `program` replaced by a shell script running `body`.
fn pg_bin_dir_with(dir: &Path, program: &str, body: &str) -> PathBuf {
    let real = pg_bin_dir();
    std::fs::create_dir_all(dir).unwrap();
    for entry in std::fs::read_dir(&real).unwrap().flatten() {
        let name = entry.file_name();
        if name != program {
            std::os::unix::fs::symlink(entry.path(), dir.join(&name)).unwrap();
        }
    }
    let fake = dir.join(program);
    std::fs::write(&fake, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_path_buf()
}
