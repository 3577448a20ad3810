//! Plumbing shared by every binary, and nothing else: the common flags and their
//! environment variables, logging setup, the store connection, shutdown on signals, secrets
//! read from files, random identities, logging the engine's events, and the HTTP endpoint
//! for metrics and health checks ([`http`], [`metrics`]).

pub mod http;
pub mod metrics;

use anyhow::{bail, Context};
use clap::{ArgMatches, Args, Command, FromArgMatches, ValueEnum};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use stolon_cluster::GoDuration;
use stolon_store::Store;
use stolon_store_etcd::{EtcdAccess, EtcdStore, TlsFiles};
use stolon_store_k8s::{KubeOptions, KubeStore};
use tokio_util::sync::CancellationToken;

/// Flags every binary takes.
#[derive(Debug, Clone, Args)]
pub struct CommonArgs {
    /// Name of the cluster; several clusters can share a store.
    #[arg(long)]
    pub cluster_name: String,
    /// Store backend: etcdv3, or kubernetes (the API server of the cluster the program
    /// runs in, or of its kubeconfig; etcd v2 and consul are not supported).
    #[arg(long)]
    pub store_backend: String,
    /// With --store-backend kubernetes: the kind of object holding the cluster data (only
    /// configmap).
    #[arg(long)]
    pub kube_resource_kind: Option<String>,
    /// Comma separated store endpoints.
    #[arg(long, value_delimiter = ',', default_value = "http://127.0.0.1:2379")]
    pub store_endpoints: Vec<String>,
    /// Base path of the cluster's keys in the store (used exactly as given).
    #[arg(long, default_value = "stolon/cluster")]
    pub store_prefix: String,
    /// Timeout of each store request.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    pub store_timeout: Duration,
    /// With https:// etcd endpoints: the CA that signed the members' certificates (the
    /// system's CAs without it). Read again at each new connection.
    #[arg(long)]
    pub store_ca_file: Option<std::path::PathBuf>,
    /// The client certificate for etcd members that ask for one (--client-cert-auth).
    #[arg(long)]
    pub store_cert_file: Option<std::path::PathBuf>,
    /// The client certificate's private key.
    #[arg(long)]
    pub store_key: Option<std::path::PathBuf>,
    /// Accept any certificate from etcd: the traffic is encrypted, but anyone on the path
    /// can pose as the store.
    #[arg(long)]
    pub store_skip_tls_verify: bool,
    /// An etcd user, for members with authentication enabled (not in Stolon).
    #[arg(long)]
    pub store_username: Option<String>,
    /// The etcd user's password (not in Stolon); prefer --store-passwordfile.
    #[arg(long)]
    pub store_password: Option<String>,
    /// A file holding the etcd user's password (not in Stolon).
    #[arg(long)]
    pub store_passwordfile: Option<std::path::PathBuf>,
    /// debug, info, warn or error.
    #[arg(long, default_value = "info")]
    pub log_level: LogLevel,
    /// How to reach the Kubernetes API server: stolonctl's own flags; the daemons find it as
    /// kubectl does ($KUBECONFIG, ~/.kube/config, or their pod's service account).
    #[arg(skip)]
    pub kube_client: KubeClientArgs,
}

/// stolonctl's flags for the Kubernetes API server (Stolon's names).
#[derive(Debug, Clone, Default, Args)]
pub struct KubeClientArgs {
    /// Path of the kubeconfig file (default: $KUBECONFIG, then ~/.kube/config, then the
    /// pod's service account).
    #[arg(long)]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// The kubeconfig context to use.
    #[arg(long)]
    pub kube_context: Option<String>,
    /// The namespace of the cluster's objects (default: the context's, or $POD_NAMESPACE
    /// in a pod).
    #[arg(long)]
    pub kube_namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum LogLevel {
    Debug,
    Info,
    Warn,
    Error,
}

/// Go-style durations ("5s", "1m30s"), as in the cluster spec.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    GoDuration::parse(text).map(|d| d.0)
}

