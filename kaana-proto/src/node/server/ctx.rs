//! What every request handler shares: the node, the server's options and caps, the board, the
//! put permits, and who the server knows.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Semaphore;

use super::forward::Forwarding;
use crate::net::rate::Allowance;
use crate::net::transport::{self, Client};
use crate::net::wire::{ErrorCode, ErrorReply};
use crate::node::report::Report;
use crate::protocol::identity::NodeId;
use crate::protocol::market::RecordId;
use crate::store::board::StoredBoard;
use crate::store::node::Node;

/// Extents a server receives at once, in all (each is held in memory until written; its sync
/// to disk then goes on without a place, among [`MAX_SYNCS_AT_ONCE`]).
pub(super) const MAX_PUTS_AT_ONCE: usize = 8;
/// Extents written and being synced at once, in all: each holds a file, a thread and, where
/// the file system cannot write straight to the device, its bytes in the page cache.
pub(super) const MAX_SYNCS_AT_ONCE: usize = 32;
/// Of the extents received at once, one peer's at most (all its contracts with this server
/// together: a peer with two contracts here would otherwise hold every place).
pub(super) const PUT_SHARE: usize = MAX_PUTS_AT_ONCE / 2;

/// How the server runs.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// Address to bind (port 0 picks one).
    pub listen: SocketAddr,
    /// Time-out on every read from a client.
    pub read_timeout: Duration,
    /// How long shutdown waits for requests in flight.
    pub drain_timeout: Duration,
    /// Connections at once, in all.
    pub max_connections: usize,
    /// Connections at once from one node.
    pub max_connections_per_peer: usize,
    /// Connections at once from strangers (nodes that are neither in the address book nor a
    /// contract's peer), all together: fresh keys cost nothing, so they share one small budget.
    pub max_stranger_connections: usize,
    /// Connections at once from one stranger.
    pub max_connections_per_stranger: usize,
    /// Challenges a contract's peer may send an hour, under each contract (up to that many at
    /// once); beyond it they are answered `busy`. `None`: no cap.
    pub challenges_per_hour: Option<u32>,
    /// How the server's own client (forwarding offers) waits.
    pub client_timeouts: transport::Timeouts,
}

/// Challenges a contract's peer may send an hour under each contract, by default. An honest
/// challenger sends a few a day (cron every four hours, retries, audits); each answer reads
/// from the disk and adds a line to `events.jsonl`, so a peer sending them without pause would
/// grow it by gigabytes a day. At this cap, a few megabytes.
pub const CHALLENGES_PER_HOUR: u32 = 600;

impl ServerOptions {
    /// Defaults for `listen`.
    pub fn new(listen: SocketAddr) -> Self {
        ServerOptions {
            listen,
            read_timeout: transport::READ_TIMEOUT,
            drain_timeout: Duration::from_secs(30),
            max_connections: 1024,
            max_connections_per_peer: 16,
            max_stranger_connections: 64,
            max_connections_per_stranger: 2,
            challenges_per_hour: Some(CHALLENGES_PER_HOUR),
            client_timeouts: transport::Timeouts::default(),
        }
    }
}

