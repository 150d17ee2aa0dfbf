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
use kaana_proto::node::backup;
use kaana_proto::node::cli::{Exit, emit};
use kaana_proto::node::machine::Settings;
use kaana_proto::node::server::{Server, ServerOptions};
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
        /// Extent size (a power of two from 4KiB to 64MiB).
        #[arg(long, value_name = "SIZE", default_value = "4MiB", value_parser = parse_size_arg)]
        extent_size: u64,
    },
    /// Bring the volume back from a contract's peer and write it to PATH, byte for byte as
    /// pushed. Checks the manifest is signed by this node and every extent against it. Run it
    /// again to resume: extents already right in PATH are not fetched again.
    Restore {
        /// The contract (its id or at least 8 leading hex digits).
        contract: String,
        /// Where to write the volume (a file or a block device).
        #[arg(long, value_name = "PATH")]
        out: PathBuf,
        /// Fail unless the peer holds this generation.
        #[arg(long, value_name = "N")]
        generation: Option<u64>,
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
        Command::Serve { listen, read_timeout } => {
            let mut opts = ServerOptions::new(listen.unwrap_or(node.config.listen));
            opts.read_timeout = read_timeout;
            opts.client_timeouts = settings.timeouts;
            kaana_proto::node::cli::runtime()?.block_on(serve(node, opts))
        }
        Command::Push { contract, all, allow_plaintext, extent_size } => {
            let extent_size = u32::try_from(extent_size).context("--extent-size is too large")?;
            kaana_proto::protocol::manifest::Geometry::new(u64::from(extent_size), extent_size)
                .context("bad --extent-size")?;
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
                backup::check_volume(&node, extent_size, allow_plaintext)?;
            }
            kaana_proto::node::cli::runtime()?.block_on(async {
                tokio::select! {
                    r = push(node, settings, entries, all, extent_size, allow_plaintext) => r,
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
        Command::Restore { contract, out, generation } => {
            let entry = node.find_contract(&contract)?;
            kaana_proto::node::cli::runtime()?.block_on(async {
                let client = settings.client(&node.identity, Traffic::Bulk);
                let r =
                    backup::restore(&client, &node, &entry, Some(&out), generation, "restore", &bar::Bar::default())
                        .await;
                client.close().await;
                let summary = r.with_context(|| format!("restoring contract {} to {}", entry.id, out.display()))?;
                emit(&summary)?;
                Ok(if summary.ok { Exit::Ok } else { Exit::Attention })
            })
        }
        Command::Verify { contract, all } => {
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
            kaana_proto::node::cli::runtime()?.block_on(verify(node, settings, entries, all))
        }
        Command::Status => status(&node),
        Command::Completions { .. } | Command::Man => Ok(Exit::Ok),
    }
}

/// Pushes a few contracts at a time; prints one line per contract.
async fn push(
    node: Node,
    settings: Settings,
    entries: Vec<ContractEntry>,
    all: bool,
    extent_size: u32,
    allow_plaintext: bool,
) -> anyhow::Result<Exit> {
    const AT_ONCE: usize = 2;
    let node = Arc::new(node);
    let client = Arc::new(settings.client(&node.identity, Traffic::Bulk));
    let permits = Arc::new(tokio::sync::Semaphore::new(AT_ONCE));
    let mut tasks = tokio::task::JoinSet::new();
    for entry in entries {
        let (node, client, permits) = (node.clone(), client.clone(), permits.clone());
        tasks.spawn(async move {
            let _permit = permits.acquire_owned().await;
            let r = backup::push(&client, &node, &entry, extent_size, allow_plaintext, &bar::Bar::default()).await;
            (entry, r)
        });
    }
    let (mut last_error, mut breaches) = (None, 0);
    while let Some(done) = tasks.join_next().await {
        let (entry, result) = done?;
        match result {
            Ok(summary) => emit(&summary)?,
            Err(e) => {
                // A breach found by the audit before the push needs a person; it is no error.
                let breach = matches!(e, backup::BackupError::Breach(_));
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
async fn verify(node: Node, settings: Settings, entries: Vec<ContractEntry>, all: bool) -> anyhow::Result<Exit> {
    let client = settings.client(&node.identity, Traffic::Bulk);
    let mut exit = Exit::Ok;
    for entry in entries {
        let r = backup::restore(&client, &node, &entry, None, None, "verify", &bar::Bar::default()).await;
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
}

fn status(node: &Node) -> anyhow::Result<Exit> {
    for entry in node.contracts()? {
        let copy = |m: &kaana_proto::protocol::manifest::Manifest, stored| CopyLine {
            generation: m.generation,
            bytes: m.volume_size,
            extents: m.extent_count,
            committed_at: m.created_at,
            stored_bytes: stored,
        };
        let ours =
            kaana_proto::store::outbound::Target::from_record(node, &entry.id)?.map(|t| copy(&t.manifest.body, None));
        let inbound = Inbound::new(&node.config.storage, &entry.id);
        let stored = inbound.stored_bytes()?;
        let theirs = inbound.committed()?.map(|(m, _)| copy(&m.body, Some(stored)));
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

async fn serve(node: Node, opts: ServerOptions) -> anyhow::Result<Exit> {
    let id = node.id();
    let server = Server::bind(node, opts, std::sync::Arc::new(kaana_proto::node::report::Stderr("kaana-sync serve")))?;
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
