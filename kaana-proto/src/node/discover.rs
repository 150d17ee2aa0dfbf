//! Finding peers beyond the address book, and being found: the node's address record on the
//! Mainline DHT (published by `announce` and kept fresh by the server), peers looked up there
//! when their known addresses do not answer, boards found under the DHT topic, and the port the
//! router maps to the server.

use std::future::Future;
use std::net::{IpAddr, SocketAddr, SocketAddrV4};
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use thiserror::Error;
use tokio::sync::{OnceCell, watch};

use crate::net::dht::{self, Dht, DhtError};
use crate::net::portmap::{self, Mapping};
use crate::net::transport::Resolve;
use crate::node::machine::{Settings, now_from_env};
use crate::node::report::Report;
use crate::protocol::discovery::{self, AddressRecord, RecordError, Whereabouts};
use crate::protocol::identity::NodeId;
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

/// The DHT as one run of a tool, or the server, uses it: its DHT node starts at the first use.
#[derive(Debug)]
pub struct Discovery {
    bootstrap: Vec<String>,
    public: bool,
    timeout: Duration,
    dht: OnceCell<Dht>,
}

impl Discovery {
    /// The DHT `config` and `settings` name (the environment's setting first).
    pub fn new(config: &Config, settings: &Settings) -> Self {
        let chosen = settings.dht_bootstrap.clone().unwrap_or_else(|| config.dht_bootstrap.clone());
        let (bootstrap, public) = match chosen {
            None => (dht::PUBLIC_BOOTSTRAP.iter().map(|s| (*s).to_owned()).collect(), true),
            Some(nodes) => (nodes, false),
        };
        Discovery { bootstrap, public, timeout: dht::DEFAULT_TIMEOUT, dht: OnceCell::new() }
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
        Ok(self.dht.get_or_try_init(start).await?)
    }

    /// Looks `peer` up on the DHT at `now` and takes its record into `node`'s address book (a
    /// newer record than the one known replaces it; an older one is ignored). `None` if the
    /// peer has no record there.
    pub async fn lookup(
        &self,
        node: &Node,
        peer: NodeId,
        now: Timestamp,
    ) -> Result<Option<(AddressRecord, u64)>, DiscoveryError> {
        let Some(packet) = self.dht().await?.resolve(&peer, None).await? else { return Ok(None) };
        let record = discovery::read(&peer, &packet)?;
        let seq = packet.timestamp().as_u64();
        node.learn_record(peer, seq, &record, now)?;
        Ok(Some((record, seq)))
    }

    /// Signs and publishes `node`'s address record for `whereabouts` at `now`, and with
    /// `board_port`, announces its board under the DHT topic at that port.
    pub async fn publish(
        &self,
        node: &Node,
        whereabouts: &Whereabouts,
        board_port: Option<u16>,
        now: Timestamp,
    ) -> Result<Published, DiscoveryError> {
        let w = Whereabouts { public_dht: self.public, ..whereabouts.clone() };
        let addrs = discovery::announced(&w);
        if addrs.is_empty() {
            return Err(DiscoveryError::NothingToAnnounce(if self.public {
                "the server listens on no public address, no `advertise` is set and the router maps no port".into()
            } else {
                "the server listens on no definite address and no `advertise` is set".into()
            }));
        }
        let dht = self.dht().await?;
        let record = AddressRecord { addrs: addrs.clone(), board: board_port.is_some() };
        let seq = discovery::next_seq(now, node.reach()?.published_seq);
        let packet = discovery::sign(&node.identity, &record, seq)?;
        let stored_on = dht.publish(&packet).await?;
        node.update_reach(|r| {
            r.published_seq = Some(seq);
            r.published_at = Some(now);
            r.announced = addrs.clone();
            r.dht_error = None;
        })?;
        let board = match board_port {
            Some(port) => {
                dht.announce(discovery::board_topic(), port).await?;
                node.update_reach(|r| r.board_announced_at = Some(now))?;
                true
            }
            None => false,
        };
        Ok(Published { addrs, stored_on, board })
    }

    /// The boards announced under the DHT topic (their addresses), at most `limit`.
    pub async fn boards(&self, limit: usize) -> Result<Vec<SocketAddrV4>, DiscoveryError> {
        Ok(self.dht().await?.peers(discovery::board_topic(), limit).await?)
    }
}

/// What [`Discovery::publish`] did.
#[derive(Debug, Clone)]
pub struct Published {
    /// The addresses the record gives.
    pub addrs: Vec<String>,
    /// On how many DHT nodes it was stored.
    pub stored_on: u32,
    /// Whether the board was announced under the topic too.
    pub board: bool,
}

/// Looks a peer up on the DHT for a client whose known addresses for it did not answer, and
/// keeps what it finds in the address book. A record looked up within its TTL is not asked for
/// again.
#[derive(Debug)]
pub struct BookResolver {
    node: Node,
    discovery: Arc<Discovery>,
}

impl BookResolver {
    /// A resolver for `node`'s address book, over `discovery`.
    pub fn new(node: Node, discovery: Arc<Discovery>) -> Self {
        BookResolver { node, discovery }
    }

