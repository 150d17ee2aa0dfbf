//! History: which generations of an owner's volume a holder keeps. Pure: `now` and the
//! generations come in as values.
//!
//! A contract's history terms say how long a superseded generation is kept (`keep_secs`) and
//! how many bytes the superseded generations may take beyond the newest (`bytes`, the history
//! allowance). A superseded generation is *promised* while it was the newest at some moment of
//! the last `keep_secs`: its successor was committed less than `keep_secs` ago. So the volume as
//! it was at any time within the window can be restored.
//!
//! The holder keeps every promised generation while their bytes fit the allowance; beyond it,
//! it retires the oldest first, never the newest. Retirement only ever moves forward: the kept
//! generations are always the newest ones, a suffix of those committed. Both sides run the same
//! rule on the same inputs (each generation's extents and the holder's signed commit time), so
//! the owner knows which generations its challenges may ask about, and which "retired" answers
//! to believe.
//!
//! Longer than 400 lines: the rules are some 200; the rest is their unit tests, kept beside them.

use std::collections::{HashMap, HashSet};

use serde::{Deserialize, Serialize};

use crate::protocol::manifest::ExtentHash;
use crate::protocol::push::Held;
use crate::protocol::time::Timestamp;

/// The history terms of a contract: each side keeps this much of the other's history.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct History {
    /// Seconds a superseded generation is kept after its successor was committed.
    pub keep_secs: u64,
    /// Bytes the superseded generations may take beyond the newest (extents the newest does not
    /// share with them).
    pub bytes: u64,
}

/// How far apart two nodes' clocks may be for the history rules: the owner asks only about
/// generations the holder must still keep this long from now by the owner's clock, and a
/// generation counts as committed no later than this long after its owner signed it.
pub const CLOCK_SLACK_SECS: u64 = 3_600;

/// When a generation counts as committed, for the history rules on both sides: the holder's
/// signed receipt time, but never before the owner signed the manifest (a holder that backdates
/// its receipts cannot shorten what it promised) and never more than [`CLOCK_SLACK_SECS`] after
/// (one that future-dates them cannot make its history run out early).
pub fn committed_at(created_at: Timestamp, receipt_at: Option<Timestamp>) -> Timestamp {
    receipt_at.map_or(created_at, |at| at.max(created_at).min(created_at.plus_secs(CLOCK_SLACK_SECS)))
}

/// The longest history a contract may promise: about 13 months.
pub const MAX_KEEP_SECS: u64 = 400 * 86_400;
/// The largest history allowance, as a multiple of the contract's size.
pub const MAX_BYTES_FACTOR: u64 = 4;
/// The default history allowance: a quarter of the contract's size.
pub const DEFAULT_SHARE_PERCENT: u64 = 25;

impl History {
    /// Checks the terms against a contract of `size` bytes.
    pub fn check(&self, size: u64) -> Result<(), String> {
        if self.keep_secs == 0 || self.bytes == 0 {
            return Err("history terms must keep some time and some bytes (or be left out)".into());
        }
        if self.keep_secs > MAX_KEEP_SECS {
            return Err(format!("a history of {} s is longer than {MAX_KEEP_SECS} s", self.keep_secs));
        }
        if self.bytes > size.saturating_mul(MAX_BYTES_FACTOR) {
            return Err(format!(
                "a history allowance of {} bytes is more than {MAX_BYTES_FACTOR} times the size",
                self.bytes
            ));
        }
        Ok(())
    }
}

/// The history bytes a contract of `size` holds, under `terms` (none without history).
pub fn allowance(terms: Option<&History>) -> u64 {
    terms.map_or(0, |h| h.bytes)
}

/// One kept generation, as both sides see it: its number, when the holder committed it (the
/// time in its signed receipt), and its extents with their lengths.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Generation {
    /// The generation's number.
    pub generation: u64,
    /// When the holder committed it.
    pub committed_at: Timestamp,
    /// Its extents, in order, with their lengths.
    pub extents: Vec<(ExtentHash, u64)>,
}

