//! QUIC endpoints and framed exchanges over them: the client that reaches a named node, and
//! the stream-level frame I/O both sides use, each read under a time-out.
//!
//! Longer than 400 lines: the client, its connections and exchanges, and the frame reads and
//! writes share their time-outs and error mapping; a sixth is the endpoint's tuning, each value
//! explained.

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
use quinn::{Endpoint, RecvStream, SendStream, TransportConfig, VarInt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::rate::{PACED_CHUNK, RateLimit};
use super::tls::{self, WrongNode};
use super::wire::{self, ErrorReply, FrameError, Request, Response};
use crate::protocol::identity::{Identity, NodeId};
use crate::protocol::size::MIN_RATE;

/// How long a read of one frame (or one run of raw bytes) may take.
pub const READ_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a connection attempt may take, unless `KAANA_CONNECT_TIMEOUT` says otherwise.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests one connection may have open at once (QUIC flow control holds back the rest).
pub const MAX_STREAMS_PER_CONNECTION: u32 = 16;
/// A connection with nothing on it for this long is closed.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// Keep-alives keep a slow exchange from reaching the idle time-out.
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// Application close code: normal close.
pub const CLOSE_OK: u32 = 0;
/// Application close code: the server is at a limit (too many connections).
pub const CLOSE_BUSY: u32 = 1;
/// Application close code: the server is shutting down.
pub const CLOSE_SHUTDOWN: u32 = 2;

/// Why an exchange with a peer failed.
#[derive(Debug, Error)]
pub enum NetError {
    /// The address did not resolve.
    #[error("cannot resolve {addr}: {reason}")]
    Resolve {
        /// The address as given.
        addr: String,
        /// Why.
        reason: String,
    },
    /// The server's key is not the node id the client asked for.
    #[error("{addr}: {error}")]
    WrongNode {
        /// The address reached.
        addr: String,
        /// Who answered instead.
        error: WrongNode,
    },
    /// No connection could be made.
    #[error("cannot reach node {node} at {addr}: {reason}")]
    Unreachable {
        /// The node.
        node: NodeId,
        /// Its address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No connection could be made to whichever node is at an address (a board found on the DHT).
    #[error("cannot reach a node at {addr}: {reason}")]
    UnreachableAt {
        /// The address.
        addr: String,
        /// Why.
        reason: String,
    },
    /// No address is known for the node.
    #[error("no address known for node {0}: add one with `kaana-offer peer add ID@HOST:PORT`")]
    NoAddress(NodeId),
    /// The peer took too long.
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout {
        /// What was awaited.
        what: &'static str,
        /// How long.
        secs: u64,
    },
    /// The peer refused the request.
    #[error("the peer refused: {0}")]
    Remote(ErrorReply),
    /// The connection or stream broke.
    #[error("connection lost: {0}")]
    Lost(String),
    /// The peer's server is at a limit (too many connections from this node, or in all).
    #[error("the peer is busy ({0}); try again later")]
    Busy(String),
    /// The stream ended in the middle of a frame or a run of bytes.
    #[error("the stream ended early: {0}")]
    Truncated(String),
    /// The peer sent something this version does not understand.
    #[error("the peer sent a bad frame: {0}")]
    Frame(#[from] FrameError),
    /// The peer answered with a reply that does not fit the request.
    #[error("unexpected reply to {request}: {reply}")]
    Unexpected {
        /// The request's kind.
        request: &'static str,
        /// The reply's kind.
        reply: String,
    },
    /// The local endpoint could not be set up.
    #[error("cannot set up QUIC: {0}")]
    Setup(String),
}

/// The largest UDP payload a node sends or accepts. Paths start at QUIC's safe 1200 bytes and
/// MTU discovery probes up to this; on the internet it settles at the path's MTU (about 1452),
/// on loopback or a jumbo-frame LAN it reaches this, which roughly halves the CPU spent per byte.
/// (Larger sizes hung: with segmentation offload quinn sends up to ten packets in one call, and
/// the kernel takes at most 64 KiB in one; without offload, packets of 60 000 bytes were no
/// faster on loopback and a 1 500-byte path cost twice the CPU.)
pub const MAX_UDP_PAYLOAD: u16 = 6000;
/// Bytes a connection may have received and not yet had read by the application.
const RECEIVE_WINDOW: u32 = 8 << 20;
/// Bytes a connection may have sent and not yet had acknowledged.
const SEND_WINDOW: u64 = 4 << 20;
/// How long a client for one run waits at most for its connections' close to be sent.
const CLOSE_FLUSH: Duration = Duration::from_millis(200);
/// How long another client waits for its connections' close to be sent before it exits.
const CLOSE_GUESS: Duration = Duration::from_millis(10);
/// Socket buffers: large enough that a burst at loopback speed is not dropped.
const SOCKET_BUFFER: usize = 4 << 20;

/// What a client's connections carry, which decides their packet size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Traffic {
    /// Volumes: packets grow by MTU discovery up to `MAX_UDP_PAYLOAD` (6000 bytes).
    Bulk,
    /// Exchanges of a few kilobytes (challenges, offers): QUIC's minimum packet size, which the
    /// client also declares as the most it accepts, so neither side probes for larger packets.
    /// On a fresh connection the probes alone came to some 40 KB, more than a challenge's answer
    /// would save by them.
    Short,
}

/// QUIC's smallest packet size, which every path must carry.
const MIN_UDP_PAYLOAD: u16 = 1200;

/// The receive window of a client held to `bytes_per_sec`: about a second of it (256 KiB at
/// least), so that a holder cannot send a restore faster than the limit for more than a moment,
/// while a path of a few hundred milliseconds still carries the whole rate.
fn limited_window(bytes_per_sec: u64) -> u32 {
    bytes_per_sec.clamp(256 << 10, u64::from(RECEIVE_WINDOW)) as u32
}

fn transport_config(traffic: Traffic) -> TransportConfig {
    let mut t = TransportConfig::default();
    let mtu = (traffic == Traffic::Bulk).then(|| {
        let mut mtu = quinn::MtuDiscoveryConfig::default();
        mtu.upper_bound(MAX_UDP_PAYLOAD);
        mtu
    });
    t.max_concurrent_bidi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .mtu_discovery_config(mtu)
        // Unacknowledged data a sender buffers: enough for loopback and LAN speeds; quinn's
        // default (10 MB) only raised memory.
        .send_window(SEND_WINDOW)
        // What a peer may have in flight towards us on one connection: a bound on the memory a
        // hostile peer can make a server hold (quinn's default is unlimited).
        .receive_window(VarInt::from_u32(RECEIVE_WINDOW))
        .keep_alive_interval(Some(KEEP_ALIVE));
    if let Ok(idle) = IDLE_TIMEOUT.try_into() {
        t.max_idle_timeout(Some(idle));
    }
    t
}

/// A QUIC endpoint bound to `addr`: large socket buffers, and large packets accepted unless its
/// traffic is [`Traffic::Short`].
pub fn endpoint(addr: SocketAddr, server: Option<quinn::ServerConfig>, traffic: Traffic) -> Result<Endpoint, NetError> {
    let setup = |e: std::io::Error| NetError::Setup(format!("cannot listen on {addr}: {e}"));
    let socket = std::net::UdpSocket::bind(addr).map_err(setup)?;
    let state = quinn::udp::UdpSocketState::new((&socket).into()).map_err(setup)?;
    // Best effort: the kernel caps these at net.core.[rw]mem_max.
    let _ = state.set_recv_buffer_size((&socket).into(), SOCKET_BUFFER);
    let _ = state.set_send_buffer_size((&socket).into(), SOCKET_BUFFER);
    let mut config = quinn::EndpointConfig::default();
    let max_payload = if traffic == Traffic::Bulk { MAX_UDP_PAYLOAD } else { MIN_UDP_PAYLOAD };
    config.max_udp_payload_size(max_payload).map_err(|e| NetError::Setup(e.to_string()))?;
    let runtime = quinn::default_runtime().ok_or_else(|| NetError::Setup("no async runtime".into()))?;
    Endpoint::new(config, server, socket, runtime).map_err(setup)
}

/// A QUIC server config presenting `identity` and requiring clients to present a node key.
pub fn server_config(identity: &Identity) -> Result<quinn::ServerConfig, NetError> {
    let tls = tls::server_config(identity).map_err(|e| NetError::Setup(e.to_string()))?;
    let quic = QuicServerConfig::try_from(tls).map_err(|e| NetError::Setup(e.to_string()))?;
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(quic));
    // A client starts with little: who it is is known only after the handshake, and what the
    // handshake grants cannot be taken back. The server then opens up to nodes it trusts.
    let mut transport = transport_config(Traffic::Bulk);
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(FIRST_STREAMS))
        .receive_window(VarInt::from_u32(FIRST_WINDOW));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Streams a client may open at once on a new connection, until [`open_up`].
pub const FIRST_STREAMS: u32 = 4;
/// Bytes a client may have in flight toward the server on a new connection, until [`open_up`].
pub const FIRST_WINDOW: u32 = 256 << 10;

/// Gives a server's client the full [`MAX_STREAMS_PER_CONNECTION`] streams and receive window.
pub fn open_up(conn: &quinn::Connection) {
    conn.set_max_concurrent_bi_streams(VarInt::from_u32(MAX_STREAMS_PER_CONNECTION));
    conn.set_receive_window(VarInt::from_u32(RECEIVE_WINDOW));
}

fn client_config(
    identity: &Identity,
    expected: Option<NodeId>,
    traffic: Traffic,
    limit: Option<&RateLimit>,
) -> Result<(quinn::ClientConfig, Arc<tls::SeenServer>), NetError> {
    let (tls, seen) = tls::client_config(identity, expected).map_err(|e| NetError::Setup(e.to_string()))?;
    let quic = QuicClientConfig::try_from(tls).map_err(|e| NetError::Setup(e.to_string()))?;
    let mut config = quinn::ClientConfig::new(Arc::new(quic));
    let mut transport = transport_config(traffic);
    if let Some(limit) = limit {
        let window = limited_window(limit.bytes_per_sec());
        transport.receive_window(VarInt::from_u32(window)).stream_receive_window(VarInt::from_u32(window));
    }
    config.transport_config(Arc::new(transport));
    Ok((config, seen))
}

/// How long a client waits: to connect, and for each read. A tool reads them from the
/// environment once, at its edge (`node::machine::Settings`); a client made without them uses
/// these defaults.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To connect (and finish the handshake).
    pub connect: Duration,
    /// For each read of a reply.
    pub read: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts { connect: CONNECT_TIMEOUT, read: READ_TIMEOUT }
    }
}

