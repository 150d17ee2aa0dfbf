//! A hostile client written against the wire format: what strangers with endless fresh keys and
//! one contract peer turned hostile can throw at a server at once. Used by the fault tests (the
//! server stays small and serves honest peers meanwhile) and by `scripts/bench.sh` through
//! `examples/flood.rs` (how much slower honest work gets under it).
//!
//! Strangers, each on a fresh key: hello, pages of the board, offers, replayed commits with a
//! list behind them, frames announced over the cap, and frames left unfinished. The contract
//! peer, on its own key: slow pushes (extents announced whole and sent in dribbles), replayed
//! commits with oversize lists, oversize frames, and manifest and contract requests.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use kaana_proto::net::transport::{Client, Connection, Exchange, NetError};
use kaana_proto::net::wire::Request;
use kaana_proto::protocol::identity::{Identity, NodeId};
use kaana_proto::protocol::manifest::Manifest;
use kaana_proto::protocol::market::{Offer, RecordId};
use kaana_proto::protocol::record::Signed;
use kaana_proto::protocol::time::Timestamp;

/// Whom the flood is aimed at, and as whom.
#[derive(Clone)]
pub struct Aim {
    /// The server's node id and address.
    pub server: NodeId,
    pub addr: String,
    /// A contract peer of the server turned hostile: its key, the contract, and the last
    /// manifest it committed there (replayed by everyone).
    pub peer: Option<(Identity, RecordId, Signed<Manifest>)>,
    /// When the strangers' offers expire.
    pub expires_at: Timestamp,
}

/// What the flood did, counted as it goes.
#[derive(Debug, Default)]
pub struct Counts {
    /// Connections the server took.
    pub connections: AtomicU64,
    /// Connections it refused (or that failed).
    pub refused_connections: AtomicU64,
    /// Requests sent (whatever their answer).
    pub requests: AtomicU64,
    /// Bytes written on streams.
    pub bytes: AtomicU64,
}

impl Counts {
    /// The counts as one JSON object.
    pub fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "connections": self.connections.load(Ordering::Relaxed),
            "refused_connections": self.refused_connections.load(Ordering::Relaxed),
            "requests": self.requests.load(Ordering::Relaxed),
            "bytes": self.bytes.load(Ordering::Relaxed),
        })
    }
}

/// Lanes of strangers, and of the contract peer (when there is one).
const STRANGER_LANES: u64 = 6;
const PEER_LANES: u64 = 4;

/// Floods `aim` until `stop` is set; returns once every lane has ended.
pub async fn flood(aim: Aim, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut lanes = tokio::task::JoinSet::new();
    for lane in 0..STRANGER_LANES {
        lanes.spawn(strangers(aim.clone(), lane, stop.clone(), counts.clone()));
    }
    if aim.peer.is_some() {
        for lane in 0..PEER_LANES {
            lanes.spawn(hostile_peer(aim.clone(), lane, stop.clone(), counts.clone()));
        }
    }
    while lanes.join_next().await.is_some() {}
}

async fn connect(client: &Client, aim: &Aim, counts: &Counts) -> Option<Connection> {
    match client.connect(aim.server, &aim.addr).await {
        Ok(conn) => {
            counts.connections.fetch_add(1, Ordering::Relaxed);
            Some(conn)
        }
        Err(_) => {
            counts.refused_connections.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
            None
        }
    }
}

/// How long any one step of the flood may wait (for a stream, for flow control, for a reply):
/// a lane whose server stopped answering it moves on, and every lane ends soon after `stop`.
const STEP: Duration = Duration::from_secs(3);

/// Sends `req` and reads its reply, within [`STEP`]; whether the connection still works.
async fn ask(conn: &Connection, req: &Request, counts: &Counts) -> bool {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    match tokio::time::timeout(STEP, conn.request(req)).await {
        Ok(Ok(_) | Err(NetError::Remote(_))) => true,
        Ok(Err(_)) | Err(_) => false,
    }
}

/// Sends `req`, then `tail` raw bytes behind it, and does not wait for the answer.
async fn send_with(conn: &Connection, req: &Request, tail: &[u8], counts: &Counts) -> Option<Exchange> {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let mut ex = tokio::time::timeout(STEP, conn.open(req)).await.ok()?.ok()?;
    let sent = tokio::time::timeout(Duration::from_millis(200), ex.send.write_all(tail)).await;
    if matches!(sent, Ok(Ok(()))) {
        counts.bytes.fetch_add(tail.len() as u64, Ordering::Relaxed);
    }
    Some(ex)
}

