//! How a node judges a peer under one contract, and the record it keeps of it. Pure.
//!
//! - A wrong answer (or a refusal, or "I no longer hold it") makes the peer failing at once.
//! - No answer is not a wrong answer: it is retried on cron's schedule, and the peer is failing
//!   only once it has stayed unanswered at every try for [`RETRY_WINDOW_SECS`] (and at least
//!   [`MIN_TRIES`] tries), in the spirit of Storj's containment. One unanswered try is noise (a
//!   lost packet burst): the window starts at the second in a row. Tries more than
//!   [`TRY_GAP_SECS`] apart start a new spell (the judge saw nothing in between). A node that
//!   reaches too few of its peers suspects itself ([`super::health`]) and counts no tries at
//!   all.
//! - A failing peer is ok again only by passing a challenge it asked for (a rechallenge),
//!   [`STRONG_FACTOR`] times the default size and twice that again after each failed one (up
//!   to [`MAX_SAMPLES`]), at most every [`RECHALLENGE_INTERVAL_SECS`]: a holder missing part of
//!   the data cannot ask again and again until it gets lucky (missing 5%, it passes the first
//!   with probability 0.95^132 = 0.1%, and all later ones together with less than 10^-5). The
//!   judge's own routine challenges of a failing peer are recorded but clear nothing: a peer
//!   back from an outage (or from a deliberate failure) must first audit the judge, and the
//!   judge must not have wiped the failing verdict that audit's evidence rests on.

use serde::{Deserialize, Serialize};

use super::standing::Standing;
use super::{MIN_TRIES, RECHALLENGE_INTERVAL_SECS, RETRY_WINDOW_SECS, STRONG_FACTOR, TRY_GAP_SECS};
use crate::protocol::challenge::{DEFAULT_SAMPLES, MAX_SAMPLES};
use crate::protocol::time::Timestamp;

/// What one challenge of the peer showed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    /// Every sample proved; the challenge had `samples` samples; `asked`: the peer asked for it
    /// (a rechallenge).
    Pass {
        /// How many samples it asked for.
        samples: usize,
        /// Whether the peer asked to be challenged.
        asked: bool,
    },
    /// A wrong answer, a refusal, or "I no longer hold it"; `asked`: to a rechallenge (one the
    /// peer asked for and then left unanswered counts so too).
    Fail {
        /// Whether the peer asked to be challenged.
        asked: bool,
    },
    /// No answer: the peer could not be reached, timed out, or was busy.
    Unreachable,
}

/// A node's record of one peer under one contract.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerRecord {
    /// Challenges the peer passed.
    #[serde(default)]
    pub passes: u64,
    /// Challenges it failed.
    #[serde(default)]
    pub failures: u64,
    /// Tries at which it could not be reached (outside this node's own outages).
    #[serde(default)]
    pub unreachable: u64,
    /// When it last passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_pass: Option<Timestamp>,
    /// When it last failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_failure: Option<Timestamp>,
    /// When it last answered anything.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_seen: Option<Timestamp>,
    /// The second unanswered try in a row of the current spell (where its retry window
    /// starts), if the peer has not answered since.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unreachable_since: Option<Timestamp>,
    /// Unanswered tries in the current spell.
    #[serde(default)]
    pub tries: u32,
    /// When the last try of the current spell was.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_try: Option<Timestamp>,
    /// When the peer last had a rechallenge (while failing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rechallenge: Option<Timestamp>,
    /// Rechallenges it failed since it was last ok: each makes the next one twice as strong.
    #[serde(default)]
    pub rechallenges_failed: u32,
}

/// What a judgement amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    /// The standing is decided by this outcome: a verdict is signed.
    Verdict,
    /// Unanswered, inside the retry schedule: the standing is unchanged, no verdict.
    Retry {
        /// Unanswered tries in this spell.
        tries: u32,
        /// The earliest time the peer may be judged failing if it stays unanswered.
        failing_from: Timestamp,
    },
    /// This node reaches too few of its peers to judge anybody: nothing was counted.
    Suspended,
}

