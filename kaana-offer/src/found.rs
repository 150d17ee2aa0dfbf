//! Being found and finding others on the Mainline DHT: `announce`, `peer add ID` (looked up by
//! id), `list --dht`, and `dht-nodes` (DHT nodes for a private network or a test).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde::Serialize;

use kaana_proto::net::transport::{Client, Traffic};
use kaana_proto::net::wire::{Request, Response};
use kaana_proto::node::cli::{Exit, emit};
use kaana_proto::node::machine::{Settings, now_from_env};
use kaana_proto::protocol::board::TOTAL_CAP;
use kaana_proto::protocol::discovery::AddressRecord;
use kaana_proto::protocol::identity::Identity;
use kaana_proto::protocol::identity::NodeId;
use kaana_proto::protocol::reachability::Whereabouts;
use kaana_proto::protocol::reachability::is_global;
use kaana_proto::protocol::time::Timestamp;
use kaana_proto::store::config::PeerAddr;
use kaana_proto::store::node::Node;

use crate::block_on;
use crate::market::Fetched;

/// At most this many boards found on the DHT are asked for their offers.
const MAX_DHT_BOARDS: usize = 32;
/// How long `list --dht` waits for the boards found on the DHT, in all.
const DHT_LIST_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

#[derive(Serialize)]
struct AnnounceLine {
    node: NodeId,
    addrs: Vec<String>,
    board: bool,
    stored_on: u32,
    /// Whether the recovery locator was stored too (false: no contract yet, or it failed).
    locator: bool,
    secs: f64,
}

/// `kaana-offer announce`: publishes this node's address record now (the running server keeps
/// it fresh on its own), and with a running server, announces its board under the DHT topic.
pub(crate) fn announce(home: &Path, settings: &Settings) -> anyhow::Result<Exit> {
    let node = Node::open_at(home)?;
    let now = now_from_env()?;
    let discovery = settings.discovery(&node);
    let server = node.server_info()?.filter(|s| kaana_proto::node::machine::process_alive(s.pid));
    if server.is_none() {
        eprintln!(
            "kaana-offer: the server is not running: the record gives the configured addresses, no board is \
             announced, and nothing keeps the record fresh (start `kaana-sync serve`)"
        );
    }
    let reach = node.reach()?;
    let listen = server.as_ref().map_or(node.config.listen, |s| s.listen);
    let mapped = reach.mapped.as_deref().and_then(|m| m.parse().ok()).filter(|_| server.is_some());
    let started = Instant::now();
    let published = block_on(async {
        let public_ip = if listen.ip().is_unspecified() { discovery.own_public_ip().await } else { None };
        let w = Whereabouts {
            advertise: node.config.advertise.clone(),
            listen: Some(listen),
            mapped,
            public_ip,
            public_dht: discovery.is_public(),
        };
        let published = discovery.publish(&node, &w, server.is_some(), now).await?;
        let mut board = false;
        if server.is_some() {
            let port = mapped.map_or(listen.port(), |m: std::net::SocketAddr| m.port());
            match discovery.announce_board(&node, port, now).await {
                Ok(()) => board = true,
                Err(e) => eprintln!("kaana-offer: the board was not announced: {e}"),
            }
        }
        Ok((published, board))
    })
    .context("announcing this node on the DHT")?;
    let (published, board) = published;
    emit(&AnnounceLine {
        node: node.id(),
        addrs: published.addrs,
        board,
        stored_on: published.stored_on,
        locator: match &published.locator {
            Ok(stored) => *stored,
            Err(e) => {
                eprintln!("kaana-offer: the recovery locator was not stored: {e}");
                false
            }
        },
        secs: round_secs(started),
    })?;
    Ok(if published.stored_on == 0 { Exit::Attention } else { Exit::Ok })
}

fn round_secs(since: Instant) -> f64 {
    (since.elapsed().as_secs_f64() * 1000.0).round() / 1000.0
}

/// `kaana-offer peer add ID`: looks the node's address record up on the DHT (changing nothing:
/// the caller keeps it once the node has answered there). Returns it and its sequence number.
pub(crate) fn look_up_peer(node: &Node, settings: &Settings, peer: NodeId) -> anyhow::Result<(AddressRecord, u64)> {
    let discovery = settings.discovery(node);
    let found = block_on(async { Ok(discovery.find(peer).await?) })
        .with_context(|| format!("looking node {peer} up on the DHT"))?;
    match found {
        Some((record, seq)) if !record.addrs.is_empty() => Ok((record, seq)),
        Some(_) => bail!("node {peer}'s record on the DHT gives no address"),
        None => bail!(
            "node {peer} has no address record on the DHT (it announces itself when its server runs, or with \
             `kaana-offer announce`); add it as ID@HOST:PORT instead"
        ),
    }
}

