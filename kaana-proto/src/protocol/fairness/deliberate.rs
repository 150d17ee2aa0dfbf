//! Failing on purpose, and the audit after. Pure.
//!
//! Now and then (the config's `audit_rate` per challenge, or on demand) a node fails its peer's
//! challenge on purpose, then checks, inside the grace period the peer promised, that the peer
//! still holds its data. For that to catch a greedy peer, the failure must look exactly like a
//! real one: a peer that could tell would keep the data when the failure is fake and delete it
//! when it is real — when the node needs it most. So a deliberate failure takes, at random, one
//! of the forms real failures take, and the node then behaves toward the peer as a node in that
//! state does, until it "recovers" the way such a node does:
//!
//! - [`Mode::Silent`]: like a node whose disk hung or that went down: it answers the peer
//!   nothing and sends it nothing, from just after the challenge until its audit time, then
//!   comes back as a node back from an outage does (asks how it stands, challenges the peer,
//!   asks to be challenged again).
//! - [`Mode::Damaged`]: like a node with unreadable extents: samples in a few extents come back
//!   as zeros; after the failing verdict it "scrubs" and reports those extents missing, the
//!   peer's next push re-sends them, and the node, whole again, asks to be challenged again.
//! - [`Mode::Lost`]: like a node whose storage died: "I no longer hold it" (signed), an empty
//!   store at the peer's next push (which re-sends everything), then as above. Rarest, as it
//!   costs the peer a full push.
//!
//! The two alive modes keep every other habit of the node (its pushes, its routine challenges
//! of the peer — each an audit, since the node knows it is failing there). Audits of the silent
//! mode fall anywhere from the time the peer can have judged the node failing to a
//! [`super::margin`] before the peer may delete. A node never fails on purpose while it judges
//! the peer failing (its failing answer would carry that judgement, and read as deleting the
//! peer's data inside the grace it grants), while it is failing there already, or before the
//! peer holds a copy it can audit; and it rolls the dice at most once an hour per contract, so
//! that a peer cannot make it fail by challenging it again and again.

use serde::{Deserialize, Serialize};

use super::{RETRY_WINDOW_SECS, margin};
use crate::protocol::challenge::Rng;
use crate::protocol::encoding;
use crate::protocol::manifest::ExtentHash;
use crate::protocol::time::Timestamp;

/// A form of failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// No answers, no traffic, as a node that is down or hung.
    Silent,
    /// Zeros for samples in a few extents, as a node with unreadable extents.
    Damaged,
    /// "I no longer hold it", as a node whose storage died.
    Lost,
}

impl Mode {
    /// The form of a plan written before failures had forms: wrong proofs.
    fn before_modes() -> Mode {
        Mode::Damaged
    }
}

/// Out of 100 deliberate failures, how many of each mode (silent, damaged, lost).
const WEIGHTS: [(Mode, u64); 3] = [(Mode::Silent, 45), (Mode::Damaged, 45), (Mode::Lost, 10)];
/// Slack for the peer's next try after this node goes silent (its cron's interval).
const NEXT_TRY: u64 = 8 * super::HOUR;

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "silent" => Ok(Mode::Silent),
            "damaged" => Ok(Mode::Damaged),
            "lost" => Ok(Mode::Lost),
            _ => Err(format!("{s:?} is not a mode: silent, damaged or lost")),
        }
    }
}

/// A planned deliberate failure and its audit (the state's `audit` field).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    /// The form the failure takes (plans written before there were forms were wrong proofs:
    /// damaged).
    #[serde(default = "Mode::before_modes")]
    pub mode: Mode,
    /// When this node failed on purpose.
    pub failed_at: Timestamp,
    /// Silent: when it comes back and audits. Otherwise: the latest time it stops pretending,
    /// should the peer not have re-sent what it "lost" by then.
    pub audit_at: Timestamp,
    /// Damaged: the peer's extents (hashes, hex) this node pretends it cannot read.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub damaged: Vec<String>,
    /// When the peer's push made this node whole again (alive modes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healed_at: Option<Timestamp>,
    /// How it ended: `pass` (the peer kept our data) or `breach`.
    #[serde(default)]
    pub result: Option<String>,
}

/// What a node in a plan pretends to have lost of its peer's copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Pretence {
    /// Nothing: it answers as it is.
    Nothing,
    /// These extents: samples in them come back as zeros, and pushes are told they are missing.
    Extents(Vec<ExtentHash>),
    /// Everything: "I no longer hold it", and an empty store.
    All,
}