/// What every request handler shares.
pub(super) struct Ctx {
    /// Where the server's lines for its person go.
    pub(super) report: Arc<dyn Report>,
    /// The node served.
    pub(super) node: Node,
    pub(super) opts: ServerOptions,
    /// Open connections per peer; the total is the sum.
    pub(super) open: Mutex<HashMap<NodeId, usize>>,
    /// Strangers' connections, oldest first, each with when it came: when all strangers'
    /// places are taken, the oldest gives its place to a newcomer once it has had
    /// [`STRANGER_HOLD`] (fresh keys cost nothing: idle ones kept alive would hold them all).
    pub(super) strangers: Mutex<std::collections::VecDeque<(std::time::Instant, quinn::Connection)>>,
    /// The nodes this node knows (address book and contract peers), and when that was read.
    pub(super) known: Mutex<Option<(std::time::Instant, std::collections::HashSet<NodeId>)>>,
    /// The node's board, in memory and on disk.
    pub(super) board: Mutex<StoredBoard>,
    /// New offers waiting to be forwarded to other boards.
    pub(super) forwarding: Forwarding,
    /// For forwarding offers to other boards.
    pub(super) client: Client,
    /// Extents being received at once (each held in memory until it is written).
    pub(super) put_permits: Semaphore,
    /// Extents written and being synced at once.
    pub(super) sync_permits: Semaphore,
    /// Each peer's history being weighed (one at a time: each reads every kept generation's
    /// list into memory).
    pub(super) history_shares: Mutex<HashMap<NodeId, Arc<Semaphore>>>,
    /// Each peer's share of those (half): one peer's stalled pushes cannot hold them all,
    /// however many contracts it has here. Only contract peers get a share.
    pub(super) put_shares: Mutex<HashMap<NodeId, Arc<Semaphore>>>,
    /// Buffers for the parts of extents being sent, reused.
    pub(super) parts: crate::store::buffer::Pool,
    /// Buffers for extents being received or sent, reused.
    pub(super) buffers: crate::store::buffer::Pool,
    /// What counts against each contract's room during pushes (to cap what a push may add).
    pub(super) stored: Mutex<HashMap<RecordId, Room>>,
    /// When the server last wrote down that a known peer reached it (`reach.json`).
    pub(super) reached: Mutex<Option<std::time::Instant>>,
    /// Handshakes under way (the door counts them).
    pub(super) handshakes: std::sync::atomic::AtomicUsize,
    /// Of those, the ones let in past the retry level, by host and by network: a prefix length
    /// and the address cut to it.
    pub(super) handshakes_by_source: Mutex<HashMap<(u8, std::net::IpAddr), usize>>,
    /// What is left of each contract's challenges this hour ([`ServerOptions::challenges_per_hour`]),
    /// with the start its times count from.
    pub(super) challenges: Mutex<(std::time::Instant, HashMap<RecordId, Allowance>)>,
}

/// What counts against a contract's room here while its owner pushes: the bytes its store
/// holds, as measured and counted since (`None` until measured, and again once a commit freed
/// some), and the bytes of extents on their way in. Kept apart, so that measuring the disk (at
/// `push_begin`, or after a commit) never forgets extents still arriving: an owner that holds
/// puts open across a `push_begin` or a commit gains no room by it.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(super) struct Room {
    /// The store's bytes.
    pub(super) on_disk: Option<u64>,
    /// Extents admitted and not yet stored or given up.
    pub(super) in_flight: u64,
}

impl Room {
    /// The bytes counted: the store's and those on their way.
    pub(super) fn counted(&self) -> u64 {
        self.on_disk.unwrap_or(0).saturating_add(self.in_flight)
    }
}

/// How long a stranger's connection keeps its place for sure: a board read, an offer published
/// or an acceptance take far less. Beyond it, it gives its place to a newcomer when all
/// strangers' places are taken.
pub(super) const STRANGER_HOLD: Duration = Duration::from_secs(20);

/// Holds one connection's place in the caps until dropped.
pub(super) struct Slot {
    ctx: Arc<Ctx>,
    peer: NodeId,
    /// A stranger's connection, by its id in [`Ctx::strangers`].
    stranger: Option<usize>,
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(id) = self.stranger
            && let Ok(mut strangers) = self.ctx.strangers.lock()
        {
            strangers.retain(|(_, c)| c.stable_id() != id);
        }
        if let Ok(mut open) = self.ctx.open.lock()
            && let Some(n) = open.get_mut(&self.peer)
        {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.peer);
            }
        }
    }
}

/// How long the set of known nodes is trusted before it is read again.
const KNOWN_FOR: Duration = Duration::from_secs(10);
/// How soon the set is read again for a node not in it.
const RECHECK_AFTER: Duration = Duration::from_secs(1);

impl std::fmt::Debug for Ctx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ctx").field("node", &self.node.id()).field("opts", &self.opts).finish_non_exhaustive()
    }
}

impl Ctx {
    /// Writes one line for the person running the server.
    pub(super) fn say(&self, msg: std::fmt::Arguments<'_>) {
        self.report.say(&msg.to_string());
    }

