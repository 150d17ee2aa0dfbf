//! `kaana-offer`: node set-up, identity, address book, offers and contracts.

use std::io::Read as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use serde::Serialize;

use kaana_proto::cli::{Exit, emit};
use kaana_proto::config::{self, Config, PeerAddr};
use kaana_proto::identity::{Identity, NodeId};
use kaana_proto::net::transport::Client;
use kaana_proto::net::wire::{Request, Response};
use kaana_proto::node::Node;
use kaana_proto::size::parse_size;
use kaana_proto::state::{Home, Schema, create_dir};
use kaana_proto::time::parse_duration;

/// Set up a Ka'ana like node and trade storage with peers.
///
/// Data goes to stdout as JSON (one object per line for lists); messages go to stderr.
/// Exit codes: 0 all well, 1 something needs a person, 2 error.
#[derive(Debug, Parser)]
#[command(name = "kaana-offer", version)]
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
    /// Create a node: a new identity (or one rebuilt with --recover), its config and state.
    Init(InitArgs),
    /// Print this node's id.
    Id,
    /// Print the recovery phrase: the only way to rebuild this node's identity. Write it down
    /// and keep it away from this machine.
    RecoveryPhrase,
    /// Manage the address book of peers.
    #[command(subcommand)]
    Peer(PeerCommand),
}

/// Options of `init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Address the server (`kaana-sync serve`) binds.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], config::DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// The encrypted volume to back up: a LUKS block device or image file.
    #[arg(long, value_name = "PATH")]
    pub volume: Option<PathBuf>,
    /// Where peers' data is kept [default: the state directory].
    #[arg(long, value_name = "DIR")]
    pub storage: Option<PathBuf>,
    /// Total space this node gives to peers, e.g. 2TiB or 500GB.
    #[arg(long, value_name = "SIZE", default_value = "0", value_parser = parse_size_arg)]
    pub capacity: u64,
    /// How many peers should hold this node's volume.
    #[arg(long, value_name = "N", default_value_t = config::DEFAULT_REPLICAS)]
    pub replicas: u32,
    /// How long this node keeps a failing peer's data before deleting it, e.g. 7d.
    #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration_arg)]
    pub grace: u64,
    /// Fraction of challenges answered wrongly on purpose, to audit peers (0 to 1).
    #[arg(long, value_name = "RATE", default_value_t = config::DEFAULT_AUDIT_RATE)]
    pub audit_rate: f64,
    /// Rebuild a node from its recovery phrase, read from stdin.
    #[arg(long)]
    pub recover: bool,
}

/// Address book commands.
#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Add a peer, written ID@HOST:PORT. First checks that the node answers at that address
    /// and proves it holds that id's key.
    Add {
        /// The peer: its node id, `@`, and HOST:PORT.
        peer: PeerAddr,
        /// Add it without checking (e.g. the peer is offline now).
        #[arg(long)]
        no_check: bool,
    },
    /// List the address book, one peer per line.
    List,
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn parse_duration_arg(s: &str) -> Result<u64, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Runs `kaana-offer`.
pub fn run(args: Args) -> anyhow::Result<Exit> {
    let home = args.home.as_deref();
    match args.command {
        Command::Init(init_args) => init(home, init_args),
        Command::Id => {
            let node = Node::open_at(home)?;
            emit(&NodeLine {
                node: node.id(),
                home: node.home.root(),
            })?;
            Ok(Exit::Ok)
        }
        Command::RecoveryPhrase => {
            let node = Node::open_at(home)?;
            emit(&PhraseLine {
                node: node.id(),
                recovery_phrase: node.identity.recovery_phrase(),
            })?;
            Ok(Exit::Ok)
        }
        Command::Peer(PeerCommand::Add { peer, no_check }) => {
            let node = Node::open_at(home)?;
            if peer.node == node.id() {
                bail!("{} is this node's own id; add another node's", peer.node);
            }
            if !no_check {
                say_hello(&node, &peer).with_context(|| {
                    format!(
                        "checking that {peer} answers (add --no-check to add it without checking)"
                    )
                })?;
            }
            let changed = node.add_peer(&peer)?;
            let addrs = node.address_book()?.addrs(&peer.node).to_vec();
            emit(&PeerLine {
                node: peer.node,
                addrs,
                changed: Some(changed),
            })?;
            Ok(Exit::Ok)
        }
        Command::Peer(PeerCommand::List) => {
            let node = Node::open_at(home)?;
            for (id, entry) in node.address_book()?.peers {
                emit(&PeerLine {
                    node: id,
                    addrs: entry.addrs,
                    changed: None,
                })?;
            }
            Ok(Exit::Ok)
        }
    }
}

/// Asks `peer` who it is over an authenticated connection.
fn say_hello(node: &Node, peer: &PeerAddr) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let client = Client::new(node.identity.clone());
        let result = async {
            let conn = client.connect(peer.node, &peer.addr).await?;
            let reply = conn.request(&Request::Hello).await?;
            conn.close();
            match reply {
                Response::Hello { node: answered, .. } if answered == peer.node => Ok(()),
                other => bail!("unexpected answer to hello: {other:?}"),
            }
        }
        .await;
        client.close().await;
        result
    })
}

#[derive(Serialize)]
struct NodeLine<'a> {
    node: NodeId,
    home: &'a Path,
}

#[derive(Serialize)]
struct PhraseLine {
    node: NodeId,
    recovery_phrase: String,
}

#[derive(Serialize)]
struct PeerLine {
    node: NodeId,
    addrs: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    changed: Option<bool>,
}

#[derive(Serialize)]
struct InitLine<'a> {
    node: NodeId,
    home: &'a Path,
    listen: SocketAddr,
    recovered: bool,
}

fn init(home: Option<&Path>, args: InitArgs) -> anyhow::Result<Exit> {
    if !(0.0..=1.0).contains(&args.audit_rate) {
        bail!(
            "--audit-rate must be between 0 and 1, not {}",
            args.audit_rate
        );
    }
    if args.replicas == 0 {
        bail!("--replicas must be at least 1");
    }
    let home = Home::at(Home::locate(home)?);
    let identity = if args.recover {
        let mut phrase = String::new();
        std::io::stdin()
            .read_to_string(&mut phrase)
            .context("reading the recovery phrase from stdin")?;
        Identity::from_recovery_phrase(&phrase).context("reading the recovery phrase from stdin")?
    } else {
        Identity::generate().context("getting randomness for a new key")?
    };
    let volume = match args.volume {
        Some(v) => {
            Some(std::fs::canonicalize(&v).with_context(|| format!("volume {}", v.display()))?)
        }
        None => None,
    };
    let storage = args.storage.unwrap_or_else(|| home.root().to_owned());
    create_dir(&storage)?;
    let storage = std::fs::canonicalize(&storage)
        .with_context(|| format!("storage {}", storage.display()))?;
    let config = Config {
        schema: Schema,
        listen: args.listen,
        volume,
        storage,
        capacity: args.capacity,
        replicas: args.replicas,
        grace_secs: args.grace,
        audit_rate: args.audit_rate,
    };
    let node = Node::init(home, identity, config)?;
    emit(&InitLine {
        node: node.id(),
        home: node.home.root(),
        listen: node.config.listen,
        recovered: args.recover,
    })?;
    if !args.recover {
        eprintln!(
            "kaana-offer: node {} created. Run `kaana-offer recovery-phrase` and write the phrase down \
             somewhere safe, off this machine: without it, a lost disk means a lost backup.",
            node.id()
        );
    }
    Ok(Exit::Ok)
}
