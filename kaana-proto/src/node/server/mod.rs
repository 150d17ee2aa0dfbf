//! The node server: the node's one network endpoint.
//!
//! Every connection is authenticated by its node key in the TLS handshake; every request is
//! then answered on its own stream, with the client's node id passed to the handler so that it
//! can authorise the request. The server caps connections (in all and per peer) and streams per
//! connection, reads every frame under a time-out, answers a bad request with an error reply and
//! goes on serving. On shutdown it stops taking work, lets requests in flight finish, and closes.

mod audits;
mod ctx;
mod door;
mod forward;
mod market;
mod put;
mod reachable;
mod reply;
mod sync;

use crate::node::report::Report;
pub use ctx::{CHALLENGES_PER_HOUR, ServerOptions};
use ctx::{Ctx, MAX_PUTS_AT_ONCE, MAX_SYNCS_AT_ONCE};
pub use reachable::keep_reachable;
use reply::Payload;

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use quinn::{Endpoint, RecvStream, SendStream, VarInt};
use tokio::sync::{Semaphore, mpsc, watch};

use crate::net::tls::node_of_spki;
use crate::net::transport::{
    self, CLOSE_BUSY, CLOSE_SHUTDOWN, Client, NetError, read_frame_within, write_frame, write_paced, write_paced_until,
};
use crate::net::wire::{ErrorCode, ErrorReply, PROTOCOL_VERSION, Request, Response};
use crate::node::machine::now_from_env;
use crate::protocol::identity::NodeId;
use crate::store::buffer::PartReader;
use crate::store::files::ServerInfo;
use crate::store::home::Schema;
use crate::store::node::Node;

/// The largest frame a stranger may send: its requests are small (hello, an offer, a page of the
/// board, an acceptance). It also keeps the handshake's first streams and window
/// ([`transport::FIRST_STREAMS`], [`transport::FIRST_WINDOW`]) that a known node has raised; so
/// all strangers together (at most [`ServerOptions::max_stranger_connections`]) have at most
/// 64 × 256 KiB in flight toward the server.
const STRANGER_MAX_FRAME: usize = 64 << 10;

/// A bound server, ready to run.
#[derive(Debug)]
pub struct Server {
    endpoint: Endpoint,
    ctx: Arc<Ctx>,
    /// Taken by [`Server::run`], which starts forwarding.
    queues: Option<forward::ForwardQueues>,
}

impl Server {
    /// Binds the node's endpoint. Must be called inside a tokio runtime.
    pub fn bind(node: Node, opts: ServerOptions, report: Arc<dyn Report>) -> Result<Server, NetError> {
        raise_open_files();
        let now = now_from_env().map_err(|e| NetError::Setup(e.to_string()))?;
        let board = market::load_board(&node, now).map_err(|e| NetError::Setup(e.to_string()))?;
        let config = transport::server_config(&node.identity)?;
        let endpoint = transport::endpoint(opts.listen, Some(config), transport::Traffic::Bulk)?;
        let listen = endpoint.local_addr().map_err(|e| NetError::Setup(e.to_string()))?;
        let info = ServerInfo { schema: Schema, node: node.id(), listen, pid: std::process::id() };
        node.home.write(&node.home.server_info(), &info).map_err(|e| NetError::Setup(e.to_string()))?;
        let client =
            Client::with_traffic(node.identity.clone(), transport::Traffic::Short).with_timeouts(opts.client_timeouts);
        let (forwarding, queues) = forward::Forwarding::new();
        let ctx = Ctx {
            node,
            report,
            opts,
            open: Mutex::new(HashMap::new()),
            strangers: Mutex::default(),
            known: Mutex::new(None),
            board: Mutex::new(board),
            forwarding,
            client,
            put_permits: Semaphore::new(MAX_PUTS_AT_ONCE),
            sync_permits: Semaphore::new(MAX_SYNCS_AT_ONCE),
            history_shares: Mutex::new(HashMap::new()),
            put_shares: Mutex::new(HashMap::new()),
            buffers: crate::store::buffer::Pool::new(MAX_PUTS_AT_ONCE),
            parts: crate::store::buffer::Pool::new(MAX_PARTS_KEPT),
            stored: Mutex::new(HashMap::new()),
            reached: Mutex::new(None),
            handshakes: std::sync::atomic::AtomicUsize::new(0),
            handshakes_by_source: Mutex::new(HashMap::new()),
            challenges: Mutex::new((std::time::Instant::now(), HashMap::new())),
        };
        Ok(Server { endpoint, ctx: Arc::new(ctx), queues: Some(queues) })
    }