    /// Whether `peer` is this node, in the address book or a contract's peer. The set is read again after
    /// [`KNOWN_FOR`], or sooner (at most every [`RECHECK_AFTER`]) when `peer` is not in it: a
    /// node just added or just contracted with is known at once, and a flood of strangers
    /// costs at most one read a second. Blocking.
    pub(super) fn knows(&self, peer: &NodeId) -> bool {
        // This node's own tools (its offers through its own board) are no stranger's.
        if *peer == self.node.id() {
            return true;
        }
        let Ok(mut known) = self.known.lock() else { return false };
        let stale = |at: &std::time::Instant, set: &std::collections::HashSet<NodeId>| {
            at.elapsed() > KNOWN_FOR || (!set.contains(peer) && at.elapsed() > RECHECK_AFTER)
        };
        if known.as_ref().is_none_or(|(at, set)| stale(at, set)) {
            let mut set: std::collections::HashSet<NodeId> =
                self.node.address_book().map(|b| b.peers.into_keys().collect()).unwrap_or_default();
            set.extend(self.node.contracts().unwrap_or_default().into_iter().map(|e| e.state.peer));
            *known = Some((std::time::Instant::now(), set));
        }
        known.as_ref().is_some_and(|(_, set)| set.contains(peer))
    }

    /// Forgets the set of known nodes (a contract was just made here): read again at the next
    /// connection.
    pub(super) fn forget_known(&self) {
        if let Ok(mut known) = self.known.lock() {
            *known = None;
        }
    }

    pub(super) fn take_slot(
        self: &Arc<Self>,
        peer: NodeId,
        stranger: bool,
        conn: &quinn::Connection,
    ) -> Result<Slot, &'static str> {
        let mut open = self.open.lock().map_err(|_| "internal error")?;
        if open.values().sum::<usize>() >= self.opts.max_connections {
            return Err("the server has too many connections");
        }
        let cap = if stranger { self.opts.max_connections_per_stranger } else { self.opts.max_connections_per_peer };
        if open.get(&peer).is_some_and(|n| *n >= cap) {
            return Err("too many connections from this node");
        }
        if stranger {
            let mut strangers = self.strangers.lock().map_err(|_| "internal error")?;
            let taken: usize = open.iter().filter(|(p, _)| !self.was_known(p)).map(|(_, n)| n).sum();
            if taken >= self.opts.max_stranger_connections {
                // The oldest gives way, if it has had its time; its place is free once its
                // handler sees it closed.
                match strangers.front() {
                    Some((since, _)) if since.elapsed() >= STRANGER_HOLD => {
                        if let Some((_, oldest)) = strangers.pop_front() {
                            oldest.close(quinn::VarInt::from_u32(crate::net::transport::CLOSE_BUSY), b"made room");
                        }
                    }
                    _ => return Err("the server has too many connections from nodes it does not know"),
                }
            }
            strangers.push_back((std::time::Instant::now(), conn.clone()));
        }
        *open.entry(peer).or_default() += 1;
        Ok(Slot { ctx: self.clone(), peer, stranger: stranger.then(|| conn.stable_id()) })
    }

    /// Takes one of contract `id`'s challenges this hour, or says `busy` and when to ask again.
    /// Only for a contract the sender is a side of (the map holds no more entries than
    /// contracts).
    pub(super) fn take_challenge(&self, id: RecordId) -> Result<(), ErrorReply> {
        let Some(per_hour) = self.opts.challenges_per_hour else { return Ok(()) };
        let mut guard = self.challenges.lock().map_err(|_| ErrorReply::new(ErrorCode::Internal, "internal error"))?;
        let (start, allowances) = &mut *guard;
        let now = start.elapsed();
        allowances.entry(id).or_insert_with(|| Allowance::per_hour(per_hour)).take(now).map_err(|wait| {
            ErrorReply::new(
                ErrorCode::Busy,
                format!(
                    "challenged too often under this contract (at most {per_hour} an hour): ask again in {} s",
                    wait.as_secs().max(1)
                ),
            )
        })
    }

    /// Whether `peer` was known when the set was last read (no I/O).
    fn was_known(&self, peer: &NodeId) -> bool {
        *peer == self.node.id()
            || self.known.lock().ok().and_then(|k| k.as_ref().map(|(_, set)| set.contains(peer))).unwrap_or(false)
    }
}
