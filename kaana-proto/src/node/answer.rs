//! The holder's side of a challenge: every reply signed, anything a holder need not answer
//! refused, and now and then a deliberate failure in one of the forms real failures take
//! ([`crate::protocol::fairness::deliberate`]), kept up toward the peer until the audit.
//!
//! The holder reads the generation asked about under the store's shared lock, so a commit under
//! way (which holds it exclusively while it replaces the generation, retires old ones and moves
//! their extents aside) can never make an honest holder sign a failing answer. A challenge may
//! ask about any generation the holder keeps (its history); one about a manifest the holder no
//! longer keeps (replaced, or retired as the history terms allow) is answered "superseded",
//! naming the newest.

use std::collections::HashSet;

use serde_json::json;

use crate::protocol::challenge::{self, Answer, Challenge, Reply, Rng};
use crate::protocol::encoding;
use crate::protocol::fairness;
use crate::protocol::fairness::deliberate::{self, Pretence, Situation};
use crate::protocol::fairness::evidence::Statement;
use crate::protocol::identity::NodeId;
use crate::protocol::manifest::ExtentHash;
use crate::protocol::market::RecordId;
use crate::protocol::record::Signed;
use crate::protocol::time::Timestamp;
use crate::store::files::Denied;
use crate::store::files::{ContractEntry, Status};
use crate::store::home::StateError;
use crate::store::inbound::Inbound;
use crate::store::node::Node;

/// What every reply of a holder that holds nothing says, whether it lost the copy or pretends
/// to: the same words, so the two cannot be told apart.
const NOTHING_HELD: &str = "no generation of this contract is held here";

/// Why a challenge gets no signed answer: it cannot be attributed, or this node could not
/// answer at all. (The wire's words for these are chosen at the edge: `node::refusal`.)
#[derive(Debug, thiserror::Error)]
pub enum Unanswerable {
    /// Not signed by the node that sent it.
    #[error("a challenge must be signed by the node that sends it")]
    NotSigned,
    /// For another node.
    #[error("the challenge is for node {0}")]
    NotForUs(NodeId),
    /// Its signature or its fields do not hold.
    #[error("{0}")]
    Invalid(String),
    /// About a contract the sender may not ask about here.
    #[error(transparent)]
    Denied(#[from] Denied),
    /// This node could not read or sign what it needed.
    #[error("{0}")]
    Internal(String),
}

fn internal(e: impl std::fmt::Display) -> Unanswerable {
    Unanswerable::Internal(e.to_string())
}

/// Whether the holder may fail on purpose (never when it asked to be challenged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Honesty {
    /// Always answer as things are.
    Honest,
    /// Fail on purpose if `fail-next` is set, or at the configured audit rate.
    MayAudit,
}

/// A signed reply and the raw bytes that go with it (proofs only).
pub type Answered = (Signed<Answer>, Vec<u8>);

