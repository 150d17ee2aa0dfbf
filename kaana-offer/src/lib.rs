//! `kaana-offer`: node set-up, identity, address book, offers, boards and contracts.

mod ensure;
mod found;
mod market;
mod setup;
mod status;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use kaana_proto::node::cli::Exit;
use kaana_proto::protocol::size::parse_size;
use kaana_proto::protocol::time::parse_duration;
use kaana_proto::store::config::{self, PeerAddr};

/// Set up a Ka'ana like node and trade storage with peers.
///
/// Data goes to stdout as JSON (one object per line for lists); messages go to stderr.
/// Exit codes: 0 all well, 1 something needs a person, 2 error.
#[derive(Debug, Parser)]
#[command(name = "kaana-offer", version)]
pub struct Args {
    #[command(flatten)]
    pub home: kaana_proto::node::cli::HomeArgs,
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
    /// Print the configuration as one JSON line, or get or set one setting (checked as `init`
    /// checks it, under the node's lock).
    Config {
        #[command(subcommand)]
        action: Option<ConfigCommand>,
    },
    /// Print the recovery phrase: the only way to rebuild this node's identity. Write it down
    /// and keep it away from this machine.
    RecoveryPhrase,
    /// Manage the address book of peers.
    #[command(subcommand)]
    Peer(PeerCommand),
    /// Say what needs a person: capacity used, contracts of at least the volume's size against
    /// its replicas, and each contract's peer (failing, silent, our data at risk there, last
    /// push and pass). A report on a terminal, one JSON line when piped. Exits 1 when anything
    /// needs a person.
    Status,
    /// Make a signed offer: "I will hold SIZE of yours if you hold as much of mine".
    Create {
        /// Bytes each side stores at the other, e.g. 1TiB.
        #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
        size: u64,
        /// How long a failing peer's data is kept before it may be deleted [default: config].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        grace: Option<u64>,
        /// How long the offer stays open.
        #[arg(long, value_name = "DURATION", default_value = "7d", value_parser = parse_duration_arg)]
        ttl: u64,
        /// How long each side keeps the other's superseded generations (0: the newest only)
        /// [default: config's history_secs].
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        history: Option<u64>,
        /// Bytes of superseded generations each side keeps beyond the newest: a size (2GiB) or
        /// a percent of --size (25%) [default: config's history_percent].
        #[arg(long, value_name = "SIZE|PERCENT")]
        history_space: Option<String>,
        /// Where takers reach this node (HOST:PORT; repeat for several) [default: the advertised
        /// or listening address].
        #[arg(long = "addr", value_name = "HOST:PORT")]
        addrs: Vec<String>,
    },
    /// Send offers to boards: OFFER_ID, or every open offer of this node. Each board forwards
    /// new offers to the boards it knows.
    Publish {
        /// The offer (its id or at least 8 leading hex digits) [default: all open offers].
        offer: Option<String>,
        /// A board to publish to (repeat for several) [default: this node's own board, through
        /// its running server].
        #[arg(long = "board", value_name = "ID@HOST:PORT")]
        boards: Vec<PeerAddr>,
    },
    /// List offers, one JSON line each: this node's own board and offers, or those of the given
    /// boards and of the boards found on the DHT (which are then remembered, so `accept` can take
    /// them).
    List {
        /// A board to ask (repeat for several).
        #[arg(long = "board", value_name = "ID@HOST:PORT")]
        boards: Vec<PeerAddr>,
        /// Also ask the boards announced on the Mainline DHT (at most 32), and say on stderr how
        /// many answered and how long it took.
        #[arg(long)]
        dht: bool,
    },
    /// The address book, one peer per line (as `peer list`); with --records, what this node
    /// knows of each peer across all its contracts with it.
    Peers {
        /// With each peer's record: passes, failures, unanswered tries, breaches, contracts ended.
        #[arg(long)]
        records: bool,
    },
    /// Bring the node to `replicas` healthy copies without a person: take the best acceptable
    /// offers (own board, the address book's boards, the DHT's), push the volume there, and only
    /// once those copies are committed end the contracts they replace (a breach, a peer failing
    /// past its grace). A failing peer within its grace keeps its contract. With nothing
    /// acceptable on offer, it publishes an offer of this node's and exits 1. One JSON line per
    /// step.
    Ensure {
        /// Print the plan; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Publish this node's signed address record on the Mainline DHT now, so that peers find it
    /// by its id alone (the running server republishes it hourly and when its address changes,
    /// and announces its board). Prints {"node", "addrs", "board", "stored_on", "secs"}; exits 1
    /// if no DHT node stored it.
    Announce,
    /// Run DHT nodes that know each other, for a private network or a test (the bootstrap list
    /// for --dht-bootstrap): prints {"bootstrap": [HOST:PORT, ...]} and serves until SIGTERM or
    /// SIGINT.
    DhtNodes {
        /// How many nodes.
        #[arg(long, default_value_t = 20)]
        count: usize,
        /// The IPv4 address they bind (each on a port of its own).
        #[arg(long, default_value = "127.0.0.1")]
        ip: std::net::Ipv4Addr,
    },
    /// Accept an offer seen on a board: both nodes then hold the same contract, signed by both.
    Accept {
        /// The offer's id (or at least 8 leading hex digits).
        offer: String,
    },
    /// List contracts, one JSON line each.
    Contracts {
        /// First ask every peer in the address book for the contracts this node has with it,
        /// and keep the ones it does not know (after `init --recover` on a new machine).
        #[arg(long)]
        fetch: bool,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `kaana-offer man > kaana-offer.1`.
    Man,
    /// End a contract: a signed notice goes to the peer; each side's data is kept for the grace
    /// period, then pruned. Exits 1 if the peer could not be told yet (run it again).
    Terminate {
        /// The contract's id (or at least 8 leading hex digits).
        contract: String,
    },
}

/// Options of `init`.
#[derive(Debug, clap::Args)]
pub struct InitArgs {
    /// Address the server (`kaana-sync serve`) binds.
    #[arg(long, value_name = "ADDR", default_value_t = SocketAddr::from(([0, 0, 0, 0], config::DEFAULT_PORT)))]
    pub listen: SocketAddr,
    /// Address peers use to reach this node (HOST:PORT; repeat for several), when the listen
    /// address is not one they can reach.
    #[arg(long, value_name = "HOST:PORT")]
    pub advertise: Vec<String>,
    /// The encrypted volume to back up: a LUKS block device or image file.
    #[arg(long, value_name = "PATH")]
    pub volume: Option<PathBuf>,
    /// Where peers' data is kept [default: the state directory].
    #[arg(long, value_name = "DIR")]
    pub storage: Option<PathBuf>,
    /// Total space this node gives to peers, e.g. 2TiB or 500GB; at most the storage's free
    /// space.
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
    /// How long this node's offers keep a peer's superseded generations (0: the newest only),
    /// e.g. 14d.
    #[arg(long, value_name = "DURATION", default_value = "14d", value_parser = parse_duration_arg)]
    pub history: u64,
    /// The history allowance of this node's offers, in percent of their size: bytes of
    /// superseded generations kept beyond the newest.
    #[arg(long, value_name = "PERCENT", default_value_t = kaana_proto::protocol::history::DEFAULT_SHARE_PERCENT)]
    pub history_percent: u64,
    /// The Mainline DHT's bootstrap nodes: `public` (the public DHT), `none` (no DHT), or
    /// HOST:PORT nodes (repeat, or separate with commas) for a private network
    /// [env: KAANA_DHT_BOOTSTRAP overrides it for every tool run].
    #[arg(long, value_name = "HOST:PORT|public|none", num_args = 1.., value_delimiter = ',')]
    pub dht_bootstrap: Vec<String>,
    /// Do not ask the router to forward a port to the server (UPnP IGD, NAT-PMP).
    #[arg(long)]
    pub no_port_mapping: bool,
    /// Rebuild a node from its recovery phrase, read from stdin.
    #[arg(long)]
    pub recover: bool,
}

/// Configuration commands. The settings are those of `config.json`: listen, advertise,
/// volume, storage (read only), capacity, replicas, grace_secs, audit_rate, history_secs,
/// history_percent, dht_bootstrap, port_mapping, limit_rate.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print one setting: {"KEY": VALUE}.
    Get {
        /// The setting.
        key: String,
    },
    /// Change one setting and print it: {"KEY": VALUE}. Values as `init` takes them: 2TiB, 7d,
    /// 0.02, HOST:PORT (advertise: several, comma-separated; empty for none); limit_rate a rate
    /// such as 10MiB/s or 20Mbit (none: no limit).
    Set {
        /// The setting.
        key: String,
        /// Its new value.
        value: String,
    },
}

/// Address book commands.
#[derive(Debug, Subcommand)]
pub enum PeerCommand {
    /// Add a peer, written ID@HOST:PORT, or its id alone to look its address up on the DHT.
    /// First checks that the node answers at that address and proves it holds that id's key.
    Add {
        /// The peer: its node id, then `@` and HOST:PORT unless it is to be found on the DHT.
        #[arg(value_parser = parse_peer_arg)]
        peer: PeerArg,
        /// Add it without checking (e.g. the peer is offline now).
        #[arg(long)]
        no_check: bool,
    },
    /// List the address book, one peer per line.
    List {
        /// With each peer's record across all contracts with it (passes, failures, unanswered
        /// tries, breaches, contracts ended): what `ensure` chooses by.
        #[arg(long)]
        records: bool,
    },
}

/// A peer as `peer add` takes it: with an address, or its id alone (looked up on the DHT).
#[derive(Debug, Clone)]
pub enum PeerArg {
    /// `ID@HOST:PORT`.
    At(PeerAddr),
    /// `ID`.
    Id(kaana_proto::protocol::identity::NodeId),
}

fn parse_peer_arg(s: &str) -> Result<PeerArg, String> {
    if s.contains('@') {
        s.parse().map(PeerArg::At).map_err(|e: config::PeerAddrError| e.to_string())
    } else {
        s.parse().map(PeerArg::Id).map_err(|e| format!("{s:?} is not a peer (ID or ID@HOST:PORT): {e}"))
    }
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    parse_size(s).map_err(|e| e.to_string())
}

fn parse_duration_arg(s: &str) -> Result<u64, String> {
    parse_duration(s).map_err(|e| e.to_string())
}

/// Runs `kaana-offer`.
pub fn run(args: Args, settings: kaana_proto::node::machine::Settings) -> anyhow::Result<Exit> {
    let settings = &settings;
    match args.command {
        Command::Completions { shell } => return kaana_proto::node::cli::print_completions::<Args>(shell),
        Command::Man => return kaana_proto::node::cli::print_man::<Args>(),
        Command::DhtNodes { count, ip } => return found::dht_nodes(count, ip),
        _ => {}
    }
    let home = &args.home.dir(settings)?;
    match args.command {
        Command::Completions { .. } | Command::Man | Command::DhtNodes { .. } => {
            anyhow::bail!("internal: this command is handled before the node is found")
        }
        Command::Init(init_args) => setup::init(home, settings, init_args),
        Command::Id => setup::id(home),
        Command::Config { action: None } => setup::config_show(home),
        Command::Config { action: Some(ConfigCommand::Get { key }) } => setup::config_get(home, &key),
        Command::Config { action: Some(ConfigCommand::Set { key, value }) } => setup::config_set(home, &key, &value),
        Command::RecoveryPhrase => setup::recovery_phrase(home),
        Command::Peer(PeerCommand::Add { peer, no_check }) => setup::peer_add(home, settings, &peer, no_check),
        Command::Peer(PeerCommand::List { records }) => setup::peer_list(home, records),
        Command::Peers { records } => setup::peer_list(home, records),
        Command::Status => status::status(home, settings),
        Command::Create { size, grace, ttl, history, history_space, addrs } => {
            market::create(home, market::Terms { size, grace, ttl, history, history_space }, addrs)
        }
        Command::Publish { offer, boards } => market::publish(home, settings, offer.as_deref(), &boards),
        Command::List { boards, dht } => market::list(home, settings, &boards, dht),
        Command::Announce => found::announce(home, settings),
        Command::Ensure { dry_run } => ensure::ensure(home, settings, dry_run),
        Command::Accept { offer } => market::accept(home, settings, &offer),
        Command::Contracts { fetch } => market::contracts(home, settings, fetch),
        Command::Terminate { contract } => market::terminate(home, settings, &contract),
    }
}

/// Runs `body` on a single-threaded async runtime.
fn block_on<T>(body: impl std::future::Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
    tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(body)
}
