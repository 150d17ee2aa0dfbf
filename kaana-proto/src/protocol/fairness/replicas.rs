//! Keeping `replicas` healthy copies of the volume without a person, as pure rules: which
//! contracts still count, which offers may replace those that do not, how many to take, and
//! which contracts may be ended, and when. `kaana-offer ensure` carries the plan out.
//!
//! Make before break: a contract is ended only once the copy that replaces it is committed. And a
//! peer that is failing, but whose grace has not run out, may be testing this node with a
//! deliberate failure: a copy may be added elsewhere at once, but its contract is never ended
//! before its `delete_after`, so a deliberate failure never costs an honest peer its contract.
//!
//! Longer than 400 lines: the rules are some 250; the rest is their unit tests, kept beside them.

use std::collections::{BTreeMap, BTreeSet};

use serde::Serialize;

use crate::protocol::fairness::judge::PeerRecord;
use crate::protocol::fairness::standing::Standing;
use crate::protocol::identity::NodeId;
use crate::protocol::record::RecordId;
use crate::protocol::time::Timestamp;

/// One of this node's contracts, as `ensure` sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Copy {
    /// The contract.
    pub contract: RecordId,
    /// The peer holding this node's copy.
    pub peer: NodeId,
    /// The contract's size.
    pub size: u64,
    /// Whether it is active (not terminated nor ended).
    pub active: bool,
    /// How this node judges the peer.
    pub standing: Standing,
    /// Whether an audit found the peer breaching (it deleted this node's data early).
    pub breach: bool,
    /// Whether the peer ever committed a push of this node's volume.
    pub committed: bool,
    /// When the contract was made.
    pub created_at: Timestamp,
    /// Its grace period: a contract its peer has committed nothing under for that long is lost.
    pub grace_secs: u64,
}

/// Whether a contract counts toward the replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Health {
    /// It counts.
    Healthy,
    /// It will count once the peer commits a push: no other is taken for it, but it does not
    /// yet make up for one that is ended.
    Pending,
    /// Its peer is failing, within its grace: it does not count now, but it is kept (the peer may
    /// be testing this node) until `delete_after`.
    Doubtful {
        /// When its grace runs out.
        delete_after: Timestamp,
    },
    /// It is of no use as a replica: ended, terminated, breached, too small, or failing past
    /// its grace.
    Lost,
}

/// Why a contract is [`Health::Lost`], or `None` if it is not. A breach is proven misconduct;
/// short of one, a peer failing within its grace is never lost (it may be testing this node),
/// whatever else is wrong with its contract.
pub fn lost_because(c: &Copy, volume_size: u64, now: Timestamp) -> Option<&'static str> {
    if !c.active {
        Some("terminated or ended")
    } else if c.breach {
        Some("the peer deleted this node's data early (a breach)")
    } else if c.standing.is_failing() && !c.standing.expired(now) {
        None
    } else if c.standing.expired(now) {
        Some("the peer has been failing past its grace")
    } else if !c.committed && now.unix() > c.created_at.unix().saturating_add(c.grace_secs) {
        // Never pushed to, it was never challenged, and its peer never judged: it must not
        // hold a replica's place for good.
        Some("nothing committed there for longer than its grace")
    } else if c.size < volume_size {
        Some("smaller than the volume")
    } else {
        None
    }
}

/// How `c` counts at `now` for a volume of `volume_size` bytes.
pub fn health(c: &Copy, volume_size: u64, now: Timestamp) -> Health {
    if lost_because(c, volume_size, now).is_some() {
        return Health::Lost;
    }
    match c.standing.failing() {
        Some((_, delete_after)) => Health::Doubtful { delete_after },
        None if !c.committed => Health::Pending,
        None => Health::Healthy,
    }
}

/// What this node knows of a peer node across all its contracts with it: its record.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct PeerHistory {
    /// Contracts with the peer, in all.
    pub contracts: u64,
    /// Of those, ended or terminated.
    pub contracts_ended: u64,
    /// Challenges it passed.
    pub passes: u64,
    /// Challenges it failed.
    pub failures: u64,
    /// Tries at which it could not be reached.
    pub unreachable: u64,
    /// Breaches an audit found.
    pub breaches: u64,
}