/// What decides whether the next answer to a peer's challenge fails on purpose.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Situation {
    /// The configured rate (0 to 1).
    pub rate: f64,
    /// `fail-next` was asked for, with a mode or not.
    pub forced: Option<Option<Mode>>,
    /// The contract's grace period.
    pub grace_secs: u64,
    /// A plan is under way already.
    pub pending: bool,
    /// The peer holds a copy of ours that it signed for (else there is nothing to audit).
    pub copy_at_peer: bool,
    /// This node is failing at the peer already, as last learned.
    pub failing_at_peer: bool,
    /// This node judges the peer failing.
    pub judging_failing: bool,
    /// When this node last rolled the dice for this contract.
    pub last_roll: Option<Timestamp>,
    /// A side gave notice: the peer may delete the data at the notice's end, so an audit
    /// could not tell an early deletion from a due one.
    pub ending: bool,
}

/// Whether to fail this challenge on purpose, and how; and whether the dice were rolled (the
/// caller records when: they are rolled at most once an hour).
pub fn decide(s: &Situation, now: Timestamp, rng: &mut Rng) -> (Option<Mode>, bool) {
    if s.pending || !s.copy_at_peer || s.failing_at_peer || s.judging_failing || s.ending {
        return (None, false);
    }
    let may_roll = s.last_roll.is_none_or(|last| now >= last.plus_secs(super::HOUR));
    let by_rate = may_roll && s.rate > 0.0 && (rng.below(1_000_000) as f64) < s.rate * 1_000_000.0;
    if s.forced.is_none() && !by_rate {
        return (None, may_roll);
    }
    (Some(choose(s, now, rng)), may_roll)
}

fn choose(s: &Situation, now: Timestamp, rng: &mut Rng) -> Mode {
    let silent_ok = silent_window(now, s.grace_secs).is_some();
    match s.forced.flatten() {
        Some(Mode::Silent) if !silent_ok => Mode::Damaged,
        Some(mode) => mode,
        None => {
            let weights: Vec<(Mode, u64)> =
                WEIGHTS.iter().copied().filter(|(m, _)| *m != Mode::Silent || silent_ok).collect();
            let mut pick = rng.below(weights.iter().map(|(_, w)| w).sum());
            for (mode, weight) in weights {
                if pick < weight {
                    return mode;
                }
                pick -= weight;
            }
            Mode::Damaged
        }
    }
}

/// When a silent node may come back: after the peer can have judged it failing (its next try,
/// then the retry window), and a margin before the peer may delete its data.
fn silent_window(now: Timestamp, grace_secs: u64) -> Option<(Timestamp, Timestamp)> {
    let lo = now.plus_secs(NEXT_TRY + RETRY_WINDOW_SECS);
    let hi = now.plus_secs(RETRY_WINDOW_SECS + grace_secs).unix().checked_sub(margin(grace_secs))?;
    (hi > lo.unix()).then_some((lo, Timestamp::from_unix(hi)))
}

/// The plan for a failure in `mode` at `now`; `picked` are the extents the peer's challenge
/// sampled, `all` the copy's extents. A damaged node's bad extents are one or two of the picked
/// ones (so the challenge fails) and a few others anywhere, as real damage is.
pub fn plan(
    mode: Mode,
    now: Timestamp,
    grace_secs: u64,
    picked: &[ExtentHash],
    all: &[ExtentHash],
    rng: &mut Rng,
) -> Plan {
    let deadline = now.plus_secs(grace_secs.saturating_sub(margin(grace_secs)));
    let (audit_at, damaged) = match mode {
        Mode::Silent => {
            let (lo, hi) = silent_window(now, grace_secs).unwrap_or((deadline, deadline));
            (Timestamp::from_unix(lo.unix() + rng.below(hi.unix() - lo.unix() + 1)), Vec::new())
        }
        Mode::Damaged => {
            let mut damaged: Vec<String> = Vec::new();
            for (from, n) in [(picked, 1 + rng.below(2)), (all, rng.below(4))] {
                for _ in 0..n {
                    if !from.is_empty() {
                        damaged.push(encoding::hex_encode(&from[rng.below(from.len() as u64) as usize]));
                    }
                }
            }
            damaged.sort_unstable();
            damaged.dedup();
            (deadline, damaged)
        }
        Mode::Lost => (deadline, Vec::new()),
    };
    Plan { mode, failed_at: now, audit_at, damaged, healed_at: None, result: None }
}

impl Plan {
    /// Not yet ended.
    pub fn pending(&self) -> bool {
        self.result.is_none()
    }

    /// Whether this node is, toward the peer, a node that is down: no answers, no traffic.
    pub fn silent(&self, now: Timestamp) -> bool {
        self.pending() && self.mode == Mode::Silent && now < self.audit_at
    }

