//! `kaana-offer status`: what needs a person, in one screen.

use std::path::{Path, PathBuf};

use serde::Serialize;

use kaana_proto::node::cli::{Exit, emit};
use kaana_proto::node::machine::{Settings, now_from_env};
use kaana_proto::protocol::fairness::attention;
use kaana_proto::protocol::fairness::standing::Standing;
use kaana_proto::protocol::identity::NodeId;
use kaana_proto::protocol::market::RecordId;
use kaana_proto::protocol::size::format_size;
use kaana_proto::protocol::time::Timestamp;
use kaana_proto::store::files::Status;
use kaana_proto::store::node::Node;
use kaana_proto::store::volume;

#[derive(Serialize)]
struct StatusLine {
    node: NodeId,
    capacity: u64,
    committed: u64,
    free: u64,
    /// Free space on the storage's file system.
    disk_free: u64,
    replicas: u32,
    volume: Option<PathBuf>,
    volume_size: Option<u64>,
    contracts: usize,
    full_contracts: usize,
    missing: u32,
    /// Each contract that is not ended, as this node sees it.
    peers: Vec<PeerStatus>,
    /// Whether peers can reach this node (`null`: nothing tells yet), and why it is thought so.
    reachable: Option<bool>,
    reachable_why: String,
    problems: Vec<String>,
}

/// One contract in `status`.
#[derive(Serialize)]
struct PeerStatus {
    contract: RecordId,
    peer: NodeId,
    status: &'static str,
    /// How this node judges the peer, and how the peer judges this node.
    their_standing: Standing,
    our_standing: Standing,
    /// Unanswered since (the current spell of unanswered tries), if it is unanswered.
    #[serde(skip_serializing_if = "Option::is_none")]
    unreachable_since: Option<Timestamp>,
    /// When the peer last committed a push of ours, and last passed our challenge.
    last_push: Option<Timestamp>,
    last_pass: Option<Timestamp>,
}

pub(crate) fn status(home: &Path, settings: &Settings) -> anyhow::Result<Exit> {
    use std::io::IsTerminal as _;
    let node = Node::open_at(home)?;
    let now = now_from_env()?;
    let contracts = node.contracts()?;
    let live: Vec<_> = contracts.iter().filter(|e| matches!(e.state.status, Status::Active)).collect();
    let committed = node.committed()?;
    let mut problems = Vec::new();
    // What cannot be read is a problem to report, not a reason to report nothing.
    let volume_size = match &node.config.volume {
        Some(v) => match volume::size(v) {
            Ok(size) => Some(size),
            Err(e) => {
                problems.push(format!("the volume cannot be read: {e}"));
                None
            }
        },
        None => None,
    };
    let full = live.iter().filter(|e| volume_size.is_none_or(|v| e.contract.body.size >= v)).count();
    let missing = node.config.replicas.saturating_sub(u32::try_from(full).unwrap_or(u32::MAX));
    if node.config.volume.is_none() {
        problems.push("no volume configured: nothing to back up (kaana-offer config set volume PATH)".to_owned());
    }
    if missing > 0 {
        let wanted = volume_size.map(|v| format!(" of at least {}", format_size(v))).unwrap_or_default();
        problems.push(format!(
            "{missing} more contract(s){wanted} wanted for {} replicas: `kaana-offer ensure` takes what is on offer, or offers (by hand: `list`, then `accept`)",
            node.config.replicas
        ));
    }
    let mut peers = Vec::new();
    for e in contracts.iter().filter(|e| !matches!(e.state.status, Status::Ended { .. })) {
        let st = &e.state;
        let target = kaana_proto::store::outbound::Target::from_record(&node, &e.id).unwrap_or_else(|err| {
            problems.push(format!("contract {}: this node's record of its copy is unreadable: {err}", e.id.short()));
            None
        });
        let last_push = target.as_ref().map(|t| t.receipt.as_ref().map_or(t.manifest.body.created_at, |r| r.body.at));
        let short = format!("contract {} with {}", e.id.short(), st.peer.short());
        for concern in
            attention::concerns(st.their_standing, st.our_standing, st.audit.as_ref(), e.contract.body.grace_secs, now)
        {
            problems.push(format!("{short}: {concern}"));
        }
        if let Some(since) = st.their_record.unreachable_since {
            problems
                .push(format!("{short}: the peer has not answered since {since} ({} tries)", st.their_record.tries));
        }
        if matches!(st.status, Status::Active) && node.config.volume.is_some() {
            match last_push {
                None => problems.push(format!("{short}: nothing pushed yet (kaana-sync push {})", e.id.short())),
                Some(t) if attention::push_is_stale(t, now) => {
                    problems.push(format!("{short}: the last push the peer committed was at {t}"));
                }
                _ => {}
            }
        }
        peers.push(PeerStatus {
            contract: e.id,
            peer: st.peer,
            status: st.status.name(),
            their_standing: st.their_standing,
            our_standing: st.our_standing,
            unreachable_since: st.their_record.unreachable_since,
            last_push,
            last_pass: st.their_record.last_pass,
        });
    }
    let disk_free = kaana_proto::store::home::free_space(&node.config.storage)?;
    // Room still promised to peers but not yet taken must be free on the disk.
    let stored = node.stored_for_peers().unwrap_or_else(|e| {
        problems.push(format!("the storage cannot be read: {e}"));
        committed
    });
    let owed = committed.saturating_sub(stored);
    if disk_free < owed {
        problems.push(format!(
            "{} free on the storage's disk, but contracts may still store {} more here: free some space",
            format_size(disk_free),
            format_size(owed)
        ));
    }
    let public = settings.discovery(&node).is_public();
    let (reachable, reachable_why) = reachability(&node, !live.is_empty(), public, now).unwrap_or_else(|e| {
        problems.push(format!("whether peers can reach this node is unknown: {e}"));
        (None, e.to_string())
    });
    if reachable == Some(false) && !live.is_empty() {
        problems.push(format!("peers cannot reach this node: {reachable_why}"));
    }
    let line = StatusLine {
        node: node.id(),
        capacity: node.config.capacity,
        committed,
        free: node.config.capacity.saturating_sub(committed),
        disk_free,
        replicas: node.config.replicas,
        volume: node.config.volume.clone(),
        volume_size,
        contracts: live.len(),
        full_contracts: full,
        missing,
        peers,
        reachable,
        reachable_why,
        problems,
    };
    if std::io::stdout().is_terminal() {
        print!("{}", report(&line));
    } else {
        emit(&line)?;
        for p in &line.problems {
            eprintln!("kaana-offer: {p}");
        }
    }
    Ok(if line.problems.is_empty() { Exit::Ok } else { Exit::Attention })
}

