//! `kaana-prune`: deletes peers' data whose grace period has run out, and cleans leftovers.
//!
//! Whether a peer's data may go is the fairness rules' decision
//! ([`kaana_proto::protocol::fairness::deletion`]); before deleting a failing peer's data, prune checks
//! that this node reaches its peers, since a node cut off from everyone must not delete the
//! data of peers that could not reach it. It builds a plan first and prints it (one JSON line
//! per step); `--dry-run` stops there. Each step is checked again, under the state lock, just
//! before it is applied, so data whose peer turned `ok` in the meantime is never touched. A
//! contract is marked ended before its data is deleted: a prune killed midway leaves an ended
//! contract with some data left, never an active one with data gone, and the next run removes
//! what is left.

use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use clap::Parser;
use serde::Serialize;
use serde_json::json;

use kaana_proto::node::cli::{Exit, emit};
use kaana_proto::node::machine::Settings;
use kaana_proto::node::machine::now_from_env;
use kaana_proto::protocol::fairness::health::Health;
use kaana_proto::protocol::identity::NodeId;
use kaana_proto::protocol::market::RecordId;
use kaana_proto::protocol::prune::{self, Held, Plan, Term};
use kaana_proto::protocol::size::format_size;
use kaana_proto::protocol::time::Timestamp;
use kaana_proto::store::files::{ContractEntry, Status};
use kaana_proto::store::inbound::Inbound;
use kaana_proto::store::node::Node;
use kaana_proto::store::outbound::Outbound;

/// How old a leftover must be before it is removed: an interrupted push may still resume.
pub const SAFE_AGE: Duration = Duration::from_secs(24 * 3_600);

/// Delete peers' data whose grace period has run out, and clean leftovers.
///
/// Plans first and prints the plan, one JSON line per step (contract, peer, action, bytes,
/// reason); `--dry-run` stops there. Data of a contract whose peer is ok is never touched.
/// Exit codes: 0 all well, 2 error.
#[derive(Debug, Parser)]
#[command(name = "kaana-prune", version)]
pub struct Args {
    #[command(flatten)]
    pub home: kaana_proto::node::cli::HomeArgs,
    /// Print the plan and change nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also remove data for contracts this node does not know (it is otherwise reported and
    /// kept: a node rebuilt with `init --recover` knows its contracts only after
    /// `kaana-offer contracts --fetch`). Never within 7 days of `init --recover`.
    #[arg(long)]
    pub leftovers: bool,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Other things to do.
#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `kaana-prune man > kaana-prune.1`.
    Man,
}

/// A step as printed: `dry_run` says whether it is only planned (`--dry-run`) or applied now.
#[derive(Serialize)]
struct Line<'a> {
    #[serde(flatten)]
    step: &'a Step,
    dry_run: bool,
}

/// One step of the plan, as printed.
#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// The contract concerned, if any.
    pub contract: Option<RecordId>,
    /// Its peer, if known.
    pub peer: Option<NodeId>,
    /// `delete` (end the contract, delete the peer's data), `remove_leftovers` (files of
    /// interrupted pushes), `remove_orphan` (data of an ended or unknown contract, or this
    /// node's record of its copy under a contract that ended its grace ago),
    /// `remove_temp` (stray temp files).
    pub action: &'static str,
    /// Bytes it frees.
    pub bytes: u64,
    /// Why.
    pub reason: String,
    #[serde(skip)]
    work: Work,
}

#[derive(Debug, Clone)]
enum Work {
    End(RecordId),
    Leftovers(RecordId),
    RemoveDir(PathBuf),
    RemoveFiles(Vec<PathBuf>),
}

/// Runs `kaana-prune`.
pub fn run(args: Args, settings: Settings) -> anyhow::Result<Exit> {
    match args.command {
        Some(Command::Completions { shell }) => return kaana_proto::node::cli::print_completions::<Args>(shell),
        Some(Command::Man) => return kaana_proto::node::cli::print_man::<Args>(),
        None => {}
    }
    let node = args.home.open(&settings)?;
    let now = now_from_env()?;
    let steps = plan(&node, &settings, now, args.leftovers)?;
    for step in &steps {
        emit(&Line { step, dry_run: args.dry_run })?;
    }
    if args.dry_run {
        let total: u64 = steps.iter().map(|s| s.bytes).sum();
        eprintln!("kaana-prune: dry run: {} step(s) would free {}", steps.len(), format_size(total));
        return Ok(Exit::Ok);
    }
    let mut freed = 0;
    let mut done = 0;
    for step in &steps {
        if let Some(bytes) = apply(&node, step, now)? {
            freed += bytes;
            done += 1;
        }
    }
    // Said only when something was done: cron mails whatever a tool writes to stderr, and a
    // night with nothing to prune needs nobody.
    if done > 0 {
        eprintln!("kaana-prune: {done} step(s) applied, {} freed", format_size(freed));
    }
    Ok(Exit::Ok)
}

