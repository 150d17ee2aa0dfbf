//! What prune may do with each store of peers' data. Pure: what is on disk, the time and this
//! node's record of its own connection come in as values.
//!
//! For a contract this node holds: its data goes once the fairness rules say so
//! ([`deletion::decide`]: the grace has run out, and this node's own connection is not in
//! doubt); data of an ended contract that is still there was not all removed (a prune cut short):
//! it goes; otherwise only files no generation needs, old enough that no interrupted push will
//! resume them, go. Data of no contract this node knows is kept and reported unless a person asks
//! (`--leftovers`), and even then not within [`RECOVERY_HOLD_SECS`] of the node's rebuild from
//! its recovery phrase: its contracts come back only with `kaana-offer contracts --fetch`.

use crate::protocol::fairness::deletion::{self, Decision};
use crate::protocol::fairness::health::Health;
use crate::protocol::fairness::standing::Standing;
use crate::protocol::time::Timestamp;

/// How long after a rebuild from the recovery phrase data of unknown contracts is kept even when
/// a person asks for leftovers to go.
pub const RECOVERY_HOLD_SECS: u64 = 7 * 86_400;

/// Where a contract this node holds stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Term {
    /// In force.
    Active,
    /// Ended by a notice: the data is owed until `delete_after`.
    Notice {
        /// When the notice's grace runs out.
        delete_after: Timestamp,
    },
    /// Over: nothing is owed.
    Ended,
}

/// What is on disk for a contract this node holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held {
    /// Whether the peer's store directory exists.
    pub exists: bool,
    /// Files in it that no generation needs and that are old enough to go.
    pub stale_files: usize,
}

/// What prune does with one store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Plan {
    /// Nothing.
    Keep,
    /// Nothing yet, for this reason (a person should know).
    Hold(String),
    /// End the contract and delete the peer's data, for this reason.
    Delete(String),
    /// Remove the whole directory (its contract ended, or there is none), for this reason.
    RemoveOrphan(String),
    /// Remove the files no generation needs, for this reason.
    RemoveStale(String),
}

/// Whether this node still keeps its record of its own copy at the peer (`outbound/<id>`) under
/// a contract that ended at `ended_at`, with a grace of `grace_secs`: for that grace after the
/// end, a peer that has not yet seen it may still hold the copy, and a restore from it checks
/// what comes against the record. After it, nothing is owed either way, and the record (every
/// kept generation's extent list and the volume's marks: megabytes for a large volume) goes.
pub fn keeps_record(ended_at: Timestamp, grace_secs: u64, now: Timestamp) -> bool {
    now.unix() < ended_at.unix().saturating_add(grace_secs)
}

/// Decides for the store of a contract this node holds, judged `standing`, at `now`.
pub fn for_contract(term: Term, standing: Standing, held: Held, now: Timestamp, health: &Health) -> Plan {
    let decided = match term {
        Term::Ended => Decision::Keep,
        Term::Notice { delete_after } => deletion::decide(Some(delete_after), standing, now, health),
        Term::Active => deletion::decide(None, standing, now, health),
    };
    match decided {
        Decision::Delete(reason) => Plan::Delete(reason),
        Decision::Hold(why) => Plan::Hold(why),
        Decision::Keep if term == Term::Ended && held.exists => {
            Plan::RemoveOrphan("the contract has ended; its data was not all removed".to_owned())
        }
        Decision::Keep if term != Term::Ended && held.stale_files > 0 => Plan::RemoveStale(format!(
            "{} file(s) no generation needs, older than 24h (interrupted pushes)",
            held.stale_files
        )),
        Decision::Keep => Plan::Keep,
    }
}