/// An older generation (`generation`, committed at `committed_at`, naming `extents` with their
/// lengths) as [`to_retire`], [`history_bytes`] and [`leaves_no_history`] weigh it beside a
/// newest generation naming `newest`: only the extents the newest does not name. Those rules
/// count nothing else of an older generation, and of the newest only which extents it names: so
/// with every older generation made lean this way, the newest itself may be given with no
/// extents, and what is held per extent no longer grows with the number of generations. (Not
/// for [`unique_bytes`], which counts the extents shared with the newest too.)
pub fn beside_newest(
    generation: u64,
    committed_at: Timestamp,
    extents: impl IntoIterator<Item = (ExtentHash, u64)>,
    newest: &Held,
) -> Generation {
    let extents = extents.into_iter().filter(|(h, _)| !newest.contains(h)).collect();
    Generation { generation, committed_at, extents }
}

/// Bytes the generations other than the newest (the last) take beyond it: each extent they
/// name that the newest does not, counted once.
pub fn history_bytes(generations: &[Generation]) -> u64 {
    let Some((newest, older)) = generations.split_last() else { return 0 };
    let current: HashSet<&ExtentHash> = newest.extents.iter().map(|(h, _)| h).collect();
    let mut seen = HashSet::new();
    older
        .iter()
        .flat_map(|g| &g.extents)
        .filter(|(h, _)| !current.contains(h) && seen.insert(*h))
        .map(|(_, len)| len)
        .sum()
}

/// How many of `generations` (oldest first, the newest last) to retire at `now` under `terms`:
/// the oldest ones. Never the newest; never one still promised while the allowance holds them.
pub fn to_retire(generations: &[Generation], terms: Option<&History>, now: Timestamp) -> usize {
    let n = generations.len();
    if n <= 1 {
        return 0;
    }
    let Some(terms) = terms else { return n - 1 };
    let times: Vec<Timestamp> = generations.iter().map(|g| g.committed_at).collect();
    let by_time = expired(&times, Some(terms), now);
    // By space: the longest run of newest generations whose history fits the allowance.
    let current: HashSet<&ExtentHash> = generations[n - 1].extents.iter().map(|(h, _)| h).collect();
    let mut seen: HashSet<&ExtentHash> = HashSet::new();
    let mut bytes = 0u64;
    let mut by_space = n - 1;
    for i in (by_time..n - 1).rev() {
        for (h, len) in &generations[i].extents {
            if !current.contains(h) && seen.insert(h) {
                bytes += len;
            }
        }
        if bytes > terms.bytes {
            break;
        }
        by_space = i;
    }
    by_space.max(by_time)
}

/// How many of the generations committed at `times` (oldest first, the newest last) have run
/// out by time alone at `now`: the oldest ones, up to the first still promised. Never the
/// newest.
pub fn expired(times: &[Timestamp], terms: Option<&History>, now: Timestamp) -> usize {
    let n = times.len();
    if n <= 1 {
        return 0;
    }
    let Some(terms) = terms else { return n - 1 };
    let promised = |i: usize| times[i + 1].plus_secs(terms.keep_secs) > now;
    (0..n - 1).find(|&i| promised(i)).unwrap_or(n - 1)
}

/// Whether committing the last of `generations` (oldest first) would retire every one before it:
/// a change larger than the allowance, which leaves no copy of the volume as it was. (Without
/// history terms that is every commit, and no news.)
pub fn leaves_no_history(generations: &[Generation], terms: Option<&History>, now: Timestamp) -> bool {
    terms.is_some() && generations.len() > 1 && to_retire(generations, terms, now) == generations.len() - 1
}

/// Whether a record of the generations from `asked` to `newest` (the numbers it holds in that
/// range, in order) misses none: only then can its owner tell that a holder retired `asked`
/// early. A gap (a push whose reply was lost) means the holder counted history the owner does
/// not know of, and may rightly have retired more.
pub fn record_is_whole(recorded: &[u64], asked: u64, newest: u64) -> bool {
    let within: Vec<u64> = recorded.iter().copied().filter(|g| (asked..=newest).contains(g)).collect();
    within.first() == Some(&asked) && within.windows(2).all(|w| w[1] == w[0] + 1) && within.last() == Some(&newest)
}

/// Bytes each generation holds that no other of `generations` names: what retiring it alone
/// would free.
pub fn unique_bytes(generations: &[Generation]) -> Vec<u64> {
    // For each extent, how many generations name it (a generation naming it twice counts once).
    let mut users: HashMap<&ExtentHash, usize> = HashMap::new();
    for g in generations {
        let named: HashSet<&ExtentHash> = g.extents.iter().map(|(h, _)| h).collect();
        for h in named {
            *users.entry(h).or_default() += 1;
        }
    }
    // An extent named by one generation only (however often within it) is unique to it.
    let mut out = vec![0u64; generations.len()];
    let mut counted: HashSet<&ExtentHash> = HashSet::new();
    for (i, g) in generations.iter().enumerate() {
        for (h, len) in &g.extents {
            if users.get(h) == Some(&1) && counted.insert(h) {
                out[i] += len;
            }
        }
    }
    out
}

