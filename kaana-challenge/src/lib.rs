//! `kaana-challenge`: Challenge peers to prove they hold this node's data, and audit their honesty.

use std::path::PathBuf;

use clap::Parser;

use kaana_proto::cli::Exit;
use kaana_proto::node::Node;

/// Challenge peers to prove they hold this node's data, and audit their honesty.
///
/// Data goes to stdout as JSON (one object per line for lists); messages go to stderr.
/// Exit codes: 0 all well, 1 something needs a person, 2 error.
#[derive(Debug, Parser)]
#[command(name = "kaana-challenge", version)]
pub struct Args {
    /// The node's state directory [default: $KAANA_HOME, else $XDG_STATE_HOME/kaana, else
    /// ~/.local/state/kaana].
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
}

/// Runs `kaana-challenge`.
pub fn run(args: Args) -> anyhow::Result<Exit> {
    let _node = Node::open_at(args.home.as_deref())?;
    anyhow::bail!("kaana-challenge has no commands yet in this version")
}
