//! The owner's side of push, and what push, restore and verify share: their errors, the
//! connection to the holder, and fetching a manifest of ours from it. (Restore and verify:
//! [`crate::node::restore`].)
//!
//! Longer than 400 lines: one push, from reading the volume to recording the holder's receipt,
//! with the guard and the checks of the holder's claims on the way, its errors, and its readers
//! (the gate they wait at, and what each does with an extent) and senders (whole or patched).
//!
//! Push reads the volume in extents on every core, marks each (a keyed 128-bit XXH3 of each
//! quarter, [`push::MarkKey`]), XORs it with the contract's keystream, hashes it, and sends only
//! what the holder does not already have, a few extents in flight; the holder's answer to
//! `push_begin` is what makes an interrupted push resume. An extent whose marks are the last
//! push's, and that the holder still has, goes no further (the marks are taken ahead while the
//! holder is asked what it has); of one that changed, only the quarters that changed are
//! encoded, hashed and sent, for the holder to rebuild it on its copy (`patch_extent`). Memory
//! stays bounded: a handful of extents are in flight whatever the volume's size; per extent, a
//! push holds the new list and the last one and the holder's list of what it has (32 bytes
//! each) while it reads, while the volume's marks and the tops sent go to their files as they
//! come; kept generations' lists are read a block at a time (see `protocol::history`).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::time::Instant;

use serde::Serialize;
use serde_json::json;
use thiserror::Error;
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

use crate::net::transport::{Client, Connection, NetError, read_paced};
use crate::net::wire::{Request, Response};
use crate::node::machine::now_from_env;
use crate::node::report::Report;
use crate::protocol::challenge;
use crate::protocol::encoding;
use crate::protocol::history;
use crate::protocol::identity::NodeId;
use crate::protocol::manifest::{DEFAULT_EXTENT_SIZE, ExtentHash, Keystream, Manifest, ManifestError, list_hash};
use crate::protocol::market::RecordId;
use crate::protocol::proof;
use crate::protocol::push;
use crate::protocol::record::{RecordError, Signed};
use crate::protocol::time::Timestamp;
use crate::store::buffer::{Pool, Pooled};
use crate::store::files::ContractEntry;
use crate::store::home::StateError;
use crate::store::node::Node;
use crate::store::outbound::{Outbound, ValuesFile, ValuesReader};
use crate::store::volume::{Volume, VolumeError};

/// Extents a push has in flight at once. The holder writes and syncs each before it answers, so
/// a push is bound by that latency unless several are under way (measured, 2 GiB: 4 at once
/// 6.7-8.1 s, 8 at once 4.8-5.6 s, 12 no better). Memory does not grow with it: a buffer goes
/// back to the pool once its bytes are acknowledged, before the holder's answer.
pub const PUSH_IN_FLIGHT: usize = 8;
/// Extents in flight at once for a transfer held to `limit` bytes a second: under a limit, one
/// per 16 MiB/s (one at least), so that each moves at a good share of the rate, well above what
/// a holder allows a run of bytes ([`crate::net::transport::SLOWEST_PEER`]), and a holder's
/// places are not held by slow streams; without one, `most`.
pub(crate) fn in_flight(limit: Option<u64>, most: usize) -> usize {
    match limit {
        Some(rate) => usize::try_from(rate >> 24).unwrap_or(most).clamp(1, most.max(1)),
        None => most,
    }
}

/// Buffers beyond those the readers fill and queue: the extents being sent and not yet
/// acknowledged (the send window is 4 MiB, so about one).
const SENDING: usize = 2;

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
    /// The holder did not answer the audit a push runs first (a time-out, or `busy`): a push
    /// would re-send what it lacks, so nothing is sent until it answers one.
    #[error(
        "node {peer} did not answer the audit this push runs first ({why}): nothing sent; the next push audits it again"
    )]
    Unaudited {
        /// The holder.
        peer: NodeId,
        /// What was heard instead.
        why: String,
    },
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

pub(crate) fn net(peer: NodeId) -> impl Fn(NetError) -> BackupError {
    move |error| BackupError::Net { peer, error }
}

pub(crate) async fn connect(client: &Client, node: &Node, peer: NodeId) -> Result<Connection, BackupError> {
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
pub(crate) struct Finish<'a>(pub(crate) &'a dyn Report);

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