/// Where a client looks for a node whose known addresses do not answer (for the tools: the
/// node's address record on the DHT).
pub trait Resolve: Send + Sync + std::fmt::Debug {
    /// Addresses to try for `node`, or why none could be found.
    fn resolve(&self, node: NodeId) -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + '_>>;
}

/// A node's client side: connects to other nodes, presenting this node's key.
#[derive(Debug)]
pub struct Client {
    identity: Identity,
    traffic: Traffic,
    v4: OnceLock<Endpoint>,
    v6: OnceLock<Endpoint>,
    timeouts: Timeouts,
    resolver: Option<Arc<dyn Resolve>>,
    limit: Option<Arc<RateLimit>>,
    /// The connections made, until their close is known to be sent ([`Client::close`]); kept
    /// only by a client for one run ([`Client::for_one_run`]).
    open: Option<Mutex<Vec<Made>>>,
}

/// What a client for one run keeps of a connection it made.
#[derive(Debug)]
struct Made {
    conn: quinn::Connection,
    closed: Arc<Closed>,
}

/// When a connection was closed here, counted in the datagrams it had sent (none yet while
/// it is open).
#[derive(Debug, Default)]
struct Closed(Mutex<Option<Note>>);

#[derive(Debug, Clone, Copy)]
struct Note {
    /// Datagrams sent once it was closed: any after these is a close (a closed connection
    /// sends nothing else).
    after: u64,
    /// Whether some went out while it was being closed: one of those may have been the close
    /// itself, or may not.
    unsure: bool,
}

