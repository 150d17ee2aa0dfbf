//! Finding peers beyond the address book, and being found: the node's address record on the
//! Mainline DHT (published by `announce`, and kept fresh by the server: `server::reachable`),
//! peers looked up there when their known addresses do not answer, and boards found under the
//! DHT topic.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::OnceCell;

use crate::net::dht::{self, Dht, DhtError};
use crate::net::transport::Resolve;
use crate::protocol::discovery::{self, AddressRecord, RecordError};
use crate::protocol::identity::{Identity, NodeId};
use crate::protocol::locator::{self, Locator};
use crate::protocol::reachability::{self, Whereabouts};
use crate::protocol::time::Timestamp;
use crate::store::config::Config;
use crate::store::home::StateError;
use crate::store::node::Node;

/// Why a DHT step failed.
#[derive(Debug, Error)]
pub enum DiscoveryError {
    /// The DHT is turned off.
    #[error("the DHT is off (dht_bootstrap is none): add peers with ID@HOST:PORT, or set dht_bootstrap")]
    Off,
    /// The DHT failed.
    #[error(transparent)]
    Dht(#[from] DhtError),
    /// A record could not be read or made.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Nothing to announce.
    #[error("no address peers could reach: {0}")]
    NothingToAnnounce(String),
}

/// How long a DHT node that failed to start is not tried again (within a run, so that a tool
/// reaching several peers pays for a dead DHT once).
const START_RETRY: Duration = Duration::from_secs(60);

/// The DHT as one run of a tool, or the server, uses it: its DHT node starts at the first use.
#[derive(Debug)]
pub struct Discovery {
    bootstrap: Vec<String>,
    public: bool,
    timeout: Duration,
    dht: OnceCell<Dht>,
    failed: std::sync::Mutex<Option<(Instant, String)>>,
}

impl Discovery {
    /// The DHT `config` names, or `env` when the environment names one (`Some(None)`: the
    /// public DHT; `Some(Some([]))`: none).
    pub fn new(config: &Config, env: Option<Option<Vec<String>>>) -> Self {
        let chosen = env.unwrap_or_else(|| config.dht_bootstrap.clone());
        let (bootstrap, public) = match chosen {
            None => (dht::PUBLIC_BOOTSTRAP.iter().map(|s| (*s).to_owned()).collect(), true),
            Some(nodes) => (nodes, false),
        };
        Discovery {
            bootstrap,
            public,
            timeout: dht::DEFAULT_TIMEOUT,
            dht: OnceCell::new(),
            failed: std::sync::Mutex::new(None),
        }
    }

    /// Whether a DHT is configured at all.
    pub fn enabled(&self) -> bool {
        !self.bootstrap.is_empty()
    }

    /// Whether it is the public DHT.
    pub fn is_public(&self) -> bool {
        self.public
    }

    /// This run's DHT node, started at the first call.
    pub async fn dht(&self) -> Result<&Dht, DiscoveryError> {
        if !self.enabled() {
            return Err(DiscoveryError::Off);
        }
        let start = || async {
            let (bootstrap, timeout) = (self.bootstrap.clone(), self.timeout);
            // Resolving bootstrap names and binding block: off the runtime, under the time-out.
            let started = tokio::task::spawn_blocking(move || Dht::start(&bootstrap, false, timeout));
            match tokio::time::timeout(self.timeout, started).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(DhtError::Start(e.to_string())),
                Err(_) => Err(DhtError::Timeout(self.timeout.as_secs(), self.bootstrap.join(", "))),
            }
        };
        if let Ok(failed) = self.failed.lock()
            && let Some((at, why)) = failed.as_ref().filter(|(at, _)| at.elapsed() < START_RETRY)
        {
            let _ = at;
            return Err(DiscoveryError::Dht(DhtError::Start(why.clone())));
        }
        match self.dht.get_or_try_init(start).await {
            Ok(dht) => Ok(dht),
            Err(e) => {
                if let Ok(mut failed) = self.failed.lock() {
                    *failed = Some((Instant::now(), e.to_string()));
                }
                Err(e.into())
            }
        }
    }

