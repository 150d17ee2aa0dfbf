//! Breach evidence, and the breach rule. Pure.
//!
//! A breach is a holder that no longer holds an owner's data inside the grace period it
//! promised. What proves one to a third party, with nothing but a file:
//!
//! 1. the double-signed contract;
//! 2. the holder's own signed verdict that the owner was failing (`since`, `delete_after`);
//! 3. the owner-signed manifest, and the holder's signed receipt of exactly that manifest;
//! 4. the owner's signed challenge about that manifest, asking only for chunks of the copy;
//! 5. the holder's signed failing reply to it (proofs that do not check, or "I no longer hold
//!    it"), made, by the holder's own clock, in `[since, delete_after)`.
//!
//! Nothing less: an owner cannot frame an honest holder with a manifest the holder never
//! receipted, with samples outside the copy, or with a reply made after the holder was free to
//! delete; and a node that fails on purpose never hands its peer evidence against itself, since
//! it never does while a failing verdict it signed about that peer is open
//! ([`super::deliberate`]). A holder that signs nothing is a breach only at the owner.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::challenge::{self, Answer, Challenge, Receipt, Reply, Verdict};
use crate::encoding;
use crate::manifest::Manifest;
use crate::market::{Contract, RecordId};
use crate::record::Signed;
use crate::state::Schema;
use crate::time::Timestamp;

/// What a breach file holds (`audits/breach-<contract>-<time>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Always 1.
    pub schema: Schema,
    /// The double-signed contract.
    pub contract: Contract,
    /// The holder's signed verdict that the owner was failing.
    pub failing_verdict: Signed<Verdict>,
    /// The owner-signed manifest asked about.
    pub manifest: Signed<Manifest>,
    /// The holder's signed receipt of that manifest.
    pub receipt: Signed<Receipt>,
    /// The manifest's extent list (hex, 32 bytes per extent).
    pub extent_list: String,
    /// The owner's signed challenge.
    pub challenge: Signed<Challenge>,
    /// The holder's signed reply.
    pub answer: Signed<Answer>,
    /// The raw bytes of a proof reply (hex).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub answer_bytes: String,
    /// The owner's tops of the picked extents that have them, in pick order (hex; see
    /// [`challenge::tops_for`]): what proofs that stop short of the root are checked against.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tops: String,
}

/// Why evidence does not prove a breach.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EvidenceError {
    /// A signature does not hold, or a record does not link to the others.
    #[error("the evidence is not consistent: {0}")]
    Inconsistent(String),
    /// A part a breach needs is not there.
    #[error("the evidence does not show {0}")]
    Missing(&'static str),
    /// Everything holds, and it is no breach.
    #[error("no breach: {0}")]
    NoBreach(String),
}

/// A proven breach.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proven {
    /// Samples the holder failed to prove (all of them for "I no longer hold it").
    pub failed_samples: usize,
    /// Samples asked for.
    pub samples: usize,
}

fn bad(e: impl std::fmt::Display) -> EvidenceError {
    EvidenceError::Inconsistent(e.to_string())
}

