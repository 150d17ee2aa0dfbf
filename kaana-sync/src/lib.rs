//! `kaana-sync`: the node's server, and (to come) push, restore and verify of its volume.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde::Serialize;

use kaana_proto::cli::{Exit, emit};
use kaana_proto::identity::NodeId;
use kaana_proto::net::server::{Server, ServerOptions};
use kaana_proto::node::Node;
use kaana_proto::time::parse_duration;

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
    #[command(subcommand)]
    pub command: Command,
}

/// What to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node's server: its one network endpoint (QUIC, authenticated by node keys).
    ///
    /// Prints one JSON line once it listens: {"node": ID, "listen": ADDR}. Logs go to stderr.
    /// SIGTERM or SIGINT stops it: it takes no new work, finishes requests in flight, and
    /// exits 0.
    Serve {
        /// Address to bind instead of the config's (port 0 picks a free port).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// Time-out on every read from a client, e.g. 30s.
        #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration_arg)]
        read_timeout: Duration,
    },
}

fn parse_duration_arg(s: &str) -> Result<Duration, String> {
    parse_duration(s).map(Duration::from_secs).map_err(|e| e.to_string())
}

#[derive(Serialize)]
struct ServeLine {
    node: NodeId,
    listen: SocketAddr,
}

/// Runs `kaana-sync`.
pub fn run(args: Args) -> anyhow::Result<Exit> {
    let node = Node::open_at(args.home.as_deref())?;
    match args.command {
        Command::Serve { listen, read_timeout } => {
            let mut opts = ServerOptions::new(listen.unwrap_or(node.config.listen));
            opts.read_timeout = read_timeout;
            let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
            runtime.block_on(serve(node, opts))
        }
    }
}

async fn serve(node: Node, opts: ServerOptions) -> anyhow::Result<Exit> {
    let id = node.id();
    let server = Server::bind(node, opts)?;
    let listen = server.local_addr()?;
    emit(&ServeLine { node: id, listen })?;
    eprintln!("kaana-sync serve: node {id} listening on {listen}");
    let shutdown = shutdown_signal()?;
    server.run(shutdown).await;
    Ok(Exit::Ok)
}

/// Resolves on the first SIGTERM or SIGINT.
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
    Ok(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
    })
}