/// Closes `conn` (once), noting in `closed` when.
fn close_noting(conn: &quinn::Connection, closed: &Closed) {
    let Ok(mut note) = closed.0.lock() else {
        return conn.close(VarInt::from_u32(CLOSE_OK), b"done");
    };
    if note.is_none() {
        let before = conn.stats().udp_tx.datagrams;
        conn.close(VarInt::from_u32(CLOSE_OK), b"done");
        let after = conn.stats().udp_tx.datagrams;
        *note = Some(Note { after, unsure: after != before });
    }
}

/// Closes its connection when dropped, as quinn does when the last handle on a connection is
/// dropped; held by every [`Connection`] and [`Exchange`] on it.
#[derive(Debug)]
struct Closing {
    conn: quinn::Connection,
    closed: Arc<Closed>,
}

impl Drop for Closing {
    fn drop(&mut self) {
        close_noting(&self.conn, &self.closed);
    }
}

impl Made {
    /// Whether the connection needs nothing more sent, `waited` after it was closed: still
    /// open, or closed here and a datagram sent since (its close; when that is unsure, after
    /// [`CLOSE_GUESS`]), or closed by the peer or its time-out (nothing to send).
    fn settled(&self, waited: Duration) -> bool {
        match self.conn.close_reason() {
            None => true,
            Some(quinn::ConnectionError::LocallyClosed) => match self.closed.0.lock().ok().and_then(|n| *n) {
                Some(n) => self.conn.stats().udp_tx.datagrams > n.after || (n.unsure && waited >= CLOSE_GUESS),
                None => waited >= CLOSE_GUESS,
            },
            Some(_) => true,
        }
    }

    /// Whether nothing is left to do for the connection: it is over, and its close went.
    fn over(&self) -> bool {
        self.conn.close_reason().is_some() && self.settled(Duration::MAX)
    }
}

impl Client {
    /// A client presenting `identity`, for volumes. Must be used inside a tokio runtime.
    pub fn new(identity: Identity) -> Self {
        Self::with_traffic(identity, Traffic::Bulk)
    }