/// The whole `main` of a daemon: flags (with `env_prefix`), logging at the level the flags
/// choose, a tokio runtime for `run`, and exit code 1 with one log line if it fails.
pub fn daemon_main<C, Fut>(
    env_prefix: &str,
    log_level: impl FnOnce(&C) -> LogLevel,
    run: impl FnOnce(C) -> Fut,
) where
    C: FromArgMatches + clap::CommandFactory,
    Fut: std::future::Future<Output = anyhow::Result<()>>,
{
    let cli: C = parse_with_env_prefix(env_prefix);
    init_tracing(log_level(&cli));
    raise_open_files_limit();
    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    if let Err(e) = runtime.block_on(run(cli)) {
        tracing::error!("{e:#}");
        std::process::exit(1);
    }
}

/// Every client connection costs the proxy two descriptors: take all the system allows
/// rather than the usual soft limit of 1024.
fn raise_open_files_limit() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard) {
                tracing::warn!(error = %e, soft, hard, "cannot raise the open files limit");
            }
        }
    }
}

/// Parses the command line of a binary whose every long flag can also come from the
/// environment as `<PREFIX>_<FLAG_NAME>` (for example `STKEEPER_DATA_DIR`); the command
/// line wins.
pub fn parse_with_env_prefix<T: FromArgMatches + clap::CommandFactory>(prefix: &str) -> T {
    let matches: ArgMatches = command_with_env::<T>(prefix).get_matches();
    T::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

/// The command line of `T`, each flag also read from `<prefix>_<FLAG>`: what the program
/// parses, and what its manual page and shell completions describe.
pub fn command_with_env<T: clap::CommandFactory>(prefix: &str) -> Command {
    env_prefixed(T::command(), prefix)
}

fn env_prefixed(cmd: Command, prefix: &str) -> Command {
    let cmd = cmd.mut_args(|arg| match arg.get_long() {
        Some(long) if long != "help" && long != "version" => {
            let name = format!("{prefix}_{}", long.to_uppercase().replace('-', "_"));
            arg.env(name)
        }
        _ => arg,
    });
    let subs: Vec<String> = cmd
        .get_subcommands()
        .map(|s| s.get_name().to_string())
        .collect();
    subs.into_iter().fold(cmd, |cmd, name| {
        cmd.mut_subcommand(name, |sub| env_prefixed(sub, prefix))
    })
}

pub fn init_tracing(level: LogLevel) {
    let level = match level {
        LogLevel::Debug => "debug",
        LogLevel::Info => "info",
        LogLevel::Warn => "warn",
        LogLevel::Error => "error",
    };
    // Our own crates log at the chosen level; dependencies only at warn and above. The
    // Kubernetes client logs every failed request as an error of its own: the store turns
    // each into an error its caller logs once, with what it meant to do.
    let filter = tracing_subscriber::EnvFilter::try_from_env("STOLON_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(format!(
            "warn,kube_client::client::builder=off,stolon={level}"
        ))
    });
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

/// The store backends this build has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    EtcdV3,
    Kubernetes,
}

/// Checks the backend flags, as Stolon does: kubernetes needs --kube-resource-kind
/// configmap.
pub fn check_backend(args: &CommonArgs) -> anyhow::Result<Backend> {
    let backend = match args.store_backend.as_str() {
        "etcdv3" => Backend::EtcdV3,
        "kubernetes" => Backend::Kubernetes,
        "etcd" | "etcdv2" | "consul" => bail!(
            "store backend {:?} is not supported by this build of stolon-rs: use --store-backend etcdv3 or kubernetes",
            args.store_backend
        ),
        other => bail!("unknown store backend {other:?}: use --store-backend etcdv3 or kubernetes"),
    };
    match (backend, args.kube_resource_kind.as_deref()) {
        (Backend::Kubernetes, Some("configmap")) | (Backend::EtcdV3, _) => Ok(backend),
        (Backend::Kubernetes, None | Some("")) => {
            bail!("--kube-resource-kind is required with --store-backend kubernetes (configmap)")
        }
        (Backend::Kubernetes, Some(other)) => {
            bail!("unknown kube resource kind {other:?}: only configmap is supported")
        }
    }
}