/// Decides for a store of no contract this node knows: `asked` whether a person asked for
/// leftovers to go, `recovered_at` when the node was last rebuilt from its phrase, `old` whether
/// the directory is old enough that no push is still filling it.
pub fn for_unknown(asked: bool, recovered_at: Option<Timestamp>, old: bool, now: Timestamp) -> Plan {
    let recent = recovered_at.filter(|t| now.unix() < t.unix().saturating_add(RECOVERY_HOLD_SECS));
    match (asked, recent) {
        (false, _) => {
            Plan::Hold("remove it with `kaana-prune --leftovers` if no contract of yours is missing".to_owned())
        }
        (true, Some(t)) => Plan::Hold(format!(
            "this node was rebuilt from its phrase at {t}: `--leftovers` removes unknown data only a week after"
        )),
        (true, None) if old => Plan::RemoveOrphan("data for no contract this node has".to_owned()),
        (true, None) => Plan::Keep,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::fairness::DAY;
    use crate::protocol::fairness::health::Reach;

    fn t(d: u64) -> Timestamp {
        Timestamp::from_unix(100 * DAY + d)
    }

    fn healthy() -> Health {
        Health::default().after_check(t(0), Reach { tried: 2, reached: 2 })
    }

    const NONE: Held = Held { exists: true, stale_files: 0 };

    #[test]
    fn a_failing_peer_s_data_goes_only_after_its_grace_and_only_when_this_node_is_sure() {
        let failing = Standing::Ok.after_failure(t(DAY), 7 * DAY);
        let health = healthy();
        assert_eq!(for_contract(Term::Active, failing, NONE, t(5 * DAY), &health), Plan::Keep);
        assert!(matches!(for_contract(Term::Active, failing, NONE, t(9 * DAY), &health), Plan::Delete(_)));
        // Cut off from everyone meanwhile: held, not deleted.
        let cut_off = health.after_check(t(8 * DAY), Reach { tried: 2, reached: 0 });
        assert!(matches!(for_contract(Term::Active, failing, NONE, t(9 * DAY), &cut_off), Plan::Hold(_)));
        // An ok peer's data is never touched, whatever the time.
        assert_eq!(for_contract(Term::Active, Standing::Ok, NONE, t(900 * DAY), &health), Plan::Keep);
    }

    #[test]
    fn the_record_of_a_copy_under_an_ended_contract_stays_for_its_grace_then_goes() {
        assert!(keeps_record(t(DAY), 7 * DAY, t(DAY)));
        assert!(keeps_record(t(DAY), 7 * DAY, t(8 * DAY - 1)));
        assert!(!keeps_record(t(DAY), 7 * DAY, t(8 * DAY)));
        assert!(!keeps_record(t(DAY), 0, t(DAY)));
        assert!(keeps_record(t(DAY), u64::MAX, t(u64::MAX / 2)));
    }

    #[test]
    fn a_notice_s_grace_ends_the_data_and_an_ended_contract_leaves_nothing_behind() {
        let health = healthy();
        let notice = Term::Notice { delete_after: t(7 * DAY) };
        assert_eq!(for_contract(notice, Standing::Ok, NONE, t(6 * DAY), &health), Plan::Keep);
        assert!(matches!(for_contract(notice, Standing::Ok, NONE, t(8 * DAY), &health), Plan::Delete(_)));
        assert!(matches!(for_contract(Term::Ended, Standing::Ok, NONE, t(8 * DAY), &health), Plan::RemoveOrphan(_)));
        let gone = Held { exists: false, stale_files: 0 };
        assert_eq!(for_contract(Term::Ended, Standing::Ok, gone, t(8 * DAY), &health), Plan::Keep);
    }

    #[test]
    fn an_owed_store_loses_only_its_stale_files() {
        let stale = Held { exists: true, stale_files: 3 };
        let plan = for_contract(Term::Active, Standing::Ok, stale, t(DAY), &healthy());
        assert!(matches!(&plan, Plan::RemoveStale(why) if why.starts_with("3 file(s)")), "{plan:?}");
    }

    #[test]
    fn unknown_data_goes_only_when_asked_and_never_soon_after_a_rebuild() {
        assert!(matches!(for_unknown(false, None, true, t(0)), Plan::Hold(_)));
        assert!(matches!(for_unknown(true, Some(t(0)), true, t(6 * DAY)), Plan::Hold(_)));
        assert!(matches!(for_unknown(true, Some(t(0)), true, t(8 * DAY)), Plan::RemoveOrphan(_)));
        assert!(matches!(for_unknown(true, None, true, t(0)), Plan::RemoveOrphan(_)));
        // Still being filled (a push under way): not yet.
        assert_eq!(for_unknown(true, None, false, t(0)), Plan::Keep);
    }
}
