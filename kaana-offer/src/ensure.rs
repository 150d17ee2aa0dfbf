//! `kaana-offer ensure`: brings the node to `replicas` healthy copies without a person, by the
//! rules of `kaana_proto::protocol::fairness::replicas`: take the best acceptable offers, push
//! the volume there, and only once those copies are committed end the contracts they replace.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::Path;

use anyhow::{Context as _, bail};
use serde::Serialize;

use kaana_proto::net::transport::Traffic;
use kaana_proto::node::backup::{self, PushOptions};
use kaana_proto::node::cli::{Exit, emit};
use kaana_proto::node::machine::{Settings, now_from_env};
use kaana_proto::protocol::fairness::replicas::{self, Candidate, Copy, Health, PeerHistory, Wants};
use kaana_proto::protocol::identity::NodeId;
use kaana_proto::protocol::market::{Offer, RecordId};
use kaana_proto::protocol::record::Signed;
use kaana_proto::protocol::time::Timestamp;
use kaana_proto::store::config::PeerAddr;
use kaana_proto::store::files::Status;
use kaana_proto::store::node::Node;

use crate::block_on;
use crate::market::{self, Terms};

/// How long a failure to take an offer must take to count toward
/// [`replicas::MAX_SLOW_FAILURES`].
const SLOW_FAILURE: std::time::Duration = std::time::Duration::from_secs(2);

/// `ensure-untaken.json`: offers a run could not take, and when (passed over while
/// [`replicas::still_untaken`]).
#[derive(Debug, Default, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct Untaken {
    untaken: BTreeMap<RecordId, Timestamp>,
}

impl Untaken {
    fn path(node: &Node) -> std::path::PathBuf {
        node.home.root().join("ensure-untaken.json")
    }

    /// Those of the last day.
    fn load(node: &Node, now: Timestamp) -> anyhow::Result<Self> {
        let mut u: Untaken = node.home.read_optional(&Self::path(node))?.unwrap_or_default();
        u.untaken.retain(|_, at| replicas::still_untaken(*at, now));
        Ok(u)
    }
}

/// One step of `ensure`, as printed.
#[derive(Serialize, Default)]
struct Step {
    /// `keep`, `wait`, `take`, `push`, `end`, `offer`.
    action: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    contract: Option<RecordId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offer: Option<RecordId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    peer: Option<NodeId>,
    #[serde(skip_serializing_if = "Option::is_none")]
    delete_after: Option<Timestamp>,
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    /// Whether it was done (always `false` with `--dry-run`).
    done: bool,
    reason: String,
}