/// A judgement: the new standing and record, and what it amounts to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Judged {
    /// The peer's standing now.
    pub standing: Standing,
    /// The record now.
    pub record: PeerRecord,
    /// Whether a verdict is due.
    pub effect: Effect,
}

/// The samples of a failing peer's first rechallenge: [`STRONG_FACTOR`] times the default.
pub const STRONG_SAMPLES: usize = DEFAULT_SAMPLES * STRONG_FACTOR;

/// The samples of a failing peer's next rechallenge, after `failed` failed ones.
pub fn rechallenge_samples(failed: u32) -> usize {
    // Doubling, capped: a shift alone would wrap to zero after enough failures.
    STRONG_SAMPLES.saturating_mul(1 << failed.min(16)).min(MAX_SAMPLES)
}

/// Judges what a challenge of the peer showed at `now`. `suspect`: this node reached too few of
/// its peers in this run to trust its own connection ([`super::health::suspect`]).
pub fn judge(
    standing: Standing,
    record: &PeerRecord,
    seen: Seen,
    now: Timestamp,
    grace_secs: u64,
    suspect: bool,
) -> Judged {
    let mut record = record.clone();
    let (standing, effect) = match seen {
        Seen::Pass { samples, asked } => {
            record.passes += 1;
            record.last_pass = Some(now);
            answered(&mut record, now);
            let clears =
                !standing.is_failing() || (asked && samples >= rechallenge_samples(record.rechallenges_failed));
            if clears {
                record.rechallenges_failed = 0;
            }
            (if clears { Standing::Ok } else { standing }, Effect::Verdict)
        }
        Seen::Fail { asked } => {
            record.failures += 1;
            record.last_failure = Some(now);
            if asked {
                record.rechallenges_failed += 1;
            }
            answered(&mut record, now);
            (standing.after_failure(now, grace_secs), Effect::Verdict)
        }
        Seen::Unreachable if suspect => (standing, Effect::Suspended),
        Seen::Unreachable => {
            record.unreachable += 1;
            if record.last_try.is_some_and(|last| now.unix() > last.unix() + TRY_GAP_SECS) {
                record.tries = 0;
                record.unreachable_since = None;
            }
            record.tries += 1;
            record.last_try = Some(now);
            let since = match record.tries {
                1 => now,
                _ => *record.unreachable_since.get_or_insert(now),
            };
            let failing_from = since.plus_secs(RETRY_WINDOW_SECS);
            if record.tries >= MIN_TRIES && now >= failing_from && !standing.is_failing() {
                (standing.after_failure(now, grace_secs), Effect::Verdict)
            } else {
                (standing, Effect::Retry { tries: record.tries, failing_from })
            }
        }
    };
    Judged { standing, record, effect }
}

/// Forgets the current spell of unanswered tries: this node is not trying the peer (it is
/// silent toward it on purpose), so it sees nothing of it meanwhile. Whether anything changed.
pub fn forget_spell(record: &mut PeerRecord) -> bool {
    let had = record.tries > 0 || record.unreachable_since.is_some() || record.last_try.is_some();
    record.tries = 0;
    record.unreachable_since = None;
    record.last_try = None;
    had
}

fn answered(record: &mut PeerRecord, now: Timestamp) {
    record.last_seen = Some(now);
    record.unreachable_since = None;
    record.tries = 0;
    record.last_try = None;
}

/// What a peer that asks to be challenged again gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admission {
    /// It is ok here already: it gets its standing, no challenge.
    AlreadyOk,
    /// It is failing: a challenge of `samples` samples, now.
    Challenge {
        /// How many.
        samples: usize,
    },
    /// It had one less than [`RECHALLENGE_INTERVAL_SECS`] ago.
    TooSoon {
        /// When it may ask again.
        until: Timestamp,
    },
}