    /// What this node pretends to have lost of the peer's copy at `now`.
    pub fn pretence(&self, now: Timestamp) -> Pretence {
        if !self.pending() || self.healed_at.is_some() || now >= self.audit_at {
            return Pretence::Nothing;
        }
        match self.mode {
            Mode::Silent => Pretence::Nothing,
            Mode::Lost => Pretence::All,
            // A plan from before there were forms names no extents: nothing to pretend.
            Mode::Damaged if self.damaged.is_empty() => Pretence::Nothing,
            Mode::Damaged => {
                Pretence::Extents(self.damaged.iter().filter_map(|h| encoding::hex_decode::<32>(h).ok()).collect())
            }
        }
    }

    /// After the peer committed a new generation (its push re-sent what this node "lost").
    pub fn healed(mut self, now: Timestamp) -> Plan {
        if self.pending() && self.mode != Mode::Silent && self.healed_at.is_none() {
            self.healed_at = Some(now);
        }
        self
    }

    /// Stops pretending at once (this node judged the peer failing: its own failing answers
    /// would now read as deleting the peer's data inside the grace it granted).
    pub fn abandoned(mut self, now: Timestamp) -> Plan {
        self.audit_at = self.audit_at.min(now);
        self
    }

    /// Ended with `result` (`pass` or `breach`).
    pub fn ended(mut self, result: &str) -> Plan {
        self.result = Some(result.to_owned());
        self
    }
}

/// Whether a push must first audit the holder: when this node is failing there, or a
/// deliberate failure of its own is under way (the holder may have judged it without telling):
/// a push re-sends what the holder lacks, which would hide a deletion.
pub fn audit_before_push(failing_at_peer: bool, plan: Option<&Plan>) -> bool {
    failing_at_peer || plan.is_some_and(Plan::pending)
}

/// Whether a deliberate failure is over: the node is back (neither silent nor pretending), its
/// audit of the peer passed, and the peer no longer judges it failing.
pub fn plan_over(plan: &Plan, audit_passed: bool, failing_at_peer: bool, now: Timestamp) -> bool {
    plan.pending() && !plan.silent(now) && plan.pretence(now) == Pretence::Nothing && audit_passed && !failing_at_peer
}