pub(crate) fn ensure(home: &Path, settings: &Settings, dry_run: bool) -> anyhow::Result<Exit> {
    let node = Node::open_at(home)?;
    // One ensure at a time: a second waits, then plans from what the first did (so two at once
    // never make two contracts where one was wanted).
    let lock_path = node.home.root().join("ensure.lock");
    let lock = {
        use std::os::unix::fs::OpenOptionsExt as _;
        std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(&lock_path)
            .with_context(|| format!("opening {}", lock_path.display()))?
    };
    lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    let now = now_from_env()?;
    let volume = node.config.volume.clone().context("no volume configured: nothing to back up")?;
    let volume_size = kaana_proto::store::volume::size(&volume)?;
    // Toward a peer this node is failing on purpose in silence, it is down: not asked, not told.
    let silent = node.silent_peers(now)?;
    let (copies, histories) = copies_and_records(&node)?;
    let offers = gather_offers(&node, settings, &silent, now)?;
    let mut untaken = Untaken::load(&node, now)?;
    let candidates: Vec<Candidate> = offers
        .iter()
        .filter(|(id, _)| !untaken.untaken.contains_key(*id))
        .map(|(id, o)| Candidate {
            offer: *id,
            peer: o.body.node,
            size: o.body.size,
            grace_secs: o.body.grace_secs,
            held_bytes: o.body.held_bytes(),
            history_secs: o.body.history.as_ref().map_or(0, |h| h.keep_secs),
            expires_at: o.body.expires_at,
        })
        .collect();
    let wants = Wants {
        replicas: node.config.replicas,
        volume_size,
        min_grace_secs: node.config.grace_secs,
        free: node.config.capacity.saturating_sub(node.committed()?),
        history_secs: node.config.history_secs,
        me: node.id(),
    };
    let plan = replicas::plan(&copies, &candidates, &histories, &wants, now);
    let peer_of = |contract: &RecordId| copies.iter().find(|c| c.contract == *contract).map(|c| c.peer);
    for (contract, peer, health) in &plan.copies {
        let (action, delete_after, reason) = match health {
            Health::Healthy => ("keep", None, "healthy: it counts".to_owned()),
            Health::Pending => ("keep", None, "not committed yet: pushed to again".to_owned()),
            Health::Doubtful { delete_after } => (
                "wait",
                Some(*delete_after),
                "the peer is failing within its grace (it may be testing this node): a copy is made elsewhere, \
                 and this contract is kept until its grace runs out"
                    .to_owned(),
            ),
            Health::Lost if plan.end.contains(contract) => continue,
            Health::Lost => {
                let c = copies.iter().find(|c| c.contract == *contract);
                ("lost", None, c.and_then(|c| replicas::lost_because(c, volume_size, now)).unwrap_or("lost").to_owned())
            }
        };
        emit(&Step { action, contract: Some(*contract), peer: Some(*peer), delete_after, reason, ..Step::default() })?;
    }
    if dry_run {
        for (offer, why) in &plan.passed_over {
            eprintln!("kaana-offer: offer {} not taken: {why}", offer.short());
        }
        for id in &plan.take {
            let o = &offers[id];
            let reason = format!("would take this offer of {} bytes and push the volume there", o.body.size);
            emit(&Step { action: "take", offer: Some(*id), peer: Some(o.body.node), reason, ..Step::default() })?;
        }
        for id in &plan.pending {
            let reason = "would push the volume there again".to_owned();
            emit(&Step { action: "push", contract: Some(*id), peer: peer_of(id), reason, ..Step::default() })?;
        }
        for id in &plan.end {
            let reason = "would end it once enough copies are committed without it".to_owned();
            emit(&Step { action: "end", contract: Some(*id), peer: peer_of(id), reason, ..Step::default() })?;
        }
        if plan.shortfall > 0 {
            let reason = format!("no acceptable offer for {} more cop(ies): would publish one", plan.shortfall);
            emit(&Step { action: "offer", reason, ..Step::default() })?;
        }
        return Ok(if plan.shortfall > 0 { Exit::Attention } else { Exit::Ok });
    }
    // The offers this node made for new replicas are withdrawn once enough copies are in hand or
    // taken, before taking any (so that no one takes one meanwhile).
    if plan.shortfall == 0 {
        withdraw_own_offers(&node, now)?;
    }
    let mut exit = Exit::Ok;
    // Make: take every offer first (an acceptance carries its time: none waits behind a push),
    // then push the volume to each new holder and to each that has not committed yet.
    let mut to_push: Vec<RecordId> = Vec::new();
    let mut take_failed = false;
    // An offer refused when taken (withdrawn, taken by another, its maker gone) gives way to the
    // next acceptable one, from another peer.
    let mut queue: std::collections::VecDeque<RecordId> = plan.take.iter().chain(&plan.fallback).copied().collect();
    let mut wanted = plan.take.len();
    let mut tried_peers: Vec<NodeId> = Vec::new();
    let mut slow = 0;
    while wanted > 0 && slow < replicas::MAX_SLOW_FAILURES {
        let Some(id) = queue.pop_front() else { break };
        let o = &offers[&id];
        if tried_peers.contains(&o.body.node) {
            continue;
        }
        let started = std::time::Instant::now();
        match market::take_offer(&node, settings, id, o, true, now_from_env()?) {
            Ok(contract) => {
                wanted -= 1;
                tried_peers.push(o.body.node);
                let reason = format!("a new copy at {}", o.body.node.short());
                let step = Step {
                    action: "take",
                    offer: Some(id),
                    contract: Some(contract),
                    peer: Some(o.body.node),
                    done: true,
                    reason,
                    ..Step::default()
                };
                emit(&step)?;
                to_push.push(contract);
            }
            Err(e) => {
                slow += usize::from(started.elapsed() >= SLOW_FAILURE);
                untaken.untaken.insert(id, now);
                node.home.write(&Untaken::path(&node), &untaken)?;
                tried_peers.push(o.body.node);
                let reason = format!("{e:#}");
                eprintln!("kaana-offer: offer {}: {reason}", id.short());
                emit(&Step { action: "take", offer: Some(id), peer: Some(o.body.node), reason, ..Step::default() })?;
            }
        }
    }
    if wanted > 0 {
        take_failed = true;
        exit = Exit::Attention;
    }
    to_push.extend(plan.pending.iter().filter(|c| !silent.contains(&peer_of(c).unwrap_or(node.id()))));
    let mut committed = 0u32;
    for contract in &to_push {
        let peer = node.contract(contract)?.state.peer;
        match push(&node, settings, *contract) {
            Ok(generation) => {
                committed += 1;
                let reason = "the volume is committed there".to_owned();
                let step = Step {
                    action: "push",
                    contract: Some(*contract),
                    peer: Some(peer),
                    generation: Some(generation),
                    done: true,
                    reason,
                    ..Step::default()
                };
                emit(&step)?;
            }
            Err(e) => {
                let reason = format!("{e:#}");
                eprintln!("kaana-offer: pushing to contract {}: {reason}", contract.short());
                emit(&Step { action: "push", contract: Some(*contract), peer: Some(peer), reason, ..Step::default() })?;
                exit = Exit::Attention;
            }
        }
    }
    // Break: only once enough copies are committed without what is ended.
    let ends = replicas::ends_now(&plan, committed, node.config.replicas);
    for id in &plan.end {
        let peer = peer_of(id);
        let reason = if !ends.contains(id) {
            "kept: not enough copies are committed without it yet"
        } else if peer.is_some_and(|p| silent.contains(&p)) {
            "kept for now: this node is silent toward its peer (a deliberate failure)"
        } else {
            let delivered = market::give_notice(&node, settings, *id, now_from_env()?)?;
            if !delivered {
                exit = Exit::Attention;
            }
            let reason = if delivered { "ended: replaced" } else { "ended: replaced (the peer is not told yet)" };
            emit(&Step {
                action: "end",
                contract: Some(*id),
                peer,
                done: true,
                reason: reason.into(),
                ..Step::default()
            })?;
            continue;
        };
        emit(&Step { action: "end", contract: Some(*id), peer, reason: reason.into(), ..Step::default() })?;
    }
    let missing = node.config.replicas.saturating_sub(plan.healthy.saturating_add(committed));
    if missing > 0 && (plan.shortfall > 0 || take_failed) {
        let offer = offer_instead(&node, settings, volume_size, now_from_env()?)?;
        let reason = format!(
            "no acceptable offer for {} more cop(ies): this node's offer of {volume_size} bytes is on its board; \
             run ensure again once a peer takes it",
            plan.shortfall.max(1)
        );
        eprintln!("kaana-offer: {reason}");
        emit(&Step { action: "offer", offer: Some(offer), done: true, reason, ..Step::default() })?;
        exit = Exit::Attention;
    }
    std::io::stdout().flush().ok();
    drop(lock);
    Ok(exit)
}