impl PeerHistory {
    /// Adds one contract's record.
    pub fn add(&mut self, record: &PeerRecord, active: bool, breach: bool) {
        self.contracts += 1;
        self.contracts_ended += u64::from(!active);
        self.passes += record.passes;
        self.failures += record.failures;
        self.unreachable += record.unreachable;
        self.breaches += u64::from(breach);
    }

    /// Whether nothing stands against the peer: no breach, no failed challenge (an unanswered
    /// try is a reboot as often as not: it only ranks the peer lower).
    pub fn clean(&self) -> bool {
        self.breaches == 0 && self.failures == 0
    }

    /// The order peers are preferred in (smaller first): clean first, then fewer failures and
    /// unanswered tries per challenge passed, then more passes.
    fn rank(&self) -> (bool, u64, u64) {
        let bad = self.failures + self.unreachable;
        (!self.clean(), bad.saturating_mul(1000) / (self.passes + 1), u64::MAX - self.passes)
    }
}

/// An offer `ensure` could take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The offer's id.
    pub offer: RecordId,
    /// Its maker.
    pub peer: NodeId,
    /// Its size.
    pub size: u64,
    /// Its grace period.
    pub grace_secs: u64,
    /// What it commits of this node's capacity (the size and its history allowance).
    pub held_bytes: u64,
    /// How long it keeps superseded generations (0: none).
    pub history_secs: u64,
    /// When it closes.
    pub expires_at: Timestamp,
}

/// What `ensure` needs to know beyond contracts and offers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Wants {
    /// How many healthy copies.
    pub replicas: u32,
    /// The volume's size: a copy must be at least as large.
    pub volume_size: u64,
    /// The shortest grace an offer may have (this node's own).
    pub min_grace_secs: u64,
    /// This node's capacity not yet committed.
    pub free: u64,
    /// How long this node asks its own holders to keep superseded generations (its config's
    /// `history_secs`): offers keeping less come after those that keep as much.
    pub history_secs: u64,
    /// This node.
    pub me: NodeId,
}

/// How long `ensure` passes over an offer it could not take: a day, so that each night's run
/// tries others, not the same few again (a stranger's board can hold thousands of offers whose
/// addresses only time out, all ranked alike every night).
pub const UNTAKEN_FOR_SECS: u64 = 86_400;
/// Offers a run gives up on after trying them for a while (their maker not reached, or slow to
/// answer) before it stops taking; a quick refusal (taken by another, withdrawn) does not count.
pub const MAX_SLOW_FAILURES: usize = 4;

/// Whether an offer `ensure` could not take at `at` is still passed over at `now` (a time ahead
/// of `now`, from a clock set back since, is not trusted).
pub fn still_untaken(at: Timestamp, now: Timestamp) -> bool {
    at <= now && now.unix() < at.unix().saturating_add(UNTAKEN_FOR_SECS)
}

/// The longest grace an offer may have: four times this node's own, and at least 30 days.
pub fn max_grace(min_grace_secs: u64) -> u64 {
    min_grace_secs.saturating_mul(4).max(30 * 86_400)
}

/// Why an offer is not taken, or `None` if it may be.
pub fn refusal(
    o: &Candidate,
    wants: &Wants,
    in_use: &BTreeSet<NodeId>,
    history: Option<&PeerHistory>,
    now: Timestamp,
) -> Option<&'static str> {
    if o.peer == wants.me {
        Some("this node's own offer")
    } else if o.expires_at <= now {
        Some("expired")
    } else if o.size < wants.volume_size {
        Some("smaller than the volume")
    } else if o.grace_secs < wants.min_grace_secs {
        Some("a shorter grace than this node's")
    } else if o.grace_secs > max_grace(wants.min_grace_secs) {
        // A grace that never runs out would keep a failing holder's contract, and this node's
        // capacity, for good.
        Some("a grace far longer than this node's")
    } else if in_use.contains(&o.peer) {
        Some("this node already has a contract with that peer")
    } else if history.is_some_and(|h| h.breaches > 0) {
        Some("that peer breached a contract before")
    } else {
        None
    }
}

