//! Standing: how one side of a contract judges the other. Pure.
//!
//! A peer that fails a challenge (or stays unreachable through the retry schedule, see
//! [`super::judge`]) is `failing`; its data is then kept until `delete_after = since + grace`.
//! A pass of a strong enough challenge makes it `ok` again.

use serde::{Deserialize, Serialize};

use crate::protocol::time::Timestamp;

/// One side's judgement of the other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum Standing {
    /// The peer answers its challenges.
    #[default]
    Ok,
    /// The peer failed at `since`; its data may be deleted after `delete_after`.
    Failing {
        /// When it first failed (since it was last ok).
        since: Timestamp,
        /// When its data may be deleted.
        delete_after: Timestamp,
    },
}

impl Standing {
    /// After a failure at `now`: failing, keeping the first `since` (a second failure never
    /// pushes the deadline out, nor brings it in).
    pub fn after_failure(self, now: Timestamp, grace_secs: u64) -> Standing {
        match self {
            Standing::Ok => Standing::Failing { since: now, delete_after: now.plus_secs(grace_secs) },
            failing => failing,
        }
    }

    /// Whether it is `failing`.
    pub fn is_failing(&self) -> bool {
        matches!(self, Standing::Failing { .. })
    }

    /// `(since, delete_after)` when failing.
    pub fn failing(&self) -> Option<(Timestamp, Timestamp)> {
        match *self {
            Standing::Failing { since, delete_after } => Some((since, delete_after)),
            Standing::Ok => None,
        }
    }

    /// Whether the peer's data may be deleted at `now` (strictly after `delete_after`: at
    /// `delete_after` itself it is still owed).
    pub fn expired(&self, now: Timestamp) -> bool {
        self.failing().is_some_and(|(_, delete_after)| now > delete_after)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_grace_period_runs_from_the_first_failure() {
        let t0 = Timestamp::from_unix(1_000);
        let s = Standing::Ok.after_failure(t0, 100);
        assert_eq!(s, Standing::Failing { since: t0, delete_after: Timestamp::from_unix(1_100) });
        // A second failure does not push the deadline out.
        assert_eq!(s.after_failure(Timestamp::from_unix(1_050), 100), s);
        assert!(!s.expired(Timestamp::from_unix(1_100)));
        assert!(s.expired(Timestamp::from_unix(1_101)));
        assert_eq!(s.failing(), Some((t0, Timestamp::from_unix(1_100))));
        assert!(!Standing::Ok.is_failing() && s.is_failing());
        assert_eq!(serde_json::to_string(&Standing::Ok).unwrap(), r#"{"state":"ok"}"#);
    }
}
