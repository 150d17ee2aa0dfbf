//! `kaana-sync`: Back up this node's encrypted volume to its peers, serve theirs, and restore.

use std::path::PathBuf;

use clap::Parser;

use kaana_proto::cli::Exit;
use kaana_proto::node::Node;

/// Back up this node's encrypted volume to its peers, serve theirs, and restore.
///
/// Data goes to stdout as JSON (one object per line for lists); messages go to stderr.
/// Exit codes: 0 all well, 1 something needs a person, 2 error.
#[derive(Debug, Parser)]
#[command(name = "kaana-sync", version)]
pub struct Args {
    /// The node's state directory [default: $KAANA_HOME, else $XDG_STATE_HOME/kaana, else
    /// ~/.local/state/kaana].
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
}

/// Runs `kaana-sync`.
pub fn run(args: Args) -> anyhow::Result<Exit> {
    let _node = Node::open_at(args.home.as_deref())?;
    anyhow::bail!("kaana-sync has no commands yet in this version")
}