    /// Looks `peer`'s address record up on the DHT, changing nothing: `None` if it has none
    /// there. On the public DHT, addresses no one outside could use (loopback, private) are
    /// dropped: a record must not point this node's tools at its own network.
    pub async fn find(&self, peer: NodeId) -> Result<Option<(AddressRecord, u64)>, DiscoveryError> {
        let Some(packet) = self.dht().await?.resolve(&peer).await? else { return Ok(None) };
        let mut record = discovery::read(&peer, &packet)?;
        if self.public {
            record.addrs.retain(|a| a.parse::<SocketAddr>().map_or(true, |s| reachability::is_global(s.ip())));
        }
        Ok(Some((record, packet.timestamp().as_u64())))
    }

    /// Signs and publishes `node`'s address record for `whereabouts` at `now` (saying it keeps
    /// a board when `board`), with a sequence number reserved under the state lock, so that the
    /// server and `announce` never sign two records with one number.
    pub async fn publish(
        &self,
        node: &Node,
        whereabouts: &Whereabouts,
        board: bool,
        now: Timestamp,
    ) -> Result<Published, DiscoveryError> {
        let w = Whereabouts { public_dht: self.public, ..whereabouts.clone() };
        let addrs = reachability::announced(&w);
        if addrs.is_empty() {
            return Err(DiscoveryError::NothingToAnnounce(if self.public {
                "the server listens on no public address, no `advertise` is set and the router maps no port".into()
            } else {
                "the server listens on no definite address and no `advertise` is set".into()
            }));
        }
        let dht = self.dht().await?;
        let has_contracts = node.contracts()?.iter().any(|e| !e.state.status.is_ended());
        let record = AddressRecord {
            addrs: addrs.clone(),
            board,
            locator: has_contracts.then(|| locator::key_hex(&node.identity)),
        };
        let mut seq = 0;
        node.update_reach(|r| {
            seq = discovery::next_seq(now, r.published_seq);
            r.published_seq = Some(seq);
        })?;
        let packet = discovery::sign(&node.identity, &record, seq)?;
        let stored_on = dht.publish(&packet).await?;
        node.update_reach(|r| {
            r.published_at = Some(now);
            r.announced = addrs.clone();
            r.dht_error = None;
        })?;
        // The recovery locator goes with it.
        let locator = self.publish_locator(node, now).await;
        Ok(Published { addrs, stored_on, locator })
    }

    /// Seals and stores `node`'s recovery locator (its contracts' peers and their last addresses)
    /// under the key its secret derives; whether it was stored (a node without contracts has
    /// nothing to store).
    pub async fn publish_locator(&self, node: &Node, now: Timestamp) -> Result<bool, DiscoveryError> {
        let book = node.address_book()?;
        let mut peers: Vec<(NodeId, String)> = Vec::new();
        let mut entries = node.contracts()?;
        // Active contracts first, the newest first: those are the ones to restore from.
        entries.sort_by_key(|e| {
            (
                !matches!(e.state.status, crate::store::files::Status::Active),
                std::cmp::Reverse(e.contract.body.created_at),
            )
        });
        for e in entries {
            if matches!(e.state.status, crate::store::files::Status::Ended { .. })
                || peers.iter().any(|(p, _)| *p == e.state.peer)
            {
                continue;
            }
            if let Some(addr) = book.addrs(&e.state.peer).first() {
                peers.push((e.state.peer, addr.clone()));
            }
        }
        if peers.is_empty() {
            return Ok(false);
        }
        // Its own sequence (whole seconds, each one larger), reserved under the state lock: not
        // the address record's, which would tie the two together.
        let mut seq = 0;
        node.update_reach(|r| {
            seq = i64::try_from(now.unix()).unwrap_or(i64::MAX - 1).max(r.locator_seq.map_or(0, |p| p + 1));
            r.locator_seq = Some(seq);
        })?;
        let item = locator::seal(&node.identity, &Locator { peers }, seq);
        self.dht().await?.put_item(item).await?;
        Ok(true)
    }