/// `list --dht`: asks the boards announced under the DHT topic for their offers, all at once
/// and within [`DHT_LIST_DEADLINE`] in all (an address announced by a node that is gone, or by
/// someone who wants listings to be slow, costs that much at most), as a throwaway key (a board
/// found on the DHT is a stranger: it learns nothing of this node), keeping at most a board's
/// worth of offers from them all; and says on stderr how many it asked and how long it took.
pub(crate) async fn fetch_dht_boards(node: &Node, settings: &Settings, now: Timestamp, out: &mut Fetched) {
    let started = Instant::now();
    let discovery = settings.discovery(node);
    let found = match discovery.boards(MAX_DHT_BOARDS).await {
        Ok(found) => found,
        Err(e) => {
            eprintln!("kaana-offer: the DHT: {e} ({:.1}s)", started.elapsed().as_secs_f64());
            out.failed += 1;
            return;
        }
    };
    // On the public DHT anyone may announce anything: never an address on this node's own network.
    let found: Vec<String> = found
        .iter()
        .filter(|a| !discovery.is_public() || is_global(std::net::IpAddr::V4(*a.ip())))
        .map(ToString::to_string)
        .collect();
    let stranger = match Identity::generate() {
        Ok(key) => Arc::new(Client::with_traffic(key, Traffic::Short).with_timeouts(settings.timeouts).for_one_run()),
        Err(e) => {
            eprintln!("kaana-offer: no randomness for a throwaway key: {e}");
            out.failed += 1;
            return;
        }
    };
    let mut asked = tokio::task::JoinSet::new();
    for addr in found.iter().cloned() {
        let client = stranger.clone();
        asked.spawn(async move {
            let listed = async {
                let conn = client.connect_anyone(&addr).await?;
                let mut offers = BTreeMap::new();
                let r = crate::market::fetch_board(&conn, now, &mut offers).await;
                r.map(|()| (conn.node(), offers))
            };
            let listed = listed.await;
            (addr, listed)
        });
    }
    let before = out.offers.len();
    let mut boards: BTreeSet<NodeId> = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + DHT_LIST_DEADLINE;
    loop {
        let done = match tokio::time::timeout_at(deadline, asked.join_next()).await {
            Ok(Some(done)) => done,
            Ok(None) => break,
            Err(_) => {
                eprintln!(
                    "kaana-offer: {} board(s) found on the DHT did not finish within {}s; left out",
                    asked.len(),
                    DHT_LIST_DEADLINE.as_secs()
                );
                asked.abort_all();
                break;
            }
        };
        let Ok((addr, listed)) = done else { continue };
        match listed {
            // This node's own board is not news; a board announced at two addresses counts once.
            Ok((board, _)) if board == node.id() => {}
            Ok((board, offers)) => {
                if boards.insert(board) {
                    let room = TOTAL_CAP.saturating_sub(out.offers.len() - before);
                    out.offers.extend(offers.into_iter().take(room));
                }
            }
            Err(e) => eprintln!("kaana-offer: board at {addr} (found on the DHT): {e}"),
        }
    }
    stranger.close().await;
    if !found.is_empty() && boards.is_empty() {
        out.failed += 1;
    }
    eprintln!(
        "kaana-offer: the DHT gave {} board address(es); {} board(s) answered with {} offer(s) in {:.1}s",
        found.len(),
        boards.len(),
        out.offers.len() - before,
        started.elapsed().as_secs_f64()
    );
}

/// Finds this node's recovery locator on the DHT and takes the peers it names into the address
/// book; how many.
pub(crate) fn peers_from_locator(node: &Node, settings: &Settings) -> anyhow::Result<usize> {
    let discovery = settings.discovery(node);
    let locator = block_on(async { Ok(discovery.find_locator(&node.identity).await?) })
        .context("looking for this node's recovery locator on the DHT")?
        .context("the DHT holds no recovery locator for this node (its server stores one while it runs)")?;
    for (peer, addr) in &locator.peers {
        node.add_peer(&PeerAddr { node: *peer, addr: addr.clone() })?;
    }
    Ok(locator.peers.len())
}

/// Asks `peer` at `addr` who it is: it must prove it holds `peer`'s key.
pub(crate) async fn say_hello(client: &Client, peer: &PeerAddr) -> anyhow::Result<()> {
    let conn = client.connect(peer.node, &peer.addr).await?;
    let reply = conn.request(&Request::Hello).await?;
    conn.close();
    match reply {
        Response::Hello { node: answered, .. } if answered == peer.node => Ok(()),
        other => bail!("unexpected answer to hello: {other:?}"),
    }
}

#[derive(Serialize)]
struct NodesLine {
    bootstrap: Vec<String>,
}

/// `kaana-offer dht-nodes`: runs `count` DHT nodes on `ip` that know each other, prints their
/// addresses (the bootstrap list for a private network), and serves until SIGTERM or SIGINT.
pub(crate) fn dht_nodes(count: usize, ip: std::net::Ipv4Addr) -> anyhow::Result<Exit> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let testnet = mainline::Testnet::builder(count).bind_address(ip).build().context("starting the DHT nodes")?;
    emit(&NodesLine { bootstrap: testnet.bootstrap.clone() })?;
    eprintln!("kaana-offer: {count} DHT nodes on {ip}; give them to nodes with --dht-bootstrap or KAANA_DHT_BOOTSTRAP");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    runtime.block_on(async {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
        let mut int = signal(SignalKind::interrupt()).context("listening for SIGINT")?;
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        anyhow::Ok(())
    })?;
    drop(testnet);
    Ok(Exit::Ok)
}
