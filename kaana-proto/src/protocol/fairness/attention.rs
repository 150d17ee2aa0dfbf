//! What needs a person, and what is only recorded. Pure.
//!
//! A single failure of a peer is normal: at the default audit rate an honest peer fails about
//! one challenge in fifty on purpose, and real peers reboot. So a failure is recorded and shown,
//! and cron's mail (exit 1) is kept for what a person should act on:
//!
//! - a breach (the peer lost our data inside the grace it promised);
//! - our own data at risk at a peer: it judges us failing, and not because of a deliberate
//!   failure of ours still under way;
//! - a peer still failing after the time in which its own audit would have cleared it, had its
//!   failure been deliberate: its failure is real, and its data here goes at `delete_after`;
//! - this node reaching too few of its peers for a whole retry window (its own connection).

use super::deliberate::Plan;
use super::health::Health;
use super::standing::Standing;
use super::{DAY, RETRY_WINDOW_SECS, margin};
use crate::protocol::time::Timestamp;

/// What a person should know.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Concern {
    /// The peer judges this node failing: its copy there goes at `delete_after` unless it
    /// gets back to ok.
    AtRisk {
        /// When the peer may delete it (the peer's clock).
        delete_after: Timestamp,
    },
    /// The peer has been failing longer than a deliberate failure lasts.
    StillFailing {
        /// Since when.
        since: Timestamp,
        /// When its data here may go.
        delete_after: Timestamp,
    },
    /// This node has reached too few of its peers since `since`.
    CutOff {
        /// Since when.
        since: Timestamp,
    },
}

impl std::fmt::Display for Concern {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Concern::AtRisk { delete_after } => {
                write!(f, "the peer judges this node failing: our copy there may go after {delete_after}")
            }
            Concern::StillFailing { since, delete_after } => write!(
                f,
                "the peer has been failing since {since}, longer than a deliberate failure lasts: its data here \
                 goes after {delete_after}"
            ),
            Concern::CutOff { since } => write!(f, "this node has reached too few of its peers since {since}"),
        }
    }
}

/// What a person should know of one contract, at `now`.
pub fn concerns(
    their_standing: Standing,
    our_standing: Standing,
    plan: Option<&Plan>,
    grace_secs: u64,
    now: Timestamp,
) -> Vec<Concern> {
    let mut out = Vec::new();
    // A deliberate failure of ours under way explains our failing there, until we should have
    // come back from it.
    let own_doing = plan.is_some_and(|p| p.pending() && now < p.audit_at.plus_secs(margin(grace_secs) / 2));
    if let Some((_, delete_after)) = our_standing.failing()
        && !own_doing
    {
        out.push(Concern::AtRisk { delete_after });
    }
    if let Some((since, delete_after)) = their_standing.failing() {
        let cleared_by = since.plus_secs(grace_secs.saturating_sub(margin(grace_secs) / 2));
        if now >= cleared_by {
            out.push(Concern::StillFailing { since, delete_after });
        }
    }
    out
}

/// Whether this node's own connection needs a person at `now`.
pub fn cut_off(health: &Health, now: Timestamp) -> Option<Concern> {
    health
        .suspect_since
        .filter(|since| now >= since.plus_secs(RETRY_WINDOW_SECS))
        .map(|since| Concern::CutOff { since })
}

/// How old the last push the peer committed may be before a person should know: the nightly
/// push has failed two nights running.
pub const STALE_PUSH_SECS: u64 = 2 * DAY;

/// Whether a last committed push at `last` is stale at `now` (see [`STALE_PUSH_SECS`]).
pub fn push_is_stale(last: Timestamp, now: Timestamp) -> bool {
    now.unix() > last.unix().saturating_add(STALE_PUSH_SECS)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::challenge::Rng;
    use crate::protocol::fairness::deliberate::{Mode, plan};
    use crate::protocol::fairness::health::Reach;

    const GRACE: u64 = 7 * DAY;

    fn t(s: u64) -> Timestamp {
        Timestamp::from_unix(50 * DAY + s)
    }

    #[test]
    fn one_failure_is_recorded_not_alarmed() {
        let failing = Standing::Ok.after_failure(t(0), GRACE);
        assert!(concerns(failing, Standing::Ok, None, GRACE, t(DAY)).is_empty());
        // Still failing when its own audit would have cleared it: a real failure.
        let late = t(GRACE - margin(GRACE) / 2);
        assert_eq!(
            concerns(failing, Standing::Ok, None, GRACE, late),
            [Concern::StillFailing { since: t(0), delete_after: t(GRACE) }]
        );
    }

    #[test]
    fn our_data_at_risk_unless_our_own_deliberate_failure_explains_it() {
        let failing = Standing::Ok.after_failure(t(0), GRACE);
        assert_eq!(concerns(Standing::Ok, failing, None, GRACE, t(1)), [Concern::AtRisk { delete_after: t(GRACE) }]);
        let p = plan(Mode::Lost, t(0), GRACE, &[], &[], &mut Rng::from_seed([1; 32]));
        assert!(concerns(Standing::Ok, failing, Some(&p), GRACE, t(DAY)).is_empty());
        assert!(!concerns(Standing::Ok, failing, Some(&p), GRACE, t(GRACE)).is_empty(), "it should be back by now");
        assert!(!concerns(Standing::Ok, failing, Some(&p.ended("pass")), GRACE, t(DAY)).is_empty());
    }

    #[test]
    fn a_node_cut_off_for_a_day_is_told() {
        let h = Health::default().after_check(t(0), Reach { tried: 3, reached: 0 });
        assert_eq!(cut_off(&h, t(DAY - 1)), None);
        assert_eq!(cut_off(&h, t(DAY)), Some(Concern::CutOff { since: t(0) }));
    }

    #[test]
    fn a_push_is_stale_after_two_nights() {
        let last = Timestamp::from_unix(100 * DAY);
        assert!(!push_is_stale(last, Timestamp::from_unix(101 * DAY)));
        assert!(!push_is_stale(last, Timestamp::from_unix(102 * DAY)));
        assert!(push_is_stale(last, Timestamp::from_unix(102 * DAY + 1)));
    }
}