/// The contract's term, as the prune rules see it.
fn term(status: &Status) -> Term {
    match status {
        Status::Active => Term::Active,
        Status::Terminated { delete_after, .. } => Term::Notice { delete_after: *delete_after },
        Status::Ended { .. } => Term::Ended,
    }
}

/// Checks that this node reaches its peers (those it is not silent toward), if a failing
/// peer's grace has run out: the rules delete nothing while its own connection is in doubt.
fn check_reach(
    node: &Node,
    settings: &Settings,
    contracts: &[ContractEntry],
    now: Timestamp,
) -> anyhow::Result<Health> {
    let due = contracts
        .iter()
        .any(|e| !matches!(e.state.status, Status::Ended { .. }) && e.state.their_standing.expired(now));
    if !due {
        return Ok(node.health()?);
    }
    // Not a peer this node is silent toward (a deliberate failure): toward it, the node is down.
    let silent = node.silent_peers(now)?;
    let mut peers: Vec<NodeId> = contracts
        .iter()
        .filter(|e| !matches!(e.state.status, Status::Ended { .. }) && !silent.contains(&e.state.peer))
        .map(|e| e.state.peer)
        .collect();
    peers.sort();
    peers.dedup();
    kaana_proto::node::cli::runtime()?.block_on(async {
        let client = std::sync::Arc::new(settings.client(node, kaana_proto::net::transport::Traffic::Short));
        let (conns, reach) = kaana_proto::node::audit::connect_all(&client, node, &peers, now).await?;
        for c in conns.into_iter().filter_map(|(_, c)| c.ok()) {
            c.close();
        }
        client.close().await;
        Ok(node.record_health(now, reach)?)
    })
}

/// Builds the plan. `leftovers`: also remove data of contracts this node does not know.
pub fn plan(node: &Node, settings: &Settings, now: Timestamp, leftovers: bool) -> anyhow::Result<Vec<Step>> {
    let mut steps = Vec::new();
    let before = UNIX_EPOCH + Duration::from_secs(now.unix()) - SAFE_AGE;
    let contracts = node.contracts()?;
    let health = check_reach(node, settings, &contracts, now)?;
    for entry in &contracts {
        let store = Inbound::new(&node.config.storage, &entry.id);
        let (contract, peer) = (Some(entry.id), Some(entry.state.peer));
        let term = term(&entry.state.status);
        let standing = entry.state.their_standing;
        let mut held = Held { exists: store.dir().exists(), stale_files: 0 };
        let mut plan = prune::for_contract(term, standing, held, now, &health);
        // The files no generation needs are looked for only in data that stays.
        let mut stale = Vec::new();
        if plan == Plan::Keep && term != Term::Ended {
            // Under the store's lock: a commit may be replacing the generation.
            let _shared = store.lock(false)?;
            stale = store.leftovers(before)?;
            held.stale_files = stale.len();
            plan = prune::for_contract(term, standing, held, now, &health);
        }
        let (action, reason, bytes, work) = match plan {
            Plan::Keep => continue,
            Plan::Hold(why) => {
                eprintln!("kaana-prune: contract {}: {why}", entry.id.short());
                continue;
            }
            Plan::Delete(reason) => ("delete", reason, store.size_on_disk(), Work::End(entry.id)),
            Plan::RemoveOrphan(reason) => {
                ("remove_orphan", reason, store.size_on_disk(), Work::RemoveDir(store.dir().to_owned()))
            }
            Plan::RemoveStale(reason) => {
                ("remove_leftovers", reason, stale.iter().map(|(_, n)| n).sum(), Work::Leftovers(entry.id))
            }
        };
        steps.push(Step { contract, peer, action, bytes, reason, work });
    }
    // This node's records of its own copies under contracts that ended more than their grace ago.
    for entry in &contracts {
        let Status::Ended { at, .. } = &entry.state.status else { continue };
        let grace = entry.contract.body.grace_secs;
        let record = Outbound::at(node.home.root(), &entry.id);
        if prune::keeps_record(*at, grace, now) || !record.dir().exists() {
            continue;
        }
        steps.push(Step {
            contract: Some(entry.id),
            peer: Some(entry.state.peer),
            action: "remove_orphan",
            bytes: Inbound::at_dir(record.dir()).size_on_disk(),
            reason: format!(
                "this node's record of its copy at the peer: the contract ended at {at}, its grace ({grace}s) ago or more"
            ),
            work: Work::RemoveDir(record.dir().to_owned()),
        });
    }
    // Stores of contracts this node does not know at all: kept and reported, unless a person
    // asks (a node rebuilt from its phrase knows its contracts only once it fetched them back).
    let recovered = node.recovered_at()?;
    let inbound_root = node.config.storage.join("inbound");
    for dir in std::fs::read_dir(&inbound_root).into_iter().flatten().flatten() {
        let name = dir.file_name().to_string_lossy().into_owned();
        let known = name.parse::<RecordId>().is_ok_and(|id| contracts.iter().any(|e| e.id == id));
        if known {
            continue;
        }
        let store_bytes = Inbound::at_dir(&dir.path()).size_on_disk();
        match prune::for_unknown(leftovers, recovered, old(&dir.path(), before), now) {
            Plan::Hold(why) => eprintln!(
                "kaana-prune: {}: {} of data for no contract this node knows, kept (run `kaana-offer contracts --fetch` \
                 to bring its contract back); {why}",
                dir.path().display(),
                format_size(store_bytes)
            ),
            Plan::RemoveOrphan(reason) => steps.push(Step {
                contract: name.parse().ok(),
                peer: None,
                action: "remove_orphan",
                bytes: store_bytes,
                reason,
                work: Work::RemoveDir(dir.path()),
            }),
            _ => {}
        }
    }
    // Temp files of atomic writes that a crash left behind.
    let temps = stray_temps(node.home.root(), before);
    if !temps.is_empty() {
        let bytes = temps.iter().map(|p| std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)).sum();
        let reason = format!("{} temp file(s) left by interrupted writes, older than 24h", temps.len());
        steps.push(Step {
            contract: None,
            peer: None,
            action: "remove_temp",
            bytes,
            reason,
            work: Work::RemoveFiles(temps),
        });
    }
    Ok(steps)
}