    /// A client presenting `identity`, for `traffic`. Must be used inside a tokio runtime.
    pub fn with_traffic(identity: Identity, traffic: Traffic) -> Self {
        Client {
            identity,
            traffic,
            v4: OnceLock::new(),
            v6: OnceLock::new(),
            timeouts: Timeouts::default(),
            resolver: None,
            limit: None,
            open: None,
        }
    }

    /// The same client, for one run of a tool: it keeps a handle on every connection it makes,
    /// so that [`Client::close`] can wait until each has sent its close. (A connection is still
    /// closed when the tool drops its last handle on it. A server's client, which runs for
    /// months, keeps none.)
    pub fn for_one_run(mut self) -> Self {
        self.open = Some(Mutex::new(Vec::new()));
        self
    }

    /// The same client, moving the bytes of extents at most `bytes_per_sec` per second, all its
    /// connections together (`None` or 0: as fast as the path allows). A rate below
    /// [`MIN_RATE`] (as a hand-edited `config.json` may hold) is taken as that.
    pub fn with_rate_limit(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.limit = bytes_per_sec.filter(|&r| r > 0).map(|r| Arc::new(RateLimit::new(r.max(MIN_RATE))));
        self
    }

    /// The rate this client is held to, if any.
    pub fn rate_limit(&self) -> Option<u64> {
        self.limit.as_ref().map(|l| l.bytes_per_sec())
    }

    /// The same client, asking `resolver` where a node is when its known addresses do not answer.
    pub fn with_resolver(mut self, resolver: Arc<dyn Resolve>) -> Self {
        self.resolver = Some(resolver);
        self
    }

    /// The same client, waiting as `timeouts` say.
    pub fn with_timeouts(mut self, timeouts: Timeouts) -> Self {
        self.timeouts = timeouts;
        self
    }

    fn endpoint(&self, target: &SocketAddr) -> Result<&Endpoint, NetError> {
        let (cell, bind): (_, SocketAddr) = if target.is_ipv4() {
            (&self.v4, (std::net::Ipv4Addr::UNSPECIFIED, 0).into())
        } else {
            (&self.v6, (std::net::Ipv6Addr::UNSPECIFIED, 0).into())
        };
        if let Some(e) = cell.get() {
            return Ok(e);
        }
        let endpoint = endpoint(bind, None, self.traffic)?;
        Ok(cell.get_or_init(|| endpoint))
    }

    /// Connects to `node` at `addr` (`HOST:PORT`), refusing any other node.
    pub async fn connect(&self, node: NodeId, addr: &str) -> Result<Connection, NetError> {
        self.connect_to(Some(node), addr).await
    }

    /// Connects to whichever node answers at `addr` (a board found on the DHT, known only by its
    /// address); the connection names it, proved in the handshake.
    pub async fn connect_anyone(&self, addr: &str) -> Result<Connection, NetError> {
        self.connect_to(None, addr).await
    }

    async fn connect_to(&self, expected: Option<NodeId>, addr: &str) -> Result<Connection, NetError> {
        let resolve = |reason: String| NetError::Resolve { addr: addr.to_owned(), reason };
        // A name's lookup waits no longer than a connection would.
        let target = tokio::time::timeout(self.timeouts.connect, tokio::net::lookup_host(addr))
            .await
            .map_err(|_| resolve(format!("no answer within {}s", self.timeouts.connect.as_secs())))?
            .map_err(|e| resolve(e.to_string()))?
            .next()
            .ok_or_else(|| resolve("no address".into()))?;
        let (config, seen) = client_config(&self.identity, expected, self.traffic, self.limit.as_deref())?;
        let unreachable = |reason: String| match expected {
            Some(node) => NetError::Unreachable { node, addr: addr.to_owned(), reason },
            None => NetError::UnreachableAt { addr: addr.to_owned(), reason },
        };
        let connecting =
            self.endpoint(&target)?.connect_with(config, target, "kaana").map_err(|e| unreachable(e.to_string()))?;
        let conn = match tokio::time::timeout(self.timeouts.connect, connecting).await {
            Err(_) => {
                return Err(unreachable(format!("no answer within {}s", self.timeouts.connect.as_secs())));
            }
            Ok(Err(e)) => {
                return Err(match (expected, seen.get()) {
                    (Some(expected), Some(found)) if found != expected => {
                        NetError::WrongNode { addr: addr.to_owned(), error: WrongNode { expected, found } }
                    }
                    _ => unreachable(e.to_string()),
                });
            }
            Ok(Ok(conn)) => conn,
        };
        let node = match (expected, seen.get()) {
            (Some(node), _) | (None, Some(node)) => node,
            (None, None) => return Err(unreachable("the server presented no key".into())),
        };
        let closing_note: Arc<Closed> = Arc::default();
        if let Some(Ok(mut open)) = self.open.as_ref().map(Mutex::lock) {
            open.retain(|m| !m.over());
            open.push(Made { conn: conn.clone(), closed: closing_note.clone() });
        }
        let closing = Arc::new(Closing { conn, closed: closing_note });
        Ok(Connection { node, read_timeout: self.timeouts.read, limit: self.limit.clone(), closing })
    }

