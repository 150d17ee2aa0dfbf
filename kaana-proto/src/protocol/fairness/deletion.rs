//! When a peer's data may be deleted. Pure.
//!
//! Only once its grace has run out: the peer is failing and `now` is past its `delete_after`,
//! or a termination notice's `delete_after` has passed. And never while this node's own
//! connection is in doubt ([`Health::settled`]): a node cut off from everyone for longer than a
//! grace period would otherwise come back and delete the data of peers that had tried, and
//! failed, to reach it.

use super::health::Health;
use super::standing::Standing;
use crate::protocol::time::Timestamp;

/// What may happen to a peer's data now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// It is still owed.
    Keep,
    /// It may go, for this reason.
    Delete(String),
    /// Its grace has run out, but this node cannot trust its own view of the peer yet.
    Hold(String),
}

/// Decides for a contract that is not ended: `notice` is a termination notice's
/// `delete_after`, if one was given; `standing` how this node judges the peer.
pub fn decide(notice: Option<Timestamp>, standing: Standing, now: Timestamp, health: &Health) -> Decision {
    if let Some(delete_after) = notice.filter(|d| now > *d) {
        return Decision::Delete(format!("terminated: the notice's grace ran out at {delete_after}"));
    }
    let Some((since, delete_after)) = standing.failing().filter(|_| standing.expired(now)) else {
        return Decision::Keep;
    };
    if !health.settled(now) {
        let why = match (health.suspect_since, health.healthy_since) {
            (Some(s), _) => format!("this node has reached too few of its peers since {s}"),
            (None, Some(h)) => format!("this node reaches its peers again only since {h}"),
            (None, None) => "this node has not yet checked that it reaches its peers".to_owned(),
        };
        return Decision::Hold(format!(
            "peer failing since {since}, grace over at {delete_after}, but {why}: kept until it has \
             reached them for a day"
        ));
    }
    Decision::Delete(format!("peer failing since {since}: its grace ran out at {delete_after}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::fairness::DAY;
    use crate::protocol::fairness::health::Reach;

    fn t(d: u64) -> Timestamp {
        Timestamp::from_unix(100 * DAY + d)
    }

    #[test]
    fn only_past_the_grace_and_never_while_cut_off() {
        let good = Health::default().after_check(t(0), Reach { tried: 2, reached: 2 });
        let failing = Standing::Ok.after_failure(t(DAY), 7 * DAY);
        assert_eq!(decide(None, failing, t(8 * DAY), &good), Decision::Keep, "at delete_after it is owed");
        assert!(matches!(decide(None, failing, t(8 * DAY + 1), &good), Decision::Delete(r) if r.contains("failing")));
        assert_eq!(decide(None, Standing::Ok, t(30 * DAY), &good), Decision::Keep);
        assert!(
            matches!(decide(Some(t(DAY)), Standing::Ok, t(DAY + 1), &good), Decision::Delete(r) if r.contains("notice"))
        );
        // Cut off from day 2 to day 12: nothing goes, and not until a day after it is back.
        let cut = good.after_check(t(2 * DAY), Reach { tried: 2, reached: 0 });
        assert!(matches!(decide(None, failing, t(9 * DAY), &cut), Decision::Hold(r) if r.contains("too few")));
        let back = cut.after_check(t(12 * DAY), Reach { tried: 2, reached: 1 });
        assert!(matches!(decide(None, failing, t(12 * DAY + 1), &back), Decision::Hold(_)));
        assert!(matches!(decide(None, failing, t(13 * DAY), &back), Decision::Delete(_)));
        assert!(matches!(decide(None, failing, t(9 * DAY), &Health::default()), Decision::Hold(_)));
    }
}