    async fn find(&self, peer: NodeId) -> Result<Vec<String>, String> {
        let now = now_from_env().map_err(|e| e.to_string())?;
        let book = self.node.address_book().map_err(|e| e.to_string())?;
        if let Some(known) = book.peers.get(&peer).and_then(|e| e.dht.as_ref())
            && discovery::fresh(known.resolved_at, now)
        {
            return Ok(known.addrs.clone());
        }
        match self.discovery.lookup(&self.node, peer, now).await {
            Ok(Some(_)) => Ok(self.node.address_book().map_err(|e| e.to_string())?.addrs(&peer).to_vec()),
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

/// How often the server looks at its mapping and its record.
const TICK: Duration = Duration::from_secs(30);
/// How long after a refused mapping the router is asked again.
const MAPPING_RETRY: Duration = Duration::from_secs(600);

/// The server's side of being found, until `stop`: asks the router to forward a UDP port to
/// `listen` when `map_port` (renewed at half its lease, removed at the end), publishes the
/// node's address record when it is due (hourly, and when the addresses change) and announces
/// the board under the DHT topic every quarter hour. What it learns goes to `reach.json`.
pub async fn keep_reachable(
    node: Node,
    discovery: Arc<Discovery>,
    listen: SocketAddr,
    map_port: bool,
    report: Arc<dyn Report>,
    mut stop: watch::Receiver<bool>,
) {
    let say = |what: String| report.say(&what);
    let now = now_from_env().unwrap_or(Timestamp::from_unix(0));
    if let Err(e) = node.update_reach(|r| {
        r.serving_since = Some(now);
        r.mapped = None;
        r.mapping_error = None;
        r.dht_error = None;
    }) {
        say(format!("reach.json: {e}"));
    }
    // A server bound to loopback has nothing a router could forward to.
    let map_port = map_port && !listen.ip().is_loopback();
    let mut mapping: Option<Mapping> = None;
    let mut next_mapping = Instant::now();
    let mut last_error: Option<String> = None;
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            _ = stop.changed() => break,
            _ = tick.tick() => {}
        }
        let now = match now_from_env() {
            Ok(now) => now,
            Err(e) => {
                say(e.to_string());
                continue;
            }
        };
        if map_port && Instant::now() >= next_mapping {
            let previous = mapping.clone();
            let bind = Some(listen.ip()).filter(|ip: &IpAddr| !ip.is_unspecified());
            let asked = tokio::task::spawn_blocking(move || portmap::map_udp(bind, listen.port(), previous.as_ref()));
            match asked.await {
                Ok(Ok(m)) => {
                    if mapping.as_ref().map(|old| old.external) != Some(m.external) {
                        say(format!("the router {} forwards UDP {} to {}", m.router(), m.external, m.local));
                    }
                    next_mapping = Instant::now() + Duration::from_secs(u64::from(portmap::LEASE_SECS / 2));
                    let external = m.external.to_string();
                    mapping = Some(m);
                    let _ = node.update_reach(|r| {
                        r.mapped = Some(external);
                        r.mapping_error = None;
                    });
                }
                Ok(Err(e)) => {
                    if mapping.take().is_some() || last_error.as_deref() != Some(&e.to_string()) {
                        say(format!("no port mapping: {e}"));
                    }
                    last_error = Some(e.to_string());
                    next_mapping = Instant::now() + MAPPING_RETRY;
                    let _ = node.update_reach(|r| {
                        r.mapped = None;
                        r.mapping_error = Some(e.to_string());
                    });
                }
                Err(_) => {}
            }
        }
        if discovery.enabled() {
            announce_if_due(&node, &discovery, listen, mapping.as_ref(), now, &say).await;
        }
    }
    if let Some(m) = mapping {
        let removed = tokio::task::spawn_blocking(move || portmap::unmap(&m));
        match tokio::time::timeout(Duration::from_secs(3), removed).await {
            Ok(Ok(Ok(()))) => say("port mapping removed".into()),
            Ok(Ok(Err(e))) => say(format!("port mapping not removed: {e}")),
            _ => say("port mapping not removed: the router did not answer".into()),
        }
    }
    let _ = node.update_reach(|r| {
        r.serving_since = None;
        r.mapped = None;
    });
}

async fn announce_if_due(
    node: &Node,
    discovery: &Discovery,
    listen: SocketAddr,
    mapping: Option<&Mapping>,
    now: Timestamp,
    say: &impl Fn(String),
) {
    let reach = match node.reach() {
        Ok(r) => r,
        Err(e) => return say(format!("reach.json: {e}")),
    };
    let public_ip = match discovery.dht().await {
        Ok(dht) => dht.public_address().await.map(|a| a.ip()),
        Err(_) => None,
    };
    let w = Whereabouts {
        advertise: node.config.advertise.clone(),
        listen: Some(listen),
        mapped: mapping.map(|m| m.external),
        public_ip,
        public_dht: discovery.is_public(),
    };
    let addrs = discovery::announced(&Whereabouts { public_dht: discovery.is_public(), ..w.clone() });
    let last = reach.published_at.map(|at| (at, reach.announced.as_slice()));
    let board_due = reach
        .board_announced_at
        .is_none_or(|at| now.unix() >= at.unix().saturating_add(discovery::REANNOUNCE_SECS) || now < at);
    if addrs.is_empty() || !(discovery::publish_due(last, &addrs, now) || board_due) {
        return;
    }
    let port = mapping.map_or(listen.port(), |m| m.external.port());
    match discovery.publish(node, &w, Some(port), now).await {
        Ok(p) => {
            if last.is_none_or(|(_, old)| old != p.addrs.as_slice()) {
                say(format!("announced on the DHT at {} (stored on {} DHT nodes)", p.addrs.join(", "), p.stored_on));
            }
        }
        Err(e) => {
            if reach.dht_error.as_deref() != Some(&e.to_string()) {
                say(format!("not announced on the DHT: {e}"));
            }
            let _ = node.update_reach(|r| r.dht_error = Some(e.to_string()));
        }
    }
}