    /// Connects to `node` trying each of `addrs` in turn, then, if none answers and the client
    /// has a resolver, the addresses it finds that were not tried yet; the last error if none
    /// answers. A server at its limit of connections from this node (other tools of ours are
    /// talking to it) is tried again after a short, growing pause, for up to about ten seconds.
    pub async fn connect_any(&self, node: NodeId, addrs: &[String]) -> Result<Connection, NetError> {
        let first = match self.connect_known(node, addrs).await {
            Err(e @ NetError::Busy(_)) => return Err(e),
            Err(e) => e,
            ok => return ok,
        };
        let Some(resolver) = &self.resolver else { return Err(first) };
        match resolver.resolve(node).await {
            Ok(found) => {
                let fresh: Vec<String> = found.into_iter().filter(|a| !addrs.contains(a)).collect();
                if fresh.is_empty() {
                    return Err(first);
                }
                self.connect_known(node, &fresh).await
            }
            Err(why) => Err(match first {
                NetError::NoAddress(node) => NetError::Unreachable {
                    node,
                    addr: "the DHT".into(),
                    reason: format!("no address known, and {why}"),
                },
                NetError::Unreachable { node, addr, reason } => {
                    NetError::Unreachable { node, addr, reason: format!("{reason}; on the DHT: {why}") }
                }
                other => other,
            }),
        }
    }

    async fn connect_known(&self, node: NodeId, addrs: &[String]) -> Result<Connection, NetError> {
        let mut pause = Duration::from_millis(50);
        for attempt in 0.. {
            match self.connect_first(node, addrs).await {
                Err(NetError::Busy(_)) if attempt < 16 => {
                    // Spread the retries of tools started together.
                    let jitter = Duration::from_millis(u64::from(std::process::id() % 50));
                    tokio::time::sleep(pause + jitter).await;
                    pause = (pause * 2).min(Duration::from_secs(1));
                }
                other => return other,
            }
        }
        Err(NetError::NoAddress(node))
    }

