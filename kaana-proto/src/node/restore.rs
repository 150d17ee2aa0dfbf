//! The owner's side of restore and verify, and of what it asks the holder first: which
//! generations it keeps (its history), and, for a node rebuilt from its recovery phrase, which
//! contracts there are.
//!
//! Longer than 400 lines: one restore (the generation to read, a racing push, resuming, each
//! extent fetched, checked, decoded and written) with the two questions it shares its
//! connection and checks with.
//!
//! Restore fetches a kept manifest (the newest, or one of the history), checks this node signed
//! it, and fetches, checks, decodes and writes each extent at its offset; extents already right
//! in the output are not fetched again, so a restore resumes. Verify is the same, writing
//! nothing. Memory stays bounded: a few extents are in flight whatever the volume's size.

use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::net::transport::{Client, Connection, NetError};
use crate::net::wire::{KeptGeneration, Request, Response};
use crate::node::backup::{BackupError, Finish, connect, fetch_manifest, net};
use crate::node::machine::now_from_env;
use crate::node::report::Report;
use crate::protocol::history;
use crate::protocol::identity::NodeId;
use crate::protocol::manifest::{ExtentHash, Geometry, Keystream, Manifest};
use crate::protocol::market::RecordId;
use crate::protocol::record::Signed;
use crate::protocol::time::Timestamp;
use crate::store::buffer::{OutFile, Pool, Pooled};
use crate::store::files::ContractEntry;
use crate::store::home::StateError;
use crate::store::node::Node;

/// Extents a restore fetches at once: about 16 MiB in flight, between 4 and 12 extents (a
/// connection takes 16 streams at once; a few stay free). Small extents need more in flight to
/// hide each request's round trip (1 MiB extents: 2.35 s at 4, 1.66 s at 12 for 512 MiB).
fn restore_in_flight(extent_size: u32) -> usize {
    ((16usize << 20) / extent_size.max(1) as usize).clamp(4, 12)
}
/// What a restore or verify found: the JSON line `kaana-sync restore`/`verify` prints.
#[derive(Debug, Clone, Serialize)]
pub struct RestoreSummary {
    /// The contract.
    pub contract: RecordId,
    /// The holder.
    pub peer: NodeId,
    /// The generation read back.
    pub generation: u64,
    /// The volume's size.
    pub bytes: u64,
    /// Whether every extent came back and matched.
    pub ok: bool,
    /// Extents in the volume.
    pub extents: u64,
    /// Extents fetched from the holder (the rest were already right in the output).
    pub extents_fetched: u64,
    /// Extents missing or wrong at the holder.
    pub bad_extents: u64,
    /// Seconds taken.
    pub secs: f64,
}

/// The generations the holder of `entry` keeps of this node's copy, oldest first.
pub async fn history(client: &Client, node: &Node, entry: &ContractEntry) -> Result<Vec<KeptGeneration>, BackupError> {
    let conn = connect(client, node, entry.state.peer).await?;
    let kept = list_generations(&conn, entry).await;
    conn.close();
    kept
}

async fn list_generations(conn: &Connection, entry: &ContractEntry) -> Result<Vec<KeptGeneration>, BackupError> {
    let err = net(entry.state.peer);
    match conn.request(&Request::ListGenerations { contract: entry.id }).await.map_err(&err)? {
        Response::Generations { mut generations } => {
            generations.sort_by_key(|g| g.generation);
            Ok(generations)
        }
        other => Err(err(NetError::Unexpected { request: "list_generations", reply: format!("{other:?}") })),
    }
}

/// When each generation this node recorded the holder committing was committed, by what it
/// signed and the holder receipted ([`history::committed_at`]), oldest first.
fn recorded_times(node: &Node, entry: &ContractEntry) -> Result<Vec<(u64, Timestamp)>, StateError> {
    let record = crate::store::outbound::Outbound::at(node.home.root(), &entry.id);
    let _shared = record.lock(false)?;
    Ok(record
        .manifests()?
        .iter()
        .map(|(m, r)| (m.body.generation, history::committed_at(m.body.created_at, r.as_ref().map(|r| r.body.at))))
        .collect())
}

/// Which generation a restore or verify reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pick {
    /// The newest the holder committed.
    Newest,
    /// This one.
    Generation(u64),
    /// The newest committed at or before this time.
    At(Timestamp),
}

