//! Whether this node can trust its own connection enough to judge its peers. Pure.
//!
//! A node whose uplink is down sees every peer as unreachable. Were it to judge them, it would
//! mark them all failing and, a grace period later, delete everything it holds for them. So a
//! node that reaches fewer than half of the nodes it tried in a run suspects itself: it judges
//! nobody unreachable in that run ([`super::judge`]), and deletes no failing peer's data until
//! it has been back, reaching its peers, for a whole retry window ([`Health::settled`]) — time
//! for peers that could not reach it meanwhile to ask to be challenged again. A node that did
//! not check at all for a while ([`GAP_SECS`]: it was down, or its cron was) cannot tell
//! either, so it starts that wait again too.

use serde::{Deserialize, Serialize};

use super::{HOUR, RETRY_WINDOW_SECS};
use crate::protocol::time::Timestamp;

/// Checks further apart than this (three of cron's four-hourly runs missed) leave a gap this
/// node knows nothing of.
pub const GAP_SECS: u64 = 12 * HOUR;

/// How many nodes a run tried to reach, and how many answered.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Reach {
    /// Nodes tried.
    pub tried: usize,
    /// Nodes that answered.
    pub reached: usize,
}

/// Whether a run that reached `reach` should doubt its own connection: it reached fewer than
/// half of the nodes it tried. (With a single peer, unreachable, that is every run: such a node
/// also asks other nodes it knows, so as not to mistake its own outage for its peer's.)
pub fn suspect(reach: Reach) -> bool {
    reach.tried > 0 && reach.reached * 2 < reach.tried
}

/// This node's record of its own connection.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Health {
    /// The last check (a challenge run or a prune).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_check: Option<Timestamp>,
    /// What it reached then: `[reached, tried]`.
    #[serde(default)]
    pub last_reach: [usize; 2],
    /// Since when every check has found the connection good (`None` while in doubt).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub healthy_since: Option<Timestamp>,
    /// Since when every check has found it in doubt (`None` while good).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub suspect_since: Option<Timestamp>,
}

impl Health {
    /// After a check at `now` that reached `reach`. A check that tried nobody tells nothing.
    pub fn after_check(&self, now: Timestamp, reach: Reach) -> Health {
        let mut h = self.clone();
        if reach.tried == 0 {
            return h;
        }
        if h.last_check.is_some_and(|last| now.unix() > last.unix() + GAP_SECS) {
            h.healthy_since = None;
        }
        h.last_check = Some(now);
        h.last_reach = [reach.reached, reach.tried];
        if suspect(reach) {
            h.healthy_since = None;
            h.suspect_since = h.suspect_since.or(Some(now));
        } else {
            h.suspect_since = None;
            h.healthy_since = h.healthy_since.or(Some(now));
        }
        h
    }

    /// Whether the connection has been good long enough, at `now`, for failing peers' data to
    /// be deleted: good at every check, checks no more than [`GAP_SECS`] apart, for at least a
    /// retry window.
    pub fn settled(&self, now: Timestamp) -> bool {
        self.suspect_since.is_none() && self.healthy_since.is_some_and(|h| now >= h.plus_secs(RETRY_WINDOW_SECS))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::fairness::{DAY, HOUR};

    fn t(secs: u64) -> Timestamp {
        Timestamp::from_unix(5_000_000 + secs)
    }

    #[test]
    fn half_or_more_reached_is_good() {
        let r = |reached, tried| suspect(Reach { tried, reached });
        assert!(!r(0, 0) && !r(1, 2) && !r(2, 3) && !r(1, 1));
        assert!(r(0, 1) && r(0, 3) && r(1, 3));
    }

    #[test]
    fn a_cut_off_node_is_unsettled_until_a_retry_window_after_it_is_back() {
        let good = Reach { tried: 3, reached: 3 };
        let cut = Reach { tried: 3, reached: 0 };
        let h = Health::default().after_check(t(0), good);
        assert!(!h.settled(t(HOUR)) && h.settled(t(DAY)));
        // Checks in between that found it good do not restart the clock; a gap does.
        let watched = (1..=6).fold(h.clone(), |h, i| h.after_check(t(i * 4 * HOUR), good));
        assert!(watched.settled(t(DAY)));
        let unwatched = h.after_check(t(DAY), good);
        assert_eq!(unwatched.healthy_since, Some(t(DAY)));
        assert!(!unwatched.settled(t(DAY + HOUR)) && unwatched.settled(t(2 * DAY)));
        let h = watched;
        let h = h.after_check(t(2 * DAY), cut).after_check(t(2 * DAY + 4 * HOUR), cut);
        assert_eq!(h.suspect_since, Some(t(2 * DAY)));
        assert!(!h.settled(t(9 * DAY)));
        let h = (0..=6).fold(h, |h, i| h.after_check(t(10 * DAY + i * 4 * HOUR), good));
        assert!(!h.settled(t(10 * DAY + HOUR)) && h.settled(t(11 * DAY)));
        // A run that tried nobody changes nothing.
        assert_eq!(h.after_check(t(12 * DAY), Reach::default()), h);
    }
}
