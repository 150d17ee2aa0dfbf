//! The fairness rules, as pure code: how a node judges its peers, when it fails a challenge on
//! purpose and how it then behaves, what proves a breach, what needs a person, and when a peer's
//! data may be deleted.
//!
//! Nothing here touches a file, a socket, the clock or the OS's randomness: `now` and a random
//! source ([`crate::protocol::challenge::Rng`]) are parameters, so the same rules run in the tools and in
//! a simulation of many nodes over months (`tests/simulation.rs`). The tools gather the inputs
//! (state files, what the network said) and carry out what the rules decide.
//!
//! - [`standing`]: `ok` or `failing {since, delete_after}`.
//! - [`judge`]: a peer's record (passes, failures, unreachable spells) and how a challenge's
//!   outcome changes its standing: retries before an unreachable peer is failing, a stronger
//!   challenge to be ok again, rechallenges rate-limited.
//! - [`health`]: whether this node can trust its own connection enough to judge anybody.
//! - [`deliberate`]: failing on purpose, in a mode a real failure shows, and the audit after.
//! - [`evidence`]: what proves a breach to a third party, and the breach rule itself.
//! - [`deletion`]: when a peer's data may go.
//! - [`attention`]: what needs a person (exit 1), and what is only recorded.
//! - [`replicas`]: keeping `replicas` healthy copies: which count, which offers replace those
//!   that do not, and which contracts may end (never a failing peer's before its grace is out).

pub mod attention;
pub mod deletion;
pub mod deliberate;
pub mod evidence;
pub mod health;
pub mod judge;
pub mod replicas;
pub mod standing;

/// An hour, in seconds.
pub const HOUR: u64 = 3_600;
/// A day, in seconds.
pub const DAY: u64 = 24 * HOUR;

/// How long a peer must stay unreachable, at every try, before it is judged failing: a day, so
/// that a node rebooting, moving house or behind a lossy link for a few hours is never judged.
pub const RETRY_WINDOW_SECS: u64 = DAY;
/// How many unanswered tries, at least, over [`RETRY_WINDOW_SECS`] (cron's four-hourly
/// challenges make seven in a day).
pub const MIN_TRIES: u32 = 4;
/// Unanswered tries further apart than this are not one spell: a judge that did not try for a
/// while (it was down, its cron did not run, or it was silent toward the peer on purpose) saw
/// nothing of the peer meanwhile, and starts its count again. Twelve hours: a judge down longer
/// than that between its tries may have missed the peer back between two outages of its own
/// (a day and a half let two honest nodes, each offline under a day by turns, judge each other
/// failing in the simulation). A judge shut down for longer every night therefore never judges
/// an unreachable peer: it keeps the peer's copy, and its person sees the `unreachable` lines.
pub const TRY_GAP_SECS: u64 = 12 * HOUR;
/// How often a failing peer may ask to be challenged again.
pub const RECHALLENGE_INTERVAL_SECS: u64 = HOUR;
/// A failing peer is ok again only after passing a challenge with this many times the default
/// samples: a holder missing 20% of the data passes one with probability 0.8^132 < 10^-12.
pub const STRONG_FACTOR: usize = 3;

/// How long a holder lets pass, after checking its copy of a peer's data on a failing verdict,
/// before another failing verdict makes it check again: an hour, doubled by each check in a row
/// that found nothing wrong, and at most the [`margin`] (at least an hour). A peer sending one
/// failing verdict after another then makes it read its whole copy a few times a day at most,
/// not every hour; and a holder whose copy is really damaged still checks it with time to be
/// sent the extents again within the grace.
pub fn scrub_gap_secs(clean_in_a_row: u32, grace_secs: u64) -> u64 {
    (HOUR << clean_in_a_row.min(16)).min(margin(grace_secs).max(HOUR))
}

/// Time left, before a failing node's data may be deleted, for it to act: to audit its peer,
/// retry if the peer is briefly away, and ask to be challenged again. A twelfth of the grace
/// period, at least 8 hours (two of cron's four-hourly runs).
pub fn margin(grace_secs: u64) -> u64 {
    (grace_secs / 12).max(8 * HOUR).min(grace_secs / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checks_after_failing_verdicts_space_out_while_they_find_nothing() {
        let week = 7 * DAY;
        let gaps: Vec<u64> = (0..6).map(|n| scrub_gap_secs(n, week) / HOUR).collect();
        assert_eq!(gaps, [1, 2, 4, 8, 14, 14], "doubling, up to the margin of a week's grace (14 h)");
        assert_eq!(scrub_gap_secs(u32::MAX, week), margin(week));
        assert_eq!(scrub_gap_secs(3, DAY), 8 * HOUR, "a day's grace: its margin, 8 h");
        assert_eq!(scrub_gap_secs(5, 30 * 60), HOUR, "never under an hour");
    }
}