/// Connects once.
pub async fn connect_store(args: &CommonArgs) -> anyhow::Result<Arc<dyn Store>> {
    let backend = check_backend(args)?;
    if args.cluster_name.is_empty() {
        bail!("--cluster-name must not be empty");
    }
    Ok(match backend {
        Backend::EtcdV3 => Arc::new(
            EtcdStore::connect_with(
                &args.store_endpoints,
                &args.store_prefix,
                &args.cluster_name,
                args.store_timeout,
                &etcd_access(args)?,
            )
            .await
            .with_context(|| format!("connecting to etcd at {}", args.store_endpoints.join(",")))?,
        ),
        Backend::Kubernetes => {
            let kube = &args.kube_client;
            let mut options = KubeOptions::from_env(args.store_timeout);
            options.kubeconfig = kube.kubeconfig.clone();
            options.context = kube.kube_context.clone();
            options.namespace = kube.kube_namespace.clone().or(options.namespace);
            Arc::new(
                KubeStore::connect(&args.cluster_name, &options)
                    .await
                    .context("connecting to the Kubernetes API server")?,
            )
        }
    })
}

fn etcd_access(args: &CommonArgs) -> anyhow::Result<EtcdAccess> {
    let user = match &args.store_username {
        Some(name) => Some((
            name.clone(),
            read_password(
                "store",
                "--store-password",
                args.store_password.as_deref(),
                args.store_passwordfile.as_deref(),
            )?,
        )),
        None if args.store_password.is_some() || args.store_passwordfile.is_some() => {
            bail!("a store password was given without --store-username")
        }
        None => None,
    };
    Ok(EtcdAccess {
        tls: TlsFiles {
            ca_file: args.store_ca_file.clone(),
            cert_file: args.store_cert_file.clone(),
            key_file: args.store_key.clone(),
            skip_verify: args.store_skip_tls_verify,
        },
        user,
    })
}

/// Connects, retrying until the store answers or shutdown is asked: a daemon started
/// before its store waits for it. A store misconfigured is an error at once.
pub async fn connect_store_retrying(
    args: &CommonArgs,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<dyn Store>>> {
    check_backend(args)?;
    loop {
        match connect_store(args).await {
            Ok(store) => return Ok(Some(store)),
            Err(e) if misconfigured(&e) => return Err(e),
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot connect to the store, retrying")
            }
        }
        tokio::select! {
            _ = shutdown.cancelled() => return Ok(None),
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
    }
}

fn misconfigured(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        matches!(
            cause.downcast_ref::<stolon_store::StoreError>(),
            Some(stolon_store::StoreError::Misconfigured(_))
        )
    })
}

/// A token cancelled on SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("installing a SIGTERM handler");
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
        tracing::info!("shutdown requested");
        t.cancel();
    });
    token
}

/// A password from a flag (`flag`) or a file (`flag` + `file`). A file's trailing newline is
/// removed with a warning; a password left empty is an error.
pub fn read_password(
    what: &str,
    flag: &str,
    inline: Option<&str>,
    file: Option<&Path>,
) -> anyhow::Result<String> {
    let password = match (inline, file) {
        (Some(_), Some(_)) => {
            bail!("give the {what} password either inline or as a file, not both")
        }
        (Some(p), None) => p.to_string(),
        (None, Some(path)) => {
            use std::os::unix::fs::PermissionsExt;
            if let Ok(meta) = std::fs::metadata(path) {
                let mode = meta.permissions().mode() & 0o777;
                if open_to_every_user(mode) {
                    tracing::warn!(file = %path.display(), mode = %format!("{mode:o}"), "{what} password file can be read or written by every user: use mode 0600, or 0440 for a group that must read it");
                }
            }
            let (password, had_newline) = password_file_content(path)
                .with_context(|| format!("reading the {what} password file {}", path.display()))?;
            if had_newline {
                tracing::warn!("{what} password contain trailing new line, removing");
            }
            password
        }
        (None, None) => bail!("a {what} password is required ({flag} or {flag}file)"),
    };
    if password.is_empty() {
        bail!("{what} password is empty after removing trailing new line");
    }
    Ok(password)
}