/// Fetches one extent into a buffer from `pool`.
async fn get_extent(
    conn: &Connection,
    contract: RecordId,
    hash: ExtentHash,
    len: usize,
    pool: &Pool,
) -> Result<Pooled, NetError> {
    let mut ex = conn.open(&Request::GetExtent { contract, hash }).await?;
    ex.finish()?;
    match ex.reply().await? {
        Response::ExtentIs { len: got } if got as usize == len => {
            let mut data = pool.take_or_new();
            data.set_len(len);
            ex.read_bulk(&mut data, "extent bytes").await?;
            Ok(data)
        }
        other => Err(ex.unexpected(&other)),
    }
}

/// Reads back this node's copy under `entry`: with `out`, writes the decoded volume there
/// (skipping extents already right, so a restore resumes); without, only checks (a drill). If
/// the holder commits a newer generation while this runs (a push of ours racing it), extents
/// of the older one go missing: the restore then starts again on the newer one (keeping what
/// is already right), a few times at most.
pub async fn restore(
    client: &Client,
    node: &Node,
    entry: &ContractEntry,
    out: Option<&Path>,
    pick: Pick,
    what: &str,
    report: &dyn Report,
) -> Result<RestoreSummary, BackupError> {
    let started = Instant::now();
    // The last generation this node pushed and the holder receipted: the holder must serve at
    // least that one (unless another is asked for). Unknown after a rebuild from the phrase.
    let last = match crate::store::outbound::Target::from_record(node, &entry.id) {
        Ok(t) => t.filter(|t| t.receipt.is_some()).map(|t| t.manifest.body.generation),
        Err(e) => {
            report.say(&format!(
                "this node's record of its copy is unreadable ({e}): the holder's generation is not checked"
            ));
            None
        }
    };
    let conn = connect(client, node, entry.state.peer).await?;
    let want_generation = match pick {
        Pick::Newest => None,
        Pick::Generation(g) => Some(g),
        Pick::At(at) => {
            let kept = list_generations(&conn, entry).await?;
            // The holder's newest must be at least the last this node pushed and it committed.
            let newest = kept.last().map_or(0, |g| g.generation);
            if let Some(last) = last.filter(|l| newest < *l) {
                conn.close();
                return Err(BackupError::Stale { have: newest, last });
            }
            let recorded = recorded_times(node, entry).unwrap_or_default();
            let listed: Vec<(u64, Timestamp)> = kept.iter().map(|g| (g.generation, g.committed_at)).collect();
            let times = history::times_to_trust(&recorded, &listed);
            match history::at_or_before(&times, at) {
                Some(g) => Some(g),
                None => {
                    conn.close();
                    return Err(BackupError::NoneAt { at, oldest: kept.first().map(|g| g.committed_at) });
                }
            }
        }
    };
    let mut fetched = match fetch_manifest(&conn, node, entry, want_generation).await {
        Err(BackupError::Net { error: NetError::Remote(e), .. })
            if want_generation.is_some() && e.code == crate::net::wire::ErrorCode::NotFound =>
        {
            conn.close();
            return Err(BackupError::NotKept { generation: want_generation.unwrap_or(0), why: e.message });
        }
        other => other?,
    };
    // A generation committed at or before a time was signed before it, by this node's clock.
    if let Pick::At(at) = pick
        && fetched.0.body.created_at > at
    {
        conn.close();
        return Err(BackupError::Claim {
            peer: entry.state.peer,
            what: format!(
                "generation {} was committed at or before {at}, but this node signed it at {}",
                fetched.0.body.generation, fetched.0.body.created_at
            ),
        });
    }
    let mut attempts = 0;
    loop {
        let generation = fetched.0.body.generation;
        if let Some(want) = want_generation.filter(|w| *w != generation) {
            return Err(BackupError::Generation { have: generation, want });
        }
        if let Some(last) = last.filter(|l| want_generation.is_none() && generation < *l) {
            conn.close();
            return Err(BackupError::Stale { have: generation, last });
        }
        let result = restore_generation(&conn, node, entry, fetched, out, (what, report), started).await;
        let missing = match &result {
            Err(BackupError::Net { error: NetError::Remote(e), .. }) => e.code == crate::net::wire::ErrorCode::NotFound,
            Ok(summary) => summary.bad_extents > 0,
            Err(_) => false,
        };
        if missing && want_generation.is_none() && attempts < 3 {
            attempts += 1;
            let newer = fetch_manifest(&conn, node, entry, None).await?;
            if newer.0.body.generation > generation {
                fetched = newer;
                continue;
            }
        }
        conn.close();
        return result;
    }
}