/// Answers `challenge` from `peer` as the holder of its copy, at `now`. Errors (unsigned) only
/// for a challenge this node cannot attribute: not signed by `peer`, not for this node, or
/// about a contract it does not know with `peer`. `seed` feeds a deliberate failure's choices.
pub fn answer(
    node: &Node,
    peer: NodeId,
    challenge: &Signed<Challenge>,
    now: Timestamp,
    honesty: Honesty,
    seed: [u8; 32],
) -> Result<Answered, Unanswerable> {
    let c = &challenge.body;
    if challenge.signer != peer || c.challenger != peer {
        return Err(Unanswerable::NotSigned);
    }
    if c.holder != node.id() {
        return Err(Unanswerable::NotForUs(c.holder));
    }
    challenge.verify().map_err(|e| Unanswerable::Invalid(e.to_string()))?;
    let entry = node.contract_for(peer, &c.contract)?;
    // The challenger says, signed, how it judges us: known before anything is decided. Every
    // reply says how this node judges the challenger (a failing answer carries the grace this
    // node states it grants), read and recorded as said together.
    let (entry, standing) = node
        .update_contract(&entry.id, |e| {
            e.state.learn(Statement::Challenge(challenge.clone()), now);
            let standing = e.state.say(now);
            Ok::<_, StateError>((e.clone(), standing))
        })
        .map_err(internal)?;
    let challenge_id = RecordId::of(c).map_err(internal)?;
    let sign = |reply: Reply| -> Result<Signed<Answer>, Unanswerable> {
        let body = Answer { challenge: challenge_id, holder: node.id(), reply, standing, at: now };
        Signed::sign(body, &node.identity).map_err(internal)
    };
    let not_held = |reason: &str| Ok((sign(Reply::NotHeld { reason: reason.to_owned() })?, Vec::new()));
    match &entry.state.status {
        Status::Ended { notice: Some(notice), .. } => {
            return Ok((sign(Reply::Ended { notice: notice.clone() })?, Vec::new()));
        }
        Status::Ended { at, .. } => return not_held(&format!("contract {} ended at {at}", c.contract)),
        _ => {}
    }

    let store = Inbound::new(&node.config.storage, &c.contract);
    // Whether to fail this one on purpose is decided first, under the state lock alone: a
    // commit takes the state lock and then the store's, so an answer never holds the store's
    // while it waits for the state's.
    let (mut plan, mut on_purpose) = (entry.state.audit.clone(), None);
    // The generation asked about, if this holder keeps it, and the newest it keeps (read under
    // the store's lock, shared).
    let held = || -> Result<_, StateError> {
        let newest = store.committed_manifest()?;
        let asked =
            store.kept_generation(c.generation)?.filter(|(m, _, _)| RecordId::of(&m.body).ok() == Some(c.manifest));
        Ok((asked, newest))
    };
    let first_look = || -> Result<_, StateError> {
        let _shared = store.lock(false)?;
        held()
    };
    if honesty == Honesty::MayAudit
        && let (Some((m, list, _)), _) = first_look().map_err(internal)?
        && let (Ok(g), Ok(hashes)) = (m.body.geometry(), m.body.check_list(&list))
        && challenge::check_request(g, &c.picks, c.depth).is_ok()
    {
        let picked: Vec<ExtentHash> = c.picks.iter().filter_map(|[e, _]| hashes.get(*e as usize).copied()).collect();
        if let Some(p) = fail_on_purpose(node, &entry, &picked, &hashes, now, seed).map_err(internal)? {
            on_purpose = Some(p.mode);
            plan = Some(p);
        }
    }
    let pretence = plan.as_ref().map_or(Pretence::Nothing, |p| p.pretence(now));

    let _shared = store.lock(false).map_err(internal)?;
    let (asked, newest) = held().map_err(internal)?;
    let Some(newest) = newest else {
        return not_held(NOTHING_HELD);
    };
    if pretence == Pretence::All {
        return not_held(NOTHING_HELD);
    }
    let Some((manifest, list, _)) = asked else {
        // Not a generation kept here: replaced (or retired as the history terms allow), or
        // never receipted.
        let reply = if newest.body.generation > c.generation {
            Reply::Superseded {
                generation: newest.body.generation,
                manifest: RecordId::of(&newest.body).map_err(internal)?,
            }
        } else {
            Reply::Refused { reason: format!("manifest {} is not one this node receipted", c.manifest) }
        };
        return Ok((sign(reply)?, Vec::new()));
    };
    if manifest.body.generation != c.generation {
        return Ok((
            sign(Reply::Refused { reason: "the challenge names another generation than its manifest's".into() })?,
            Vec::new(),
        ));
    }
    let g = manifest.body.geometry().map_err(internal)?;
    if let Err(reason) = challenge::check_request(g, &c.picks, c.depth) {
        return Ok((sign(Reply::Refused { reason })?, Vec::new()));
    }
    let hashes = manifest.body.check_list(&list).map_err(internal)?;
    let unreadable: HashSet<ExtentHash> = match pretence {
        Pretence::Extents(bad) => bad.into_iter().collect(),
        _ => HashSet::new(),
    };
    let (raw, read) = store.answer(g, &hashes, &c.picks, c.depth, &unreadable).map_err(internal)?;
    node.log_event(
        now,
        "answer",
        json!({"contract": c.contract, "peer": peer, "samples": c.picks.len(), "read_bytes": read,
               "sent_bytes": raw.len(), "on_purpose": on_purpose}),
    )
    .map_err(internal)?;
    let proof = encoding::hex_encode(blake3::hash(&raw).as_bytes());
    Ok((sign(Reply::Proof { proof })?, raw))
}

