//! `kaana-sync`: the node's server, and push, restore and verify of its volume.

mod bar;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde::Serialize;

use std::sync::Arc;

use kaana_proto::net::transport::Traffic;
use kaana_proto::node::cli::{Exit, emit};
use kaana_proto::node::machine::Settings;
use kaana_proto::node::server::{Server, ServerOptions};
use kaana_proto::node::{backup, restore};
use kaana_proto::protocol::identity::NodeId;
use kaana_proto::protocol::market::RecordId;
use kaana_proto::protocol::time::Timestamp;
use kaana_proto::protocol::time::parse_duration;
use kaana_proto::store::files::{ContractEntry, Status};
use kaana_proto::store::inbound::Inbound;
use kaana_proto::store::node::Node;

/// Back up this node's encrypted volume to its peers, serve theirs, and restore.
///
/// Data goes to stdout as JSON (one object per line for lists); messages go to stderr.
/// Exit codes: 0 all well, 1 something needs a person, 2 error.
#[derive(Debug, Parser)]
#[command(name = "kaana-sync", version)]
pub struct Args {
    #[command(flatten)]
    pub home: kaana_proto::node::cli::HomeArgs,
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
        /// Challenges a contract's peer may send an hour under each contract (up to that many at
        /// once); beyond it, each is answered `busy` (the challenger counts this node unreachable
        /// for it). 0: no cap.
        #[arg(long, value_name = "N", default_value_t = kaana_proto::node::server::CHALLENGES_PER_HOUR)]
        challenges_per_hour: u32,
        /// Do not ask the router to forward a UDP port to the server (UPnP IGD, NAT-PMP) [default: config
        /// port_mapping, else KAANA_PORT_MAPPING].
        #[arg(long)]
        no_port_mapping: bool,
    },
    /// Send the volume to a contract's peer (or every active contract's): only the extents the
    /// peer does not have yet, then a new signed generation. An interrupted push resumes.
    /// (`--all` skips a peer this node is failing on purpose in silence: toward it, the node is
    /// down until its audit.)
    ///
    /// Prints one JSON line per contract: contract, peer, generation, extents_sent,
    /// extents_total, bytes_sent, bytes_total, secs, unchanged. With --all, a contract whose
    /// push failed prints {contract, peer, ok: false, error} and the tool exits 1. Bad input (an extent size, no volume, a volume that
    /// does not look encrypted) is refused before anything is sent: exit 2.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["contract", "all"])))]
    Push {
        /// The contract (its id or at least 8 leading hex digits).
        contract: Option<String>,
        /// Push to every active contract, a few at a time.
        #[arg(long)]
        all: bool,
        /// Send a volume that does not look encrypted (no LUKS header, low entropy) anyway.
        #[arg(long)]
        allow_plaintext: bool,
        /// Extent size (a power of two from 4KiB to 64MiB). Default: the size of this node's
        /// last push to the contract, 4MiB for a first push. Another size than the last push's
        /// sends the whole volume again.
        #[arg(long, value_name = "SIZE", value_parser = parse_size_arg)]
        extent_size: Option<u64>,
        /// Push a volume that no longer looks like the one pushed before (its LUKS header gone
        /// or replaced, or most of its extents changed at once) anyway. Without it such a push
        /// is refused (exit 1), so that a ransomwared or reformatted volume never becomes the
        /// newest generation.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        rate: RateArgs,
    },
    /// Bring the volume back from a contract's peer and write it to PATH, byte for byte as
    /// pushed: the newest generation, or an older one the peer keeps (`kaana-sync history`
    /// lists them). Checks the manifest is signed by this node and every extent against it. Run
    /// it again to resume: extents already right in PATH are not fetched again.
    ///
    /// Prints one JSON line: contract, peer, generation, bytes, ok, extents, extents_fetched,
    /// bad_extents, secs.
    Restore {
        /// The contract (its id or at least 8 leading hex digits).
        contract: String,
        /// Where to write the volume (a file or a block device).
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        #[command(flatten)]
        pick: PickArgs,
        #[command(flatten)]
        rate: RateArgs,
    },
    /// A restore drill: read back and check every extent from a contract's peer (or every
    /// active contract's, one after the other), writing nothing. Exits 1 if anything is missing
    /// or wrong, or a peer could not be reached.
    #[command(group(clap::ArgGroup::new("which").required(true).args(["contract", "all"])))]
    Verify {
        /// The contract (its id or at least 8 leading hex digits).
        contract: Option<String>,
        /// Every active contract (cron's weekly drill).
        #[arg(long)]
        all: bool,
        #[command(flatten)]
        pick: PickArgs,
        #[command(flatten)]
        rate: RateArgs,
    },
    /// The generations of this node's volume a contract's peer keeps (its history), oldest
    /// first: one JSON line each: contract, peer, generation, committed_at, bytes (the volume's
    /// size then), unique_bytes (what no other kept generation shares), manifest, newest.
    History {
        /// The contract (its id or at least 8 leading hex digits).
        contract: String,
    },
    /// Per contract: what this node holds for the peer, and what the peer holds for it.
    Status,
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `kaana-sync man > kaana-sync.1`.
    Man,
}

