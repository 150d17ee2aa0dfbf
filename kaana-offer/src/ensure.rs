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
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .with_context(|| format!("opening {}", lock_path.display()))?;
    lock.lock().with_context(|| format!("locking {}", lock_path.display()))?;
    let now = now_from_env()?;
    let volume = node.config.volume.clone().context("no volume configured: nothing to back up")?;
    let volume_size = kaana_proto::store::volume::size(&volume)?;
    let entries = node.contracts()?;
    let mut histories: BTreeMap<NodeId, PeerHistory> = BTreeMap::new();
    let mut copies = Vec::new();
    for e in &entries {
        let breach = e.state.audit.as_ref().and_then(|a| a.result.as_deref()) == Some("breach");
        let active = matches!(e.state.status, Status::Active);
        histories.entry(e.state.peer).or_default().add(&e.state.their_record, active, breach);
        if matches!(e.state.status, Status::Ended { .. }) {
            continue;
        }
        let committed = kaana_proto::store::outbound::Target::from_record(&node, &e.id).ok().flatten().is_some();
        copies.push(Copy {
            contract: e.id,
            peer: e.state.peer,
            size: e.contract.body.size,
            active,
            standing: e.state.their_standing,
            breach,
            committed,
        });
    }
    let offers = gather_offers(&node, settings, now)?;
    let candidates: Vec<Candidate> = offers
        .iter()
        .map(|(id, o)| Candidate {
            offer: *id,
            peer: o.body.node,
            size: o.body.size,
            grace_secs: o.body.grace_secs,
            held_bytes: o.body.held_bytes(),
            expires_at: o.body.expires_at,
        })
        .collect();
    let wants = Wants {
        replicas: node.config.replicas,
        volume_size,
        min_grace_secs: node.config.grace_secs,
        free: node.config.capacity.saturating_sub(node.committed()?),
        me: node.id(),
    };
    let plan = replicas::plan(&copies, &candidates, &histories, &wants, now);
    for (contract, peer, health) in &plan.copies {
        let (action, delete_after, reason) = match health {
            Health::Healthy => ("keep", None, "healthy: it counts".to_owned()),
            Health::Doubtful { delete_after } => (
                "wait",
                Some(*delete_after),
                "the peer is failing within its grace (it may be testing this node): a copy is made elsewhere, \
                 and this contract is kept until its grace runs out"
                    .to_owned(),
            ),
            Health::Lost => {
                let c = copies.iter().find(|c| c.contract == *contract);
                let why = c.and_then(|c| replicas::lost_because(c, volume_size, now)).unwrap_or("lost");
                if plan.end.contains(contract) { continue } else { ("lost", None, why.to_owned()) }
            }
        };
        emit(&Step { action, contract: Some(*contract), peer: Some(*peer), delete_after, reason, ..Step::default() })?;
    }
    for (offer, why) in &plan.passed_over {
        if dry_run {
            eprintln!("kaana-offer: offer {} not taken: {why}", offer.short());
        }
    }
    if dry_run {
        for id in &plan.take {
            let o = &offers[id];
            let reason = format!("would take this offer of {} bytes and push the volume there", o.body.size);
            emit(&Step { action: "take", offer: Some(*id), peer: Some(o.body.node), reason, ..Step::default() })?;
        }
        for id in &plan.end {
            let reason = "would end it once the new copies are committed".to_owned();
            emit(&Step { action: "end", contract: Some(*id), reason, ..Step::default() })?;
        }
        if plan.shortfall > 0 {
            let reason = format!("no acceptable offer for {} more cop(ies): would publish one", plan.shortfall);
            emit(&Step { action: "offer", reason, ..Step::default() })?;
        }
        return Ok(if plan.shortfall > 0 { Exit::Attention } else { Exit::Ok });
    }
    // Make: take each offer and push the volume there.
    let mut made = 0;
    for id in &plan.take {
        let o = &offers[id];
        let taken = market::take_offer(&node, settings, *id, o, now);
        let contract = match taken {
            Ok(c) => c,
            Err(e) => {
                let reason = format!("{e:#}");
                eprintln!("kaana-offer: offer {}: {reason}", id.short());
                emit(&Step { action: "take", offer: Some(*id), peer: Some(o.body.node), reason, ..Step::default() })?;
                continue;
            }
        };
        let reason = format!("a new copy at {}", o.body.node.short());
        emit(&Step {
            action: "take",
            offer: Some(*id),
            contract: Some(contract),
            peer: Some(o.body.node),
            done: true,
            reason,
            ..Step::default()
        })?;
        match push(&node, settings, contract) {
            Ok(generation) => {
                made += 1;
                let reason = "the volume is committed there".to_owned();
                let step = Step {
                    action: "push",
                    contract: Some(contract),
                    peer: Some(o.body.node),
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
                emit(&Step {
                    action: "push",
                    contract: Some(contract),
                    peer: Some(o.body.node),
                    reason,
                    ..Step::default()
                })?;
            }
        }
    }
    // Break: only once every new copy is committed.
    let made_all = made == plan.take.len();
    let mut exit = Exit::Ok;
    for id in &plan.end {
        let peer = copies.iter().find(|c| c.contract == *id).map(|c| c.peer);
        if !made_all {
            let reason = "kept: the copy that replaces it is not committed yet".to_owned();
            emit(&Step { action: "end", contract: Some(*id), peer, reason, ..Step::default() })?;
            exit = Exit::Attention;
            continue;
        }
        let delivered = market::give_notice(&node, settings, *id, now)?;
        let reason = if delivered { "ended: replaced" } else { "ended: replaced (the peer is not told yet)" };
        emit(&Step { action: "end", contract: Some(*id), peer, done: true, reason: reason.into(), ..Step::default() })?;
    }
    let missing = plan.shortfall + u32::try_from(plan.take.len() - made).unwrap_or(u32::MAX);
    if missing > 0 {
        let offer = offer_instead(&node, settings, volume_size, now)?;
        let reason = format!(
            "no acceptable offer for {missing} more cop(ies): this node's offer of {volume_size} bytes is on its board; \
             run ensure again once a peer takes it"
        );
        eprintln!("kaana-offer: {reason}");
        emit(&Step { action: "offer", offer: Some(offer), done: true, reason, ..Step::default() })?;
        exit = Exit::Attention;
    }
    std::io::stdout().flush().ok();
    drop(lock);
    Ok(exit)
}