    /// The address the server is bound to.
    pub fn local_addr(&self) -> Result<SocketAddr, NetError> {
        self.endpoint.local_addr().map_err(|e| NetError::Setup(e.to_string()))
    }

    /// Serves until `shutdown` completes, then drains and closes. An error if the endpoint
    /// stopped taking connections by itself (its socket failed): the server is not serving, and
    /// whatever runs it (systemd) should know.
    pub async fn run(mut self, shutdown: impl Future<Output = ()>) -> Result<(), NetError> {
        if let Some(queues) = self.queues.take() {
            let ctx = self.ctx.clone();
            let report = ctx.report.clone();
            queues.run(
                move |from, offer| {
                    let ctx = ctx.clone();
                    async move { market::forward(&ctx, from, offer).await }
                },
                report,
            );
        }
        let (stop_tx, stop_rx) = watch::channel(false);
        // Every task holds a clone of `busy`; when all are dropped, the drain is over.
        let (busy, mut idle) = mpsc::channel::<()>(1);
        tokio::pin!(shutdown);
        let mut ended = Ok(());
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                incoming = self.endpoint.accept() => match incoming {
                    Some(incoming) => {
                        if let Some((incoming, handshake)) = door::admit(&self.ctx, incoming) {
                            let task =
                                handle_connection(self.ctx.clone(), incoming, handshake, stop_rx.clone(), busy.clone());
                            tokio::spawn(task);
                        }
                    }
                    None => {
                        ended = Err(NetError::Setup("the endpoint stopped taking connections".into()));
                        break;
                    }
                },
            }
        }
        self.ctx.say(format_args!("shutting down: no new work; finishing requests in flight"));
        self.endpoint.set_server_config(None);
        let _ = stop_tx.send(true);
        drop(busy);
        if tokio::time::timeout(self.ctx.opts.drain_timeout, idle.recv()).await.is_err() {
            self.ctx.say(format_args!(
                "requests still in flight after {}s; closing anyway",
                self.ctx.opts.drain_timeout.as_secs()
            ));
        }
        self.endpoint.close(VarInt::from_u32(CLOSE_SHUTDOWN), b"server shutting down");
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        self.ctx.say(format_args!("stopped"));
        ended
    }
}

fn peer_of(conn: &quinn::Connection) -> Option<NodeId> {
    let certs = conn.peer_identity()?.downcast::<Vec<rustls::pki_types::CertificateDer<'static>>>().ok()?;
    node_of_spki(certs.first()?)
}

async fn handle_connection(
    ctx: Arc<Ctx>,
    incoming: quinn::Incoming,
    handshake: door::Handshake,
    mut stop: watch::Receiver<bool>,
    busy: mpsc::Sender<()>,
) {
    let remote = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(e) => return ctx.say(format_args!("{remote}: handshake refused: {e}")),
    };
    let conn = match tokio::time::timeout(ctx.opts.read_timeout.min(door::HANDSHAKE_TIMEOUT), connecting).await {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return ctx.say(format_args!("{remote}: handshake failed: {e}")),
        Err(_) => return ctx.say(format_args!("{remote}: handshake timed out")),
    };
    drop(handshake);
    let Some(peer) = peer_of(&conn) else {
        conn.close(VarInt::from_u32(CLOSE_BUSY), b"no node key");
        return;
    };
    let c = ctx.clone();
    let stranger = !tokio::task::spawn_blocking(move || c.knows(&peer)).await.unwrap_or(false);
    let _slot = match ctx.take_slot(peer, stranger, &conn) {
        Ok(slot) => slot,
        Err(why) => {
            ctx.say(format_args!("{remote}: refused node {}: {why}", peer.short()));
            conn.close(VarInt::from_u32(CLOSE_BUSY), why.as_bytes());
            return;
        }
    };
    if !stranger {
        transport::open_up(&conn);
        // This node's own tools (publishing to its own board) show nothing of whether others
        // can reach it.
        if peer != ctx.node.id() {
            note_reached(&ctx, peer);
        }
    }
    let max_frame = if stranger { STRANGER_MAX_FRAME } else { crate::net::wire::MAX_FRAME };
    if silent_toward(&ctx, peer).await {
        // A deliberate failure: toward this peer the node is one whose disk hung. Nothing it
        // sends is read or answered; the connection ends when the peer gives up.
        tokio::select! {
            _ = stop.changed() => {}
            _ = conn.closed() => {}
        }
        return;
    }
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            stream = conn.accept_bi() => match stream {
                Ok((send, recv)) => {
                    let stream = Stream { peer, max_frame, send, recv };
                    tokio::spawn(handle_stream(ctx.clone(), conn.clone(), stream, busy.clone()));
                }
                Err(_) => break,
            },
        }
    }
}