/// How fast a push, restore or verify may move the volume.
#[derive(Debug, Clone, clap::Args)]
pub struct RateArgs {
    /// Move at most RATE per second, all extents (and with --all, all contracts) together: a
    /// size per second (10MiB, 500kB/s) or bits (20Mbit, 8Mbps), at least 64KiB; 0 means no
    /// limit [default: config limit_rate, else none].
    #[arg(long, value_name = "RATE", value_parser = parse_rate_arg)]
    pub limit_rate: Option<Rate>,
}

/// A rate as `--limit-rate` gives it: bytes per second, or none (no limit).
#[derive(Debug, Clone, Copy)]
pub struct Rate(Option<u64>);

impl RateArgs {
    /// The limit: this option's, else the config's.
    fn limit(&self, node: &Node) -> Option<u64> {
        self.limit_rate.map_or(node.config.limit_rate, |r| r.0)
    }
}

fn parse_rate_arg(s: &str) -> Result<Rate, String> {
    kaana_proto::protocol::size::parse_rate(s).map(Rate).map_err(|e| e.to_string())
}

/// Which generation a restore or verify reads.
#[derive(Debug, Clone, clap::Args)]
pub struct PickArgs {
    /// This generation, if the peer keeps it [default: the newest].
    #[arg(long, value_name = "N", conflicts_with = "at")]
    pub generation: Option<u64>,
    /// The newest generation the peer committed at or before TIME (RFC 3339 UTC such as
    /// 2026-11-28T09:30:00Z; a date alone means the end of that day).
    #[arg(long, value_name = "TIME", value_parser = parse_at)]
    pub at: Option<Timestamp>,
}

impl PickArgs {
    fn pick(&self) -> restore::Pick {
        match (self.generation, self.at) {
            (Some(g), _) => restore::Pick::Generation(g),
            (None, Some(at)) => restore::Pick::At(at),
            (None, None) => restore::Pick::Newest,
        }
    }
}

/// A time a person types for `--at`: RFC 3339 (UTC), or a date alone (the end of that day).
fn parse_at(s: &str) -> Result<Timestamp, String> {
    let t = s.trim();
    let is_date = t.len() == 10 && t.as_bytes().get(4) == Some(&b'-') && t.as_bytes().get(7) == Some(&b'-');
    if is_date {
        return kaana_proto::protocol::time::parse_time_loose(&format!("{t}T23:59:59Z")).map_err(|e| e.to_string());
    }
    kaana_proto::protocol::time::parse_time_loose(t).map_err(|e| e.to_string())
}