/// Opens a stream and writes `bytes` raw (a frame of the sender's making).
async fn send_raw(conn: &Connection, bytes: &[u8], counts: &Counts) -> Option<Exchange> {
    counts.requests.fetch_add(1, Ordering::Relaxed);
    let mut ex = tokio::time::timeout(STEP, conn.open_stream()).await.ok()?.ok()?;
    let _ = tokio::time::timeout(Duration::from_millis(200), ex.send.write_all(bytes)).await;
    counts.bytes.fetch_add(bytes.len() as u64, Ordering::Relaxed);
    Some(ex)
}

/// A frame header announcing `len` bytes, and `body` bytes of junk behind it.
fn announced(len: u32, body: usize) -> Vec<u8> {
    let mut frame = len.to_be_bytes().to_vec();
    frame.resize(4 + body, b'x');
    frame
}

async fn strangers(aim: Aim, lane: u64, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        round += 1;
        let key = match Identity::generate() {
            Ok(k) => k,
            Err(_) => return,
        };
        let client = Client::new(key.clone());
        let Some(conn) = connect(&client, &aim, &counts).await else { continue };
        if !ask(&conn, &Request::Hello, &counts).await {
            continue;
        }
        ask(&conn, &Request::ListOffers { after: None }, &counts).await;
        let body = Offer {
            node: key.node_id(),
            addrs: vec!["127.0.0.1:9".into()],
            size: 1 << 20,
            grace_secs: 60,
            expires_at: aim.expires_at,
            nonce: format!("{lane:016x}{round:016x}"),
            history: None,
        };
        if let Ok(offer) = Signed::sign(body, &key) {
            ask(&conn, &Request::Publish { offer }, &counts).await;
        }
        // Held streams: a replayed commit with a list behind it, a frame over the cap, and one
        // that never finishes.
        let mut held = Vec::new();
        if let Some((_, contract, manifest)) = &aim.peer {
            let commit = Request::Commit { contract: *contract, manifest: Box::new(manifest.clone()) };
            held.extend(send_with(&conn, &commit, &[0u8; 64 << 10], &counts).await);
        }
        held.extend(send_raw(&conn, &announced(u32::MAX, 16 << 10), &counts).await);
        held.extend(send_raw(&conn, &announced(60 << 10, 30 << 10), &counts).await);
        tokio::time::sleep(Duration::from_millis(100)).await;
        drop(held);
        conn.close();
        client.close().await;
    }
}

async fn hostile_peer(aim: Aim, lane: u64, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let Some((key, contract, manifest)) = aim.peer.clone() else { return };
    let client = Client::new(key);
    let extent = 4u32 << 20;
    let mut round = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let Some(conn) = connect(&client, &aim, &counts).await else { continue };
        loop {
            round += 1;
            let mut held = Vec::new();
            // Slow pushes: 4 MiB extents announced, a quarter of each sent, the rest never.
            for n in 0..4u64 {
                let offset = ((lane * 4 + n + round) % 4) * u64::from(extent);
                let put = Request::PutExtent { contract, offset, hash: [lane as u8; 32], len: extent };
                held.extend(send_with(&conn, &put, &vec![0u8; 1 << 20], &counts).await);
            }
            // A replayed commit with a 4 MiB list behind it.
            let commit = Request::Commit { contract, manifest: Box::new(manifest.clone()) };
            held.extend(send_with(&conn, &commit, &vec![0u8; 4 << 20], &counts).await);
            // A frame over the cap, and requests it may make.
            held.extend(send_raw(&conn, &announced(64 << 20, 64 << 10), &counts).await);
            let alive = ask(&conn, &Request::ListContracts, &counts).await
                && ask(&conn, &Request::GetManifest { contract, generation: None }, &counts).await
                && ask(&conn, &Request::ListGenerations { contract }, &counts).await
                && ask(&conn, &Request::GetManifest { contract, generation: Some(u64::MAX) }, &counts).await;
            tokio::time::sleep(Duration::from_millis(200)).await;
            drop(held);
            if stop.load(Ordering::Relaxed) || !alive {
                conn.close();
                break;
            }
        }
    }
    client.close().await;
}