/// How often the server writes down that a known peer reached it.
const REACHED_EVERY: Duration = Duration::from_secs(600);

/// Writes down in `reach.json` that `peer`, a node this one knows, reached the server: the
/// evidence `kaana-offer status` has that the node can be reached from outside. At most every
/// [`REACHED_EVERY`].
fn note_reached(ctx: &Arc<Ctx>, peer: NodeId) {
    let due = match ctx.reached.lock() {
        Ok(mut last) if last.is_none_or(|t| t.elapsed() >= REACHED_EVERY) => {
            *last = Some(std::time::Instant::now());
            true
        }
        _ => false,
    };
    if due {
        let c = ctx.clone();
        tokio::task::spawn_blocking(move || {
            let Ok(now) = now_from_env() else { return };
            if let Err(e) =
                c.node.update_reach(|r| r.last_reached = Some(crate::store::reach::Reached { at: now, peer }))
            {
                c.say(format_args!("reach.json: {e}"));
            }
        });
    }
}

/// Whether a deliberate failure of this node keeps it silent toward `peer` now.
async fn silent_toward(ctx: &Arc<Ctx>, peer: NodeId) -> bool {
    let c = ctx.clone();
    let silent = tokio::task::spawn_blocking(move || {
        let now = now_from_env().ok()?;
        Some(c.node.silent_peers(now).ok()?.contains(&peer))
    });
    matches!(silent.await, Ok(Some(true)))
}

/// A request's stream, and what its sender may send on it.
struct Stream {
    peer: NodeId,
    /// The largest request frame read from this peer.
    max_frame: usize,
    send: SendStream,
    recv: RecvStream,
}

async fn handle_stream(ctx: Arc<Ctx>, conn: quinn::Connection, stream: Stream, _busy: mpsc::Sender<()>) {
    let Stream { peer, max_frame, mut send, mut recv } = stream;
    let (response, raw) = match read_frame_within::<Request>(&mut recv, ctx.opts.read_timeout, max_frame).await {
        Ok(Some(req)) => dispatch(&ctx, &conn, peer, req, &mut recv).await,
        Ok(None) => return,
        Err(NetError::Lost(_)) => return,
        Err(e) => {
            let reply = match e {
                NetError::Frame(f) => ErrorReply::from(f),
                NetError::Timeout { .. } => ErrorReply::new(ErrorCode::Timeout, e.to_string()),
                other => ErrorReply::new(ErrorCode::BadFrame, other.to_string()),
            };
            ctx.say(format_args!("node {}: {}", peer.short(), reply.message));
            (Response::Error(reply), None)
        }
    };
    if matches!(response, Response::Error(_)) {
        // Nothing more is read from this stream: whatever else the client sends is refused.
        let _ = recv.stop(VarInt::from_u32(0));
    }
    // A client that takes no more of the reply (it grants no flow-control credit) gives up its
    // place after the read time-out, as one that sends nothing does; one that takes an extent
    // slowly (held to a rate, or on a slow path) is served, each part within the time-out.
    let sent = match tokio::time::timeout(ctx.opts.read_timeout, write_frame(&mut send, &response)).await {
        Ok(Ok(())) => match raw {
            Some(Payload::Bytes(raw)) => write_paced(&mut send, raw, ctx.opts.read_timeout).await,
            Some(Payload::File(file)) => write_file(&ctx, &mut send, file).await,
            None => Ok(()),
        },
        Ok(Err(e)) => Err(e),
        Err(_) => Err(NetError::Lost("the client took no more of the reply".into())),
    };
    if sent.is_ok() && send.finish().is_ok() {
        // Wait until the client has the whole reply, so a shutdown never cuts it short.
        let _ = tokio::time::timeout(ctx.opts.read_timeout, send.stopped()).await;
    }
}