/// Whether a node that is failing at its peer asks, in this run, to be challenged again: once
/// its own audit of the peer got an answer that was no breach (if the peer dropped our data,
/// there is nothing to keep there), when it is neither silent nor pretending toward the peer,
/// and when it is not waiting for the peer to re-send extents it found damaged.
pub fn asks_rechallenge(plan: Option<&Plan>, awaiting_repush: bool, audited: bool, now: Timestamp) -> bool {
    let acting = plan.is_some_and(|p| p.silent(now) || p.pretence(now) != Pretence::Nothing);
    audited && !awaiting_repush && !acting
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::fairness::{DAY, HOUR};

    const GRACE: u64 = 7 * DAY;

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_unix(9_000_000 + secs)
    }

    fn situation() -> Situation {
        Situation {
            rate: 0.0,
            forced: None,
            grace_secs: GRACE,
            pending: false,
            copy_at_peer: true,
            failing_at_peer: false,
            judging_failing: false,
            last_roll: None,
            ending: false,
        }
    }

    fn mode(s: &Situation, now: Timestamp, rng: &mut Rng) -> Option<Mode> {
        decide(s, now, rng).0
    }

    #[test]
    fn the_rate_and_fail_next_decide_but_never_when_it_would_harm() {
        let mut rng = Rng::from_seed([3; 32]);
        assert_eq!(mode(&situation(), t(0), &mut rng), None);
        let forced = Situation { forced: Some(Some(Mode::Lost)), ..situation() };
        assert_eq!(mode(&forced, t(0), &mut rng), Some(Mode::Lost));
        for blocked in [
            Situation { pending: true, ..forced },
            Situation { copy_at_peer: false, ..forced },
            Situation { failing_at_peer: true, ..forced },
            Situation { judging_failing: true, ..forced },
            Situation { ending: true, ..forced },
        ] {
            assert_eq!(mode(&blocked, t(10), &mut rng), None, "{blocked:?}");
        }
        // A peer challenging again and again within the hour gets no more rolls of the dice.
        let s = Situation { rate: 0.02, ..situation() };
        assert_eq!(decide(&Situation { last_roll: Some(t(0)), ..s }, t(HOUR - 1), &mut rng), (None, false));
        assert!(decide(&Situation { last_roll: Some(t(0)), ..s }, t(HOUR), &mut rng).1);
        // At a rate of 2%, about 2% of the rolls, in all three modes.
        let mut counts = [0; 3];
        for _ in 0..100_000 {
            if let Some(m) = mode(&s, t(0), &mut rng) {
                counts[m as usize] += 1;
            }
        }
        let total: i32 = counts.iter().sum();
        assert!((1_800..2_200).contains(&total), "{counts:?}");
        assert!(counts[0] > counts[2] * 3 && counts[1] > counts[2] * 3 && counts[2] > 100, "{counts:?}");
        // A grace too short for a silent spell: no silent mode.
        let short = Situation { forced: Some(Some(Mode::Silent)), grace_secs: 12 * HOUR, ..situation() };
        assert_eq!(mode(&short, t(0), &mut rng), Some(Mode::Damaged));
    }

    #[test]
    fn a_silent_audit_falls_after_the_peer_can_judge_and_before_it_may_delete() {
        let mut rng = Rng::from_seed([4; 32]);
        let (mut earliest, mut latest) = (u64::MAX, 0);
        for _ in 0..2_000 {
            let p = plan(Mode::Silent, t(0), GRACE, &[], &[], &mut rng);
            let at = p.audit_at.unix() - t(0).unix();
            earliest = earliest.min(at);
            latest = latest.max(at);
            assert!(p.silent(t(at - 1)) && !p.silent(t(at)));
        }
        // The peer judges us failing a retry window after its first unanswered try at the
        // earliest, and may delete a grace period after that.
        assert!((DAY + 8 * HOUR..DAY + 12 * HOUR).contains(&earliest), "{earliest}");
        assert!(latest <= DAY + GRACE - margin(GRACE) && latest > DAY + GRACE - margin(GRACE) - 6 * HOUR, "{latest}");
    }

    #[test]
    fn a_damaged_node_pretends_until_the_peer_re_sends_or_its_deadline() {
        let mut rng = Rng::from_seed([5; 32]);
        let picked: Vec<ExtentHash> = (0..10u8).map(|i| [i; 32]).collect();
        let all: Vec<ExtentHash> = (0..200u8).map(|i| [i; 32]).collect();
        let p = plan(Mode::Damaged, t(0), GRACE, &picked, &all, &mut rng);
        let Pretence::Extents(bad) = p.pretence(t(HOUR)) else { panic!("{p:?}") };
        assert!((1..=5).contains(&bad.len()) && bad.iter().any(|h| picked.contains(h)), "{bad:?}");
        // Over many plans, the damage reaches beyond the picked extents, as real damage does.
        let beyond = (0..100)
            .filter(|_| match plan(Mode::Damaged, t(0), GRACE, &picked, &all, &mut rng).pretence(t(0)) {
                Pretence::Extents(bad) => bad.iter().any(|h| !picked.contains(h)),
                _ => false,
            })
            .count();
        assert!(beyond > 50, "{beyond}");
        assert_eq!(p.audit_at, t(GRACE - margin(GRACE)));
        assert_eq!(p.pretence(p.audit_at), Pretence::Nothing, "it stops pretending in time to act");
        assert!(!asks_rechallenge(Some(&p), false, true, t(HOUR)));
        let healed = p.clone().healed(t(2 * HOUR));
        assert_eq!(healed.pretence(t(3 * HOUR)), Pretence::Nothing);
        assert!(asks_rechallenge(Some(&healed), false, true, t(3 * HOUR)));
        assert!(!asks_rechallenge(Some(&healed), true, true, t(3 * HOUR)), "a real scrub found damage");
        assert!(!asks_rechallenge(Some(&healed), false, false, t(3 * HOUR)), "no answer, or a breach");
        assert_eq!(p.clone().abandoned(t(HOUR)).pretence(t(HOUR)), Pretence::Nothing);
        // A push audits while a plan is under way or the node is failing; a plan is over when
        // the node is back, its audit passed and the peer judges it ok.
        assert!(audit_before_push(true, None) && audit_before_push(false, Some(&p)));
        assert!(!audit_before_push(false, Some(&p.clone().ended("pass"))));
        assert!(!plan_over(&p, true, false, t(HOUR)) && plan_over(&healed, true, false, t(3 * HOUR)));
        assert!(!plan_over(&healed, false, false, t(3 * HOUR)) && !plan_over(&healed, true, true, t(3 * HOUR)));
        let lost = plan(Mode::Lost, t(0), GRACE, &picked, &all, &mut rng);
        assert_eq!(lost.pretence(t(0)), Pretence::All);
        assert_eq!(lost.ended("pass").pretence(t(0)), Pretence::Nothing);
    }
}