/// Decides whether to fail this challenge on purpose; if so, plans the failure and its audit
/// and returns the plan.
fn fail_on_purpose(
    node: &Node,
    entry: &ContractEntry,
    picked: &[ExtentHash],
    all: &[ExtentHash],
    now: Timestamp,
    seed: [u8; 32],
) -> Result<Option<deliberate::Plan>, StateError> {
    let copy_at_peer =
        crate::store::outbound::Target::from_record(node, &entry.id)?.is_some_and(|t| t.receipt.is_some());
    let grace = entry.contract.body.grace_secs;
    let rate = node.config.audit_rate;
    let plan = node.update_contract(&entry.id, |e| {
        let st = &mut e.state;
        let situation = Situation {
            rate,
            forced: st.fail_next.then_some(st.fail_next_mode),
            grace_secs: grace,
            pending: st.audit.as_ref().is_some_and(|p| p.pending()),
            copy_at_peer,
            failing_at_peer: st.our_standing.is_failing(),
            judging_failing: st.their_standing.is_failing(),
            last_roll: st.last_roll,
            ending: !matches!(st.status, Status::Active),
        };
        let mut rng = Rng::from_seed(seed);
        let (mode, rolled) = deliberate::decide(&situation, now, &mut rng);
        if rolled {
            st.last_roll = Some(now);
        }
        let Some(mode) = mode else {
            return Ok::<_, StateError>(None);
        };
        let plan = deliberate::plan(mode, now, grace, picked, all, &mut rng);
        st.fail_next = false;
        st.fail_next_mode = None;
        st.audit = Some(plan.clone());
        Ok(Some(plan))
    })?;
    if let Some(p) = &plan {
        node.log_event(
            now,
            "deliberate_failure",
            json!({"contract": entry.id, "peer": entry.state.peer, "mode": p.mode, "audit_at": p.audit_at}),
        )?;
    }
    Ok(plan)
}

/// What the holder does on hearing it failed a challenge, marked before it starts (see
/// [`scrub_after_failure`]): it does not ask to be challenged again until its copy is checked.
/// Returns whether to check it now: not while a check's repair is awaited, nor within
/// [`fairness::scrub_gap_secs`] of the last check (a peer sending one failing verdict after
/// another must not keep it reading its disk).
pub fn mark_for_scrub(node: &Node, contract: &RecordId, now: Timestamp) -> Result<bool, StateError> {
    node.update_contract(contract, |e| {
        let gap = fairness::scrub_gap_secs(e.state.clean_scrubs, e.contract.body.grace_secs);
        let recent = e.state.scrubbed_at.is_some_and(|t| now.unix() < t.unix().saturating_add(gap));
        if e.state.awaiting_repush.is_some() || recent {
            return Ok(false);
        }
        e.state.awaiting_repush = Some(now);
        e.state.scrubbed_at = Some(now);
        Ok(true)
    })
}

/// Checks the holder's copy of the peer's data and moves aside what is damaged, so that the
/// peer's next push sends it again; until then the holder does not ask to be challenged again.
/// If nothing is damaged, it may ask at once. Returns how many extents it found bad.
pub fn scrub_after_failure(node: &Node, contract: &RecordId, now: Timestamp) -> Result<usize, StateError> {
    let entry = node.contract(contract)?;
    if matches!(entry.state.status, Status::Ended { .. }) {
        return Ok(0);
    }
    let bad = Inbound::new(&node.config.storage, contract).scrub()?;
    node.update_contract(contract, |e| {
        if bad > 0 {
            e.state.clean_scrubs = 0;
        } else {
            e.state.clean_scrubs = e.state.clean_scrubs.saturating_add(1);
            if e.state.awaiting_repush == Some(now) {
                e.state.awaiting_repush = None;
            }
        }
        Ok::<_, StateError>(())
    })?;
    node.log_event(now, "scrub", json!({"contract": contract, "peer": entry.state.peer, "bad_extents": bad}))?;
    Ok(bad)
}