/// This node's contracts as `ensure` sees them (those not ended), and what it knows of each peer
/// across all its contracts with it (ended ones too).
pub(crate) fn copies_and_records(node: &Node) -> anyhow::Result<(Vec<Copy>, BTreeMap<NodeId, PeerHistory>)> {
    let mut histories: BTreeMap<NodeId, PeerHistory> = BTreeMap::new();
    let mut copies = Vec::new();
    for e in node.contracts()? {
        let breach = e.state.breached();
        let active = matches!(e.state.status, Status::Active);
        histories.entry(e.state.peer).or_default().add(&e.state.their_record, active, breach);
        if e.state.status.is_ended() {
            continue;
        }
        let committed = kaana_proto::store::outbound::Target::from_record(node, &e.id).ok().flatten().is_some();
        copies.push(Copy {
            contract: e.id,
            peer: e.state.peer,
            size: e.contract.body.size,
            active,
            standing: e.state.their_standing,
            breach,
            committed,
            created_at: e.contract.body.created_at,
            grace_secs: e.contract.body.grace_secs,
        });
    }
    Ok((copies, histories))
}

/// Withdraws the open offers this node made for new replicas (`ensure`'s own).
fn withdraw_own_offers(node: &Node, now: Timestamp) -> anyhow::Result<()> {
    let _lock = node.home.lock()?;
    for (id, mut own) in node.own_offers()? {
        if own.for_a_new_peer && own.open(now) {
            own.withdrawn = Some(now);
            node.save_own_offer(&id, &own)?;
        }
    }
    Ok(())
}