/// The newest generation committed at or before `at`, if any (`generations` oldest first).
pub fn at_or_before(generations: &[(u64, Timestamp)], at: Timestamp) -> Option<u64> {
    generations.iter().filter(|(_, t)| *t <= at).max_by_key(|(g, _)| *g).map(|(g, _)| *g)
}

/// When each generation was committed, for a restore by time: the owner's own `recorded` times
/// (what it signed and the holder receipted) for the generations it recorded, and the holder's
/// `listed` word only beyond them, kept on the side of them it lies on: an older generation
/// (one the record dropped, or from before a rebuild from the phrase) no later than the oldest
/// recorded, a newer one (a push whose reply was lost) after the newest. A holder that
/// moves its times cannot then move the choice across what the owner recorded. Both oldest
/// first; so is the result.
pub fn times_to_trust(recorded: &[(u64, Timestamp)], listed: &[(u64, Timestamp)]) -> Vec<(u64, Timestamp)> {
    let (Some(&(first, first_at)), Some(&(last, last_at))) = (recorded.first(), recorded.last()) else {
        return listed.to_vec();
    };
    let older = listed.iter().filter(|(g, _)| *g < first).map(|&(g, t)| (g, t.min(first_at)));
    let newer = listed.iter().filter(|(g, _)| *g > last).map(|&(g, t)| (g, t.max(last_at.plus_secs(1))));
    older.chain(recorded.iter().copied()).chain(newer).collect()
}