fn parse_size_arg(s: &str) -> Result<u64, String> {
    kaana_proto::protocol::size::parse_size(s).map_err(|e| e.to_string())
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
pub fn run(args: Args, settings: Settings) -> anyhow::Result<Exit> {
    match args.command {
        Command::Completions { shell } => return kaana_proto::node::cli::print_completions::<Args>(shell),
        Command::Man => return kaana_proto::node::cli::print_man::<Args>(),
        _ => {}
    }
    let node = args.home.open(&settings)?;
    match args.command {
        Command::Serve { listen, read_timeout, challenges_per_hour, no_port_mapping } => {
            let mut opts = ServerOptions::new(listen.unwrap_or(node.config.listen));
            opts.read_timeout = read_timeout;
            opts.challenges_per_hour = (challenges_per_hour > 0).then_some(challenges_per_hour);
            opts.client_timeouts = settings.timeouts;
            let map_port = !no_port_mapping && settings.port_mapping.unwrap_or(node.config.port_mapping);
            let runtime = kaana_proto::node::cli::runtime()?;
            let served = runtime.block_on(serve(node, opts, &settings, map_port));
            // A router that never answers must not hold the exit: its blocking call is left behind.
            runtime.shutdown_timeout(Duration::from_secs(1));
            served
        }
        Command::Push { contract, all, allow_plaintext, extent_size, force, rate } => {
            let limit = rate.limit(&node);
            let extent_size = extent_size
                .map(|size| {
                    let size = u32::try_from(size).context("--extent-size is too large")?;
                    kaana_proto::protocol::manifest::Geometry::new(u64::from(size), size)
                        .context("bad --extent-size")?;
                    anyhow::Ok(size)
                })
                .transpose()?;
            let entries = if all {
                // Toward a peer this node is failing on purpose in silence, it is down: no push.
                let silent = node.silent_peers(kaana_proto::node::machine::now_from_env()?)?;
                node.contracts()?
                    .into_iter()
                    .filter(|e| matches!(e.state.status, Status::Active) && !silent.contains(&e.state.peer))
                    .collect()
            } else {
                vec![node.find_contract(contract.as_deref().unwrap_or_default())?]
            };
            if !entries.is_empty() {
                // Bad input is the tool's error, with or without --all: checked once, up front.
                let checked = extent_size.unwrap_or(kaana_proto::protocol::manifest::DEFAULT_EXTENT_SIZE);
                backup::check_volume(&node, checked, allow_plaintext)?;
            }
            kaana_proto::node::cli::runtime()?.block_on(async {
                tokio::select! {
                    r = push(node, settings, entries, (all, limit), extent_size, backup::PushOptions { allow_plaintext, force }) => r,
                    _ = tokio::signal::ctrl_c() => {
                        // What the holder stored stays; the previous generation stays whole.
                        eprintln!(
                            "kaana-sync: interrupted: run the same push again to resume (what the holder already \
                             stored is not sent again)"
                        );
                        std::process::exit(130)
                    }
                }
            })
        }
        Command::Restore { contract, out, pick, rate } => {
            let entry = node.find_contract(&contract)?;
            kaana_proto::node::cli::runtime()?.block_on(async {
                let client = settings.client(&node, Traffic::Bulk).with_rate_limit(rate.limit(&node));
                let r =
                    restore::restore(&client, &node, &entry, Some(&out), pick.pick(), "restore", &bar::Bar::default())
                        .await;
                client.close().await;
                let summary = r.with_context(|| format!("restoring contract {} to {}", entry.id, out.display()))?;
                emit(&summary)?;
                Ok(if summary.ok { Exit::Ok } else { Exit::Attention })
            })
        }
        Command::Verify { contract, all, pick, rate } => {
            let limit = rate.limit(&node);
            if all && (pick.generation.is_some() || pick.at.is_some()) {
                anyhow::bail!("--generation and --at choose one contract's generation: give a CONTRACT_ID, not --all");
            }
            let entries = match contract {
                Some(c) => vec![node.find_contract(&c)?],
                None => {
                    // Not toward a peer this node is failing on purpose in silence: it is down there.
                    let silent = node.silent_peers(kaana_proto::node::machine::now_from_env()?)?;
                    node.contracts()?
                        .into_iter()
                        .filter(|e| matches!(e.state.status, Status::Active) && !silent.contains(&e.state.peer))
                        .collect()
                }
            };
            kaana_proto::node::cli::runtime()?.block_on(verify(node, settings, entries, (all, limit), pick.pick()))
        }
        Command::History { contract } => {
            let entry = node.find_contract(&contract)?;
            kaana_proto::node::cli::runtime()?.block_on(async {
                let client = settings.client(&node, Traffic::Short);
                let r = restore::history(&client, &node, &entry).await;
                client.close().await;
                let kept = r.with_context(|| format!("asking node {} which generations it keeps", entry.state.peer))?;
                let newest = kept.last().map(|g| g.generation);
                for g in kept {
                    emit(&HistoryLine {
                        contract: entry.id,
                        peer: entry.state.peer,
                        generation: g.generation,
                        committed_at: g.committed_at,
                        bytes: g.bytes,
                        unique_bytes: g.unique_bytes,
                        manifest: g.manifest,
                        newest: Some(g.generation) == newest,
                    })?;
                }
                Ok(Exit::Ok)
            })
        }
        Command::Status => status(&node),
        Command::Completions { .. } | Command::Man => Ok(Exit::Ok),
    }
}

/// One generation a peer keeps, as `history` prints it.
#[derive(Serialize)]
struct HistoryLine {
    contract: RecordId,
    peer: NodeId,
    generation: u64,
    committed_at: Timestamp,
    bytes: u64,
    unique_bytes: u64,
    manifest: RecordId,
    newest: bool,
}

/// Pushes a few contracts at a time; prints one line per contract.
async fn push(
    node: Node,
    settings: Settings,
    entries: Vec<ContractEntry>,
    (all, limit): (bool, Option<u64>),
    extent_size: Option<u32>,
    opts: backup::PushOptions,
) -> anyhow::Result<Exit> {
    const AT_ONCE: usize = 2;
    let node = Arc::new(node);
    let client = Arc::new(settings.client(&node, Traffic::Bulk).with_rate_limit(limit));
    let permits = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let mut tasks = tokio::task::JoinSet::new();
    for entry in entries {
        let (node, client, permits) = (node.clone(), client.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let r = backup::push(&client, &node, &entry, extent_size, opts, &bar::Bar::default()).await;
            (entry, r)
        });
    }
    let (mut last_error, mut breaches) = (None, 0);
    while let Some(done) = tasks.join_next().await {
        let (entry, result) = done?;
        match result {
            Ok(summary) => emit(&summary)?,
            Err(e) => {
                // A breach found by the audit before the push, or a volume the guard refused,
                // needs a person; it is no error.
                let breach = matches!(e, backup::BackupError::Breach(_) | backup::BackupError::Guard(_));
                let e = anyhow::Error::new(e).context(format!("pushing to contract {}", entry.id));
                if all || breach {
                    say_failed(&entry, &e)?;
                }
                if breach {
                    breaches += 1;
                } else {
                    last_error = Some(e);
                }
            }
        }
    }
    client.close().await;
    // With --all, a contract whose push failed needs a person (its copy is getting old); it is
    // not an error of the tool, which did all it could.
    match (all, last_error) {
        (false, Some(e)) => Err(e),
        (true, Some(_)) => Ok(Exit::Attention),
        (_, None) if breaches > 0 => Ok(Exit::Attention),
        (_, None) => Ok(Exit::Ok),
    }
}