/// [`restore`] of one generation, whose manifest and extent hashes were fetched.
async fn restore_generation(
    conn: &Connection,
    node: &Node,
    entry: &ContractEntry,
    (manifest, hashes): (Signed<Manifest>, Vec<ExtentHash>),
    out: Option<&Path>,
    (what, report): (&str, &dyn Report),
    started: Instant,
) -> Result<RestoreSummary, BackupError> {
    let (id, peer) = (entry.id, entry.state.peer);
    let generation = manifest.body.generation;
    let g = manifest.body.geometry()?;
    // Extents already right in an existing output are not fetched again; a new (or empty)
    // output has none, so it is not read back at all.
    let mut resume = false;
    let file = match out {
        Some(path) => {
            let output = |error| BackupError::Output { path: path.to_owned(), error };
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .open(path)
                .map_err(output)?;
            let meta = f.metadata().map_err(output)?;
            resume = !meta.is_file() || meta.len() > 0;
            if meta.is_file() {
                f.set_len(g.volume_size).map_err(output)?;
            }
            Some(Arc::new(OutFile::new(f, path)))
        }
        None => None,
    };
    report.start(what, g.volume_size);
    let _finish = Finish(report);
    let keystream = Keystream::new(&node.identity, &id);
    let in_flight = crate::node::backup::in_flight(conn.rate_limit(), restore_in_flight(g.extent_size));
    let permits = Arc::new(Semaphore::new(in_flight));
    let pool = Pool::new(in_flight);
    let mut tasks: JoinSet<Result<Fetched, BackupError>> = JoinSet::new();
    // The first error stops the restore, but only once every extent under way has finished:
    // a write of this generation landing after the restore starts again on a newer one would
    // put an old extent over a new one (a task dropped mid-write stops waiting, not writing).
    let mut tally = Tally { peer, fetched: 0, bad: 0, failed: None };
    for (index, hash) in hashes.into_iter().enumerate() {
        let index = index as u64;
        let permit = permits.clone().acquire_owned().await.map_err(|e| net(peer)(NetError::Lost(e.to_string())))?;
        let (conn, file, keystream, pool) = (conn.clone(), file.clone(), keystream.clone(), pool.clone());
        let out_path = out.map(Path::to_owned);
        tasks.spawn(async move {
            let _permit = permit;
            restore_extent(&conn, id, peer, g, index, hash, file, out_path, keystream, resume, pool).await
        });
        while let Some(done) = tasks.try_join_next() {
            tally.add(done);
        }
        report.advance(g.len(index) as u64);
        if tally.failed.is_some() {
            break;
        }
    }
    while let Some(done) = tasks.join_next().await {
        tally.add(done);
    }
    let Tally { fetched, bad, failed, .. } = tally;
    if let Some(e) = failed {
        return Err(e);
    }
    if let (Some(f), Some(path)) = (&file, out) {
        f.file().sync_all().map_err(|error| BackupError::Output { path: path.to_owned(), error })?;
    }
    let now = now_from_env().map_err(|e| StateError::damaged(node.home.root(), e))?;
    let kind = if out.is_some() { "restore" } else { "verify" };
    node.log_event(now, kind, json!({"contract": id, "peer": peer, "generation": generation, "bad_extents": bad}))?;
    Ok(RestoreSummary {
        contract: id,
        peer,
        generation,
        bytes: g.volume_size,
        ok: bad == 0,
        extents: g.count(),
        extents_fetched: fetched,
        bad_extents: bad,
        secs: started.elapsed().as_secs_f64(),
    })
}

/// What became of the extents of a restore so far, and its first error.
struct Tally {
    peer: NodeId,
    fetched: u64,
    bad: u64,
    failed: Option<BackupError>,
}

impl Tally {
    fn add(&mut self, done: Result<Result<Fetched, BackupError>, tokio::task::JoinError>) {
        match done.map_err(|e| net(self.peer)(NetError::Lost(e.to_string()))).and_then(|r| r) {
            Ok(Fetched::Already) => {}
            Ok(Fetched::Got) => self.fetched += 1,
            Ok(Fetched::Bad) => self.bad += 1,
            Err(e) => {
                self.failed.get_or_insert(e);
            }
        }
    }
}

/// What became of one extent in a restore.
enum Fetched {
    /// It was already right in the output.
    Already,
    /// It came from the holder and checked out.
    Got,
    /// It is missing or wrong at the holder.
    Bad,
}