impl Evidence {
    /// Checks everything a breach needs.
    pub fn check(&self) -> Result<Proven, EvidenceError> {
        self.contract.verify().map_err(bad)?;
        let id = self.contract.id().map_err(bad)?;
        let c = &self.challenge.body;
        let (owner, holder) = (c.challenger, c.holder);
        if self.contract.body.peer_of(&owner) != Some(holder) || c.contract != id {
            return Err(bad("the challenge is not between the contract's sides"));
        }
        self.challenge.verify_by(&owner).map_err(bad)?;

        // The holder's own word that the owner was failing, and until when.
        let v = &self.failing_verdict;
        v.verify_by(&holder).map_err(bad)?;
        if v.body.contract != id || v.body.holder != owner {
            return Err(bad("the verdict is not the holder's judgement of the owner under this contract"));
        }
        let (since, delete_after) =
            v.body.standing.failing().ok_or(EvidenceError::Missing("the holder judging the owner failing"))?;

        // The manifest asked about, and the holder's receipt of exactly it.
        self.manifest.verify_by(&owner).map_err(bad)?;
        let m = &self.manifest.body;
        let manifest_id = RecordId::of(m).map_err(bad)?;
        if m.contract != id || m.owner != owner || manifest_id != c.manifest || m.generation != c.generation {
            return Err(bad("the manifest is not the one the challenge asks about"));
        }
        let r = &self.receipt;
        r.verify_by(&holder).map_err(bad)?;
        if r.body.manifest != manifest_id || r.body.contract != id || r.body.holder != holder || r.body.owner != owner {
            return Err(EvidenceError::Missing("the holder's receipt of the manifest asked about"));
        }
        let g = m.geometry().map_err(bad)?;
        challenge::check_request(g, &c.picks, c.depth)
            .map_err(|e| EvidenceError::NoBreach(format!("the challenge is not one a holder must answer: {e}")))?;

        // The holder's reply, inside the grace it granted.
        let a = &self.answer;
        a.verify_by(&holder).map_err(bad)?;
        if a.body.challenge != RecordId::of(c).map_err(bad)? {
            return Err(bad("the answer is to another challenge"));
        }
        if a.body.at < since || a.body.at >= delete_after {
            return Err(EvidenceError::NoBreach(format!(
                "the holder answered at {}, outside the grace it granted ({since} to {delete_after})",
                a.body.at
            )));
        }
        match &a.body.reply {
            Reply::NotHeld { .. } => Ok(Proven { failed_samples: c.picks.len(), samples: c.picks.len() }),
            Reply::Superseded { .. } | Reply::Refused { .. } => {
                Err(EvidenceError::NoBreach("the holder declined the challenge; it did not fail it".into()))
            }
            Reply::Proof { proof } => {
                let raw = hex_bytes(&self.answer_bytes).ok_or_else(|| bad("the answer bytes are not hex"))?;
                if *proof != encoding::hex_encode(blake3::hash(&raw).as_bytes()) {
                    return Err(bad("the answer bytes are not the ones the holder signed"));
                }
                let list = hex_bytes(&self.extent_list).ok_or_else(|| bad("the extent list is not hex"))?;
                let hashes = m.check_list(&list).map_err(bad)?;
                // The tops given must be exactly those of the picks that have them, and each set
                // must merge to its extent's hash in the list the holder signed for.
                let given = hex_bytes(&self.tops).ok_or_else(|| bad("the tops are not hex"))?;
                let mut sets = given.chunks(32 << c.depth);
                let tops = challenge::tops_for(g, &hashes, &c.picks, c.depth, |_| {
                    sets.next().map(|s| s.chunks_exact(32).map(|cv| cv.try_into().unwrap_or([0; 32])).collect())
                })
                .filter(|tops| tops.as_flattened() == given.as_slice())
                .ok_or_else(|| bad("the tops do not match the extents' hashes"))?;
                match challenge::check(g, &hashes, &c.picks, &raw, c.depth, &tops) {
                    0 => Err(EvidenceError::NoBreach("the answer proves every sample".into())),
                    n => Ok(Proven { failed_samples: n, samples: c.picks.len() }),
                }
            }
        }
    }
}

fn hex_bytes(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|p| std::str::from_utf8(p).ok().and_then(|s| encoding::hex_decode::<1>(s).ok()).map(|b| b[0]))
        .collect()
}

/// How a challenge of a holder failed, for the breach rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// A signed failing reply, made at `at` by the holder's clock.
    Signed {
        /// When.
        at: Timestamp,
    },
    /// A failure the holder did not sign (a refusal without a signed answer, a reply that does
    /// not hold together).
    Unsigned,
}

/// What a failed challenge of a holder amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    /// No breach: the owner was not failing at the holder (its data was owed as to any peer,
    /// and the failure is judged as such), or the grace had run out.
    No,
    /// A breach with evidence a third party can check.
    Proven,
    /// A breach this node knows of, without a signature that proves it to anybody else.
    AtUsOnly,
}

/// Whether a failed challenge is a breach: `failing` is the holder's verdict that this node
/// was failing (`since`, `delete_after`, by the holder's clock), if this node holds one, and
/// `skew` how far the holder's clock was ahead of this node's when it was learned.
pub fn breach(failed: Failed, failing: Option<(Timestamp, Timestamp)>, skew_secs: i64, now: Timestamp) -> Breach {
    let Some((since, delete_after)) = failing else { return Breach::No };
    if let Failed::Signed { at } = failed
        && since <= at
        && at < delete_after
    {
        return Breach::Proven;
    }
    let local = |t: Timestamp| t.unix().saturating_add_signed(-skew_secs);
    if local(since) <= now.unix() && now.unix() < local(delete_after) { Breach::AtUsOnly } else { Breach::No }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Timestamp {
        Timestamp::from_unix(s)
    }

    #[test]
    fn the_breach_rule() {
        let window = Some((t(100), t(200)));
        assert_eq!(breach(Failed::Signed { at: t(150) }, window, 0, t(150)), Breach::Proven);
        assert_eq!(breach(Failed::Signed { at: t(100) }, window, 0, t(100)), Breach::Proven);
        // At delete_after the holder may delete.
        assert_eq!(breach(Failed::Signed { at: t(200) }, window, 0, t(200)), Breach::No);
        assert_eq!(breach(Failed::Signed { at: t(250) }, window, 0, t(250)), Breach::No);
        assert_eq!(breach(Failed::Unsigned, window, 0, t(150)), Breach::AtUsOnly);
        assert_eq!(breach(Failed::Unsigned, None, 0, t(150)), Breach::No);
        // The holder signs a time past its deadline, but by our clock (its clock 30 s ahead
        // when we learned the verdict) it is inside: a breach, at us only.
        assert_eq!(breach(Failed::Signed { at: t(900) }, window, 30, t(160)), Breach::AtUsOnly);
        assert_eq!(breach(Failed::Unsigned, window, 30, t(171)), Breach::No);
    }
}