/// Raises the soft limit of open files to the hard one (best effort), as servers that hold a
/// file for each extent going out do: a soft limit of 1 024, the common default, would let a
/// few peers taking extents slowly leave none for the others' puts and answers.
fn raise_open_files() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let _ = setrlimit(Resource::Nofile, Rlimit { current: limit.maximum, maximum: limit.maximum });
    }
}

/// The parts an extent is sent in, each read from its file as the one before goes out.
const EXTENT_PART: usize = 1 << 20;
/// Part buffers kept for reuse (more are made while more extents go out at once).
const MAX_PARTS_KEPT: usize = 16;

/// Sends a file (an extent, a list) a part at a time, each read once the one before is handed to
/// the connection (whose unacknowledged bytes are bounded): a peer that takes it slowly holds
/// a part or so of it in memory here, however large the file and however many it asks for.
async fn write_file(ctx: &Arc<Ctx>, send: &mut SendStream, file: PartReader) -> Result<(), NetError> {
    let len = file.len();
    let file = Arc::new(file);
    // The whole within one allowance, as one run of bytes: the parts share it.
    let deadline = tokio::time::Instant::now() + transport::run_allowance(len as usize, ctx.opts.read_timeout);
    let mut at = 0u64;
    while at < len {
        let n = (len - at).min(EXTENT_PART as u64) as usize;
        let (f, mut buf) = (file.clone(), ctx.parts.take_or_new());
        let part = tokio::task::spawn_blocking(move || f.read_at(&mut buf, at, n).map(|()| buf))
            .await
            .map_err(|e| NetError::Lost(e.to_string()))?
            .map_err(|e| NetError::Lost(format!("reading the file here: {e}")))?;
        write_paced_until(send, part.into_bytes(), ctx.opts.read_timeout, deadline).await?;
        at += n as u64;
    }
    Ok(())
}

async fn dispatch(
    ctx: &Arc<Ctx>,
    conn: &quinn::Connection,
    peer: NodeId,
    req: Request,
    recv: &mut RecvStream,
) -> (Response, Option<Payload>) {
    let kind = req.kind();
    let plain = |r: Result<Response, ErrorReply>| r.map(|r| (r, None));
    let result = match req {
        Request::Hello => Ok((
            Response::Hello {
                node: ctx.node.id(),
                you: peer,
                protocol: PROTOCOL_VERSION,
                software: concat!("kaana-like ", env!("CARGO_PKG_VERSION")).to_owned(),
            },
            None,
        )),
        Request::Publish { offer } => plain(market::publish(ctx, peer, offer).await),
        Request::ListOffers { after } => plain(market::list(ctx, after).await),
        Request::Accept { proposal, addrs } => plain(market::accept(ctx, peer, proposal, addrs).await),
        Request::Notice { notice } => plain(market::notice(ctx, peer, notice).await),
        Request::PushBegin { contract, volume_size, extent_size } => {
            sync::push_begin(ctx, peer, contract, volume_size, extent_size).await
        }
        Request::PutExtent { contract, offset, hash, len } => {
            put::put_extent(ctx, peer, recv, contract, offset, hash, len).await
        }
        Request::PatchExtent { contract, offset, base, hash, len, parts } => {
            put::patch_extent(ctx, peer, recv, contract, offset, (base, hash), len, parts).await
        }
        Request::Commit { contract, manifest } => sync::commit(ctx, peer, recv, contract, *manifest).await,
        Request::GetManifest { contract, generation } => sync::get_manifest(ctx, peer, contract, generation).await,
        Request::ListGenerations { contract } => sync::list_generations(ctx, peer, contract).await,
        Request::GetExtent { contract, hash } => sync::get_extent(ctx, peer, contract, hash).await,
        Request::ListContracts => sync::list_contracts(ctx, peer).await,
        Request::Challenge { challenge } => audits::answer(ctx, peer, challenge).await,
        Request::Verdict { verdict } => audits::verdict(ctx, peer, verdict).await,
        Request::Standing { contract } => audits::standing(ctx, peer, contract).await,
        Request::Rechallenge { contract } => audits::rechallenge(ctx, conn, peer, contract).await,
    };
    result.unwrap_or_else(|e| {
        ctx.say(format_args!("node {}: {kind} refused: {}", peer.short(), e.message));
        (Response::Error(e), None)
    })
}
