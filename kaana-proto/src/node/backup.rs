//! The owner's side of push, restore and verify.
//!
//! Longer than 400 lines: push, restore and verify share the keystream, the connection's error
//! mapping and the holder's replies; a third is restore.
//!
//! Push reads the volume in extents on every core, XORs each with the contract's keystream,
//! hashes it, and sends only what the holder does not already have, a few extents in flight; the
//! holder's answer to `push_begin` is what makes an interrupted push resume. Memory stays
//! bounded: a handful of extents are in flight whatever the volume's size. Restore fetches the
//! committed manifest, checks this node signed it, and fetches, checks, decodes and writes each
//! extent; extents already right in the output are not fetched again.

use std::collections::HashSet;
use std::fs::OpenOptions;
use std::os::unix::fs::{FileExt as _, OpenOptionsExt as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;
use serde_json::json;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::net::transport::{Client, Connection, NetError, read_exact};
use crate::net::wire::{KeptGeneration, Request, Response};
use crate::node::machine::now_from_env;
use crate::node::report::Report;
use crate::protocol::encoding;
use crate::protocol::history;
use crate::protocol::identity::NodeId;
use crate::protocol::manifest::{ExtentHash, Geometry, Keystream, Manifest, ManifestError, encode_list, list_hash};
use crate::protocol::market::RecordId;
use crate::protocol::proof;
use crate::protocol::push;
use crate::protocol::record::{RecordError, Signed};
use crate::protocol::time::Timestamp;
use crate::store::buffer::{OutFile, Pool, Pooled};
use crate::store::files::ContractEntry;
use crate::store::home::StateError;
use crate::store::node::Node;
use crate::store::outbound::Outbound;
use crate::store::volume::{Volume, VolumeError};

/// Extents a push has in flight at once. The holder writes and syncs each before it answers, so
/// a push is bound by that latency unless several are under way (measured, 2 GiB: 4 at once
/// 6.7-8.1 s, 8 at once 4.8-5.6 s, 12 no better). Memory does not grow with it: a buffer goes
/// back to the pool once its bytes are acknowledged, before the holder's answer.
const PUSH_IN_FLIGHT: usize = 8;
/// Buffers beyond those the readers fill and queue: the extents being sent and not yet
/// acknowledged (the send window is 4 MiB, so about one).
const SENDING: usize = 2;

/// Extents a restore fetches at once: about 16 MiB in flight, between 4 and 12 extents (a
/// connection takes 16 streams at once; a few stay free). Small extents need more in flight to
/// hide each request's round trip (1 MiB extents: 2.35 s at 4, 1.66 s at 12 for 512 MiB).
fn restore_in_flight(extent_size: u32) -> usize {
    ((16usize << 20) / extent_size.max(1) as usize).clamp(4, 12)
}
/// Extents read and hashed ahead of the sender.
const READ_AHEAD: usize = 2;

/// Why a push, restore or verify failed.
#[derive(Debug, Error)]
pub enum BackupError {
    /// The volume could not be read.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// The network failed or the peer refused.
    #[error("node {peer}: {error}")]
    Net {
        /// The peer.
        peer: NodeId,
        /// What happened.
        error: NetError,
    },
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// The node has no volume configured.
    #[error("no volume configured: set one with `kaana-offer config set volume PATH`")]
    NoVolume,
    /// The volume is larger than the contract.
    #[error("the volume ({volume} bytes) is larger than contract {contract} ({size} bytes)")]
    TooLarge {
        /// The contract.
        contract: RecordId,
        /// The volume's size.
        volume: u64,
        /// The contract's size.
        size: u64,
    },
    /// The holder's manifest was not signed by this node.
    #[error("the manifest the holder returned is not signed by this node: {0}")]
    NotOurs(RecordError),
    /// The holder's manifest is for another contract or owner.
    #[error("the manifest the holder returned is not this node's copy under contract {0}")]
    WrongManifest(RecordId),
    /// The holder's manifest or list is malformed.
    #[error("the holder's manifest is bad: {0}")]
    Manifest(#[from] ManifestError),
    /// The holder has another generation than the one asked for.
    #[error("the holder has generation {have}, not generation {want}")]
    Generation {
        /// What it has.
        have: u64,
        /// What was asked for.
        want: u64,
    },
    /// The push guard stopped a push: the volume no longer looks like the one pushed before.
    #[error("{0}")]
    Guard(String),
    /// The holder keeps no generation committed at or before the time asked for.
    #[error("the holder keeps no generation committed at or before {at}{}", match .oldest {
        Some(t) => format!(" (the oldest it keeps was committed at {t})"),
        None => " (it keeps none)".into(),
    })]
    NoneAt {
        /// The time asked for.
        at: Timestamp,
        /// When the oldest kept one was committed.
        oldest: Option<Timestamp>,
    },
    /// The holder does not keep the generation asked for.
    #[error("generation {generation} is not kept by the holder: {why} (`kaana-sync history` lists those it keeps)")]
    NotKept {
        /// The generation asked for.
        generation: u64,
        /// What the holder said.
        why: String,
    },
    /// The holder serves a generation older than the last one this node pushed and it
    /// committed: it kept (or went back to) an old copy.
    #[error(
        "the holder serves generation {have}, older than generation {last} it committed for this node: its copy \
         is stale (ask for it with --generation {have} if an old copy is what you want)"
    )]
    Stale {
        /// What it serves.
        have: u64,
        /// What this node last pushed and the holder committed.
        last: u64,
    },
    /// The holder claims something this node knows to be false.
    #[error("node {peer} claims {what}: refused")]
    Claim {
        /// The holder.
        peer: NodeId,
        /// What it claims.
        what: String,
    },
    /// An extent the holder sent does not match the manifest.
    #[error("extent {index} from the holder does not match the manifest")]
    BadExtent {
        /// Its index.
        index: u64,
    },
    /// Signing failed.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The holder lost this node's data inside the grace it promised: nothing is sent.
    #[error("{0}")]
    Breach(String),
    /// An audit before the push could not be made.
    #[error("auditing the holder before the push: {0}")]
    Audit(Box<crate::node::audit::AuditError>),
    /// Writing the output failed.
    #[error("{}: {error}", .path.display())]
    Output {
        /// The output.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
}

