//! stolonctl's command line, shared by the program and by the generator of its manual
//! page and shell completions.

use clap::{Parser, Subcommand, ValueEnum};
use std::path::PathBuf;
use stolon_cluster::GoDuration;
use stolon_daemon::{CommonArgs, KubeClientArgs};

/// The prefix of the environment variables that stand for its flags.
pub const ENV_PREFIX: &str = "STOLONCTL";

#[derive(Debug, Parser)]
#[command(name = "stolonctl", version, about = "Manage a stolon-rs cluster")]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(flatten)]
    pub kube: KubeClientArgs,
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Initialize a new cluster (replacing the current one, after confirmation).
    Init {
        /// The cluster spec as JSON (default: {"initMode":"new"}).
        spec: Option<String>,
        /// Read the spec from a file ("-" for standard input).
        #[arg(short = 'f', long = "file", conflicts_with = "spec")]
        file: Option<PathBuf>,
        /// Do not ask for confirmation.
        #[arg(short = 'y', long = "yes")]
        yes: bool,
        /// When the store already holds a cluster, leave it as it is and succeed: for an
        /// install step that may run again over a cluster whose keepers hold data.
        #[arg(long, conflicts_with = "yes")]
        keep_existing: bool,
    },
    /// Make the sentinel treat a keeper as failed for one round (forces a failover when it
    /// holds the primary and another db can be elected).
    Failkeeper {
        /// The keeper's uid.
        keeper: String,
    },
    /// Maintenance mode: no failover and no switchover, no change to any db, and the
    /// keepers leave postgres as it is, so that instances can be restarted, upgraded or
    /// moved by hand; the proxies still stop routing to a primary that fails. Until
    /// `resume`.
    Pause {
        /// Why: shown by `status`, and logged by the sentinel with each held failover.
        #[arg(long, default_value = "")]
        reason: String,
    },
    /// End maintenance mode: the sentinel and the keepers act again (a primary that failed
    /// during the pause is replaced now).
    Resume,
    /// Remove a keeper and its db from the cluster data (never the primary's keeper).
    Removekeeper {
        /// The keeper's uid.
        keeper: String,
    },
    /// Print the cluster spec (with --defaults, every field with its default filled in).
    Spec {
        #[arg(long)]
        defaults: bool,
    },
    /// Replace the cluster spec, or with --patch merge a JSON merge patch (RFC 7386: null
    /// deletes a field) into it. A rejected update changes nothing.
    Update {
        /// The new spec or the patch, as JSON.
        spec: Option<String>,
        /// Read it from a file ("-" for standard input).
        #[arg(short = 'f', long = "file", conflicts_with = "spec")]
        file: Option<PathBuf>,
        #[arg(short = 'p', long = "patch")]
        patch: bool,
    },
    /// Hand the primary role to a standby without losing an acknowledged write: new client
    /// connections wait at the proxies meanwhile and then go to the new primary.
    Switchover {
        /// The keeper to hand over to (default: the best eligible standby).
        #[arg(long)]
        to: Option<String>,
        /// How long the target may take to catch up before the switchover is abandoned and
        /// the old primary restored.
        #[arg(long, default_value = "30s", value_parser = GoDuration::parse)]
        timeout: GoDuration,
        /// How long existing client sessions may run once new ones are held: in-flight
        /// transactions finish rather than fail.
        #[arg(long, default_value = "1s", value_parser = GoDuration::parse)]
        grace: GoDuration,
        /// Return once the request is written instead of waiting for the outcome.
        #[arg(long)]
        no_wait: bool,
    },
    /// Promote a standby cluster to a primary cluster (spec role master).
    Promote {
        #[arg(short = 'y', long = "yes")]
        yes: bool,
    },
    /// Read or write the raw cluster data (to move it between stores).
    Clusterdata {
        #[command(subcommand)]
        action: ClusterdataCmd,
    },
    /// Show the cluster's components and databases.
    Status {
        #[arg(short = 'f', long = "format", default_value = "text")]
        format: Format,
    },
}

#[derive(Debug, Subcommand)]
pub enum ClusterdataCmd {
    /// Print the cluster data.
    Read {
        #[arg(long)]
        pretty: bool,
    },
    /// Write cluster data read from a file or standard input (refused over existing data
    /// without --yes).
    Write {
        #[arg(short = 'f', long = "file")]
        file: Option<PathBuf>,
        #[arg(short = 'y', long = "yes")]
        yes: bool,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Format {
    Text,
    Json,
}
