//! The server's side of being found: the port the router maps to it, and its address record and
//! board announced on the Mainline DHT, kept fresh while it runs. What it learns goes to
//! `reach.json`.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::net::portmap::{self, Mapping};
use crate::node::discover::Discovery;
use crate::node::machine::now_from_env;
use crate::node::report::Report;
use crate::protocol::discovery;
use crate::protocol::reachability::{self, Whereabouts};
use crate::protocol::time::Timestamp;
use crate::store::node::Node;

/// How often the server looks at its mapping and its record.
const TICK: Duration = Duration::from_secs(30);
/// How long after a refused mapping the router is asked again.
const MAPPING_RETRY: Duration = Duration::from_secs(600);

/// The server's side of being found, until `stop`: asks the router to forward a UDP port to
/// `listen` when `map_port` (renewed at half its lease, removed at the end), publishes the
/// node's address record when it is due (at once, hourly, and when the addresses change) and
/// announces the board under the DHT topic every quarter hour. What it learns goes to
/// `reach.json`. A stop in the middle of a step abandons the step (and removes the mapping).
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
        // The peers' locators are stored again at each start (then hourly).
        r.peers_locators = None;
    }) {
        say(format!("reach.json: {e}"));
    }
    // A server bound to loopback has nothing a router could forward to.
    let map_port = map_port && !listen.ip().is_loopback();
    if map_port {
        say("asking the router to forward the listen port (UPnP, else NAT-PMP; turn off with --no-port-mapping)".into());
    }
    if discovery.enabled() && discovery.is_public() {
        say("announcing this node on the public Mainline DHT (turn off with `kaana-offer config set dht_bootstrap none`)"
            .into());
    }
    let mut upkeep = Upkeep { mapping: None, next_mapping: Instant::now(), last_error: None };
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
        let step = async {
            if map_port && Instant::now() >= upkeep.next_mapping {
                upkeep.map(&node, listen, &say).await;
            }
            if discovery.enabled() {
                announce_if_due(&node, &discovery, listen, upkeep.mapping.as_ref(), now, &say).await;
                keep_locators_if_due(&node, &discovery, now, &say).await;
            }
        };
        tokio::select! {
            _ = stop.changed() => break,
            () = step => {}
        }
    }
    if let Some(m) = upkeep.mapping.take() {
        let removed = tokio::task::spawn_blocking(move || portmap::unmap(&m));
        match tokio::time::timeout(Duration::from_secs(5), removed).await {
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

/// The router's side of the upkeep.
struct Upkeep {
    mapping: Option<Mapping>,
    next_mapping: Instant,
    last_error: Option<String>,
}

impl Upkeep {
    /// Asks for (or renews) the mapping, and writes what happened in `reach.json`.
    async fn map(&mut self, node: &Node, listen: SocketAddr, say: &impl Fn(String)) {
        let previous = self.mapping.clone();
        let bind = Some(listen.ip()).filter(|ip: &IpAddr| !ip.is_unspecified());
        let asked = tokio::task::spawn_blocking(move || portmap::map_udp(bind, listen.port(), previous.as_ref()));
        match asked.await {
            Ok(Ok(m)) => {
                if self.mapping.as_ref().map(|old| old.external) != Some(m.external) {
                    say(format!(
                        "the router {} forwards UDP {} to {} ({})",
                        m.router(),
                        m.external,
                        m.local,
                        m.protocol()
                    ));
                }
                // Renewed at half the lease the router granted (at least a minute apart).
                self.next_mapping = Instant::now() + Duration::from_secs(u64::from(m.lease_secs / 2).max(60));
                let external = m.external.to_string();
                self.mapping = Some(m);
                self.last_error = None;
                let _ = node.update_reach(|r| {
                    r.mapped = Some(external);
                    r.mapping_error = None;
                });
            }
            Ok(Err(e)) => {
                if self.mapping.take().is_some() || self.last_error.as_deref() != Some(&e.to_string()) {
                    say(format!("no port mapping: {e}"));
                }
                self.last_error = Some(e.to_string());
                self.next_mapping = Instant::now() + MAPPING_RETRY;
                let _ = node.update_reach(|r| {
                    r.mapped = None;
                    r.mapping_error = Some(e.to_string());
                });
            }
            Err(_) => {}
        }
    }
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
    // Only a server on every interface needs the DHT's view of its address (and the DHT is not
    // started for a server with nothing to announce).
    let public_ip = if listen.ip().is_unspecified() { discovery.own_public_ip().await } else { None };
    let w = Whereabouts {
        advertise: node.config.advertise.clone(),
        listen: Some(listen),
        mapped: mapping.map(|m| m.external),
        public_ip,
        public_dht: discovery.is_public(),
    };
    let addrs = reachability::announced(&w);
    if addrs.is_empty() {
        return;
    }
    let last = reach.published_at.map(|at| (at, reach.announced.as_slice()));
    let failed = |e: String| {
        if reach.dht_error.as_deref() != Some(&e) {
            say(format!("not announced on the DHT: {e}"));
        }
        let _ = node.update_reach(|r| r.dht_error = Some(e));
    };
    if discovery::publish_due(last, &addrs, now) {
        match discovery.publish(node, &w, true, now).await {
            Ok(p) => {
                if last.is_none_or(|(_, old)| old != p.addrs.as_slice()) {
                    say(format!(
                        "announced on the DHT at {} (stored on {} DHT nodes)",
                        p.addrs.join(", "),
                        p.stored_on
                    ));
                }
                if let Err(e) = p.locator {
                    say(format!("the recovery locator was not stored on the DHT: {e}"));
                }
            }
            Err(e) => return failed(e.to_string()),
        }
    }
    let board_due = reach
        .board_announced_at
        .is_none_or(|at| now.unix() >= at.unix().saturating_add(discovery::REANNOUNCE_SECS) || now < at);
    if board_due {
        let port = mapping.map_or(listen.port(), |m| m.external.port());
        if let Err(e) = discovery.announce_board(node, port, now).await {
            failed(e.to_string());
        }
    }
}

/// Stores the contract peers' recovery locators again when due (at start, then hourly): a node
/// that is gone cannot store its own.
async fn keep_locators_if_due(node: &Node, discovery: &Discovery, now: Timestamp, say: &impl Fn(String)) {
    let Ok(reach) = node.reach() else { return };
    let locators_due = reach
        .peers_locators
        .is_none_or(|(at, _)| now.unix() >= at.unix().saturating_add(discovery::REPUBLISH_SECS) || now < at);
    if locators_due {
        match discovery.keep_peers_locators(node, now).await {
            Ok(kept) => {
                let _ = node.update_reach(|r| r.peers_locators = Some((now, kept)));
            }
            Err(e) => {
                say(format!("the peers' recovery locators were not stored again: {e}"));
                let _ = node.update_reach(|r| r.peers_locators = Some((now, 0)));
            }
        }
    }
}