/// Says on stderr, and as its JSON line, that the work on `entry` failed with `e`.
fn say_failed(entry: &ContractEntry, e: &anyhow::Error) -> anyhow::Result<()> {
    eprintln!("kaana-sync: error: {e:#}");
    emit(&ContractFailed { contract: entry.id, peer: entry.state.peer, ok: false, error: format!("{e:#}") })?;
    Ok(())
}

/// Verifies each contract's copy in turn; one line each.
async fn verify(
    node: Node,
    settings: Settings,
    entries: Vec<ContractEntry>,
    (all, limit): (bool, Option<u64>),
    pick: restore::Pick,
) -> anyhow::Result<Exit> {
    let client = settings.client(&node, Traffic::Bulk).with_rate_limit(limit);
    let mut exit = Exit::Ok;
    for entry in entries {
        let r = restore::restore(&client, &node, &entry, None, pick, "verify", &bar::Bar::default()).await;
        let summary = match r.with_context(|| format!("verifying contract {}", entry.id)) {
            Ok(s) => s,
            Err(e) if all => {
                // With --all, one peer out of reach does not stop the drill of the others.
                say_failed(&entry, &e)?;
                exit = Exit::Attention;
                continue;
            }
            Err(e) => {
                client.close().await;
                return Err(e);
            }
        };
        emit(&summary)?;
        if !summary.ok {
            eprintln!(
                "kaana-sync: {} of {} extents are missing or wrong at node {}: this copy is damaged",
                summary.bad_extents, summary.extents, summary.peer
            );
            exit = Exit::Attention;
        }
    }
    client.close().await;
    Ok(exit)
}