/// What a push did: the JSON line `kaana-sync push` prints.
#[derive(Debug, Clone, Serialize)]
pub struct PushSummary {
    /// The contract.
    pub contract: RecordId,
    /// The holder.
    pub peer: NodeId,
    /// The generation the holder now has committed.
    pub generation: u64,
    /// Extents sent.
    pub extents_sent: u64,
    /// Extents in the volume.
    pub extents_total: u64,
    /// Bytes sent.
    pub bytes_sent: u64,
    /// The volume's size.
    pub bytes_total: u64,
    /// Seconds taken.
    pub secs: f64,
    /// Whether nothing had changed since the last push (no new generation).
    pub unchanged: bool,
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

fn net(peer: NodeId) -> impl Fn(NetError) -> BackupError {
    move |error| BackupError::Net { peer, error }
}

async fn connect(client: &Client, node: &Node, peer: NodeId) -> Result<Connection, BackupError> {
    let addrs = node.address_book()?.addrs(&peer).to_vec();
    client.connect_any(peer, &addrs).await.map_err(net(peer))
}

/// Whether this node's volume can be pushed in extents of `extent_size`: configured, readable,
/// of a valid geometry, and encrypted-looking unless `allow_plaintext`.
pub fn check_volume(node: &Node, extent_size: u32, allow_plaintext: bool) -> Result<(), BackupError> {
    let path = node.config.volume.as_deref().ok_or(BackupError::NoVolume)?;
    Volume::open(path, extent_size, allow_plaintext)?;
    Ok(())
}

/// Ends a transfer's report when the transfer ends, however it ends.
struct Finish<'a>(&'a dyn Report);

impl Drop for Finish<'_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

/// What a push may do beyond the usual.
#[derive(Debug, Clone, Copy, Default)]
pub struct PushOptions {
    /// Send a volume that does not look encrypted.
    pub allow_plaintext: bool,
    /// Send a volume the push guard refuses (no longer looks like the one pushed before).
    pub force: bool,
}