    async fn connect_first(&self, node: NodeId, addrs: &[String]) -> Result<Connection, NetError> {
        let mut last = NetError::NoAddress(node);
        for addr in addrs {
            match self.connect(node, addr).await {
                // The server closes a connection it has no room for right after the handshake:
                // one round trip tells.
                Ok(c) => match c.request(&Request::Hello).await {
                    Ok(_) => return Ok(c),
                    Err(e @ NetError::Busy(_)) => return Err(e),
                    Err(e) => last = e,
                },
                Err(e @ NetError::WrongNode { .. }) => return Err(e),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Closes this client's connections and gives the close a moment to leave (call before
    /// exiting), so that servers free their places at once instead of at the idle time-out. A
    /// client for one run waits until each connection has sent its close (at most `CLOSE_FLUSH`,
    /// 200 ms); another waits `CLOSE_GUESS` (10 ms). The close is sent in the first moment:
    /// waiting for the whole draining period (three probe time-outs, some 80 ms on loopback)
    /// would only add that much to every tool's run.
    pub async fn close(&self) {
        let open = match &self.open {
            Some(open) => open.lock().map(|mut o| std::mem::take(&mut *o)).unwrap_or_default(),
            None => Vec::new(),
        };
        for made in &open {
            close_noting(&made.conn, &made.closed);
        }
        for cell in [&self.v4, &self.v6] {
            if let Some(e) = cell.get() {
                e.close(VarInt::from_u32(CLOSE_OK), b"done");
                if self.open.is_none() {
                    let _ = tokio::time::timeout(CLOSE_GUESS, e.wait_idle()).await;
                }
            }
        }
        let started = tokio::time::Instant::now();
        while !open.iter().all(|m| m.settled(started.elapsed())) && started.elapsed() < CLOSE_FLUSH {
            // The connections' tasks send the close: give them the runtime, a moment at a time.
            if started.elapsed() < Duration::from_millis(2) {
                tokio::task::yield_now().await;
            } else {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        // The close last counted goes out in the same turn of its task: one more turn for it.
        tokio::task::yield_now().await;
    }
}

/// A connection to an authenticated node.
#[derive(Debug, Clone)]
pub struct Connection {
    node: NodeId,
    read_timeout: Duration,
    limit: Option<Arc<RateLimit>>,
    /// The connection, closed when the last handle on it is dropped.
    closing: Arc<Closing>,
}

impl Connection {
    /// How long each read of a reply on this connection waits.
    pub fn read_timeout(&self) -> Duration {
        self.read_timeout
    }

    /// The rate this connection's client is held to, if any.
    pub fn rate_limit(&self) -> Option<u64> {
        self.limit.as_ref().map(|l| l.bytes_per_sec())
    }

    /// The node at the other end (proved in the handshake).
    pub fn node(&self) -> NodeId {
        self.node
    }

    /// The address the other end was reached at.
    pub fn remote_address(&self) -> SocketAddr {
        self.closing.conn.remote_address()
    }

    /// Opens a stream and sends nothing yet (for callers that write frames themselves).
    pub async fn open_stream(&self) -> Result<Exchange, NetError> {
        let (send, recv) = self.open_bi().await?;
        Ok(self.exchange(send, recv, "a raw stream"))
    }

    /// Opens a stream, within the read time-out: a peer that never lets another open (its
    /// stream credit withheld, the connection kept alive) is not waited for forever.
    async fn open_bi(&self) -> Result<(SendStream, RecvStream), NetError> {
        match tokio::time::timeout(self.read_timeout, self.closing.conn.open_bi()).await {
            Ok(opened) => opened.map_err(|e| lost(&self.closing.conn, e)),
            Err(_) => {
                Err(NetError::Timeout { what: "the peer to take another stream", secs: self.read_timeout.as_secs() })
            }
        }
    }

    fn exchange(&self, send: SendStream, recv: RecvStream, request: &'static str) -> Exchange {
        let (conn, read_timeout, limit) = (self.closing.conn.clone(), self.read_timeout, self.limit.clone());
        Exchange { send, recv, request, conn, read_timeout, limit, _closing: self.closing.clone() }
    }

    /// Waits for the peer to open a stream to this side (the server's half of a rechallenge).
    pub async fn accept_stream(&self) -> Result<(SendStream, RecvStream), NetError> {
        self.closing.conn.accept_bi().await.map_err(|e| lost(&self.closing.conn, e))
    }

    /// Bytes of UDP payload sent and received on this connection so far.
    pub fn wire_bytes(&self) -> u64 {
        let stats = self.closing.conn.stats();
        stats.udp_tx.bytes + stats.udp_rx.bytes
    }

    /// Opens a stream and sends `req`; the caller sends any raw bytes that follow and reads
    /// the reply from the returned [`Exchange`].
    pub async fn open(&self, req: &Request) -> Result<Exchange, NetError> {
        let (send, recv) = self.open_bi().await?;
        let mut ex = self.exchange(send, recv, req.kind());
        match tokio::time::timeout(self.read_timeout, write_frame(&mut ex.send, req)).await {
            Ok(written) => written.map_err(|e| ex.remap(e))?,
            Err(_) => {
                return Err(NetError::Timeout {
                    what: "the peer to take the request",
                    secs: self.read_timeout.as_secs(),
                });
            }
        }
        Ok(ex)
    }

    /// Sends `req` and reads its reply; an error reply becomes [`NetError::Remote`].
    pub async fn request(&self, req: &Request) -> Result<Response, NetError> {
        let mut ex = self.open(req).await?;
        ex.finish()?;
        ex.reply().await
    }

    /// Closes the connection (its client's [`Client::close`] then waits for the close to go).
    pub fn close(&self) {
        close_noting(&self.closing.conn, &self.closing.closed);
    }
}

/// One request's stream, from the client's side.
#[derive(Debug)]
pub struct Exchange {
    /// Where the request (and raw bytes) go.
    pub send: SendStream,
    /// Where the reply (and raw bytes) come from.
    pub recv: RecvStream,
    request: &'static str,
    conn: quinn::Connection,
    read_timeout: Duration,
    limit: Option<Arc<RateLimit>>,
    /// The connection stays open while this is in use, even if the [`Connection`] is dropped.
    _closing: Arc<Closing>,
}

impl Exchange {
    /// Sends a run of raw bytes (an extent) after the request, without a copy: whole, or, under
    /// a rate limit, a paced chunk at a time. Returns once the connection has taken them all.
    pub async fn send_bulk(&mut self, data: bytes::Bytes) -> Result<(), NetError> {
        // Not for ever: a peer that keeps the connection alive but takes no more (its credit
        // withheld) is given up on. The allowance is that of the run of bytes at the holder,
        // four times over: a put waits there, taking nothing, for a place among the puts, which
        // other peers' slow extents may hold for their own allowance each.
        let allowance = run_allowance(data.len(), self.read_timeout) * SEND_ALLOWANCES;
        let stalled = NetError::Timeout { what: "the peer to take the bytes sent", secs: allowance.as_secs() };
        let (send, conn, limit) = (&mut self.send, &self.conn, self.limit.clone());
        let sent = async move {
            let Some(limit) = limit else {
                return send.write_chunk(data).await.map_err(|e| lost(conn, e));
            };
            let mut at = 0;
            while at < data.len() {
                let end = (at + PACED_CHUNK).min(data.len());
                limit.take(end - at).await;
                send.write_chunk(data.slice(at..end)).await.map_err(|e| lost(conn, e))?;
                at = end;
            }
            Ok(())
        };
        tokio::time::timeout(allowance, sent).await.unwrap_or(Err(stalled))
    }

    /// Reads a run of raw bytes (an extent) that follows the reply into `buf`, under the rate
    /// limit if there is one. Each part must come within the read time-out: a slow path, or a
    /// low limit, only makes the whole take longer.
    pub async fn read_bulk(&mut self, buf: &mut [u8], what: &'static str) -> Result<(), NetError> {
        let (timeout, limit) = (self.read_timeout, self.limit.clone());
        read_paced(&mut self.recv, buf, timeout, what, limit.as_deref()).await.map_err(|e| self.remap(e))
    }

    /// Says the request is complete.
    pub fn finish(&mut self) -> Result<(), NetError> {
        self.send.finish().map_err(|e| lost(&self.conn, e))
    }

    fn remap(&self, e: NetError) -> NetError {
        match e {
            NetError::Lost(m) => lost(&self.conn, m),
            other => other,
        }
    }

    /// Reads the reply frame; an error reply becomes [`NetError::Remote`].
    pub async fn reply(&mut self) -> Result<Response, NetError> {
        let frame = read_frame::<Response>(&mut self.recv, self.read_timeout).await.map_err(|e| self.remap(e))?;
        match frame {
            Some(Response::Error(e)) => Err(NetError::Remote(e)),
            Some(r) => Ok(r),
            None => Err(NetError::Truncated(format!("no reply to {}", self.request))),
        }
    }

    /// The error for a reply of the wrong kind.
    pub fn unexpected(&self, reply: &Response) -> NetError {
        let text = serde_json::to_string(reply).unwrap_or_default();
        NetError::Unexpected { request: self.request, reply: text.chars().take(200).collect() }
    }
}

/// The error for a broken connection or stream: says "busy" when the server closed it for being
/// at a limit, so that a caller does not take an overloaded peer for a vanished one.
fn lost(conn: &quinn::Connection, e: impl std::fmt::Display) -> NetError {
    match conn.close_reason() {
        Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == VarInt::from_u32(CLOSE_BUSY) => {
            NetError::Busy(String::from_utf8_lossy(&c.reason).into_owned())
        }
        Some(quinn::ConnectionError::ApplicationClosed(c)) if c.error_code == VarInt::from_u32(CLOSE_SHUTDOWN) => {
            NetError::Lost("the peer's server is shutting down".into())
        }
        _ => NetError::Lost(e.to_string()),
    }
}

/// Writes one frame.
pub async fn write_frame<T: Serialize>(send: &mut SendStream, msg: &T) -> Result<(), NetError> {
    let frame = wire::encode(msg)?;
    send.write_all(&frame).await.map_err(|e| NetError::Lost(e.to_string()))
}

/// Reads one frame within `timeout`. `Ok(None)` if the stream ended cleanly before it began.
pub async fn read_frame<T: DeserializeOwned>(recv: &mut RecvStream, timeout: Duration) -> Result<Option<T>, NetError> {
    read_frame_within(recv, timeout, wire::MAX_FRAME).await
}

/// As [`read_frame`], refusing a frame over `cap` bytes before reading any of it.
pub async fn read_frame_within<T: DeserializeOwned>(
    recv: &mut RecvStream,
    timeout: Duration,
    cap: usize,
) -> Result<Option<T>, NetError> {
    let mut prefix = [0u8; 4];
    let read = tokio::time::timeout(timeout, recv.read_exact(&mut prefix)).await;
    if let Ok(Err(quinn::ReadExactError::FinishedEarly(0))) = read {
        return Ok(None);
    }
    read_outcome(read, timeout, "a frame", prefix.len())?;
    let len = wire::frame_len_within(prefix, cap)?;
    // Grown as the bytes come, not sized by the length alone: a peer announcing frames it
    // never sends, on every stream it may open, holds no memory for them.
    let mut json = Vec::with_capacity(len.min(FRAME_START));
    let read = tokio::time::timeout(timeout, async {
        while json.len() < len {
            match recv.read_chunk(len - json.len(), true).await {
                Ok(Some(chunk)) => json.extend_from_slice(&chunk.bytes),
                Ok(None) => return Err(quinn::ReadExactError::FinishedEarly(json.len())),
                Err(e) => return Err(quinn::ReadExactError::ReadError(e)),
            }
        }
        Ok(())
    })
    .await;
    read_outcome(read, timeout, "a frame", len)?;
    Ok(Some(wire::decode(&json)?))
}

/// What a frame's buffer starts at; it grows as the frame's bytes come.
const FRAME_START: usize = 64 << 10;

/// Reads exactly `buf.len()` bytes within `timeout`.
pub async fn read_exact(
    recv: &mut RecvStream,
    buf: &mut [u8],
    timeout: Duration,
    what: &'static str,
) -> Result<(), NetError> {
    let len = buf.len();
    read_outcome(tokio::time::timeout(timeout, recv.read_exact(buf)).await, timeout, what, len)
}

/// Bytes a run of raw bytes is read and written in, each part under its own time-out.
const RUN_PART: usize = PACED_CHUNK;

/// The slowest a peer may move a run of raw bytes, over the whole run: beyond one time-out, a
/// run of `len` bytes gets `len` at this rate. A peer that trickles a part now and then keeps a
/// place no longer than that (a 4 MiB extent: 30 s and 4 min 16 s). A limit is never below
/// [`MIN_RATE`], which leaves each stream at least twice this.
pub const SLOWEST_PEER: u64 = 16 << 10;

/// How many of a run's allowances a sender waits for the peer to take it ([`Exchange::send_bulk`]).
const SEND_ALLOWANCES: u32 = 4;

/// How long the peer may take over a run of `len` bytes, in all.
pub fn run_allowance(len: usize, timeout: Duration) -> Duration {
    timeout + Duration::from_secs(len as u64 / SLOWEST_PEER)
}

/// Reads a run of raw bytes (an extent, a list) into `buf`, a part at a time: each part within
/// `timeout`, and the whole within the time-out plus its length at [`SLOWEST_PEER`]. A peer that
/// keeps sending, however slowly (a home uplink, a rate limit), is not cut off; one that stops,
/// or trickles, is. Under `limit`, each part waits its turn first (not counted against the peer).
pub async fn read_paced(
    recv: &mut RecvStream,
    buf: &mut [u8],
    timeout: Duration,
    what: &'static str,
    limit: Option<&RateLimit>,
) -> Result<(), NetError> {
    let len = buf.len();
    let mut left = run_allowance(len, timeout);
    let mut at = 0;
    while at < len {
        let end = (at + RUN_PART).min(len);
        if let Some(limit) = limit {
            limit.take(end - at).await;
        }
        let wait = timeout.min(left);
        let started = tokio::time::Instant::now();
        let read = tokio::time::timeout(wait, recv.read_exact(&mut buf[at..end])).await;
        left = left.saturating_sub(started.elapsed());
        let read = match read {
            Ok(Err(quinn::ReadExactError::FinishedEarly(n))) => Ok(Err(quinn::ReadExactError::FinishedEarly(at + n))),
            other => other,
        };
        read_outcome(read, wait, what, len)?;
        at = end;
    }
    Ok(())
}

/// Writes a run of raw bytes (an extent) without a copy, a part at a time: each part within
/// `timeout`, and the whole within the time-out plus its length at [`SLOWEST_PEER`]. A reader
/// that keeps taking, however slowly, is served; one that stops, or trickles, is not waited for.
pub async fn write_paced(send: &mut SendStream, data: bytes::Bytes, timeout: Duration) -> Result<(), NetError> {
    let deadline = tokio::time::Instant::now() + run_allowance(data.len(), timeout);
    write_paced_until(send, data, timeout, deadline).await
}

/// [`write_paced`] for a part of a longer run, whose whole must be written by `deadline`.
pub async fn write_paced_until(
    send: &mut SendStream,
    data: bytes::Bytes,
    timeout: Duration,
    deadline: tokio::time::Instant,
) -> Result<(), NetError> {
    let mut at = 0;
    while at < data.len() {
        let end = (at + RUN_PART).min(data.len());
        let wait = timeout.min(deadline.saturating_duration_since(tokio::time::Instant::now()));
        match tokio::time::timeout(wait, send.write_chunk(data.slice(at..end))).await {
            Ok(Ok(())) => at = end,
            Ok(Err(e)) => return Err(NetError::Lost(e.to_string())),
            Err(_) => return Err(NetError::Lost("the client took no more of the reply".into())),
        }
    }
    Ok(())
}

fn read_outcome(
    read: Result<Result<(), quinn::ReadExactError>, tokio::time::error::Elapsed>,
    timeout: Duration,
    what: &'static str,
    len: usize,
) -> Result<(), NetError> {
    match read {
        Err(_) => Err(NetError::Timeout { what, secs: timeout.as_secs() }),
        Ok(Ok(())) => Ok(()),
        Ok(Err(quinn::ReadExactError::FinishedEarly(n))) => {
            Err(NetError::Truncated(format!("{what}: {n} of {len} bytes")))
        }
        Ok(Err(quinn::ReadExactError::ReadError(e))) => Err(NetError::Lost(e.to_string())),
    }
}