#[allow(clippy::too_many_arguments)]
async fn restore_extent(
    conn: &Connection,
    id: RecordId,
    peer: NodeId,
    g: Geometry,
    index: u64,
    hash: ExtentHash,
    file: Option<Arc<OutFile>>,
    out: Option<PathBuf>,
    keystream: Keystream,
    resume: bool,
    pool: Pool,
) -> Result<Fetched, BackupError> {
    let (offset, len) = (g.offset(index), g.len(index));
    let output = |error| BackupError::Output { path: out.clone().unwrap_or_default(), error };
    if let Some(f) = file.as_ref().filter(|_| resume) {
        // Resume: an extent already right in the output is not fetched again.
        let (f, ks, mut buf) = (f.clone(), keystream.clone(), pool.take_or_new());
        let already = tokio::task::spawn_blocking(move || {
            buf.set_len(len);
            f.file().read_exact_at(&mut buf, offset)?;
            ks.apply(offset, &mut buf);
            Ok::<_, std::io::Error>(*blake3::hash(&buf).as_bytes() == hash)
        })
        .await
        .map_err(|e| output(std::io::Error::other(e)))?
        .map_err(output)?;
        if already {
            return Ok(Fetched::Already);
        }
    }
    let mut data = match get_extent(conn, id, hash, len, &pool).await {
        Ok(d) => d,
        // A drill counts what the holder says it lacks; a holder too busy to serve, or failing
        // itself, has not shown the copy damaged: that is an error, as an unreachable holder.
        Err(NetError::Remote(e))
            if file.is_none()
                && !matches!(
                    e.code,
                    crate::net::wire::ErrorCode::Busy
                        | crate::net::wire::ErrorCode::Timeout
                        | crate::net::wire::ErrorCode::Internal
                ) =>
        {
            return Ok(Fetched::Bad);
        }
        Err(e) => return Err(BackupError::Net { peer, error: e }),
    };
    // Checked, decoded and written off the runtime's threads, which keep the connection moving.
    let right = tokio::task::spawn_blocking(move || {
        if *blake3::hash(&data).as_bytes() != hash {
            return Ok(false);
        }
        if let Some(f) = file {
            keystream.apply(offset, &mut data);
            f.write_at(&data, offset)?;
        }
        Ok::<_, std::io::Error>(true)
    })
    .await
    .map_err(|e| output(std::io::Error::other(e)))?
    .map_err(output)?;
    match (right, out.is_some()) {
        (true, _) => Ok(Fetched::Got),
        (false, false) => Ok(Fetched::Bad),
        (false, true) => Err(BackupError::BadExtent { index }),
    }
}

/// Asks every peer in the address book which contracts this node has with it, and stores the
/// ones it does not know (for a node rebuilt from its recovery phrase). Returns them, and which
/// peers could not be asked.
pub async fn fetch_contracts(client: &Client, node: &Node) -> Result<Recovered, BackupError> {
    use crate::store::files::{ContractState, Role};
    let me = node.id();
    let mut fetched = Recovered::default();
    for (peer, entry) in node.address_book()?.peers {
        fetched.asked += 1;
        let reply = match client.connect_any(peer, &entry.addrs).await {
            Ok(conn) => {
                let r = conn.request(&Request::ListContracts).await;
                conn.close();
                r
            }
            Err(e) => Err(e),
        };
        let contracts = match reply {
            Ok(Response::Contracts { contracts }) => contracts,
            Ok(Response::Error(e)) => {
                fetched.unreached.push((peer, format!("it refused: {}", e.message)));
                continue;
            }
            Ok(_) => {
                fetched.unreached.push((peer, "a reply that is not a list of contracts".into()));
                continue;
            }
            Err(e) => {
                fetched.unreached.push((peer, e.to_string()));
                continue;
            }
        };
        for contract in contracts {
            if contract.verify().is_err() || contract.body.peer_of(&me) != Some(peer) {
                continue;
            }
            let id = contract.id()?;
            if node.contract(&id).is_ok() {
                continue;
            }
            let role = if contract.body.offerer == me { Role::Offerer } else { Role::Taker };
            let _lock = node.home.lock()?;
            node.save_new_contract(&contract, &ContractState::new(role, peer))?;
            fetched.found.push(id);
        }
    }
    Ok(fetched)
}

/// What [`fetch_contracts`] recovered.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Contracts found and kept.
    pub found: Vec<RecordId>,
    /// Peers asked.
    pub asked: usize,
    /// Peers that could not be asked, and why.
    pub unreached: Vec<(NodeId, String)>,
}