/// The offers `ensure` may choose from: those on this node's own board, on the boards of its
/// address book, and on the boards announced on the DHT (when it is on).
fn gather_offers(
    node: &Node,
    settings: &Settings,
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
        .filter(|(id, _)| *id != node.id())
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
        let size = kaana_proto::protocol::manifest::DEFAULT_EXTENT_SIZE;
        let r = backup::push(&client, node, &entry, size, PushOptions::default(), &report).await;
        client.close().await;
        Ok(r?)
    })?;
    Ok(summary.generation)
}

/// This node's open offer of at least `volume_size` bytes, made and published if there is none.
fn offer_instead(node: &Node, settings: &Settings, volume_size: u64, now: Timestamp) -> anyhow::Result<RecordId> {
    let open = node
        .own_offers()?
        .into_iter()
        .find(|(_, o)| o.taken_by.is_none() && now < o.offer.body.expires_at && o.offer.body.size >= volume_size);
    let (id, offer) = match open {
        Some((id, o)) => (id, o.offer),
        None => {
            let terms = Terms { size: volume_size, grace: None, ttl: 7 * 86_400, history: None, history_space: None };
            market::make_offer(node, terms, Vec::new(), now)?
        }
    };
    let lines = market::publish_offers(node, settings, &[(id, offer)], &[])?;
    if !lines.iter().any(|l| matches!(l.result, "new" | "known")) {
        bail!("offer {id} could not be published on this node's board: is `kaana-sync serve` running?");
    }
    Ok(id)
}