fn old(path: &Path, before: std::time::SystemTime) -> bool {
    std::fs::metadata(path).and_then(|m| m.modified()).is_ok_and(|m| m < before)
}

fn stray_temps(dir: &Path, before: std::time::SystemTime) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            if name != "inbound" {
                out.extend(stray_temps(&path, before));
            }
        } else if name.starts_with('.') && name.ends_with(".tmp") && old(&path, before) {
            out.push(path);
        }
    }
    out
}

/// Applies a step, checking again first; returns the bytes freed, or `None` if it no longer
/// applies.
fn apply(node: &Node, step: &Step, now: Timestamp) -> anyhow::Result<Option<u64>> {
    match &step.work {
        Work::End(id) => {
            let store = Inbound::new(&node.config.storage, id);
            let bytes = store.size_on_disk();
            {
                let _lock = node.home.lock()?;
                let mut entry = node.contract(id)?;
                let held = Held { exists: true, stale_files: 0 };
                let decided = prune::for_contract(
                    term(&entry.state.status),
                    entry.state.their_standing,
                    held,
                    now,
                    &node.health()?,
                );
                let Plan::Delete(reason) = decided else {
                    eprintln!("kaana-prune: contract {id} no longer expires now; left alone");
                    return Ok(None);
                };
                // Ended first: from here the server refuses the peer's pushes and challenges,
                // and a crash leaves an ended contract whose leftovers the next run removes.
                // A notice that ended it is kept, to show a peer that still asks.
                let notice = match &entry.state.status {
                    Status::Terminated { notice, .. } => Some(notice.clone()),
                    _ => None,
                };
                entry.state.status = Status::Ended { at: now, reason: reason.clone(), notice };
                node.save_contract_state(id, &entry.state)?;
                node.log_event(
                    now,
                    "prune",
                    json!({"contract": id, "peer": entry.state.peer, "bytes": bytes, "reason": reason}),
                )?;
            }
            store.remove_all()?;
            Ok(Some(bytes))
        }
        Work::Leftovers(id) => {
            // Found again under the store's lock: a commit since the plan keeps what it names.
            let before = UNIX_EPOCH + Duration::from_secs(now.unix()) - SAFE_AGE;
            Ok(Some(Inbound::new(&node.config.storage, id).remove_leftovers(before)?))
        }
        Work::RemoveDir(dir) => {
            let bytes = Inbound::at_dir(dir).size_on_disk();
            Inbound::at_dir(dir).remove_all()?;
            Ok(Some(bytes))
        }
        Work::RemoveFiles(files) => {
            let mut bytes = 0;
            for f in files {
                let len = std::fs::metadata(f).map(|m| m.len()).unwrap_or(0);
                match std::fs::remove_file(f) {
                    Ok(()) => bytes += len,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(anyhow::Error::new(e).context(format!("removing {}", f.display()))),
                }
            }
            Ok(Some(bytes))
        }
    }
}
