//! The Mainline DHT, through the `mainline` crate: a node's signed address record is kept there
//! as a BEP 44 mutable item under its key (a pkarr packet), and boards announce themselves
//! under one topic with BEP 5's `announce_peer`. Every call gives up after the time-out it was
//! built with, so a DHT that does not answer costs a tool seconds, never a hang.

use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::time::Duration;

use futures_lite::StreamExt as _;
use mainline::async_dht::AsyncDht;
use mainline::errors::{PutMutableError, PutQueryError};
use mainline::{Id, MutableItem};
use pkarr::SignedPacket;
use thiserror::Error;

use crate::protocol::identity::NodeId;

/// The public DHT's bootstrap nodes (the `mainline` crate's list).
pub const PUBLIC_BOOTSTRAP: [&str; 4] = mainline::DEFAULT_BOOTSTRAP_NODES;
/// How long one DHT operation may take, unless told otherwise.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a DHT operation failed.
#[derive(Debug, Error)]
pub enum DhtError {
    /// The DHT node could not start (its UDP socket, or a bootstrap name that does not resolve).
    #[error("the DHT node could not start: {0}")]
    Start(String),
    /// No DHT node answered in time.
    #[error("the DHT did not answer within {0}s (bootstrap nodes: {1})")]
    Timeout(u64, String),
    /// The query ended without any DHT node having answered.
    #[error("no DHT node answered (bootstrap nodes: {0})")]
    NoAnswer(String),
    /// The DHT answered, but the operation failed.
    #[error("the DHT refused: {0}")]
    Refused(String),
}

/// A DHT node of this process: a client, or with `server` a full node that answers others.
#[derive(Debug, Clone)]
pub struct Dht {
    inner: AsyncDht,
    timeout: Duration,
    bootstrap: String,
}

impl Dht {
    /// Starts a DHT node bootstrapping from `bootstrap` (`HOST:PORT`; empty: none, the first node
    /// of a new network), giving each operation `timeout`.
    pub fn start(bootstrap: &[String], server: bool, timeout: Duration) -> Result<Self, DhtError> {
        let mut builder = mainline::Dht::builder();
        builder.bootstrap(bootstrap).request_timeout(timeout.min(Duration::from_secs(2)));
        if server {
            builder.server_mode();
        }
        // A private network on loopback: the node's socket must be on loopback too (its replies
        // come from the address it is bound to).
        if !bootstrap.is_empty() && bootstrap.iter().all(|b| b.starts_with("127.")) {
            builder.bind_address(Ipv4Addr::LOCALHOST);
        }
        let dht = builder.build().map_err(|e| DhtError::Start(e.to_string()))?;
        Ok(Dht { inner: dht.as_async(), timeout, bootstrap: bootstrap.join(", ") })
    }

    async fn within<T>(&self, f: impl std::future::Future<Output = T>) -> Result<T, DhtError> {
        tokio::time::timeout(self.timeout, f)
            .await
            .map_err(|_| DhtError::Timeout(self.timeout.as_secs().max(1), self.bootstrap.clone()))
    }

    /// Stores `packet` (a signed address record) under its key; returns on how many DHT nodes.
    pub async fn publish(&self, packet: &SignedPacket) -> Result<u32, DhtError> {
        self.put_item(MutableItem::new_signed_unchecked(
            packet.public_key().to_bytes(),
            packet.signature().to_bytes(),
            &packet.encoded_packet(),
            i64::try_from(packet.timestamp().as_u64()).unwrap_or(i64::MAX),
            None,
        ))
        .await
    }

    /// Stores a signed mutable item (BEP 44) as it is; returns on how many DHT nodes.
    pub async fn put_item(&self, item: MutableItem) -> Result<u32, DhtError> {
        match self.within(self.inner.put_mutable(item, None)).await? {
            Ok(outcome) => Ok(outcome.stored_at),
            Err(PutMutableError::Query(e)) => Err(self.put_failed(e)),
            Err(e) => Err(DhtError::Refused(e.to_string())),
        }
    }

    /// The newest mutable item under `key` (its signature checked), if there is one.
    pub async fn get_item(&self, key: &[u8; 32]) -> Result<Option<MutableItem>, DhtError> {
        let mut items = self.inner.get_mutable(key, None, None);
        let mut best: Option<MutableItem> = None;
        let gather = async {
            while let Some(item) = items.next().await {
                if best.as_ref().is_none_or(|b| item.seq() > b.seq()) {
                    best = Some(item);
                }
            }
        };
        let finished = tokio::time::timeout(self.timeout, gather).await.is_ok();
        self.outcome(best, finished).await
    }