/// Pushes the node's volume to the holder of `entry`, in extents of `extent_size`; `None`: of
/// the size this node's last push to that contract used ([`DEFAULT_EXTENT_SIZE`] for a first).
pub async fn push(
    client: &Client,
    node: &Node,
    entry: &ContractEntry,
    extent_size: Option<u32>,
    opts: PushOptions,
    report: &dyn Report,
) -> Result<PushSummary, BackupError> {
    let started = Instant::now();
    let (id, peer) = (entry.id, entry.state.peer);
    let path = node.config.volume.clone().ok_or(BackupError::NoVolume)?;
    let record = Outbound::at(node.home.root(), &id);
    let before = record.committed()?.map(|(m, _)| m);
    // Another size than the last push's cuts every extent differently: the whole volume would
    // go again. Only a person asking for it changes it.
    let extent_size = extent_size.or(before.as_ref().map(|m| m.body.extent_size)).unwrap_or(DEFAULT_EXTENT_SIZE);
    let volume = Arc::new(Volume::open(&path, extent_size, opts.allow_plaintext)?);
    let g = volume.geometry();
    // The guard, first on what the volume looks like: before anything is sent.
    let shape = volume.shape()?;
    let last_pushed = before.as_ref().map_or(0, |m| m.body.generation);
    if !opts.force
        && let Some(looked) = record.shape()?
        && let Some(why) = push::guard_shape(&looked, &shape)
    {
        return Err(guarded(last_pushed, &why));
    }
    report.start(&format!("push {}", id.short()), g.volume_size);
    let _finish = Finish(report);
    if g.volume_size > entry.contract.body.size {
        return Err(BackupError::TooLarge { contract: id, volume: g.volume_size, size: entry.contract.body.size });
    }
    let same_shape = |m: &Signed<Manifest>| m.body.volume_size == g.volume_size && m.body.extent_size == extent_size;
    // The readers start now, and mark the volume ahead while the holder is asked what it has
    // (when this node pushed it before in this shape: most extents are then compared only).
    let keys =
        Keys { stream: Keystream::new(&node.identity, &id), marks: Arc::new(push::MarkKey::new(&node.identity, &id)) };
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool = Pool::new(threads + READ_AHEAD + SENDING);
    let gate = Arc::new(Gate::default());
    let _closing = Closing(gate.clone());
    let ahead = before
        .as_ref()
        .filter(|m| same_shape(m))
        .is_some_and(|m| record.values_reader(MARKS, m.body.generation, push::PARTS).is_some());
    let mut rx = spawn_readers(volume.clone(), keys.clone(), gate.clone(), ahead, threads, pool.clone());
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
    read_paced(&mut ex.recv, &mut have_raw, conn.read_timeout(), "the holder's extent list", None)
        .await
        .map_err(&err)?;
    let have = push::Held::from_list(&have_raw);
    drop(have_raw);
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
                m.body.generation == claimed && r.as_ref().is_some_and(|r| challenge::receipts(r, &m.body, &peer))
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

    // What we sent last time, and the volume's marks then: an extent whose raw bytes are
    // unchanged, and that the holder still has, needs no keystream and no sending. Read under
    // the record's lock: a challenge or another push may be writing it. (The files of marks and
    // tops are read an extent at a time, through handles opened here: what a push holds does not
    // grow with the volume beyond its lists.)
    let shared = record.lock(false)?;
    let previous = record.committed()?.map(|(m, list)| (m, Arc::new(list)));
    let previous_gen = previous.as_ref().map_or(0, |(m, _)| m.body.generation);
    // And the tops kept then (what this node's challenges check shorter proofs against): an
    // extent that is not hashed again keeps its tops.
    let per = push::PARTS;
    let then = previous.as_ref().filter(|(m, _)| same_shape(m)).map(|(m, l)| (m.body.generation, l.clone()));
    let last = LastPush {
        geometry: g,
        marks: then.as_ref().and_then(|(n, _)| record.values_reader(MARKS, *n, per)),
        tops: then.as_ref().and_then(|(n, _)| record.values_reader("tops", *n, per)),
        sent: then.map(|(_, l)| l),
    };
    let plan = Arc::new(Plan { have, last });
    gate.set(Gated::Ready(plan.clone()));
    // The guard, then on how much changed: counted as the volume is read, stopped as soon as
    // most of it has (what was sent by then is never committed).
    let (mut changed, mut received) = (0u64, 0u64);

    drop(shared);
    let permits = Arc::new(Semaphore::new(in_flight(client.rate_limit(), PUSH_IN_FLIGHT)));
    let mut sends: JoinSet<Result<Sent, BackupError>> = JoinSet::new();
    // Set once the holder says it does not know patches.
    let whole = Arc::new(AtomicBool::new(false));
    let mut hashes = vec![[0u8; 32]; g.count() as usize];
    // The volume's marks and the tops sent, written to their files as they come, held nowhere.
    let marks_file = record.values_file(MARKS, per, g.count())?;
    let tops_file = record.values_file("tops", per, g.count())?;
    let mut old_tops = vec![[0u8; 32]; per];
    let (mut extents_sent, mut bytes_sent) = (0u64, 0u64);
    let mut collect =
        |r: Result<Result<Sent, BackupError>, tokio::task::JoinError>| -> Result<Option<Amended>, BackupError> {
            let sent = r.map_err(|e| err(NetError::Lost(e.to_string())))??;
            extents_sent += 1;
            bytes_sent += sent.bytes;
            Ok(sent.amended)
        };
    // An extent sent as it is now, not as it was read (the volume was written there meanwhile,
    // and the holder could not patch it): recorded as sent.
    let amend = |hashes: &mut [ExtentHash], a: Amended| -> Result<(), StateError> {
        hashes[a.index as usize] = a.hash;
        marks_file.put(a.index, &a.marks)?;
        if a.tops.len() == per { tops_file.put(a.index, &a.tops) } else { Ok(()) }
    };
    loop {
        // A send that failed is heard at once, not only when the readers next hand over an
        // extent: with the link gone, they wait for buffers the dead connection still holds,
        // and a loop that only listened to them would wait for ever.
        let item = tokio::select! {
            Some(done) = sends.join_next(), if !sends.is_empty() => {
                if let Some(a) = collect(done)? {
                    amend(&mut hashes, a)?;
                }
                continue;
            }
            item = rx.recv() => match item {
                Some(item) => item,
                None => break,
            },
        };
        let Read { index, hash, marks, tops: new_tops, out } = item?;
        received += 1;
        let i = index as usize;
        // Changed: sent under another hash than the last push's (the keystream is the same at
        // the same place), which holds for a record from before the marks too.
        if plan.last.sent(index).is_some_and(|sent| sent != hash) {
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
        marks_file.put(index, &marks)?;
        match new_tops {
            Some(t) if t.len() == per => tops_file.put(index, &t)?,
            Some(_) => {}
            None => {
                if plan.last.tops.as_ref().is_some_and(|r| r.get(index, &mut old_tops)) {
                    tops_file.put(index, &old_tops)?;
                }
            }
        }
        report.advance(g.len(index) as u64);
        if let Some(out) = out {
            let permit = permits.clone().acquire_owned().await.map_err(|e| err(NetError::Lost(e.to_string())))?;
            let (conn, offset, whole) = (conn.clone(), g.offset(index), whole.clone());
            let again = Again { volume: volume.clone(), index, marks, pool: pool.clone(), keys: keys.clone() };
            sends.spawn(async move {
                let _permit = permit;
                let sent = match out {
                    Out::Whole(data) => put(&conn, id, offset, hash, data)
                        .await
                        .map(|bytes| Sent { bytes, amended: None })
                        .map_err(Unsent::Net),
                    Out::Patch { base, parts, data } => {
                        patch(&conn, (id, offset, hash), (base, parts), data, again, &whole).await
                    }
                };
                sent.map_err(|e| match e {
                    Unsent::Net(e) => net(peer)(e),
                    Unsent::Volume(e) => BackupError::Volume(e),
                })
            });
        }
    }
    while let Some(done) = sends.join_next().await {
        if let Some(a) = collect(done)? {
            amend(&mut hashes, a)?;
        }
    }
    if received != g.count() {
        // A reader stopped before its end without saying why (it panicked): nothing is committed.
        return Err(BackupError::Volume(VolumeError::Io {
            path: path.clone(),
            error: std::io::Error::other(format!(
                "the push's readers stopped early ({received} of {} extents read): nothing was committed; push again",
                g.count()
            )),
        }));
    }

    let list = hashes.as_flattened();
    let same = previous.as_ref().is_some_and(|(m, l)| l.as_slice() == list && same_shape(m));
    // The last push's list and the holder's are not held beyond here: what the former is
    // needed for below is read again from the record, a block at a time.
    gate.set(Gated::Off);
    drop(plan);
    let replaced = previous.filter(|(m, _)| same_shape(m)).map(|(m, _)| m);
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
        if let Err(e) = record.install_values(vec![marks_file, tops_file], previous_gen) {
            report.say(&format!("warning: the volume's marks and tops of this push were not kept ({e})"));
        }
        record.save_shape(&shape)?;
        drop_replaced(&record);
        return Ok(summary(previous_gen, true));
    }
    // The guard, last on what the commit would cost the history: a change larger than the
    // history allowance retires the generation it replaces at once, leaving no copy of the
    // volume as it was. That is what a wholesale change does, wanted or not.
    let terms = entry.contract.body.history.as_ref();
    // What the new generation names, for the guard and the replaced generation's tops.
    let named = terms.is_some().then(|| push::Held::new(hashes.clone()));
    if !opts.force
        && let Some(named) = &named
    {
        // Each kept generation beside the new one: only what the new one does not name.
        let mut views = {
            let _shared = record.lock(false)?;
            record.views_beside(record.manifests()?, named)?
        };
        views.push(history::Generation { generation: previous_gen + 1, committed_at: now, extents: Vec::new() });
        if history::leaves_no_history(&views, terms, now) {
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
        extents: encoding::hex_encode(&list_hash(list)),
        created_at: now,
    };
    let manifest = Signed::sign(manifest, &node.identity)?;
    // The values files to disk while the holder commits.
    let synced = tokio::task::spawn_blocking(move || -> Result<Vec<ValuesFile>, StateError> {
        let mut files = vec![marks_file, tops_file];
        files.iter_mut().try_for_each(ValuesFile::sync)?;
        Ok(files)
    });
    let mut ex =
        conn.open(&Request::Commit { contract: id, manifest: Box::new(manifest.clone()) }).await.map_err(&err)?;
    // Within a time-out: a holder that stops taking it is not waited for (its reply says why).
    let _ = crate::net::transport::write_paced(&mut ex.send, bytes::Bytes::copy_from_slice(list), conn.read_timeout())
        .await;
    let _ = ex.finish();
    let (generation, receipt) = match ex.reply().await.map_err(&err)? {
        Response::Committed { generation, receipt, .. } => (generation, receipt),
        other => return Err(err(ex.unexpected(&other))),
    };
    conn.close();
    // The holder's signed word that it holds this generation: what an audit's evidence rests on.
    let values = synced.await.map_err(|e| e.to_string()).and_then(|r| r.map_err(|e| e.to_string()));
    if !challenge::receipts(&receipt, &manifest.body, &peer) || generation != manifest.body.generation {
        return Err(err(NetError::Unexpected { request: "commit", reply: "a receipt for something else".into() }));
    }
    {
        // Under the record's lock: a challenge reads the manifest, its list and tops together.
        let _lock = record.lock(true)?;
        let at = history::committed_at(manifest.body.created_at, Some(receipt.body.at));
        // The replaced generation's tops of what it does not share with the new one: what the
        // challenges of it, as history, sample (so they too ask for shorter proofs).
        // Kept if they can be: without them, its challenges ask for full proofs, and the holder
        // has committed already, so nothing here may fail the push.
        if let (Some(named), Some(replaced)) = (&named, &replaced)
            && let Some(previous_tops) = record.values_reader("tops", replaced.body.generation, per)
        {
            let own = || -> Result<(), StateError> {
                let mut replaced_list = record.read_list(replaced)?;
                let own: Vec<(u64, Vec<[u8; 32]>)> = replaced_list
                    .by_ref()
                    .enumerate()
                    .filter(|(_, h)| !named.contains(h))
                    .filter_map(|(i, _)| {
                        let mut t = vec![[0u8; 32]; per];
                        previous_tops.get(i as u64, &mut t).then_some((i as u64, t))
                    })
                    .collect();
                replaced_list.finish(replaced)?;
                let own: Vec<(u64, &[[u8; 32]])> = own.iter().map(|(i, t)| (*i, t.as_slice())).collect();
                record.save_older_tops(replaced.body.generation, &own)
            };
            if let Err(e) = own() {
                report.say(&format!(
                    "warning: the tops of generation {} were not kept ({e}): its challenges ask for full proofs",
                    replaced.body.generation
                ));
            }
        }
        drop(named);
        record.record(&manifest, list, Some(receipt), terms, at)?;
        // Caches: without them the next push reads and encodes every extent once, and this
        // generation's challenges ask for full proofs. The holder has committed: no failure here.
        if let Err(e) = values.and_then(|v| record.install_values(v, generation).map_err(|e| e.to_string())) {
            report.say(&format!("warning: the volume's marks and tops of this push were not kept ({e})"));
        }
        record.save_shape(&shape)?;
        drop_replaced(&record);
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
    // A holder that lost our data and leaves the audit unanswered (`busy` to challenges alone)
    // must not have the loss healed by the push before an audit sees it.
    if let audit::Heard::Unreachable(why) = &audited.exchanged.heard {
        return Err(BackupError::Unaudited { peer: entry.state.peer, why: why.clone() });
    }
    Ok(())
}

/// The kind of the values file of the volume's marks at each push ([`push::Marks`]): what the
/// next push compares, part by part.
const MARKS: &str = "volume-marks";

/// Removes what records from before [`MARKS`] kept of the volume instead (BLAKE3 hashes of each
/// extent, then of each part): replaced, and only ever a cache, so at best effort. (A push from
/// such a record reads and encodes every extent once, and sends only what the holder lacks.)
fn drop_replaced(record: &Outbound) {
    for kind in ["raw", "volume-tops"] {
        let _ = record.drop_values(kind);
    }
}

/// What the last push the holder committed left, read an extent at a time (when the volume's
/// shape is the same): the volume's marks of each extent then, the hash it was sent under, and
/// the tops of the bytes sent.
struct LastPush {
    geometry: crate::protocol::manifest::Geometry,
    marks: Option<ValuesReader>,
    tops: Option<ValuesReader>,
    sent: Option<Arc<Vec<u8>>>,
}

impl LastPush {
    /// What [`MARKS`] kept of extent `index` at the last push.
    fn marks(&self, index: u64) -> Option<push::Marks> {
        let mut marks = [[0u8; 32]; push::PARTS];
        self.marks.as_ref().is_some_and(|r| r.get(index, &mut marks)).then_some(marks)
    }

    /// The hash extent `index` was sent under.
    fn sent(&self, index: u64) -> Option<ExtentHash> {
        let at = usize::try_from(index).ok()?.checked_mul(32)?;
        self.sent.as_ref()?.get(at..at + 32)?.try_into().ok()
    }

    /// What [`push::reusable`] says of extent `index`.
    fn known(&self, index: u64, have: &push::Held) -> Option<(push::Marks, ExtentHash)> {
        push::reusable(self.marks(index).as_ref(), self.sent(index).as_ref(), have)
    }

    /// For extent `index`, whose volume bytes' marks are now `now`: what the holder holds of it
    /// from the last push (its hash), which parts changed since ([`push::changed_parts`]), and
    /// the tops sent then, which the unchanged parts keep. Only when the tops kept merge to the
    /// hash the holder holds it under: a record that does not agree with itself patches nothing.
    fn patch(&self, index: u64, have: &push::Held, now: &[ExtentHash]) -> Option<(ExtentHash, u8, Vec<ExtentHash>)> {
        let base = self.sent(index).filter(|h| have.contains(h))?;
        let parts = push::changed_parts(&self.marks(index)?, now)?;
        let mut tops = vec![[0u8; 32]; push::PARTS];
        if !self.tops.as_ref()?.get(index, &mut tops) {
            return None;
        }
        let root = proof::root_of_tops(self.geometry.len(index) as u64, proof::TOP_LEVELS, &tops)?;
        (*root.as_bytes() == base).then_some((base, parts, tops))
    }
}

/// What to send of an extent.
enum Out {
    /// All of it.
    Whole(Pooled),
    /// The parts that changed since the last push (encoded; the others are still the volume's
    /// bytes, encoded only if the holder cannot patch), on the extent the holder holds of it.
    Patch {
        /// The extent held.
        base: ExtentHash,
        /// The parts that changed.
        parts: u8,
        /// The extent.
        data: Pooled,
    },
}

/// An extent read.
struct Read {
    /// Its index.
    index: u64,
    /// The hash of the bytes sent.
    hash: ExtentHash,
    /// Its volume bytes' marks.
    marks: push::Marks,
    /// The tops of the bytes sent: `None` if they were not hashed again, empty if the extent
    /// has none.
    tops: Option<Vec<ExtentHash>>,
    /// What to send: nothing if the holder has it.
    out: Option<Out>,
}

type ReadItem = Result<Read, VolumeError>;

/// What the readers need to decide on an extent, known once the holder has answered
/// `push_begin`: what it holds, and what the last push left.
struct Plan {
    have: push::Held,
    last: LastPush,
}

/// Where the readers wait for the [`Plan`].
#[derive(Default)]
struct Gate {
    plan: Mutex<Gated>,
    ready: Condvar,
}

/// What the readers find at the [`Gate`].
#[derive(Clone, Default)]
enum Gated {
    /// No plan yet.
    #[default]
    Waiting,
    /// The plan.
    Ready(Arc<Plan>),
    /// The push is over: stop.
    Off,
}

impl Gate {
    fn now(&self) -> Gated {
        self.plan.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// The plan, once it comes; `None` if the push ends first.
    fn wait(&self) -> Option<Arc<Plan>> {
        let mut gated = self.plan.lock().unwrap_or_else(PoisonError::into_inner);
        loop {
            match &*gated {
                Gated::Ready(plan) => return Some(plan.clone()),
                Gated::Off => return None,
                Gated::Waiting => gated = self.ready.wait(gated).unwrap_or_else(PoisonError::into_inner),
            }
        }
    }

    fn set(&self, to: Gated) {
        *self.plan.lock().unwrap_or_else(PoisonError::into_inner) = to;
        self.ready.notify_all();
    }
}

/// Closes the gate when the push ends, however it ends: readers still hashing ahead or waiting
/// stop.
struct Closing(Arc<Gate>);

impl Drop for Closing {
    fn drop(&mut self) {
        self.0.set(Gated::Off);
    }
}

/// Extents a reader marks ahead of the plan, at most (only their marks are kept).
const AHEAD: usize = 4096;

/// Reads, marks, encodes and hashes the volume's extents on every core; an extent the holder
/// already has comes through without its bytes, and one of which only some parts changed since
/// the last push has only those encoded and hashed. Until the plan comes (`ahead`: if the volume
/// was pushed before in this shape), each reader marks extents ahead, keeping only their marks.
fn spawn_readers(
    volume: Arc<Volume>,
    keys: Keys,
    gate: Arc<Gate>,
    ahead: bool,
    threads: usize,
    pool: Pool,
) -> mpsc::Receiver<ReadItem> {
    let (tx, rx) = mpsc::channel(READ_AHEAD);
    let next = Arc::new(AtomicU64::new(0));
    for _ in 0..threads {
        let (volume, keys, gate, next, tx, pool) =
            (volume.clone(), keys.clone(), gate.clone(), next.clone(), tx.clone(), pool.clone());
        std::thread::spawn(move || {
            let g = volume.geometry();
            let mut early = Vec::new();
            let mut plan = None;
            let send = |item: ReadItem| {
                let failed = item.is_err();
                tx.blocking_send(item).is_ok() && !failed
            };
            loop {
                let index = next.fetch_add(1, Ordering::Relaxed);
                if index >= g.count() {
                    break;
                }
                if plan.is_none() {
                    match gate.now() {
                        Gated::Off => return,
                        Gated::Ready(p) => plan = Some(p),
                        Gated::Waiting if ahead && early.len() < AHEAD => {
                            let mut buf = pool.take();
                            if volume.read_extent(index, &mut buf).is_ok() {
                                early.push((index, keys.marks.marks(&buf)));
                                continue;
                            }
                        }
                        Gated::Waiting => {}
                    }
                }
                let Some(p) = plan.clone().or_else(|| gate.wait()) else { return };
                plan = Some(p.clone());
                for (i, marked) in early.drain(..) {
                    if !send(read(&volume, i, Some(marked), &pool, &keys, &p)) {
                        return;
                    }
                }
                if !send(read(&volume, index, None, &pool, &keys, &p)) {
                    return;
                }
            }
            // The volume ended before the plan came: what was marked ahead still goes.
            if !early.is_empty()
                && let Some(p) = plan.or_else(|| gate.wait())
            {
                for (i, marked) in early.drain(..) {
                    if !send(read(&volume, i, Some(marked), &pool, &keys, &p)) {
                        return;
                    }
                }
            }
        });
    }
    rx
}

/// Reads and marks extent `index`'s volume bytes, and encodes and hashes what changed since the
/// last push (of an extent marked ahead, and unchanged, nothing is read again). Everything
/// recorded of an extent read is marked, encoded and hashed from the one copy of its bytes read
/// here, however the volume is written meanwhile.
fn read(
    volume: &Volume,
    index: u64,
    marked: Option<push::Marks>,
    pool: &Pool,
    keys: &Keys,
    plan: &Plan,
) -> Result<Read, VolumeError> {
    let (have, last) = (&plan.have, &plan.last);
    let (len, offset) = (last.geometry.len(index) as u64, last.geometry.offset(index));
    let known = last.known(index, have);
    let unchanged = |marks: &push::Marks| match push::step(known.as_ref(), marks) {
        push::Step::Reuse { sent } => Some(sent),
        push::Step::Encode => None,
    };
    if let Some(marks) = marked
        && let Some(sent) = unchanged(&marks)
    {
        return Ok(Read { index, hash: sent, marks, tops: None, out: None });
    }
    let mut buf = pool.take();
    volume.read_extent(index, &mut buf)?;
    let marks = keys.marks.marks(&buf);
    if let Some(sent) = unchanged(&marks) {
        return Ok(Read { index, hash: sent, marks, tops: None, out: None });
    }
    if let Some((base, parts, mut tops)) = last.patch(index, have, &marks) {
        let part = buf.len() / push::PARTS;
        for j in push::each_part(parts) {
            let bytes = &mut buf[j * part..(j + 1) * part];
            keys.stream.apply(offset + (j * part) as u64, bytes);
            tops[j] = proof::top_of_part(len, proof::TOP_LEVELS, j, bytes);
        }
        let root = proof::root_of_tops(len, proof::TOP_LEVELS, &tops);
        let hash = *root.expect("LastPush::patch found this extent's tops merge").as_bytes();
        let out = push::must_send(&hash, have).then_some(Out::Patch { base, parts, data: buf });
        return Ok(Read { index, hash, marks, tops: Some(tops), out });
    }
    keys.stream.apply(offset, &mut buf);
    let (hash, tops) = proof::hash_with_tops(&buf, proof::TOP_LEVELS);
    let hash = *hash.as_bytes();
    let out = push::must_send(&hash, have).then_some(Out::Whole(buf));
    Ok(Read { index, hash, marks, tops: Some(tops), out })
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
    let _ = ex.send_bulk(data.into_bytes()).await;
    let _ = ex.finish();
    match ex.reply().await? {
        Response::Stored => Ok(u64::from(len)),
        other => Err(ex.unexpected(&other)),
    }
}

/// Why an extent was not stored.
enum Unsent {
    /// The holder, or the link to it.
    Net(NetError),
    /// The volume, read again to send an extent whole.
    Volume(VolumeError),
}

impl From<NetError> for Unsent {
    fn from(e: NetError) -> Self {
        Unsent::Net(e)
    }
}

/// What a push encodes with: the contract's keystream, and the key of its marks.
#[derive(Clone)]
struct Keys {
    stream: Keystream,
    marks: Arc<push::MarkKey>,
}

/// What a send did: the bytes it sent, and the extent as it went if not as it was read.
struct Sent {
    bytes: u64,
    amended: Option<Amended>,
}

/// An extent sent as it was when read again, not as it was first read ([`Again::encoded`]):
/// what the record keeps of it instead.
struct Amended {
    index: u64,
    hash: ExtentHash,
    marks: push::Marks,
    tops: Vec<ExtentHash>,
}

/// What reading an extent again takes: the volume, the extent's index and the marks it was
/// recorded with, a buffer and the keys.
struct Again {
    volume: Arc<Volume>,
    index: u64,
    marks: push::Marks,
    pool: Pool,
    keys: Keys,
}

impl Again {
    /// The extent read again and encoded whole. If it no longer has the marks it was recorded
    /// with (the volume was written there since), it goes as it is now, hashed again: the
    /// [`Amended`] says what to record instead. (A buffer of its own: a rare path, which must not
    /// wait for the readers' pool.)
    async fn encoded(self) -> Result<(Pooled, Option<Amended>), Unsent> {
        tokio::task::spawn_blocking(move || {
            let Again { volume, index, marks, pool, keys } = self;
            let mut buf = pool.take_or_new();
            volume.read_extent(index, &mut buf).map_err(Unsent::Volume)?;
            let now = keys.marks.marks(&buf);
            keys.stream.apply(volume.geometry().offset(index), &mut buf);
            if now == marks {
                return Ok((buf, None));
            }
            let (hash, tops) = proof::hash_with_tops(&buf, proof::TOP_LEVELS);
            Ok((buf, Some(Amended { index, hash: *hash.as_bytes(), marks: now, tops })))
        })
        .await
        .map_err(|e| Unsent::Net(NetError::Lost(e.to_string())))?
    }
}

/// Sends the parts of an extent that changed, for the holder to rebuild it on `base`; if the
/// holder cannot (it does not hold `base`, its copy of it is damaged, or it predates patches),
/// sends it whole. Says how many bytes went. The parts go from the extent's buffer, which goes
/// back to the pool once they are acknowledged, as a whole extent's does: a patch waiting for
/// the holder's answer holds no buffer, and if the holder cannot patch, the extent is read
/// again ([`Again`]: as it is then, which the record follows). A holder that does not know
/// patches (`whole`) gets every later extent of the push whole at once, from its buffer.
async fn patch(
    conn: &Connection,
    (contract, offset, hash): (RecordId, u64, ExtentHash),
    (base, parts): (ExtentHash, u8),
    mut data: Pooled,
    again: Again,
    whole: &AtomicBool,
) -> Result<Sent, Unsent> {
    use crate::net::wire::ErrorCode;
    let len = data.len() as u32;
    let part = data.len() / push::PARTS;
    if whole.load(Ordering::Relaxed) {
        // The parts are encoded already; the others are still the volume's bytes.
        let keystream = again.keys.stream;
        let data = tokio::task::spawn_blocking(move || {
            for j in push::each_part(!parts) {
                keystream.apply(offset + (j * part) as u64, &mut data[j * part..(j + 1) * part]);
            }
            data
        })
        .await
        .map_err(|e| NetError::Lost(e.to_string()))?;
        return Ok(Sent { bytes: put(conn, contract, offset, hash, data).await?, amended: None });
    }
    let mut sent = 0u64;
    let mut ex = conn.open(&Request::PatchExtent { contract, offset, base, hash, len, parts }).await?;
    let bytes = data.into_bytes();
    for j in push::each_part(parts) {
        if ex.send_bulk(bytes.slice(j * part..(j + 1) * part)).await.is_err() {
            break;
        }
        sent += part as u64;
    }
    drop(bytes);
    let _ = ex.finish();
    match ex.reply().await {
        Ok(Response::Stored) => return Ok(Sent { bytes: sent, amended: None }),
        Ok(other) => return Err(ex.unexpected(&other).into()),
        Err(NetError::Remote(e)) if e.code == ErrorCode::UnknownRequest => whole.store(true, Ordering::Relaxed),
        Err(NetError::Remote(e)) if matches!(e.code, ErrorCode::NotFound | ErrorCode::BadRequest) => {}
        Err(e) => return Err(e.into()),
    }
    let (data, amended) = again.encoded().await?;
    let hash = amended.as_ref().map_or(hash, |a| a.hash);
    Ok(Sent { bytes: sent + put(conn, contract, offset, hash, data).await?, amended })
}

/// Fetches a kept manifest of this node's copy under `entry` (the newest, or `generation`) and
/// checks it is ours.
pub(crate) async fn fetch_manifest(
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
    read_paced(&mut ex.recv, &mut list, conn.read_timeout(), "the extent list", None).await.map_err(&err)?;
    manifest.body.check_list(&list)?;
    Ok((manifest, list, receipt))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::identity::Identity;

    /// An extent read again to be sent whole (the holder could not patch it) goes as it was
    /// marked, encoded like the first time; if the volume was written there since, it goes as it
    /// is now, with its hash, marks and tops to record instead.
    #[tokio::test]
    async fn an_extent_read_again_goes_as_it_is_and_says_so_if_it_changed() {
        use std::os::unix::fs::FileExt as _;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vol.img");
        let mut bytes: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 11) as u8).collect();
        std::fs::write(&path, &bytes).unwrap();
        let volume = Arc::new(Volume::open(&path, 4 << 20, true).unwrap());
        let (owner, contract) = (Identity::from_seed([3; 32]), "07".repeat(32).parse().unwrap());
        let keys =
            Keys { stream: Keystream::new(&owner, &contract), marks: Arc::new(push::MarkKey::new(&owner, &contract)) };
        let marks = keys.marks.marks(&bytes[4 << 20..]);
        let again = || Again { volume: volume.clone(), index: 1, marks, pool: Pool::new(0), keys: keys.clone() };
        let encoded = |bytes: &[u8]| {
            let mut e = bytes[4 << 20..].to_vec();
            keys.stream.apply(4 << 20, &mut e);
            e
        };

        let Ok((data, None)) = again().encoded().await else { panic!("the extent is as it was marked") };
        assert!(data[..] == encoded(&bytes)[..]);

        std::fs::OpenOptions::new().write(true).open(&path).unwrap().write_all_at(b"later", (6 << 20) + 9).unwrap();
        bytes[(6 << 20) + 9..(6 << 20) + 14].copy_from_slice(b"later");
        let Ok((data, Some(amended))) = again().encoded().await else { panic!("the extent changed since") };
        let now = encoded(&bytes);
        assert!(data[..] == now[..]);
        let (hash, tops) = proof::hash_with_tops(&now, proof::TOP_LEVELS);
        assert_eq!((amended.index, amended.hash, amended.tops), (1, *hash.as_bytes(), tops));
        assert_eq!(amended.marks, keys.marks.marks(&bytes[4 << 20..]));
        assert_eq!(push::changed_parts(&marks, &amended.marks), Some(0b0100));
    }
}