/// The extent indexes of `older` that `newer` does not name: what a challenge of a generation
/// samples (against the next kept one), so that a holder keeping less than the history is caught.
pub fn only_in(older: &[ExtentHash], newer: &[ExtentHash]) -> Vec<u64> {
    let current: HashSet<&ExtentHash> = newer.iter().collect();
    older.iter().enumerate().filter(|(_, h)| !current.contains(h)).map(|(i, _)| i as u64).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// The owner's record decides the times of what it recorded; the holder's list only what
    /// lies beyond it, and never across it.
    #[test]
    fn a_restore_by_time_trusts_the_record_and_the_holders_list_only_beyond_it() {
        let t = Timestamp::from_unix;
        let recorded = [(3, t(300)), (4, t(400))];
        // The holder moves 4 a year ahead, 3 before 2, and lists 1 and 2 (older than the record)
        // and 5 (newer: a push whose reply was lost), 2 dated after the record's oldest.
        let listed = [(1, t(100)), (2, t(350)), (3, t(50)), (4, t(99_999)), (5, t(10))];
        let times = times_to_trust(&recorded, &listed);
        assert_eq!(times, vec![(1, t(100)), (2, t(300)), (3, t(300)), (4, t(400)), (5, t(401))]);
        assert_eq!(at_or_before(&times, t(399)), Some(3), "not rolled back to 2, nor on to 5");
        assert_eq!(at_or_before(&times, t(400)), Some(4));
        assert_eq!(at_or_before(&times, t(401)), Some(5));
        assert_eq!(at_or_before(&times, t(299)), Some(1));
        // Without a record (a node rebuilt from its phrase), the holder's word.
        assert_eq!(times_to_trust(&[], &listed), listed.to_vec());
    }

    const DAY: u64 = 86_400;

    fn generation(n: u64, day: u64, extents: &[u8]) -> Generation {
        Generation {
            generation: n,
            committed_at: Timestamp::from_unix(day * DAY),
            extents: extents.iter().map(|&e| ([e; 32], 100)).collect(),
        }
    }

    #[test]
    fn without_history_only_the_newest_stays() {
        let gens = [generation(1, 1, &[1, 2]), generation(2, 2, &[1, 3]), generation(3, 3, &[1, 4])];
        assert_eq!(to_retire(&gens, None, Timestamp::from_unix(3 * DAY)), 2);
        assert_eq!(to_retire(&gens[..1], None, Timestamp::from_unix(9 * DAY)), 0);
        assert_eq!(to_retire(&[], None, Timestamp::from_unix(9 * DAY)), 0);
    }

    #[test]
    fn a_generation_is_kept_while_its_successor_is_younger_than_the_terms() {
        let terms = History { keep_secs: 7 * DAY, bytes: 10_000 };
        let gens = [generation(1, 1, &[1]), generation(2, 2, &[2]), generation(3, 10, &[3])];
        // Generation 1 was superseded on day 2: promised until day 9.
        assert_eq!(to_retire(&gens, Some(&terms), Timestamp::from_unix(8 * DAY)), 0);
        assert_eq!(to_retire(&gens, Some(&terms), Timestamp::from_unix(9 * DAY)), 1);
        // Generation 2 was the newest until day 10: promised until day 17.
        assert_eq!(to_retire(&gens, Some(&terms), Timestamp::from_unix(16 * DAY)), 1);
        assert_eq!(to_retire(&gens, Some(&terms), Timestamp::from_unix(17 * DAY)), 2);
        assert_eq!(to_retire(&gens, Some(&terms), Timestamp::from_unix(99 * DAY)), 2, "never the newest");
    }

    #[test]
    fn beyond_the_allowance_the_oldest_go_first() {
        // Each extent 100 bytes; the newest names 9. History: 2 (gen 3) + 1 (gen 2) + 1 (gen 1; its
        // other extent is gen 2's too).
        let gens = [generation(1, 1, &[1, 2, 9]), generation(2, 2, &[2, 9]), generation(3, 3, &[4, 5, 9])];
        let newest = generation(4, 4, &[9]);
        let all = [gens[0].clone(), gens[1].clone(), gens[2].clone(), newest];
        let now = Timestamp::from_unix(5 * DAY);
        assert_eq!(history_bytes(&all), 400);
        let terms = |bytes| History { keep_secs: 30 * DAY, bytes };
        assert_eq!(to_retire(&all, Some(&terms(400)), now), 0);
        assert_eq!(to_retire(&all, Some(&terms(399)), now), 1);
        assert_eq!(to_retire(&all, Some(&terms(300)), now), 1);
        assert_eq!(to_retire(&all, Some(&terms(299)), now), 2);
        assert_eq!(to_retire(&all, Some(&terms(200)), now), 2);
        assert_eq!(to_retire(&all, Some(&terms(199)), now), 3);
        assert_eq!(to_retire(&all, Some(&terms(1)), now), 3);
    }

    #[test]
    fn unique_bytes_and_choosing_by_time() {
        let gens = [generation(1, 1, &[1, 2, 2]), generation(2, 2, &[2, 3]), generation(3, 3, &[3, 4])];
        assert_eq!(unique_bytes(&gens), vec![100, 0, 100]);
        let times: Vec<(u64, Timestamp)> = gens.iter().map(|g| (g.generation, g.committed_at)).collect();
        assert_eq!(at_or_before(&times, Timestamp::from_unix(DAY - 1)), None);
        assert_eq!(at_or_before(&times, Timestamp::from_unix(2 * DAY)), Some(2));
        assert_eq!(at_or_before(&times, Timestamp::from_unix(2 * DAY + 5)), Some(2));
        assert_eq!(at_or_before(&times, Timestamp::from_unix(99 * DAY)), Some(3));
        assert_eq!(only_in(&[[1; 32], [2; 32], [3; 32]], &[[2; 32], [4; 32]]), vec![0, 2]);
    }

    #[test]
    fn a_receipt_time_counts_within_an_hour_of_the_manifest() {
        let signed = Timestamp::from_unix(10 * DAY);
        assert_eq!(committed_at(signed, None), signed);
        assert_eq!(committed_at(signed, Some(signed.plus_secs(60))), signed.plus_secs(60));
        assert_eq!(committed_at(signed, Some(Timestamp::from_unix(DAY))), signed, "backdated");
        assert_eq!(
            committed_at(signed, Some(signed.plus_secs(30 * DAY))),
            signed.plus_secs(CLOCK_SLACK_SECS),
            "future-dated"
        );
    }

    #[test]
    fn a_commit_that_leaves_no_history_and_a_record_with_a_gap() {
        let terms = History { keep_secs: 30 * DAY, bytes: 150 };
        let gens = [generation(1, 1, &[1, 2, 3]), generation(2, 2, &[1, 2, 4])];
        let now = Timestamp::from_unix(3 * DAY);
        assert!(!leaves_no_history(&gens, Some(&terms), now), "100 bytes of history fit 150");
        let wholesale = [gens[0].clone(), gens[1].clone(), generation(3, 3, &[5, 6, 7])];
        assert!(leaves_no_history(&wholesale, Some(&terms), now), "300 bytes do not");
        assert!(!leaves_no_history(&wholesale, None, now), "without history, no news");
        assert!(!leaves_no_history(&gens[..1], Some(&terms), now), "a first push");
        assert!(record_is_whole(&[1, 2, 3, 4], 2, 4));
        assert!(!record_is_whole(&[1, 2, 4], 2, 4), "3 is missing");
        assert!(!record_is_whole(&[3, 4], 2, 4), "the one asked about is missing");
        assert!(!record_is_whole(&[2, 3], 2, 4), "the newest is missing");
    }

    #[test]
    fn terms_are_bounded() {
        assert!(History { keep_secs: DAY, bytes: 10 }.check(100).is_ok());
        assert!(History { keep_secs: 0, bytes: 10 }.check(100).is_err());
        assert!(History { keep_secs: DAY, bytes: 0 }.check(100).is_err());
        assert!(History { keep_secs: MAX_KEEP_SECS + 1, bytes: 10 }.check(100).is_err());
        assert!(History { keep_secs: DAY, bytes: 401 }.check(100).is_err());
    }

    fn arb_generations() -> impl Strategy<Value = Vec<Generation>> {
        proptest::collection::vec((0u64..3 * DAY, proptest::collection::vec(0u8..12, 1..6)), 1..8).prop_map(|steps| {
            let mut at = 0;
            steps
                .into_iter()
                .enumerate()
                .map(|(i, (gap, extents))| {
                    at += gap;
                    Generation {
                        generation: i as u64 + 1,
                        committed_at: Timestamp::from_unix(at),
                        extents: extents.into_iter().map(|e| ([e; 32], 10 + u64::from(e))).collect(),
                    }
                })
                .collect()
        })
    }

    proptest! {
        /// What stays never takes more than the allowance; every generation still promised stays
        /// while the allowance holds it; the newest always stays; and retiring again later, or
        /// after the next commit, never brings back one already retired (the kept ones are
        /// always the newest ones).
        #[test]
        fn retirement_keeps_its_promises(gens in arb_generations(), keep in 1u64..4 * DAY, bytes in 1u64..200, later in 0u64..4 * DAY) {
            let terms = History { keep_secs: keep, bytes };
            let now = gens.last().unwrap().committed_at;
            let k = to_retire(&gens, Some(&terms), now);
            let kept = &gens[k..];
            prop_assert!(!kept.is_empty());
            prop_assert!(history_bytes(kept) <= bytes);
            // Each retired one either ran out, or keeping it (and all newer) would not fit.
            for i in 0..k {
                let promised = gens[i + 1].committed_at.plus_secs(keep) > now;
                prop_assert!(!promised || history_bytes(&gens[i..]) > bytes, "generation {} was promised and fit", i + 1);
            }
            // Later, on what stayed, the rule retires only more of the oldest.
            let again = to_retire(kept, Some(&terms), now.plus_secs(later));
            prop_assert!(again < kept.len());
        }

        /// The lean views (each older generation beside the newest, the newest with no extents)
        /// weigh exactly as the whole ones.
        #[test]
        fn lean_views_weigh_as_whole_ones(gens in arb_generations(), keep in 1u64..4 * DAY, bytes in 1u64..200) {
            let terms = History { keep_secs: keep, bytes };
            let now = gens.last().unwrap().committed_at;
            let (newest, older) = gens.split_last().unwrap();
            let named = Held::new(newest.extents.iter().map(|(h, _)| *h).collect());
            let mut lean: Vec<Generation> =
                older.iter().map(|g| beside_newest(g.generation, g.committed_at, g.extents.clone(), &named)).collect();
            lean.push(Generation { extents: Vec::new(), ..newest.clone() });
            prop_assert_eq!(to_retire(&lean, Some(&terms), now), to_retire(&gens, Some(&terms), now));
            prop_assert_eq!(to_retire(&lean, None, now), to_retire(&gens, None, now));
            prop_assert_eq!(history_bytes(&lean), history_bytes(&gens));
            prop_assert_eq!(leaves_no_history(&lean, Some(&terms), now), leaves_no_history(&gens, Some(&terms), now));
        }
    }
}