/// The offers `ensure` may choose from: those on this node's own board, on the boards of its
/// address book, and on the boards announced on the DHT (when it is on).
fn gather_offers(
    node: &Node,
    settings: &Settings,
    silent: &std::collections::HashSet<NodeId>,
    now: Timestamp,
) -> anyhow::Result<BTreeMap<RecordId, Signed<Offer>>> {
    let mut all = BTreeMap::new();
    for o in node.board_offers(now)? {
        if let Ok(id) = kaana_proto::protocol::market::check_offer(&o, now) {
            all.insert(id, o);
        }
    }
    let boards: Vec<PeerAddr> = node
        .address_book()?
        .peers
        .into_iter()
        .filter(|(id, _)| *id != node.id() && !silent.contains(id))
        .filter_map(|(id, e)| e.addrs.first().map(|a| PeerAddr { node: id, addr: a.clone() }))
        .collect();
    let dht = settings.discovery(node).enabled();
    if !boards.is_empty() || dht {
        let fetched = block_on(market::fetch_boards(node, settings, &boards, dht, now))?;
        all.extend(fetched.offers);
    }
    Ok(all)
}

/// Pushes the volume to the holder of `contract`; the generation committed.
fn push(node: &Node, settings: &Settings, contract: RecordId) -> anyhow::Result<u64> {
    let entry = node.contract(&contract)?;
    let summary = block_on(async {
        let client = settings.client(node, Traffic::Bulk);
        let report = kaana_proto::node::report::Stderr("kaana-offer ensure");
        let r = backup::push(&client, node, &entry, None, PushOptions::default(), &report).await;
        client.close().await;
        Ok(r?)
    })?;
    Ok(summary.generation)
}

/// This node's open offer of at least `volume_size` bytes, made and published if there is none.
fn offer_instead(node: &Node, settings: &Settings, volume_size: u64, now: Timestamp) -> anyhow::Result<RecordId> {
    // Only one made for a new peer: an offer made by hand may be taken by a node this one
    // already has a contract with.
    let open = node
        .own_offers()?
        .into_iter()
        .find(|(_, o)| o.for_a_new_peer && o.open(now) && o.offer.body.size >= volume_size);
    let (id, offer) = match open {
        Some((id, o)) => (id, o.offer),
        None => {
            let terms = Terms { size: volume_size, grace: None, ttl: 7 * 86_400, history: None, history_space: None };
            market::make_offer(node, terms, Vec::new(), true, now)?
        }
    };
    let lines = market::publish_offers(node, settings, &[(id, offer)], &[])?;
    if !lines.iter().any(|l| matches!(l.result, "new" | "known")) {
        bail!("offer {id} could not be published on this node's board: is `kaana-sync serve` running?");
    }
    Ok(id)
}