/// What a person is told when the push guard stops a push.
fn guarded(previous: u64, why: &str) -> BackupError {
    BackupError::Guard(format!(
        "the volume no longer looks like the one pushed before: {why}. Nothing was committed: the holder keeps \
         generation {previous} as the newest. If this change is wanted (a new volume, a wholesale rewrite), push \
         again with --force"
    ))
}

/// Pushes the node's volume to the holder of `entry`.
pub async fn push(
    client: &Client,
    node: &Node,
    entry: &ContractEntry,
    extent_size: u32,
    opts: PushOptions,
    report: &dyn Report,
) -> Result<PushSummary, BackupError> {
    let started = Instant::now();
    let (id, peer) = (entry.id, entry.state.peer);
    let path = node.config.volume.clone().ok_or(BackupError::NoVolume)?;
    let volume = Arc::new(Volume::open(&path, extent_size, opts.allow_plaintext)?);
    let g = volume.geometry();
    // The guard, first on what the volume looks like: before anything is sent.
    let record = Outbound::at(node.home.root(), &id);
    let shape = volume.shape()?;
    let last_pushed = record.committed()?.map_or(0, |(m, _)| m.body.generation);
    if !opts.force
        && let Some(before) = record.shape()?
        && let Some(why) = push::guard_shape(&before, &shape)
    {
        return Err(guarded(last_pushed, &why));
    }
    report.start(&format!("push {}", id.short()), g.volume_size);
    let _finish = Finish(report);
    if g.volume_size > entry.contract.body.size {
        return Err(BackupError::TooLarge { contract: id, volume: g.volume_size, size: entry.contract.body.size });
    }
    let conn = connect(client, node, peer).await?;
    let err = net(peer);
    let now = now_from_env().map_err(|e| StateError::damaged(node.home.root(), e))?;
    audit_first(&conn, node, entry, now).await?;

    let mut ex =
        conn.open(&Request::PushBegin { contract: id, volume_size: g.volume_size, extent_size }).await.map_err(&err)?;
    ex.finish().map_err(&err)?;
    let (committed, have_count) = match ex.reply().await.map_err(&err)? {
        Response::PushReady { committed, have } => (committed, have),
        other => return Err(err(ex.unexpected(&other))),
    };
    if have_count > push::max_held(entry.contract.body.held_bytes()) {
        return Err(err(NetError::Truncated(format!("the holder claims {have_count} extents"))));
    }
    let mut have_raw = vec![0u8; (have_count * 32) as usize];
    read_exact(&mut ex.recv, &mut have_raw, conn.read_timeout(), "the holder's extent list").await.map_err(&err)?;
    let have: Arc<HashSet<ExtentHash>> =
        Arc::new(have_raw.chunks_exact(32).map(|c| c.try_into().unwrap_or([0; 32])).collect());
    // The holder's committed generation is its claim. Beyond what this node recorded (pushes
    // whose replies were lost), it must show a manifest of that generation this node signed;
    // and no claim may come near where the next generation would wrap.
    let claimed = committed.unwrap_or(0);
    let recorded = Outbound::at(node.home.root(), &id).committed().ok().flatten().map(|(m, _)| m.body.generation);
    let claim = push::judge_claim(claimed, recorded);
    // Any generation beyond this node's record (a reply lost, or a false claim) must be shown,
    // signed by this node and receipted by the holder, and joins the record: the record of
    // what the holder keeps never has a gap the holder made up (the history's challenges rely
    // on it).
    if claimed > recorded.unwrap_or(0) || claim == push::Claim::Refused {
        let shown = match claim {
            push::Claim::Refused => None,
            _ => fetch_copy(&conn, node, entry, None).await.ok().filter(|(m, _, r)| {
                let manifest_id = RecordId::of(&m.body).ok();
                m.body.generation == claimed
                    && r.as_ref().is_some_and(|r| {
                        r.verify_by(&peer).is_ok()
                            && Some(r.body.manifest) == manifest_id
                            && r.body.generation == claimed
                            && r.body.contract == id
                    })
            }),
        };
        let Some((manifest, list, receipt)) = shown else {
            return Err(BackupError::Claim {
                peer,
                what: format!(
                    "to have committed generation {claimed}, beyond the last this node recorded ({}), with no \
                     manifest of it this node signed and no receipt of its own",
                    recorded.unwrap_or(0)
                ),
            });
        };
        let at = history::committed_at(manifest.body.created_at, receipt.as_ref().map(|r| r.body.at));
        let _lock = record.lock(true)?;
        record.record(&manifest, &list, receipt, entry.contract.body.history.as_ref(), at)?;
    }

    // What we sent last time, and the volume's own (pre-keystream) hashes then: an extent whose
    // raw bytes are unchanged, and that the holder still has, needs no keystream and no sending.
    // Read under the record's lock: a challenge or another push may be writing it.
    let shared = record.lock(false)?;
    let previous = record.committed()?;
    let previous_gen = previous.as_ref().map_or(0, |(m, _)| m.body.generation);
    // And the tops kept then (what this node's challenges check shorter proofs against): an
    // extent that is not hashed again keeps its tops.
    let per = 1usize << proof::TOP_LEVELS;
    let previous_tops = match &previous {
        Some((m, _)) if m.body.volume_size == g.volume_size && m.body.extent_size == extent_size => {
            record.tops(m.body.generation).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let previous_raw = match &previous {
        Some((m, _)) if m.body.volume_size == g.volume_size && m.body.extent_size == extent_size => {
            record.raw_hashes(m.body.generation).unwrap_or_default()
        }
        _ => Vec::new(),
    };
    let known: Arc<Vec<Option<(ExtentHash, ExtentHash)>>> = Arc::new(match &previous {
        Some((m, list)) if !previous_raw.is_empty() => {
            let sent = m.body.check_list(list).unwrap_or_default();
            push::reusable(g.count() as usize, &previous_raw, &sent, &have)
        }
        _ => Vec::new(),
    });
    // The guard, then on how much changed: counted as the volume is read, stopped as soon as
    // most of it has (what was sent by then is never committed).
    let mut changed = 0u64;

    drop(shared);
    let keystream = Keystream::new(&node.identity, &id);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool = Pool::new(threads + READ_AHEAD + SENDING);
    let mut rx = spawn_readers(volume, keystream, have, known, threads, pool.clone());
    let permits = Arc::new(Semaphore::new(PUSH_IN_FLIGHT));
    let mut sends: JoinSet<Result<u64, NetError>> = JoinSet::new();
    let mut hashes = vec![[0u8; 32]; g.count() as usize];
    let mut raw_hashes = vec![[0u8; 32]; g.count() as usize];
    let mut tops = vec![[0u8; 32]; g.count() as usize * per];
    let (mut extents_sent, mut bytes_sent) = (0u64, 0u64);
    let mut collect = |r: Result<Result<u64, NetError>, tokio::task::JoinError>| -> Result<(), BackupError> {
        let len = r.map_err(|e| err(NetError::Lost(e.to_string())))?.map_err(&err)?;
        extents_sent += 1;
        bytes_sent += len;
        Ok(())
    };
    loop {
        // A send that failed is heard at once, not only when the readers next hand over an
        // extent: with the link gone, they wait for buffers the dead connection still holds,
        // and a loop that only listened to them would wait for ever.
        let item = tokio::select! {
            Some(done) = sends.join_next(), if !sends.is_empty() => {
                collect(done)?;
                continue;
            }
            item = rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
        };
        let (index, hash, raw_hash, new_tops, data) = item?;
        let i = index as usize;
        if previous_raw.get(i).is_some_and(|r| *r != raw_hash) {
            changed += 1;
            if !opts.force && push::mostly_changed(changed, g.count()) {
                conn.close();
                return Err(guarded(
                    previous_gen,
                    &format!(
                        "more than half of its {} extents changed since generation {previous_gen} (a ransomwared or \
                         wiped volume changes all of them at once)",
                        g.count()
                    ),
                ));
            }
        }
        hashes[i] = hash;
        raw_hashes[i] = raw_hash;
        if let Some(t) =
            new_tops.as_deref().or_else(|| previous_tops.get(i * per..(i + 1) * per)).filter(|t| t.len() == per)
        {
            tops[i * per..(i + 1) * per].copy_from_slice(t);
        }
        report.advance(g.len(index) as u64);
        if let Some(data) = data {
            let permit = permits.clone().acquire_owned().await.map_err(|e| err(NetError::Lost(e.to_string())))?;
            let (conn, offset) = (conn.clone(), g.offset(index));
            sends.spawn(async move {
                let _permit = permit;
                put(&conn, id, offset, hash, data).await
            });
        }
    }
    while let Some(done) = sends.join_next().await {
        collect(done)?;
    }

    let list = encode_list(&hashes);
    let same = previous
        .as_ref()
        .is_some_and(|(m, l)| *l == list && m.body.volume_size == g.volume_size && m.body.extent_size == extent_size);
    let summary = |generation, unchanged| PushSummary {
        contract: id,
        peer,
        generation,
        extents_sent,
        extents_total: g.count(),
        bytes_sent,
        bytes_total: g.volume_size,
        secs: started.elapsed().as_secs_f64(),
        unchanged,
    };
    if same && extents_sent == 0 && committed == Some(previous_gen) {
        conn.close();
        let _lock = record.lock(true)?;
        record.save_raw_hashes(previous_gen, &encode_list(&raw_hashes))?;
        record.save_tops(previous_gen, tops.as_flattened())?;
        record.save_shape(&shape)?;
        return Ok(summary(previous_gen, true));
    }
    // The guard, last on what the commit would cost the history: a change larger than the
    // history allowance retires the generation it replaces at once, leaving no copy of the
    // volume as it was. That is what a wholesale change does, wanted or not.
    let terms = entry.contract.body.history.as_ref();
    if !opts.force && terms.is_some() {
        let kept = {
            let _shared = record.lock(false)?;
            record.generations()?
        };
        let mut views: Vec<history::Generation> =
            kept.iter().map(crate::store::inbound::view).collect::<Result<_, _>>()?;
        let before = views.len();
        views.push(history::Generation {
            generation: previous_gen + 1,
            committed_at: now,
            extents: hashes.iter().enumerate().map(|(i, h)| (*h, g.len(i as u64) as u64)).collect(),
        });
        if before > 0 && history::to_retire(&views, terms, now) >= before {
            conn.close();
            return Err(guarded(
                previous_gen,
                &format!(
                    "this push changes more than the history allowance of {} holds, so committing it would \
                     retire every older generation, generation {previous_gen} too",
                    crate::protocol::size::format_size(history::allowance(terms))
                ),
            ));
        }
    }
    let manifest = Manifest {
        contract: id,
        owner: node.id(),
        generation: previous_gen.max(committed.unwrap_or(0)) + 1,
        volume_size: g.volume_size,
        extent_size,
        extent_count: g.count(),
        extents: encoding::hex_encode(&list_hash(&list)),
        created_at: now,
    };
    let manifest = Signed::sign(manifest, &node.identity)?;
    let mut ex =
        conn.open(&Request::Commit { contract: id, manifest: Box::new(manifest.clone()) }).await.map_err(&err)?;
    let _ = ex.send.write_all(&list).await;
    let _ = ex.finish();
    let (generation, receipt) = match ex.reply().await.map_err(&err)? {
        Response::Committed { generation, receipt, .. } => (generation, receipt),
        other => return Err(err(ex.unexpected(&other))),
    };
    conn.close();
    // The holder's signed word that it holds this generation: what an audit's evidence rests on.
    let manifest_id = RecordId::of(&manifest.body)?;
    let r = &receipt.body;
    if receipt.verify_by(&peer).is_err() || r.manifest != manifest_id || r.generation != generation || r.contract != id
    {
        return Err(err(NetError::Unexpected { request: "commit", reply: "a receipt for something else".into() }));
    }
    {
        // Under the record's lock: a challenge reads the manifest, its list and tops together.
        let _lock = record.lock(true)?;
        let at = history::committed_at(manifest.body.created_at, Some(receipt.body.at));
        record.record(&manifest, &list, Some(receipt), entry.contract.body.history.as_ref(), at)?;
        record.save_raw_hashes(generation, &encode_list(&raw_hashes))?;
        record.save_tops(generation, tops.as_flattened())?;
        record.save_shape(&shape)?;
    }
    node.log_event(
        now,
        "push",
        json!({"contract": id, "peer": peer, "generation": generation, "extents_sent": extents_sent, "bytes_sent": bytes_sent}),
    )?;
    Ok(summary(generation, false))
}

/// Before sending anything, asks the holder how it sees this node; if failing there (or in a
/// deliberate failure of its own), audits it first: a push re-sends what the holder lacks, so
/// pushing first would hide a holder that deleted our data inside the grace it promised. (Every node does this, so a node back from a
/// deliberate failure pushes as one back from a real one does.)
async fn audit_first(
    conn: &Connection,
    node: &Node,
    entry: &ContractEntry,
    now: crate::protocol::time::Timestamp,
) -> Result<(), BackupError> {
    use crate::node::audit::{self, AuditError};
    let audit_error = |e: AuditError| match e {
        AuditError::Net(error) => BackupError::Net { peer: entry.state.peer, error },
        other => BackupError::Audit(Box::new(other)),
    };
    let standing = audit::ask_standing(conn, node, entry, now).await.map_err(audit_error)?;
    let plan = node.contract(&entry.id)?.state.audit;
    if !crate::protocol::fairness::deliberate::audit_before_push(standing.is_failing(), plan.as_ref())
        || crate::store::outbound::Target::from_record(node, &entry.id)?.is_none()
    {
        return Ok(());
    }
    let audited = audit::audit(conn, node, entry, (crate::protocol::challenge::DEFAULT_SAMPLES, None), now, false)
        .await
        .map_err(audit_error)?;
    if audited.breach != crate::protocol::fairness::evidence::Breach::No {
        return Err(BackupError::Breach(audited.breach_message(entry)));
    }
    Ok(())
}

/// An extent read: its index, the hash of the bytes sent, the hash of the volume's own bytes, the
/// tops of the bytes sent (`None` if they were not hashed again; empty if the extent has none),
/// and the bytes to send (none if the holder has them).
type ReadItem = Result<(u64, ExtentHash, ExtentHash, Option<Vec<[u8; 32]>>, Option<Pooled>), VolumeError>;

/// Reads, encodes and hashes the volume's extents on every core; an extent the holder already
/// has comes through without its bytes.
fn spawn_readers(
    volume: Arc<Volume>,
    keystream: Keystream,
    have: Arc<HashSet<ExtentHash>>,
    known: Arc<Vec<Option<(ExtentHash, ExtentHash)>>>,
    threads: usize,
    pool: Pool,
) -> mpsc::Receiver<ReadItem> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..threads {
        let (volume, keystream, have, known, next, tx, pool) =
            (volume.clone(), keystream.clone(), have.clone(), known.clone(), next.clone(), tx.clone(), pool.clone());
        std::thread::spawn(move || {
            let g = volume.geometry();
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= g.count() {
                    break;
                }
                let mut buf = pool.take();
                let item = volume.read_extent(index, &mut buf).map(|()| {
                    let raw_hash = *blake3::hash(&buf).as_bytes();
                    let known = known.get(index as usize).and_then(Option::as_ref);
                    if let push::Step::Reuse { sent } = push::step(known, &raw_hash) {
                        return (index, sent, raw_hash, None, None);
                    }
                    keystream.apply(g.offset(index), &mut buf);
                    let (hash, tops) = proof::hash_with_tops(&buf, proof::TOP_LEVELS);
                    let hash = *hash.as_bytes();
                    (index, hash, raw_hash, Some(tops), push::must_send(&hash, &have).then_some(buf))
                });
                let failed = item.is_err();
                if tx.blocking_send(item).is_err() || failed {
                    break;
                }
            }
        });
    }
    rx
}