/// What `ensure` will do.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Every contract not ended, with how it counts.
    pub copies: Vec<(RecordId, NodeId, Health)>,
    /// Healthy copies now (committed).
    pub healthy: u32,
    /// Copies that will count once their peer commits a push: pushed to again.
    pub pending: Vec<RecordId>,
    /// Offers to take, in order.
    pub take: Vec<RecordId>,
    /// Acceptable offers beyond those, in order, from other peers: taken instead of one that is
    /// refused when taken.
    pub fallback: Vec<RecordId>,
    /// Lost contracts still active, to end once enough copies are committed without them
    /// ([`ends_now`]).
    pub end: Vec<RecordId>,
    /// Copies still missing after the offers taken: this node should offer instead.
    pub shortfall: u32,
    /// Offers seen and not taken, and why (for `--dry-run`).
    pub passed_over: Vec<(RecordId, &'static str)>,
}

/// The plan at `now`: count the healthy copies; take the best acceptable offers, one per peer and
/// within the free capacity, until `replicas` are healthy; end the lost contracts still active
/// (make before break: the caller ends them only once what it took is committed). A doubtful
/// contract is never ended: its peer keeps it until `delete_after`, and `prune` deals with it
/// then if the peer is still failing.
pub fn plan(
    copies: &[Copy],
    offers: &[Candidate],
    histories: &BTreeMap<NodeId, PeerHistory>,
    wants: &Wants,
    now: Timestamp,
) -> Plan {
    let mut plan = Plan::default();
    // Every peer with a contract not ended is in use, however it counts: never two with one peer.
    let mut in_use: BTreeSet<NodeId> = copies.iter().map(|c| c.peer).collect();
    for c in copies {
        let h = health(c, wants.volume_size, now);
        plan.healthy += u32::from(h == Health::Healthy);
        if h == Health::Pending {
            plan.pending.push(c.contract);
        }
        if h == Health::Lost && c.active {
            plan.end.push(c.contract);
        }
        plan.copies.push((c.contract, c.peer, h));
    }
    let pending = u32::try_from(plan.pending.len()).unwrap_or(u32::MAX);
    let mut need = wants.replicas.saturating_sub(plan.healthy.saturating_add(pending));
    let mut ranked: Vec<&Candidate> = offers.iter().collect();
    // Clean peers first; then those that keep the history this node asks for (an offer keeping
    // none spends the least capacity, and would otherwise come first: a replica that cannot give
    // back the volume as it was before a ransomwared push); then the least capacity spent, and
    // the grace nearest this node's own.
    ranked.sort_by_key(|o| {
        let h = histories.get(&o.peer).copied().unwrap_or_default();
        (h.rank(), o.history_secs < wants.history_secs, o.held_bytes, o.grace_secs, o.offer)
    });
    let mut free = wants.free;
    for o in ranked {
        if let Some(why) = refusal(o, wants, &in_use, histories.get(&o.peer), now) {
            plan.passed_over.push((o.offer, why));
        } else if need == 0 {
            plan.passed_over.push((o.offer, "enough copies"));
            plan.fallback.push(o.offer);
        } else if o.held_bytes > free {
            plan.passed_over.push((o.offer, "more than this node's free capacity"));
        } else {
            free -= o.held_bytes;
            in_use.insert(o.peer);
            plan.take.push(o.offer);
            need -= 1;
        }
    }
    plan.shortfall = need;
    plan
}

