//! stolonctl's commands, one module each, over the store the common flags name. Each
//! reports to the operator: what it did on standard output, why it refused as its error.

mod clusterdata;
mod init;
mod keepers;
mod pause;
mod promote;
mod spec;
mod status;
mod store;
mod switchover;

use crate::cli::{Cli, ClusterdataCmd, Cmd, Format};
use anyhow::Context;
use init::Existing;
use stolon_cluster::{ClusterSpec, KeeperUid};

/// Runs the command `cli` names.
pub async fn run(mut cli: Cli) -> anyhow::Result<()> {
    stolon_daemon::check_backend(&cli.common)?;
    cli.common.kube_client = cli.kube.clone();
    let command = cli.command;
    if let Cmd::Init {
        spec,
        file,
        yes,
        keep_existing,
    } = command
    {
        // A spec that does not hold is refused before the store is even reached.
        let text = spec::read_input(spec, file)?.unwrap_or_else(|| r#"{"initMode":"new"}"#.into());
        let spec = ClusterSpec::from_json(&text).context("invalid cluster spec")?;
        spec.validate().context("invalid cluster spec")?;
        let existing = match (keep_existing, yes) {
            (true, _) => Existing::Keep,
            (false, true) => Existing::Replace,
            (false, false) => Existing::Ask,
        };
        let store = stolon_daemon::connect_store(&cli.common).await?;
        return init::init(store.as_ref(), spec, existing).await;
    }
    let store = stolon_daemon::connect_store(&cli.common).await?;
    let store = store.as_ref();
    match command {
        Cmd::Init { .. } => unreachable!("handled above"),
        Cmd::Pause { reason } => pause::pause(store, reason).await,
        Cmd::Resume => pause::resume(store).await,
        Cmd::Failkeeper { keeper } => keepers::fail(store, &keeper).await,
        Cmd::Removekeeper { keeper } => keepers::remove(store, &keeper).await,
        Cmd::Spec { defaults } => spec::show(store, defaults).await,
        Cmd::Update { spec, file, patch } => spec::update(store, spec, file, patch).await,
        Cmd::Switchover {
            to,
            timeout,
            grace,
            no_wait,
        } => {
            let to = to.map(KeeperUid::new);
            switchover::switchover(store, to, timeout, grace, no_wait).await
        }
        Cmd::Promote { yes } => promote::promote(store, yes).await,
        Cmd::Clusterdata { action } => match action {
            ClusterdataCmd::Read { pretty } => clusterdata::read(store, pretty).await,
            ClusterdataCmd::Write { file, yes } => clusterdata::write(store, file, yes).await,
        },
        Cmd::Status { format } => {
            let status = status::gather_status(store).await?;
            match format {
                Format::Json => println!("{}", serde_json::to_string_pretty(&status)?),
                Format::Text => print!("{}", status::render_status(&status)),
            }
            Ok(())
        }
    }
}
