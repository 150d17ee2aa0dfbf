//! Breach evidence, and the breach rule. Pure.
//!
//! Longer than 400 lines: half of it is tests: each forgery the breach rule refuses has its own.
//!
//! A breach is a holder that no longer holds an owner's data inside the grace period it
//! promised. What proves one to a third party, with nothing but a file:
//!
//! 1. the double-signed contract;
//! 2. the owner-signed manifest, and the holder's signed receipt of exactly that manifest;
//! 3. the owner's signed challenge about that manifest, asking only for chunks of the copy;
//! 4. the holder's signed failing answer to it (proofs that do not check, or "I no longer hold
//!    it"), which says — every answer does — how the holder judged the owner then: `failing
//!    {since, delete_after}`, and it was made, by the holder's own clock, before `delete_after`.
//!    A holder that claims the grace had run out can be shown wrong by an earlier statement of
//!    its own (a challenge or a verdict it signed) that the owner was not failing so from
//!    `since` on.
//!
//! Nothing less: an owner cannot frame an honest holder with a manifest the holder never
//! receipted, with samples outside the copy, or with an answer made after the holder was free to
//! delete; a holder cannot escape by withholding or replaying its verdicts, since its answer
//! itself states the grace; and a node's deliberate failure is never evidence against it: it
//! fails on purpose only while it judges its peer ok ([`super::deliberate`]), and its failing
//! answer says so. A holder that signs nothing is a breach only at the owner.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::standing::Standing;
use crate::protocol::challenge::{self, Answer, Challenge, Receipt, Reply, Verdict};
use crate::protocol::encoding;
use crate::protocol::encoding::Schema;
use crate::protocol::history::CLOCK_SLACK_SECS;
use crate::protocol::identity::NodeId;
use crate::protocol::manifest::Manifest;
use crate::protocol::market::{Contract, Notice, RecordId};
use crate::protocol::record::{RecordError, Signed};
use crate::protocol::time::Timestamp;

/// A node's signed word on how it judges its peer under a contract, at a time: a challenge it
/// sent the peer, or a verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "record", rename_all = "snake_case")]
pub enum Statement {
    /// A challenge (its `standing` is the challenger's judgement of the holder).
    Challenge(Signed<Challenge>),
    /// A verdict.
    Verdict(Signed<Verdict>),
}

impl Statement {
    /// Who signed it.
    pub fn signer(&self) -> NodeId {
        match self {
            Statement::Challenge(c) => c.signer,
            Statement::Verdict(v) => v.signer,
        }
    }

    /// Who it judges.
    pub fn about(&self) -> NodeId {
        match self {
            Statement::Challenge(c) => c.body.holder,
            Statement::Verdict(v) => v.body.holder,
        }
    }

    /// The contract.
    pub fn contract(&self) -> RecordId {
        match self {
            Statement::Challenge(c) => c.body.contract,
            Statement::Verdict(v) => v.body.contract,
        }
    }

    /// When (the signer's clock).
    pub fn at(&self) -> Timestamp {
        match self {
            Statement::Challenge(c) => c.body.at,
            Statement::Verdict(v) => v.body.at,
        }
    }

    /// The standing it states.
    pub fn standing(&self) -> Standing {
        match self {
            Statement::Challenge(c) => c.body.standing,
            Statement::Verdict(v) => v.body.standing,
        }
    }

    /// Checks the signature and that `signer` made it.
    pub fn verify_by(&self, signer: &NodeId) -> Result<(), RecordError> {
        match self {
            Statement::Challenge(c) => c.verify_by(signer),
            Statement::Verdict(v) => v.verify_by(signer),
        }
    }
}