/// The lost contracts of `plan` to end now that `committed` copies beyond its healthy ones are
/// committed (those it took, and the pending ones that committed): all of them once the healthy
/// copies reach `replicas` without them, none before (make before break).
pub fn ends_now(plan: &Plan, committed: u32, replicas: u32) -> &[RecordId] {
    if plan.healthy.saturating_add(committed) >= replicas { &plan.end } else { &[] }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::identity::Identity;

    const GIB: u64 = 1 << 30;

    fn t(s: u64) -> Timestamp {
        Timestamp::from_unix(1_800_000_000 + s)
    }

    fn node(n: u8) -> NodeId {
        Identity::from_seed([n; 32]).node_id()
    }

    fn id(n: u8) -> RecordId {
        format!("{n:02x}").repeat(32).parse().unwrap()
    }

    fn copy(n: u8, standing: Standing) -> Copy {
        Copy {
            contract: id(n),
            peer: node(n),
            size: GIB,
            active: true,
            standing,
            breach: false,
            committed: true,
            created_at: t(0),
            grace_secs: 7 * 86_400,
        }
    }

    fn offer(n: u8, peer: u8) -> Candidate {
        Candidate {
            offer: id(100 + n),
            peer: node(peer),
            size: GIB,
            grace_secs: 7 * 86_400,
            held_bytes: GIB,
            history_secs: 14 * 86_400,
            expires_at: t(30 * 86_400),
        }
    }

    fn wants() -> Wants {
        Wants {
            replicas: 2,
            volume_size: GIB,
            min_grace_secs: 7 * 86_400,
            free: 10 * GIB,
            history_secs: 14 * 86_400,
            me: node(0),
        }
    }

    #[test]
    fn an_offer_not_taken_is_passed_over_for_a_day() {
        assert!(still_untaken(t(0), t(0)) && still_untaken(t(0), t(86_399)));
        assert!(!still_untaken(t(0), t(86_400)), "a day later it is tried again");
        assert!(!still_untaken(t(100), t(0)), "dated ahead of now: a clock set back");
    }

    #[test]
    fn offers_keeping_the_history_asked_for_come_before_smaller_ones_that_keep_less() {
        let none = Candidate { history_secs: 0, held_bytes: GIB / 2, ..offer(1, 4) };
        let short = Candidate { history_secs: 86_400, held_bytes: GIB - 1, ..offer(2, 5) };
        let kept = Candidate { held_bytes: GIB + GIB / 4, ..offer(3, 6) };
        let p = plan(&[copy(2, Standing::Ok)], &[none, short, kept.clone()], &BTreeMap::new(), &wants(), t(0));
        assert_eq!(p.take, vec![id(103)], "the one keeping 14 days, though it spends the most");
        assert_eq!(p.fallback, vec![id(101), id(102)], "then the least capacity among the others");
        let w = Wants { history_secs: 0, ..wants() };
        let p = plan(&[copy(2, Standing::Ok)], &[offer(1, 4), kept], &BTreeMap::new(), &w, t(0));
        assert_eq!(p.take, vec![id(101)], "asking for none: the least capacity");
    }

    #[test]
    fn a_breached_copy_is_replaced_then_ended() {
        let mut c = copy(3, Standing::Ok);
        c.breach = true;
        let p = plan(&[copy(2, Standing::Ok), c], &[offer(1, 4)], &BTreeMap::new(), &wants(), t(0));
        assert_eq!((p.healthy, p.take.clone(), p.end.clone(), p.shortfall), (1, vec![id(101)], vec![id(3)], 0));
        assert!(ends_now(&p, 0, 2).is_empty(), "not before the new copy is committed");
        assert_eq!(ends_now(&p, 1, 2), [id(3)]);
    }

    #[test]
    fn nothing_is_ended_while_copies_are_missing() {
        // Both copies too small for a grown volume, nothing on offer: both are kept.
        let mut small = [copy(2, Standing::Ok), copy(3, Standing::Ok)];
        for c in &mut small {
            c.size = GIB / 2;
        }
        let p = plan(&small, &[], &BTreeMap::new(), &wants(), t(0));
        assert_eq!((p.end.len(), p.shortfall), (2, 2));
        assert!(ends_now(&p, 0, 2).is_empty());
        // A failing peer within its grace is never lost, even with a contract too small.
        let failing = Standing::Failing { since: t(0), delete_after: t(7 * 86_400) };
        let mut c = copy(4, failing);
        c.size = GIB / 2;
        assert_eq!(health(&c, GIB, t(86_400)), Health::Doubtful { delete_after: t(7 * 86_400) });
    }

    #[test]
    fn a_copy_never_committed_takes_no_other_but_makes_up_for_nothing() {
        let mut pending = copy(3, Standing::Ok);
        pending.committed = false;
        let mut breached = copy(4, Standing::Ok);
        breached.breach = true;
        let p = plan(&[copy(2, Standing::Ok), pending, breached], &[offer(1, 5)], &BTreeMap::new(), &wants(), t(0));
        assert_eq!((p.healthy, p.pending.clone(), p.take.len()), (1, vec![id(3)], 0));
        assert!(ends_now(&p, 0, 2).is_empty(), "the breached copy stays until the pending one commits");
        assert_eq!(ends_now(&p, 1, 2), [id(4)]);
        // Never committed for longer than its grace: lost, and replaced.
        let mut stale = copy(3, Standing::Ok);
        stale.committed = false;
        let p = plan(&[copy(2, Standing::Ok), stale], &[offer(1, 5)], &BTreeMap::new(), &wants(), t(8 * 86_400));
        assert_eq!((p.take.clone(), p.end.clone()), (vec![id(101)], vec![id(3)]));
    }

    #[test]
    fn an_endless_grace_is_refused_and_the_cheapest_adequate_offer_wins() {
        let mut endless = offer(1, 4);
        endless.grace_secs = u64::MAX;
        let mut big = offer(2, 5);
        big.held_bytes = 4 * GIB;
        let p = plan(&[copy(2, Standing::Ok)], &[endless, big, offer(3, 6)], &BTreeMap::new(), &wants(), t(0));
        assert_eq!(p.take, [id(103)]);
        assert!(p.passed_over.contains(&(id(101), "a grace far longer than this node's")), "{:?}", p.passed_over);
    }

    #[test]
    fn a_failing_peer_within_its_grace_is_never_ended_but_a_copy_is_added() {
        let failing = Standing::Failing { since: t(0), delete_after: t(7 * 86_400) };
        let copies = [copy(2, Standing::Ok), copy(3, failing)];
        let p = plan(&copies, &[offer(1, 4)], &BTreeMap::new(), &wants(), t(86_400));
        assert_eq!(p.take, [id(101)]);
        assert!(p.end.is_empty(), "never before delete_after");
        assert_eq!(p.copies[1].2, Health::Doubtful { delete_after: t(7 * 86_400) });
        // Past its grace it is lost, and ended once replaced.
        let p = plan(&copies, &[offer(1, 4)], &BTreeMap::new(), &wants(), t(7 * 86_400 + 1));
        assert_eq!(p.end, [id(3)]);
    }

    #[test]
    fn offers_are_refused_for_size_grace_peer_breach_and_capacity() {
        let mut small = offer(1, 4);
        small.size = GIB - 1;
        let mut short = offer(2, 5);
        short.grace_secs = 86_400;
        let same_peer = offer(3, 2);
        let mut breacher = BTreeMap::new();
        breacher.insert(node(6), PeerHistory { breaches: 1, ..PeerHistory::default() });
        let bad = offer(4, 6);
        let mut big = offer(5, 7);
        big.held_bytes = 11 * GIB;
        let own = offer(6, 0);
        let offers = [small, short, same_peer, bad, big, own];
        let p = plan(&[copy(2, Standing::Ok)], &offers, &breacher, &wants(), t(0));
        assert!(p.take.is_empty());
        assert_eq!(p.shortfall, 1);
        let mut why: Vec<&str> = p.passed_over.iter().map(|(_, w)| *w).collect();
        why.sort_unstable();
        assert_eq!(
            why,
            [
                "a shorter grace than this node's",
                "more than this node's free capacity",
                "smaller than the volume",
                "that peer breached a contract before",
                "this node already has a contract with that peer",
                "this node's own offer",
            ]
        );
    }

    #[test]
    fn one_offer_per_peer_and_clean_peers_first() {
        let mut h = BTreeMap::new();
        h.insert(node(4), PeerHistory { failures: 3, passes: 10, ..PeerHistory::default() });
        h.insert(node(5), PeerHistory { passes: 10, ..PeerHistory::default() });
        let offers = [offer(1, 4), offer(2, 4), offer(3, 5)];
        let w = Wants { replicas: 3, ..wants() };
        let p = plan(&[], &offers, &h, &w, t(0));
        assert_eq!(p.take, [id(103), id(101)], "the clean peer first, then one offer of the other");
        assert_eq!(p.shortfall, 1);
    }

    #[test]
    fn enough_healthy_copies_take_nothing_and_keep_a_spare() {
        let copies = [copy(2, Standing::Ok), copy(3, Standing::Ok), copy(4, Standing::Ok)];
        let p = plan(&copies, &[offer(1, 5)], &BTreeMap::new(), &wants(), t(0));
        assert_eq!((p.healthy, p.take.len(), p.end.len(), p.shortfall), (3, 0, 0, 0), "a spare is kept, not ended");
    }
}