/// A contract whose push (or verify, with `--all`) failed.
#[derive(Serialize)]
struct ContractFailed {
    contract: RecordId,
    peer: NodeId,
    ok: bool,
    error: String,
}

#[derive(Serialize)]
struct StatusLine {
    contract: RecordId,
    peer: NodeId,
    status: String,
    /// Our copy at the peer, as the peer last committed it.
    ours: Option<CopyLine>,
    /// The peer's copy here.
    theirs: Option<CopyLine>,
}

#[derive(Serialize)]
struct CopyLine {
    generation: u64,
    bytes: u64,
    extents: u64,
    committed_at: Timestamp,
    #[serde(skip_serializing_if = "Option::is_none")]
    stored_bytes: Option<u64>,
    /// Generations kept (the history and the newest), and the bytes the older ones take beyond
    /// the newest.
    generations: usize,
    history_bytes: u64,
}

/// The newest of `kept` generations as `status` shows it, with the history kept behind it.
fn copy_line(
    kept: &[kaana_proto::store::inbound::RecordedCopy],
    stored: Option<u64>,
) -> anyhow::Result<Option<CopyLine>> {
    let Some((newest, _, _)) = kept.last() else { return Ok(None) };
    let views: Vec<_> = kept.iter().map(kaana_proto::store::inbound::view).collect::<Result<_, _>>()?;
    let m = &newest.body;
    Ok(Some(CopyLine {
        generation: m.generation,
        bytes: m.volume_size,
        extents: m.extent_count,
        committed_at: views.last().map_or(m.created_at, |v| v.committed_at),
        stored_bytes: stored,
        generations: kept.len(),
        history_bytes: kaana_proto::protocol::history::history_bytes(&views),
    }))
}

fn status(node: &Node) -> anyhow::Result<Exit> {
    for entry in node.contracts()? {
        // Each read under its store's lock, shared: a commit may be retiring generations.
        let record = kaana_proto::store::outbound::Outbound::at(node.home.root(), &entry.id);
        let ours = {
            let _shared = record.lock(false)?;
            copy_line(&record.generations()?, None)?
        };
        let inbound = Inbound::new(&node.config.storage, &entry.id);
        let theirs = {
            let _shared = inbound.lock(false)?;
            copy_line(&inbound.generations()?, Some(inbound.stored_bytes()?))?
        };
        emit(&StatusLine {
            contract: entry.id,
            peer: entry.state.peer,
            status: entry.state.status.name().to_owned(),
            ours,
            theirs,
        })?;
    }
    Ok(Exit::Ok)
}

async fn serve(node: Node, opts: ServerOptions, settings: &Settings, map_port: bool) -> anyhow::Result<Exit> {
    use kaana_proto::node::server::keep_reachable;
    let id = node.id();
    let report = std::sync::Arc::new(kaana_proto::node::report::Stderr("kaana-sync serve"));
    let discovery = std::sync::Arc::new(settings.discovery(&node));
    let server = Server::bind(node.clone(), opts, report.clone())?;
    let listen = server.local_addr()?;
    emit(&ServeLine { node: id, listen })?;
    eprintln!("kaana-sync serve: node {id} listening on {listen}");
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let found = tokio::spawn(keep_reachable(node, discovery, listen, map_port, report, stopped));
    let shutdown = shutdown_signal()?;
    let ended = server.run(shutdown).await;
    let _ = stop.send(true);
    // Removing the port mapping takes a round trip to the router at most (3 s).
    let _ = tokio::time::timeout(Duration::from_secs(5), found).await;
    ended.context("serving")?;
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