/// Whether peers can reach this node, from what its server last wrote in `reach.json`.
fn reachability(
    node: &Node,
    has_contracts: bool,
    public: bool,
    now: Timestamp,
) -> anyhow::Result<(Option<bool>, String)> {
    use kaana_proto::protocol::reachability::{Sightings, Whereabouts, announced, is_global, reachable};
    let server = node.server_info()?.filter(|s| kaana_proto::node::machine::process_alive(s.pid));
    let reach = node.reach()?;
    // On the public DHT a mapping to a router whose own address is private (a second NAT, or the
    // carrier's) is no evidence: no one outside can use it.
    let mapped: Option<std::net::SocketAddr> = reach
        .mapped
        .as_deref()
        .and_then(|m| m.parse().ok())
        .filter(|m: &std::net::SocketAddr| !public || is_global(m.ip()));
    // What the server would announce, and what it last did (with the public address the DHT saw).
    let mut addrs = announced(&Whereabouts {
        advertise: node.config.advertise.clone(),
        listen: server.as_ref().map(|s| s.listen),
        mapped,
        public_dht: public,
        ..Whereabouts::default()
    });
    addrs.extend(reach.announced.iter().filter(|a| !addrs.contains(a)).cloned().collect::<Vec<_>>());
    let sightings = Sightings {
        serving: server.is_some(),
        since: reach.serving_since,
        announced: addrs,
        mapped: mapped.map(|m| m.to_string()),
        mapping_error: reach.mapping_error,
        last_reached: reach.last_reached.map(|r| (r.at, r.peer)),
        has_contracts,
    };
    Ok(reachable(&sightings, now))
}

/// `status` as a person reads it on a terminal.
fn report(s: &StatusLine) -> String {
    let when = |t: Option<Timestamp>| t.map_or_else(|| "never".to_owned(), |t| t.to_string());
    let mut out = format!(
        "node {}\nvolume {} ({})\ncapacity {}: {} committed to contracts, {} free; {} free on disk\n\
         contracts {} active ({} at least the volume's size) for {} replicas\n",
        s.node,
        s.volume.as_ref().map_or_else(|| "none".to_owned(), |v| v.display().to_string()),
        s.volume_size.map_or_else(|| "-".to_owned(), format_size),
        format_size(s.capacity),
        format_size(s.committed),
        format_size(s.free),
        format_size(s.disk_free),
        s.contracts,
        s.full_contracts,
        s.replicas,
    );
    out.push_str(&format!(
        "reachable {}: {}\n",
        s.reachable.map_or("unknown", |r| if r { "yes" } else { "no" }),
        s.reachable_why
    ));
    for p in &s.peers {
        let judged = |st: &Standing| match st.failing() {
            Some((since, delete_after)) => format!("failing since {since} (data goes after {delete_after})"),
            None => "ok".to_owned(),
        };
        out += &format!(
            "  {} with {} ({}): peer {}; we are {} there; last push {}, last pass {}\n",
            p.contract.short(),
            p.peer.short(),
            p.status,
            judged(&p.their_standing),
            judged(&p.our_standing),
            when(p.last_push),
            when(p.last_pass),
        );
    }
    if s.problems.is_empty() {
        out += "all well\n";
    } else {
        out += "needs attention:\n";
        for p in &s.problems {
            out += &format!("  - {p}\n");
        }
    }
    out
}