/// What a breach file holds (`audits/breach-<contract>-<time>.json`).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Always 1.
    pub schema: Schema,
    /// The double-signed contract.
    pub contract: Contract,
    /// The owner-signed manifest asked about.
    pub manifest: Signed<Manifest>,
    /// The holder's signed receipt of that manifest.
    pub receipt: Option<Signed<Receipt>>,
    /// The manifest's extent list (hex, 32 bytes per extent).
    pub extent_list: String,
    /// The owner's signed challenge.
    pub challenge: Signed<Challenge>,
    /// The holder's signed reply.
    pub answer: Option<Signed<Answer>>,
    /// The raw bytes of a proof reply (hex).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub answer_bytes: String,
    /// The owner's tops of the picked extents that have them, in pick order (hex; see
    /// [`challenge::tops_for`]): what proofs that stop short of the root are checked against.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tops: String,
    /// When the answer claims the owner's grace had run out: an earlier statement of the
    /// holder's that contradicts it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub contradiction: Option<Statement>,
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

        // The manifest asked about, and the holder's receipt of exactly it.
        self.manifest.verify_by(&owner).map_err(bad)?;
        let m = &self.manifest.body;
        let manifest_id = RecordId::of(m).map_err(bad)?;
        if m.contract != id || m.owner != owner || manifest_id != c.manifest || m.generation != c.generation {
            return Err(bad("the manifest is not the one the challenge asks about"));
        }
        let r =
            self.receipt.as_ref().ok_or(EvidenceError::Missing("the holder's receipt of the manifest asked about"))?;
        r.verify_by(&holder).map_err(bad)?;
        if r.body.manifest != manifest_id || r.body.contract != id || r.body.holder != holder || r.body.owner != owner {
            return Err(EvidenceError::Missing("the holder's receipt of the manifest asked about"));
        }
        let g = m.geometry().map_err(bad)?;
        challenge::check_request(g, &c.picks, c.depth)
            .map_err(|e| EvidenceError::NoBreach(format!("the challenge is not one a holder must answer: {e}")))?;

        // The holder's answer, and that it fails.
        let a = self.answer.as_ref().ok_or(EvidenceError::Missing("a signed reply of the holder's"))?;
        a.verify_by(&holder).map_err(bad)?;
        if a.body.challenge != RecordId::of(c).map_err(bad)? {
            return Err(bad("the answer is to another challenge"));
        }
        let proven = self.failed(a, g)?;

        // Inside the grace the holder itself stated, of the contract's length.
        let (since, delete_after) = a.body.standing.failing().ok_or_else(|| {
            EvidenceError::NoBreach(
                "the holder judged the owner ok when it answered: a failure to hold the data, not a breach of a grace"
                    .into(),
            )
        })?;
        if a.body.at < since {
            return Err(bad("the answer is older than the failing it states"));
        }
        if delete_after.unix().checked_sub(since.unix()) != Some(self.contract.body.grace_secs) {
            // A grace the contract does not grant: stated to escape (a short one, or one run
            // out by being backdated whole), not one a holder may claim.
            return Ok(proven);
        }
        if a.body.at < delete_after {
            return Ok(proven);
        }
        // The holder says the grace had run out; its own earlier word may say otherwise.
        let s = self.contradiction.as_ref().ok_or_else(|| {
            EvidenceError::NoBreach(format!("the holder answered at {}, after the grace it states ran out", a.body.at))
        })?;
        s.verify_by(&holder).map_err(bad)?;
        if s.contract() != id || s.about() != owner {
            return Err(bad("the contradicting statement is about another contract or node"));
        }
        // Strictly after `since`: a node judges a peer failing only after every word it signed
        // before (its challenge that found the failure included).
        if since < s.at() && s.at() <= a.body.at && s.standing() != a.body.standing {
            Ok(proven)
        } else {
            Err(EvidenceError::NoBreach("the holder's earlier statement does not contradict its answer".into()))
        }
    }

    /// How the answer fails: "I no longer hold it", or proofs that do not check.
    fn failed(&self, a: &Signed<Answer>, g: crate::protocol::manifest::Geometry) -> Result<Proven, EvidenceError> {
        let c = &self.challenge.body;
        match &a.body.reply {
            Reply::NotHeld { .. } => Ok(Proven { failed_samples: c.picks.len(), samples: c.picks.len() }),
            Reply::Ended { notice }
                if ended_by(&self.contract, notice, a.body.at, self.receipt.as_ref().map(|r| &r.body)) =>
            {
                Err(EvidenceError::NoBreach(format!("the contract had ended by a notice given at {}", notice.body.at)))
            }
            // A notice that does not end the contract yet: the holder holds nothing it owes.
            Reply::Ended { .. } => Ok(Proven { failed_samples: c.picks.len(), samples: c.picks.len() }),
            Reply::Superseded { .. } | Reply::Refused { .. } => {
                Err(EvidenceError::NoBreach("the holder declined the challenge; it did not fail it".into()))
            }
            Reply::Proof { proof } => {
                let raw = hex_bytes(&self.answer_bytes).ok_or_else(|| bad("the answer bytes are not hex"))?;
                if *proof != encoding::hex_encode(blake3::hash(&raw).as_bytes()) {
                    return Err(bad("the answer bytes are not the ones the holder signed"));
                }
                let list = hex_bytes(&self.extent_list).ok_or_else(|| bad("the extent list is not hex"))?;
                let hashes = self.manifest.body.check_list(&list).map_err(bad)?;
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

/// Whether `notice`, signed by a side of `contract`, ended it by `at` (its grace run out). A
/// holder's notice dated before the holder's own `receipt` of a generation ended nothing: a
/// holder that has given notice takes no push, so the notice was dated back, to make a grace
/// look run out that had not (the receipt is the holder's signed word, on the holder's clock).
pub fn ended_by(contract: &Contract, notice: &Signed<Notice>, at: Timestamp, receipt: Option<&Receipt>) -> bool {
    let n = &notice.body;
    contract.id().is_ok_and(|id| id == n.contract)
        && contract.body.peer_of(&n.from).is_some()
        && notice.verify_by(&n.from).is_ok()
        && n.at.plus_secs(contract.body.grace_secs) <= at
        && !receipt.is_some_and(|r| dated_back(n, r))
}

/// Whether `notice` was given by the holder that signed `receipt`, for its contract, well
/// before the receipt: a holder under its own notice takes no push, so an honest one never
/// receipts a generation after its notice, and such a notice was dated back. Well before: more
/// than [`CLOCK_SLACK_SECS`], for a commit racing the notice, or the holder's clock set back,
/// are no dating back (which, to end a grace early, reaches back days).
pub fn dated_back(notice: &Notice, receipt: &Receipt) -> bool {
    receipt.holder == notice.from
        && receipt.contract == notice.contract
        && receipt.at > notice.at.plus_secs(CLOCK_SLACK_SECS)
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
    /// A signed failing answer, made at `at` by the holder's clock, stating `standing` (how the
    /// holder judged the challenger then).
    Signed {
        /// When.
        at: Timestamp,
        /// The challenger's standing, by the holder's word.
        standing: Standing,
    },
    /// A failure the holder did not sign (a refusal without a signed answer, a reply that does
    /// not hold together, a signed refusal of a valid challenge).
    Unsigned,
}

/// What a failed challenge of a holder amounts to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Breach {
    /// No breach: the holder judged the owner ok (a failure to hold the data, judged as such),
    /// or the grace had run out.
    No,
    /// A breach with evidence a third party can check.
    Proven,
    /// A breach this node knows of, without a signature that proves it to anybody else.
    AtUsOnly,
}

/// Whether a failed challenge is a breach. `words` are the holder's earlier statements of how
/// it judged this node that this node holds (`at` by the holder's clock, and the standing: its
/// latest, and its latest `ok`); `skew_secs` how far the holder's clock was ahead of this
/// node's when its latest was learned; `grace_secs` the contract's grace.
pub fn breach(
    failed: Failed,
    words: &[(Timestamp, Standing)],
    skew_secs: i64,
    grace_secs: u64,
    now: Timestamp,
) -> Breach {
    // Inside a window by this node's clock (the holder's times moved by the skew learned).
    let local = |t: Timestamp| t.unix().saturating_add_signed(-skew_secs);
    let inside =
        |(since, delete_after): (Timestamp, Timestamp)| local(since) <= now.unix() && now.unix() < local(delete_after);
    match failed {
        Failed::Signed { at, standing } => {
            let Some((since, delete_after)) = standing.failing() else { return Breach::No };
            let granted = delete_after.unix().checked_sub(since.unix()) == Some(grace_secs);
            let contradicted = words.iter().any(|(x, st)| since < *x && *x <= at && *st != standing);
            if since <= at && (at < delete_after || !granted || contradicted) {
                Breach::Proven
            } else if inside((since, delete_after)) {
                // The holder signed a time this node's clock says is wrong.
                Breach::AtUsOnly
            } else {
                Breach::No
            }
        }
        Failed::Unsigned => match words.iter().max_by_key(|(x, _)| *x).and_then(|(_, st)| st.failing()) {
            Some(window) if inside(window) => Breach::AtUsOnly,
            _ => Breach::No,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::challenge::Outcome;
    use crate::protocol::identity::Identity;
    use crate::protocol::manifest::{Geometry, encode_list, list_hash};
    use crate::protocol::market::{ContractBody, countersign};
    use crate::protocol::proof;

    fn t(s: u64) -> Timestamp {
        Timestamp::from_unix(s)
    }

    #[test]
    fn the_breach_rule() {
        const G: u64 = 100;
        let failing = Standing::Ok.after_failure(t(100), G);
        let signed = |at| Failed::Signed { at: t(at), standing: failing };
        let b = |f, words: &[(Timestamp, Standing)], skew, now| breach(f, words, skew, G, t(now));
        assert_eq!(b(signed(150), &[], 0, 150), Breach::Proven);
        assert_eq!(b(signed(100), &[], 0, 100), Breach::Proven);
        // At delete_after the holder may delete.
        assert_eq!(b(signed(200), &[], 0, 200), Breach::No);
        assert_eq!(b(signed(250), &[], 0, 250), Breach::No);
        // Unless its own earlier word, made after `since`, says the owner was not failing so.
        assert_eq!(b(signed(250), &[(t(180), Standing::Ok)], 0, 250), Breach::Proven);
        assert_eq!(b(signed(250), &[(t(180), failing)], 0, 250), Breach::No);
        assert_eq!(b(signed(250), &[(t(90), Standing::Ok)], 0, 250), Breach::No, "before since");
        // A word made at `since` itself is the one that found the failure: no contradiction
        // (a judge dates a failing judgement after every word it signed before).
        assert_eq!(b(signed(250), &[(t(100), Standing::Ok)], 0, 250), Breach::No, "at since");
        // The latest `ok` kept beside a later failing word still contradicts.
        assert_eq!(b(signed(250), &[(t(190), failing), (t(150), Standing::Ok)], 0, 250), Breach::Proven);
        // A grace of another length than the contract's is no grace the holder may claim: a
        // short one, or a backdated window that ran out.
        let short = Failed::Signed { at: t(150), standing: Standing::Ok.after_failure(t(100), 10) };
        assert_eq!(b(short, &[], 0, 150), Breach::Proven);
        // A holder that judged the owner ok simply failed.
        assert_eq!(b(Failed::Signed { at: t(150), standing: Standing::Ok }, &[], 0, 150), Breach::No);
        // No signature: a breach at us only, while our last word from it says we are in grace.
        assert_eq!(b(Failed::Unsigned, &[(t(100), failing)], 0, 150), Breach::AtUsOnly);
        assert_eq!(b(Failed::Unsigned, &[(t(100), failing), (t(90), Standing::Ok)], 0, 150), Breach::AtUsOnly);
        assert_eq!(b(Failed::Unsigned, &[], 0, 150), Breach::No);
        // The holder signs a time past its deadline, but by our clock (its clock 30 s ahead)
        // it is inside: a breach, at us only.
        assert_eq!(b(signed(900), &[], 30, 160), Breach::AtUsOnly);
        assert_eq!(b(Failed::Unsigned, &[(t(100), failing)], 30, 171), Breach::No);
    }

    /// An owner O, a holder H, a contract, a 4-extent copy H receipted, O's challenge, and H's
    /// reply at 1200, saying (as every answer does) how H judges O: failing since 1000, to be
    /// deleted after 1500.
    struct World {
        owner: Identity,
        holder: Identity,
        evidence: Evidence,
    }

    const EXTENT: usize = 16 * 1024;

    fn o_failing() -> Standing {
        Standing::Ok.after_failure(t(1_000), 500)
    }

    fn world(reply_bytes: impl FnOnce(&[Vec<u8>], &[[u64; 2]]) -> Vec<u8>) -> World {
        let (owner, holder) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let body = ContractBody {
            offer: "11".repeat(32).parse().unwrap(),
            offerer: owner.node_id(),
            taker: holder.node_id(),
            size: 1 << 20,
            grace_secs: 500,
            created_at: t(10),
            history: None,
        };
        let proposed = Signed::sign(body, &holder).unwrap();
        let contract = countersign(proposed, &owner).unwrap();
        let id = contract.id().unwrap();
        let extents: Vec<Vec<u8>> =
            (0..4u8).map(|i| (0..EXTENT).map(|j| (j as u8).wrapping_mul(31) ^ i).collect()).collect();
        let hashes: Vec<[u8; 32]> = extents.iter().map(|e| *blake3::hash(e).as_bytes()).collect();
        let list = encode_list(&hashes);
        let manifest = Signed::sign(
            Manifest {
                contract: id,
                owner: owner.node_id(),
                generation: 3,
                volume_size: 4 * EXTENT as u64,
                extent_size: EXTENT as u32,
                extent_count: 4,
                extents: encoding::hex_encode(&list_hash(&list)),
                created_at: t(500),
            },
            &owner,
        )
        .unwrap();
        let manifest_id = RecordId::of(&manifest.body).unwrap();
        let receipt = Receipt {
            contract: id,
            owner: owner.node_id(),
            holder: holder.node_id(),
            generation: 3,
            manifest: manifest_id,
            at: t(501),
        };
        let picks = vec![[0, 3], [2, 15], [3, 0]];
        let challenge = Challenge {
            contract: id,
            challenger: owner.node_id(),
            holder: holder.node_id(),
            manifest: manifest_id,
            generation: 3,
            standing: Standing::Ok,
            nonce: "00".repeat(16),
            picks: picks.clone(),
            depth: 0,
            at: t(1_199),
        };
        let raw = reply_bytes(&extents, &picks);
        let answer = Answer {
            challenge: RecordId::of(&challenge).unwrap(),
            holder: holder.node_id(),
            reply: Reply::Proof { proof: encoding::hex_encode(blake3::hash(&raw).as_bytes()) },
            standing: o_failing(),
            at: t(1_200),
        };
        let evidence = Evidence {
            schema: Schema,
            contract,
            manifest,
            receipt: Some(Signed::sign(receipt, &holder).unwrap()),
            extent_list: encoding::hex_encode(&list),
            challenge: Signed::sign(challenge, &owner).unwrap(),
            answer: Some(Signed::sign(answer, &holder).unwrap()),
            answer_bytes: encoding::hex_encode(&raw),
            tops: String::new(),
            contradiction: None,
        };
        World { owner, holder, evidence }
    }

    /// The honest answer's bytes.
    fn honest(extents: &[Vec<u8>], picks: &[[u64; 2]]) -> Vec<u8> {
        let mut raw = Vec::new();
        for [e, c] in picks {
            let d = &extents[*e as usize];
            let (groups, _) = proof::outboard(d);
            let siblings = proof::prove(d.len() as u64, *c, d, &groups);
            let at = (*c * proof::CHUNK) as usize;
            challenge::encode_item(&mut raw, &d[at..at + proof::chunk_len(d.len() as u64, *c)], &siblings);
        }
        raw
    }

    /// A holder that lost extent 2: zeros where its sample goes.
    fn lost_one(extents: &[Vec<u8>], picks: &[[u64; 2]]) -> Vec<u8> {
        let mut raw = honest(extents, picks);
        let g = Geometry::new(4 * EXTENT as u64, EXTENT as u32).unwrap();
        let first = challenge::answer_len(g, &picks[..1], 0).unwrap();
        let second = challenge::answer_len(g, &picks[..2], 0).unwrap();
        raw[first..second].fill(0);
        raw
    }

    /// Re-signs the answer with a changed reply, standing or time.
    fn resign(w: &mut World, reply: Reply, standing: Standing, at: Timestamp) {
        let mut a = w.evidence.answer.clone().unwrap().body;
        (a.reply, a.standing, a.at) = (reply, standing, at);
        w.evidence.answer = Some(Signed::sign(a, &w.holder).unwrap());
    }

    fn verdict(w: &World, standing: Standing, at: u64, by: &Identity) -> Statement {
        let v = Verdict {
            contract: w.evidence.contract.id().unwrap(),
            challenge: None,
            answer: None,
            holder: w.owner.node_id(),
            result: Some(Outcome::Pass),
            standing,
            at: t(at),
        };
        Statement::Verdict(Signed::sign(v, by).unwrap())
    }

    #[test]
    fn a_signed_failing_answer_inside_the_grace_it_states_is_a_breach() {
        let w = world(lost_one);
        assert_eq!(w.evidence.check(), Ok(Proven { failed_samples: 1, samples: 3 }));
        let mut w = world(honest);
        assert!(matches!(w.evidence.check(), Err(EvidenceError::NoBreach(m)) if m.contains("proves every sample")));
        // "I no longer hold it", signed inside the grace: a breach of every sample.
        resign(&mut w, Reply::NotHeld { reason: "gone".into() }, o_failing(), t(1_200));
        assert_eq!(w.evidence.check(), Ok(Proven { failed_samples: 3, samples: 3 }));
    }

    #[test]
    fn no_breach_outside_the_grace_unless_the_holders_own_word_contradicts_it() {
        let mut w = world(lost_one);
        let reply = w.evidence.answer.clone().unwrap().body.reply;
        // After delete_after (1500) the holder may delete.
        for at in [1_500, 2_000] {
            resign(&mut w, reply.clone(), o_failing(), t(at));
            assert!(matches!(w.evidence.check(), Err(EvidenceError::NoBreach(m)) if m.contains("ran out")), "{at}");
        }
        // An answer older than the failing it states does not hold together.
        resign(&mut w, reply.clone(), o_failing(), t(999));
        assert!(matches!(w.evidence.check(), Err(EvidenceError::Inconsistent(_))));
        // The holder claims the grace ran out, but said at 1 700 that the owner was ok (or
        // failing since another time): its own word contradicts it.
        resign(&mut w, reply.clone(), o_failing(), t(2_000));
        for said in [Standing::Ok, Standing::Ok.after_failure(t(1_600), 500)] {
            w.evidence.contradiction = Some(verdict(&w, said, 1_700, &w.holder));
            assert_eq!(w.evidence.check(), Ok(Proven { failed_samples: 1, samples: 3 }), "{said:?}");
        }
        // Not a contradiction: the same failing, a word from before `since` or at its very
        // second (the challenge that found the failure says "ok"), or one the owner signed.
        for (said, at, by) in
            [(o_failing(), 1_700, &w.holder), (Standing::Ok, 900, &w.holder), (Standing::Ok, 1_000, &w.holder)]
        {
            w.evidence.contradiction = Some(verdict(&w, said, at, by));
            assert!(matches!(w.evidence.check(), Err(EvidenceError::NoBreach(_))), "{said:?} {at}");
        }
        w.evidence.contradiction = Some(verdict(&w, Standing::Ok, 1_700, &w.owner));
        assert!(matches!(w.evidence.check(), Err(EvidenceError::Inconsistent(_))));
        // A holder that judged the owner ok when it failed simply failed.
        let mut w = world(lost_one);
        resign(&mut w, reply.clone(), Standing::Ok, t(1_200));
        assert!(matches!(w.evidence.check(), Err(EvidenceError::NoBreach(m)) if m.contains("judged the owner ok")));
    }

    #[test]
    fn a_grace_shorter_or_backdated_does_not_excuse_a_greedy_holder() {
        let mut w = world(lost_one);
        let reply = w.evidence.answer.clone().unwrap().body.reply;
        // A grace shorter than the contract's (since 1 000, delete after 1 100): a breach at
        // any time, no other word needed.
        resign(&mut w, reply.clone(), Standing::Failing { since: t(1_000), delete_after: t(1_100) }, t(1_200));
        assert_eq!(w.evidence.check(), Ok(Proven { failed_samples: 1, samples: 3 }));
        // A whole grace backdated to have run out (since 0, delete after 500): its own word
        // that the owner was ok at 300, which the owner keeps, shows it.
        resign(&mut w, reply, Standing::Ok.after_failure(t(0), 500), t(1_200));
        assert!(matches!(w.evidence.check(), Err(EvidenceError::NoBreach(_))));
        w.evidence.contradiction = Some(verdict(&w, Standing::Ok, 300, &w.holder));
        assert_eq!(w.evidence.check(), Ok(Proven { failed_samples: 1, samples: 3 }));
    }

    #[test]
    fn a_contract_ended_by_notice_owes_nothing_and_a_notice_still_running_excuses_nothing() {
        let mut w = world(lost_one);
        let notice = |w: &World, at: u64, by: &Identity| {
            let body = Notice { contract: w.evidence.contract.id().unwrap(), from: by.node_id(), at: t(at) };
            Signed::sign(body, by).unwrap()
        };
        // Notice given at 600 by either side: the contract ended at 1 100, before the answer.
        for n in [notice(&w, 600, &w.holder), notice(&w, 600, &w.owner)] {
            resign(&mut w, Reply::Ended { notice: n }, o_failing(), t(1_200));
            assert!(
                matches!(w.evidence.check(), Err(EvidenceError::NoBreach(m)) if m.contains("ended by a notice")),
                "{:?}",
                w.evidence.check()
            );
        }
        // Notice given at 800 ends it at 1 300: at 1 200 the data was still owed. A notice by
        // a stranger, or for another contract, ends nothing.
        let stranger = Identity::from_seed([9; 32]);
        let mut other = notice(&w, 100, &w.holder);
        other.body.contract = "22".repeat(32).parse().unwrap();
        let other = Signed::sign(other.body, &w.holder).unwrap();
        for n in [notice(&w, 800, &w.holder), notice(&w, 100, &stranger), other] {
            resign(&mut w, Reply::Ended { notice: n.clone() }, o_failing(), t(1_200));
            assert_eq!(w.evidence.check(), Ok(Proven { failed_samples: 3, samples: 3 }), "{:?}", n.body);
        }
        // The holder's notice at 600 and its own receipt of the generation asked about more
        // than the clocks' slack later: dated back (a holder under notice takes no push), so
        // its grace had not run out at 1 200 whatever its date says. A receipt within the
        // slack (a commit racing the notice), or the owner's notice, leaves it standing.
        for (receipted, by, dated_back) in [
            (600 + CLOCK_SLACK_SECS + 1, &w.holder, true),
            (600 + CLOCK_SLACK_SECS, &w.holder, false),
            (600 + CLOCK_SLACK_SECS + 1, &w.owner, false),
        ] {
            let mut w = world(lost_one);
            let mut r = w.evidence.receipt.clone().unwrap().body;
            r.at = t(receipted);
            w.evidence.receipt = Some(Signed::sign(r, &w.holder).unwrap());
            let n = notice(&w, 600, by);
            resign(&mut w, Reply::Ended { notice: n }, o_failing(), t(1_200));
            let checked = w.evidence.check();
            match dated_back {
                true => assert_eq!(checked, Ok(Proven { failed_samples: 3, samples: 3 })),
                false => assert!(matches!(checked, Err(EvidenceError::NoBreach(_))), "{receipted}: {checked:?}"),
            }
        }
    }

    #[test]
    fn an_owner_cannot_frame_an_honest_holder() {
        // Each part is needed, and check-evidence names the one that is missing.
        for (part, strip) in [
            ("receipt", (|e: &mut Evidence| e.receipt = None) as fn(&mut Evidence)),
            ("signed reply", |e| e.answer = None),
        ] {
            let mut w = world(lost_one);
            strip(&mut w.evidence);
            assert!(matches!(w.evidence.check(), Err(EvidenceError::Missing(m)) if m.contains(part)), "{part}");
        }
        // An answer the owner signed itself, or whose standing it changed, does not hold.
        let mut w = world(lost_one);
        let a = w.evidence.answer.clone().unwrap().body;
        w.evidence.answer = Some(Signed::sign(a, &w.owner).unwrap());
        assert!(matches!(w.evidence.check(), Err(EvidenceError::Inconsistent(_))));
        let mut w = world(lost_one);
        let mut forged = w.evidence.answer.clone().unwrap();
        forged.body.standing = Standing::Ok.after_failure(t(1_100), 500);
        w.evidence.answer = Some(forged);
        assert!(matches!(w.evidence.check(), Err(EvidenceError::Inconsistent(_))));

        // A second manifest the owner signed for the same generation, which the holder never
        // receipted: the receipt does not match it.
        let mut w = world(lost_one);
        let mut m = w.evidence.manifest.body.clone();
        m.created_at = t(600);
        w.evidence.manifest = Signed::sign(m.clone(), &w.owner).unwrap();
        let mut c = w.evidence.challenge.body.clone();
        c.manifest = RecordId::of(&m).unwrap();
        w.evidence.challenge = Signed::sign(c, &w.owner).unwrap();
        assert!(w.evidence.check().is_err());

        // Samples outside the copy: a holder need not answer them (its zeros are no failure).
        let mut w = world(lost_one);
        let mut c = w.evidence.challenge.body.clone();
        c.picks[1] = [4, 0];
        w.evidence.challenge = Signed::sign(c.clone(), &w.owner).unwrap();
        let mut a = w.evidence.answer.clone().unwrap().body;
        a.challenge = RecordId::of(&c).unwrap();
        w.evidence.answer = Some(Signed::sign(a, &w.holder).unwrap());
        assert!(matches!(w.evidence.check(), Err(EvidenceError::NoBreach(m)) if m.contains("outside the copy")));

        // Bytes changed after the holder signed them.
        let mut w = world(honest);
        let mut raw = hex_bytes(&w.evidence.answer_bytes).unwrap();
        raw[5] ^= 1;
        w.evidence.answer_bytes = encoding::hex_encode(&raw);
        assert!(matches!(w.evidence.check(), Err(EvidenceError::Inconsistent(m)) if m.contains("not the ones")));

        // A holder that declined (superseded, refused) did not fail.
        let mut w = world(honest);
        resign(&mut w, Reply::Refused { reason: "not receipted".into() }, o_failing(), t(1_200));
        assert!(matches!(w.evidence.check(), Err(EvidenceError::NoBreach(m)) if m.contains("declined")));
    }
}
