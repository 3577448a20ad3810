//! `stolon-dist man DIR` writes a manual page per program (section 1), `stolon-dist
//! completions DIR` their bash, zsh and fish completions: generated from the same
//! command lines the programs parse, environment variables included, so they cannot
//! drift from the flags. The packages (scripts/package-deb.sh) install them.

use anyhow::{bail, Context};
use clap::Command;
use clap_complete::Shell;
use std::path::{Path, PathBuf};

/// Every program, as its command line with its environment variables.
fn programs() -> Vec<Command> {
    use stolon_daemon::command_with_env;
    vec![
        command_with_env::<stolon_keeper::cli::Cli>(stolon_keeper::cli::ENV_PREFIX),
        command_with_env::<stolon_sentinel::cli::Cli>(stolon_sentinel::cli::ENV_PREFIX),
        command_with_env::<stolon_proxy::cli::Cli>(stolon_proxy::cli::ENV_PREFIX),
        command_with_env::<stolon_ctl::cli::Cli>(stolon_ctl::cli::ENV_PREFIX),
    ]
}

/// One page per program and one per stolonctl subcommand (`stolonctl-status.1`), as
/// `man stolonctl status` expects.
fn write_man_pages(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for cmd in programs() {
        let cmd = cmd.version(env!("CARGO_PKG_VERSION"));
        written.push(write_page(dir, &cmd, cmd.get_name())?);
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            let name = format!("{}-{}", cmd.get_name(), sub.get_name());
            let sub = sub.clone().name(name.clone());
            written.push(write_page(dir, &sub, &name)?);
        }
    }
    Ok(written)
}

fn write_page(dir: &Path, cmd: &Command, name: &str) -> anyhow::Result<PathBuf> {
    let mut page = Vec::new();
    clap_mangen::Man::new(cmd.clone())
        .render(&mut page)
        .with_context(|| format!("rendering the manual page of {name}"))?;
    let path = dir.join(format!("{name}.1"));
    std::fs::write(&path, page).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// `<dir>/bash/<program>`, `<dir>/zsh/_<program>`, `<dir>/fish/<program>.fish`: the file
/// names each shell's completion directory expects.
fn write_completions(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut written = Vec::new();
    for mut cmd in programs() {
        let name = cmd.get_name().to_string();
        for (shell, file) in [
            (Shell::Bash, name.clone()),
            (Shell::Zsh, format!("_{name}")),
            (Shell::Fish, format!("{name}.fish")),
        ] {
            let shell_dir = dir.join(shell.to_string());
            std::fs::create_dir_all(&shell_dir)
                .with_context(|| format!("creating {}", shell_dir.display()))?;
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut cmd, &name, &mut script);
            let path = shell_dir.join(file);
            std::fs::write(&path, script).with_context(|| format!("writing {}", path.display()))?;
            written.push(path);
        }
    }
    Ok(written)
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (what, dir) = match args.as_slice() {
        [what, dir] => (what.as_str(), PathBuf::from(dir)),
        _ => bail!("usage: stolon-dist man|completions DIR"),
    };
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let written = match what {
        "man" => write_man_pages(&dir)?,
        "completions" => write_completions(&dir)?,
        other => bail!("unknown {other:?}: stolon-dist man|completions DIR"),
    };
    for path in written {
        println!("{}", path.display());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_program_has_a_page_naming_its_flags_and_their_environment_variables() {
        let dir = tempfile::tempdir().unwrap();
        let pages = write_man_pages(dir.path()).unwrap();
        let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
        let keeper = read("stolon-keeper.1");
        assert!(keeper.contains("pg\\-su\\-passwordfile"), "{keeper}");
        assert!(keeper.contains("STKEEPER_DATA_DIR"), "{keeper}");
        assert!(read("stolon-sentinel.1").contains("STSENTINEL_STORE_ENDPOINTS"));
        assert!(read("stolon-proxy.1").contains("STPROXY_LISTEN_ADDRESS"));
        assert!(read("stolonctl.1").contains("STOLONCTL_CLUSTER_NAME"));
        let status = read("stolonctl-status.1");
        assert!(status.contains("STOLONCTL_FORMAT"), "{status}");
        assert!(pages.len() > 4 + 5, "{pages:?}");
    }

    #[test]
    fn each_program_completes_in_three_shells() {
        let dir = tempfile::tempdir().unwrap();
        write_completions(dir.path()).unwrap();
        for program in [
            "stolon-keeper",
            "stolon-sentinel",
            "stolon-proxy",
            "stolonctl",
        ] {
            let bash = std::fs::read_to_string(dir.path().join("bash").join(program)).unwrap();
            assert!(bash.contains("--store-endpoints"), "{program}: {bash}");
            assert!(dir.path().join("zsh").join(format!("_{program}")).exists());
            assert!(dir
                .path()
                .join("fish")
                .join(format!("{program}.fish"))
                .exists());
        }
        let ctl = std::fs::read_to_string(dir.path().join("bash/stolonctl")).unwrap();
        assert!(ctl.contains("switchover"), "{ctl}");
    }
}