    /// Keeps the recovery locators of `node`'s contract peers alive on the DHT: looks each peer's
    /// address record up (taking it into the address book), and stores the signed locator item
    /// its record names again, as it is. Returns how many were stored. A node that is gone
    /// cannot republish its own: its peers do, so that its phrase still finds them.
    pub async fn keep_peers_locators(&self, node: &Node, now: Timestamp) -> Result<usize, DiscoveryError> {
        let mut peers: Vec<NodeId> =
            node.contracts()?.iter().filter(|e| !e.state.status.is_ended()).map(|e| e.state.peer).collect();
        peers.sort_unstable();
        peers.dedup();
        if peers.is_empty() {
            return Ok(0);
        }
        let dht = self.dht().await?;
        let mut kept = 0;
        for peer in peers {
            let Ok(Some((record, seq))) = self.find(peer).await else { continue };
            node.learn_record(peer, seq, &record, now)?;
            let Some(key) = record.locator.as_deref().and_then(|k| crate::protocol::encoding::hex_decode::<32>(k).ok())
            else {
                continue;
            };
            if let Ok(Some(item)) = dht.get_item(&key).await
                && dht.put_item(item).await.is_ok()
            {
                kept += 1;
            }
        }
        Ok(kept)
    }

    /// The recovery locator `identity`'s secret finds on the DHT, if there is one.
    pub async fn find_locator(&self, identity: &Identity) -> Result<Option<Locator>, DiscoveryError> {
        let item = self.dht().await?.get_item(&locator::key(identity)).await?;
        Ok(item.and_then(|i| locator::open(identity, &i)))
    }

    /// Announces `node`'s board under the DHT's board topic at `port` (BEP 5), at `now`.
    pub async fn announce_board(&self, node: &Node, port: u16, now: Timestamp) -> Result<(), DiscoveryError> {
        self.dht().await?.announce(discovery::board_topic(), port).await?;
        node.update_reach(|r| r.board_announced_at = Some(now))?;
        Ok(())
    }

    /// The public address the DHT's nodes see this machine at, if it is one of this machine's
    /// own (no NAT between): then a server listening on every interface is reachable there.
    /// Behind a NAT it is the router's, which forwards nothing without a port mapping.
    pub async fn own_public_ip(&self) -> Option<IpAddr> {
        let ip = self.dht().await.ok()?.public_address().await?.ip();
        std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok().then_some(ip)
    }

    /// The boards announced under the DHT topic (their addresses), at most `limit`.
    pub async fn boards(&self, limit: usize) -> Result<Vec<SocketAddrV4>, DiscoveryError> {
        Ok(self.dht().await?.peers(discovery::board_topic(), limit).await?)
    }
}

/// What [`Discovery::publish`] did.
#[derive(Debug)]
pub struct Published {
    /// The addresses the record gives.
    pub addrs: Vec<String>,
    /// On how many DHT nodes it was stored.
    pub stored_on: u32,
    /// Whether the recovery locator was stored with it (or why not).
    pub locator: Result<bool, DiscoveryError>,
}

/// Looks a peer up on the DHT for a client whose known addresses for it did not answer, and
/// keeps what it finds in the address book. A record looked up within its TTL is not asked for
/// again.
#[derive(Debug)]
pub struct BookResolver {
    node: Node,
    discovery: Arc<Discovery>,
    now: Timestamp,
}

impl BookResolver {
    /// A resolver for `node`'s address book, over `discovery`, for a run whose time is `now`.
    pub fn new(node: Node, discovery: Arc<Discovery>, now: Timestamp) -> Self {
        BookResolver { node, discovery, now }
    }

    async fn find(&self, peer: NodeId) -> Result<Vec<String>, String> {
        let now = self.now;
        let book = self.node.address_book().map_err(|e| e.to_string())?;
        if let Some(known) = book.peers.get(&peer).and_then(|e| e.dht.as_ref())
            && discovery::fresh(known.resolved_at, now)
        {
            return Ok(known.addrs.clone());
        }
        match self.discovery.find(peer).await {
            Ok(Some((record, seq))) => {
                // Kept for the next run if the state lock is free; the connection is tried either
                // way (the caller may hold the lock: waiting for it would be waiting for itself).
                let _ = self.node.learn_record_if_free(peer, seq, &record, now);
                let book = self.node.address_book().map_err(|e| e.to_string())?;
                let mut addrs = record.addrs;
                addrs.extend(book.addrs(&peer).iter().filter(|a| !addrs.contains(a)).cloned().collect::<Vec<_>>());
                Ok(addrs)
            }
            Ok(None) => Err("it has no address record on the DHT".into()),
            Err(e) => Err(e.to_string()),
        }
    }
}

impl Resolve for BookResolver {
    fn resolve(&self, node: NodeId) -> Pin<Box<dyn Future<Output = Result<Vec<String>, String>> + Send + '_>> {
        Box::pin(self.find(node))
    }
}