/// Sends one extent. Its buffer is handed to the connection without a copy and goes back to its
/// pool once the holder has acknowledged every packet that carried it.
async fn put(
    conn: &Connection,
    contract: RecordId,
    offset: u64,
    hash: ExtentHash,
    data: Pooled,
) -> Result<u64, NetError> {
    let len = data.len() as u32;
    let mut ex = conn.open(&Request::PutExtent { contract, offset, hash, len }).await?;
    // A holder that refuses stops reading; its reply says why, so read it either way.
    let _ = ex.send.write_chunk(data.into_bytes()).await;
    let _ = ex.finish();
    match ex.reply().await? {
        Response::Stored => Ok(u64::from(len)),
        other => Err(ex.unexpected(&other)),
    }
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

/// Fetches a kept manifest of this node's copy under `entry` (the newest, or `generation`) and
/// checks it is ours.
async fn fetch_manifest(
    conn: &Connection,
    node: &Node,
    entry: &ContractEntry,
    generation: Option<u64>,
) -> Result<(Signed<Manifest>, Vec<ExtentHash>), BackupError> {
    let (manifest, list, _) = fetch_copy(conn, node, entry, generation).await?;
    let hashes = manifest.body.check_list(&list)?;
    Ok((manifest, hashes))
}

/// [`fetch_manifest`], with the raw extent list and the holder's receipt as it sends it
/// (unchecked).
async fn fetch_copy(
    conn: &Connection,
    node: &Node,
    entry: &ContractEntry,
    generation: Option<u64>,
) -> Result<(Signed<Manifest>, Vec<u8>, Option<Signed<crate::protocol::challenge::Receipt>>), BackupError> {
    let (id, peer) = (entry.id, entry.state.peer);
    let err = net(peer);
    let mut ex = conn.open(&Request::GetManifest { contract: id, generation }).await.map_err(&err)?;
    ex.finish().map_err(&err)?;
    let (manifest, receipt) = match ex.reply().await.map_err(&err)? {
        Response::ManifestIs { manifest, receipt } => (*manifest, receipt),
        other => return Err(err(ex.unexpected(&other))),
    };
    manifest.verify_by(&node.id()).map_err(BackupError::NotOurs)?;
    if manifest.body.contract != id
        || manifest.body.owner != node.id()
        || generation.is_some_and(|g| g != manifest.body.generation)
    {
        return Err(BackupError::WrongManifest(id));
    }
    manifest.body.geometry()?;
    let mut list = vec![0u8; (manifest.body.extent_count * 32) as usize];
    read_exact(&mut ex.recv, &mut list, conn.read_timeout(), "the extent list").await.map_err(&err)?;
    manifest.body.check_list(&list)?;
    Ok((manifest, list, receipt))
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
            read_exact(&mut ex.recv, &mut data, conn.read_timeout(), "extent bytes").await?;
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
            let times: Vec<(u64, Timestamp)> = kept.iter().map(|g| (g.generation, g.committed_at)).collect();
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
    let in_flight = restore_in_flight(g.extent_size);
    let permits = Arc::new(Semaphore::new(in_flight));
    let pool = Pool::new(in_flight);
    let mut tasks: JoinSet<Result<Fetched, BackupError>> = JoinSet::new();
    let (mut fetched, mut bad) = (0u64, 0u64);
    let mut tally = |r: Result<Result<Fetched, BackupError>, tokio::task::JoinError>| -> Result<(), BackupError> {
        match r.map_err(|e| net(peer)(NetError::Lost(e.to_string())))?? {
            Fetched::Already => {}
            Fetched::Got => fetched += 1,
            Fetched::Bad => bad += 1,
        }
        Ok(())
    };
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
            tally(done)?;
        }
        report.advance(g.len(index) as u64);
    }
    while let Some(done) = tasks.join_next().await {
        tally(done)?;
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
        Err(NetError::Remote(_)) if file.is_none() => return Ok(Fetched::Bad),
        Err(e) => return Err(BackupError::Net { peer, error: e }),
    };
    if *blake3::hash(&data).as_bytes() != hash {
        return if file.is_none() { Ok(Fetched::Bad) } else { Err(BackupError::BadExtent { index }) };
    }
    if let Some(f) = file {
        tokio::task::spawn_blocking(move || {
            keystream.apply(offset, &mut data);
            f.write_at(&data, offset)
        })
        .await
        .map_err(|e| output(std::io::Error::other(e)))?
        .map_err(output)?;
    }
    Ok(Fetched::Got)
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