/// A password file read again, to see whether it changed: quietly, as at every loop.
pub fn read_password_file(path: &Path) -> anyhow::Result<String> {
    let (password, _) = password_file_content(path)
        .with_context(|| format!("reading the password file {}", path.display()))?;
    if password.is_empty() {
        bail!("the password file {} is empty", path.display());
    }
    Ok(password)
}

/// A password file's content without its trailing newline, and whether it had one.
fn password_file_content(path: &Path) -> std::io::Result<(String, bool)> {
    let raw = std::fs::read_to_string(path)?;
    let password = raw.trim_end_matches(['\n', '\r']);
    Ok((password.to_string(), password.len() != raw.len()))
}

/// A random identity: 8 lowercase hex characters, valid as a replication slot suffix.
pub fn random_uid() -> String {
    format!("{:08x}", rand::random::<u32>())
}

/// A seed for the names an engine machine makes (`stolon_engine::ids`), from the OS.
pub fn random_seed() -> u64 {
    rand::random()
}

/// A password file any user may read or change, or its group change. Group read is how a
/// Kubernetes Secret mounted with an fsGroup reaches a non-root program (root owns the
/// file), so it is no reason to warn.
fn open_to_every_user(mode: u32) -> bool {
    mode & 0o027 != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_read_is_fine_for_a_password_file_anything_wider_is_not() {
        for private in [0o600, 0o400, 0o640, 0o440] {
            assert!(!open_to_every_user(private), "{private:o}");
        }
        for open in [0o644, 0o604, 0o660, 0o602, 0o666] {
            assert!(open_to_every_user(open), "{open:o}");
        }
    }

    #[test]
    fn password_file_newline_is_trimmed_and_empty_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let good = dir.path().join("good");
        std::fs::write(&good, "secret\n").unwrap();
        assert_eq!(
            read_password("superuser", "--pg-su-password", None, Some(&good)).unwrap(),
            "secret"
        );
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let err = read_password("superuser", "--pg-su-password", None, Some(&empty))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("empty after removing trailing new line"),
            "{err}"
        );
        let err = read_password("store", "--store-password", None, None)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("(--store-password or --store-passwordfile)"),
            "{err}"
        );
    }

    fn args(backend: &str, kind: Option<&str>) -> CommonArgs {
        CommonArgs {
            cluster_name: "c".into(),
            store_backend: backend.into(),
            kube_resource_kind: kind.map(String::from),
            store_endpoints: vec![],
            store_prefix: "p".into(),
            store_timeout: Duration::from_secs(1),
            store_ca_file: None,
            store_cert_file: None,
            store_key: None,
            store_skip_tls_verify: false,
            store_username: None,
            store_password: None,
            store_passwordfile: None,
            log_level: LogLevel::Info,
            kube_client: KubeClientArgs::default(),
        }
    }

    #[test]
    fn unsupported_backends_are_refused_by_name() {
        for backend in ["etcd", "etcdv2", "consul", "zookeeper"] {
            let err = check_backend(&args(backend, None)).unwrap_err().to_string();
            assert!(err.contains(backend), "{err}");
            assert!(err.contains("etcdv3 or kubernetes"), "{err}");
        }
    }

    #[test]
    fn kubernetes_needs_the_configmap_resource_kind() {
        assert_eq!(
            check_backend(&args("kubernetes", Some("configmap"))).unwrap(),
            Backend::Kubernetes
        );
        let err = check_backend(&args("kubernetes", None))
            .unwrap_err()
            .to_string();
        assert!(err.contains("--kube-resource-kind is required"), "{err}");
        let err = check_backend(&args("kubernetes", Some("secret")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("only configmap"), "{err}");
        assert_eq!(
            check_backend(&args("etcdv3", None)).unwrap(),
            Backend::EtcdV3
        );
    }
}