    /// The newest valid record `node` published; `None` if there is none. Each item's signature
    /// is checked against `node`'s key.
    pub async fn resolve(&self, node: &NodeId) -> Result<Option<SignedPacket>, DhtError> {
        let key = pkarr::PublicKey::try_from(node.as_bytes()).map_err(|e| DhtError::Refused(e.to_string()))?;
        let mut items = self.inner.get_mutable(node.as_bytes(), None, None);
        let mut best: Option<SignedPacket> = None;
        let gather = async {
            while let Some(item) = items.next().await {
                let mut payload = Vec::with_capacity(72 + item.value().len());
                payload.extend_from_slice(item.signature());
                payload.extend_from_slice(&u64::try_from(item.seq()).unwrap_or(0).to_be_bytes());
                payload.extend_from_slice(item.value());
                let Ok(packet) = SignedPacket::from_relay_payload(&key, &payload.into()) else { continue };
                if best.as_ref().is_none_or(|b| packet.more_recent_than(b)) {
                    best = Some(packet);
                }
            }
        };
        let finished = tokio::time::timeout(self.timeout, gather).await.is_ok();
        self.outcome(best, finished).await
    }

    /// What a query that gathered `best` comes to: a query that ran out of time still gives what
    /// it found; one that found nothing is an error unless some DHT node answered.
    async fn outcome<T>(&self, best: Option<T>, finished: bool) -> Result<Option<T>, DhtError> {
        match best {
            Some(found) => Ok(Some(found)),
            None if !finished => Err(DhtError::Timeout(self.timeout.as_secs().max(1), self.bootstrap.clone())),
            None if !self.answered().await => Err(DhtError::NoAnswer(self.bootstrap.clone())),
            None => Ok(None),
        }
    }

    /// Whether any DHT node has answered this one (its routing table is not empty): a query that
    /// found nothing then means there is nothing, not that nobody was asked.
    async fn answered(&self) -> bool {
        !self.inner.to_bootstrap().await.is_empty()
    }

    /// Announces this node under `topic` with `port` (BEP 5): others see the address the DHT's
    /// nodes see it at, with that port.
    pub async fn announce(&self, topic: [u8; 20], port: u16) -> Result<(), DhtError> {
        let id = Id::from_bytes(topic).map_err(|e| DhtError::Refused(e.to_string()))?;
        match self.within(self.inner.announce_peer(id, Some(port))).await? {
            Ok(_) => Ok(()),
            Err(e) => Err(self.put_failed(e)),
        }
    }

    fn put_failed(&self, e: PutQueryError) -> DhtError {
        match e {
            PutQueryError::NoClosestNodes | PutQueryError::Timeout => DhtError::NoAnswer(self.bootstrap.clone()),
            PutQueryError::ErrorResponse(e) => DhtError::Refused(format!("error {}: {}", e.code, e.description)),
        }
    }

    /// The addresses announced under `topic`, at most `limit` of them, without repeats.
    pub async fn peers(&self, topic: [u8; 20], limit: usize) -> Result<Vec<SocketAddrV4>, DhtError> {
        let id = Id::from_bytes(topic).map_err(|e| DhtError::Refused(e.to_string()))?;
        let mut stream = self.inner.get_peers(id);
        let mut found: Vec<SocketAddrV4> = Vec::new();
        let gather = async {
            while let Some(batch) = stream.next().await {
                for a in batch {
                    if !found.contains(&a) && found.len() < limit {
                        found.push(a);
                    }
                }
                if found.len() >= limit {
                    break;
                }
            }
        };
        let finished = tokio::time::timeout(self.timeout, gather).await.is_ok();
        if found.is_empty() && !finished {
            return Err(DhtError::Timeout(self.timeout.as_secs().max(1), self.bootstrap.clone()));
        }
        if found.is_empty() && !self.answered().await {
            return Err(DhtError::NoAnswer(self.bootstrap.clone()));
        }
        Ok(found)
    }

    /// This node's address as the DHT's nodes see it, once they have said.
    pub async fn public_address(&self) -> Option<SocketAddr> {
        self.inner.info().await.public_address().map(SocketAddr::V4)
    }

    /// The address this DHT node's socket is bound to.
    pub async fn local_address(&self) -> SocketAddr {
        SocketAddr::V4(self.inner.info().await.local_addr())
    }
}