/// Whether a peer in `standing` that asks at `now` is challenged again (the caller then records
/// `last_rechallenge = now`).
pub fn admit_rechallenge(standing: &Standing, record: &PeerRecord, now: Timestamp) -> Admission {
    if !standing.is_failing() {
        return Admission::AlreadyOk;
    }
    match record.last_rechallenge.map(|t| t.plus_secs(RECHALLENGE_INTERVAL_SECS)) {
        Some(until) if now < until => Admission::TooSoon { until },
        _ => Admission::Challenge { samples: rechallenge_samples(record.rechallenges_failed) },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::fairness::{DAY, HOUR};

    const GRACE: u64 = 7 * DAY;

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_unix(1_000_000 + secs)
    }

    fn run(mut s: Standing, mut r: PeerRecord, events: &[(u64, Seen)]) -> (Standing, PeerRecord, Vec<Effect>) {
        let mut effects = Vec::new();
        for (at, seen) in events {
            let j = judge(s, &r, *seen, t(*at), GRACE, false);
            (s, r) = (j.standing, j.record);
            effects.push(j.effect);
        }
        (s, r, effects)
    }

    #[test]
    fn a_wrong_answer_fails_at_once_and_only_a_strong_rechallenge_clears_it() {
        let (s, r, e) = run(Standing::Ok, PeerRecord::default(), &[(0, Seen::Fail { asked: false })]);
        assert_eq!(s, Standing::Failing { since: t(0), delete_after: t(GRACE) });
        assert_eq!(e, [Effect::Verdict]);
        assert_eq!((r.failures, r.last_failure), (1, Some(t(0))));
        // The judge's own challenges are counted, and change nothing, however strong; so is a
        // rechallenge of the default size.
        for (samples, asked) in [(DEFAULT_SAMPLES, false), (STRONG_SAMPLES, false), (DEFAULT_SAMPLES, true)] {
            let j = judge(s, &r, Seen::Pass { samples, asked }, t(HOUR), GRACE, false);
            assert_eq!((j.standing, j.record.passes), (s, 1), "{samples} {asked}");
        }
        let strong = judge(s, &r, Seen::Pass { samples: STRONG_SAMPLES, asked: true }, t(HOUR), GRACE, false);
        assert_eq!(strong.standing, Standing::Ok);
        // Each failed rechallenge makes the next twice as strong; a pass of a weaker one
        // clears nothing.
        let failed = judge(s, &r, Seen::Fail { asked: true }, t(HOUR), GRACE, false);
        assert_eq!(failed.record.rechallenges_failed, 1);
        let weak =
            judge(s, &failed.record, Seen::Pass { samples: STRONG_SAMPLES, asked: true }, t(2 * HOUR), GRACE, false);
        assert_eq!(weak.standing, s);
        let strong = judge(s, &failed.record, Seen::Pass { samples: 264, asked: true }, t(2 * HOUR), GRACE, false);
        assert_eq!((strong.standing, strong.record.rechallenges_failed), (Standing::Ok, 0));
        assert_eq!(
            [0, 1, 2, 3, 40, 62, 64, u32::MAX].map(rechallenge_samples),
            [132, 264, 528, 1024, 1024, 1024, 1024, 1024]
        );
    }

    #[test]
    fn an_unreachable_peer_is_failing_only_after_the_retry_window() {
        // Cron's four-hourly tries: the window starts at the second in a row (4 h); at 4 h,
        // ..., 24 h still retrying; at 28 h failing.
        let tries: Vec<(u64, Seen)> = (0..=7).map(|i| (i * 4 * HOUR, Seen::Unreachable)).collect();
        let (s, r, e) = run(Standing::Ok, PeerRecord::default(), &tries[..7]);
        assert_eq!(s, Standing::Ok);
        assert_eq!(e[0], Effect::Retry { tries: 1, failing_from: t(DAY) });
        assert!(
            e[1..]
                .iter()
                .all(|e| matches!(e, Effect::Retry { failing_from, .. } if *failing_from == t(DAY + 4 * HOUR)))
        );
        let j = judge(s, &r, Seen::Unreachable, t(DAY + 4 * HOUR), GRACE, false);
        assert_eq!(j.standing, Standing::Failing { since: t(DAY + 4 * HOUR), delete_after: t(DAY + 4 * HOUR + GRACE) });
        assert_eq!(j.effect, Effect::Verdict);
        // Tries a day apart are not enough: the schedule wants several.
        let (s, _, _) = run(
            Standing::Ok,
            PeerRecord::default(),
            &[(0, Seen::Unreachable), (DAY, Seen::Unreachable), (2 * DAY, Seen::Unreachable)],
        );
        assert_eq!(s, Standing::Ok);
        // Two tries, then none for a week (this node was down, or silent toward the peer on
        // purpose), then two more: the judge saw nothing in between, so a new spell starts.
        let (s, r, e) = run(
            Standing::Ok,
            PeerRecord::default(),
            &[(0, Seen::Unreachable), (4 * HOUR, Seen::Unreachable), (7 * DAY, Seen::Unreachable)],
        );
        assert_eq!((s, r.tries, r.unreachable_since), (Standing::Ok, 1, None));
        assert_eq!(e[2], Effect::Retry { tries: 1, failing_from: t(8 * DAY) });
        let j = judge(s, &r, Seen::Unreachable, t(7 * DAY + 4 * HOUR), GRACE, false);
        assert_eq!(j.effect, Effect::Retry { tries: 2, failing_from: t(8 * DAY + 4 * HOUR) });
        // A judge that runs only by day (a laptop shut from 8 pm to 8 am) still judges a
        // holder that vanished; shut from 7 pm to 9 am, it never does (each night may have
        // hidden the peer back).
        let days = |hours: [u64; 4]| -> Vec<(u64, Seen)> {
            (0..4).flat_map(|d| hours.map(|h| (d * DAY + h * HOUR, Seen::Unreachable))).collect()
        };
        let (s, _, _) = run(Standing::Ok, PeerRecord::default(), &days([8, 12, 16, 20]));
        assert!(s.is_failing(), "{s:?}");
        let (s, _, _) = run(Standing::Ok, PeerRecord::default(), &days([9, 13, 17, 19]));
        assert_eq!(s, Standing::Ok);
        let days = days([8, 12, 16, 20]);
        // Silent toward the peer on purpose, the judge forgets the spell it had begun.
        let mut r = run(Standing::Ok, PeerRecord::default(), &days[..3]).1;
        assert!(forget_spell(&mut r));
        assert_eq!((r.tries, r.unreachable_since, r.last_try, r.unreachable), (0, None, None, 3));
        assert!(!forget_spell(&mut r));
    }

    #[test]
    fn an_answer_ends_an_unreachable_spell_and_a_suspect_node_counts_nothing() {
        let mut events: Vec<(u64, Seen)> = (0..6).map(|i| (i * 4 * HOUR, Seen::Unreachable)).collect();
        events.push((23 * HOUR, Seen::Pass { samples: DEFAULT_SAMPLES, asked: false }));
        events.extend((0..6).map(|i| ((24 + i * 4) * HOUR, Seen::Unreachable)));
        let (s, r, _) = run(Standing::Ok, PeerRecord::default(), &events);
        assert_eq!(s, Standing::Ok, "offline 20 hours, back, offline 20 hours: never failing");
        assert_eq!((r.unreachable, r.tries, r.unreachable_since), (12, 6, Some(t(DAY + 4 * HOUR))));
        let j = judge(s, &r, Seen::Unreachable, t(3 * DAY), GRACE, true);
        assert_eq!((j.standing, j.effect, j.record), (s, Effect::Suspended, r));
    }

    #[test]
    fn rechallenges_are_rate_limited_and_strong() {
        let failing = Standing::Ok.after_failure(t(0), GRACE);
        let mut r = PeerRecord::default();
        assert_eq!(admit_rechallenge(&Standing::Ok, &r, t(0)), Admission::AlreadyOk);
        assert_eq!(admit_rechallenge(&failing, &r, t(0)), Admission::Challenge { samples: 132 });
        r.last_rechallenge = Some(t(0));
        assert_eq!(admit_rechallenge(&failing, &r, t(HOUR - 1)), Admission::TooSoon { until: t(HOUR) });
        r.rechallenges_failed = 2;
        assert_eq!(admit_rechallenge(&failing, &r, t(HOUR)), Admission::Challenge { samples: 528 });
    }
}
