//! Challenges: "prove you still hold my data". Records, the choice of samples, and the check of
//! an answer. Pure: randomness and `now` come in as parameters.
//!
//! Longer than 400 lines: the records of a challenge and the checks of its answer belong together;
//! a fifth is tests.
//!
//! The challenger picks `k` chunks from its own record of the committed generation (distinct
//! extents where the volume has enough, one random 1 KiB chunk in each); the holder returns each
//! chunk with its BLAKE3 proof as raw bytes; the challenger checks them against the extent hashes
//! it kept, and never needs the data itself. With `k` distinct extents, a holder missing a
//! fraction `f` of the extents is caught with probability at least `1 - (1 - f)^k`.
//!
//! Every exchange is signed: the challenge (naming the manifest it asks about, and saying how
//! the challenger judges the holder) by the challenger, every reply to it by the holder — the
//! proofs, "I no longer hold it", "that generation is superseded", a refusal, each with how the
//! holder judges the challenger — and the verdict by the challenger. With the holder's signed
//! receipt of the manifest, a third party can check a breach without trusting either side
//! ([`crate::protocol::fairness::evidence`]).

use serde::{Deserialize, Serialize};

use crate::protocol::encoding;
use crate::protocol::fairness::standing::Standing;
use crate::protocol::identity::NodeId;
use crate::protocol::manifest::{ExtentHash, Geometry, Manifest};
use crate::protocol::market::{Notice, RecordId};
use crate::protocol::proof;
use crate::protocol::record::{Record, Signed};
use crate::protocol::time::Timestamp;

/// Samples per challenge by default: a holder missing 10% of the extents fails with probability
/// at least 1 - 0.9^44 > 99%.
pub const DEFAULT_SAMPLES: usize = 44;
/// The most samples a challenge may ask for.
pub const MAX_SAMPLES: usize = 1024;

/// "Prove you hold these chunks of my copy as manifest `manifest` describes it." Signed by the
/// challenger.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Challenge {
    /// The contract the copy is held under.
    pub contract: RecordId,
    /// Who asks (the owner of the copy).
    pub challenger: NodeId,
    /// Who must answer (the holder).
    pub holder: NodeId,
    /// The manifest asked about (its record id): one the holder signed a receipt for.
    pub manifest: RecordId,
    /// Its generation.
    pub generation: u64,
    /// How the challenger judges the holder now: a holder must know where it stands before it
    /// decides anything (say, to fail on purpose).
    pub standing: Standing,
    /// Random, so that no answer can be reused (32 hex digits).
    pub nonce: String,
    /// `[extent index, chunk index]` pairs.
    pub picks: Vec<[u64; 2]>,
    /// Levels below an extent's root where its proofs stop, for extents that split there into
    /// equal subtrees ([`proof::has_tops`]): the challenger keeps those subtrees' chaining
    /// values. 0: every proof goes to the root.
    pub depth: u32,
    /// When it was asked.
    pub at: Timestamp,
}

impl Record for Challenge {
    const KIND: &'static str = "challenge";
}

/// The holder's reply to a challenge, whatever it says: signed by the holder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Answer {
    /// The challenge answered (its record id).
    pub challenge: RecordId,
    /// Who answers.
    pub holder: NodeId,
    /// What it says.
    pub reply: Reply,
    /// How the holder judges the challenger now (the holder of a copy is also the judge of its
    /// owner, who holds the holder's copy): a failing answer thus carries the grace the holder
    /// itself says it granted, and cannot be read against any other.
    pub standing: Standing,
    /// When (the holder's clock).
    pub at: Timestamp,
}

/// What a holder says to a challenge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Reply {
    /// "Here are the chunks and their proofs": the raw bytes travel beside the answer, and
    /// `proof` is their BLAKE3 hash (hex).
    Proof {
        /// BLAKE3 of the raw answer bytes (hex).
        proof: String,
    },
    /// "I no longer hold your copy under this contract."
    NotHeld {
        /// Why, for people.
        reason: String,
    },
    /// "That manifest is superseded: I hold (and receipted) a newer generation."
    Superseded {
        /// The generation held.
        generation: u64,
        /// Its manifest's record id.
        manifest: RecordId,
    },
    /// "I will not answer this": the challenge asks about a manifest this holder never
    /// receipted, or for samples outside the copy.
    Refused {
        /// Why, for people.
        reason: String,
    },
    /// "The contract ended by this notice, and its grace has run out: nothing is owed."
    Ended {
        /// The signed notice (from either side).
        notice: Signed<Notice>,
    },
}

impl Record for Answer {
    const KIND: &'static str = "answer";
}

/// How a challenge ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// Every chunk proved.
    Pass,
    /// A wrong answer.
    Fail,
    /// No answer.
    Unreachable,
    /// The holder showed the notice that ended the contract: nothing is owed (never in a
    /// verdict).
    Ended,
}

/// The challenger's judgement, signed by it, with the standing that follows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Verdict {
    /// The contract.
    pub contract: RecordId,
    /// The challenge judged (none when the holder could not be reached).
    pub challenge: Option<RecordId>,
    /// The answer judged, if there was one.
    pub answer: Option<RecordId>,
    /// Who was judged.
    pub holder: NodeId,
    /// The outcome (none for a bare statement of the standing, with no challenge behind it).
    pub result: Option<Outcome>,
    /// The holder's standing at the challenger now.
    pub standing: Standing,
    /// When.
    pub at: Timestamp,
}

impl Record for Verdict {
    const KIND: &'static str = "verdict";
}

/// "I hold generation `generation` of your copy, manifest `manifest`": signed by the holder when
/// it commits, kept by the owner as proof of what the holder promised to keep.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Receipt {
    /// The contract.
    pub contract: RecordId,
    /// The owner of the copy.
    pub owner: NodeId,
    /// The holder.
    pub holder: NodeId,
    /// The generation committed.
    pub generation: u64,
    /// The record id of the owner-signed manifest.
    pub manifest: RecordId,
    /// When.
    pub at: Timestamp,
}

impl Record for Receipt {
    const KIND: &'static str = "receipt";
}

/// Whether `receipt` is `holder`'s signed receipt of exactly `manifest`: signed by `holder`,
/// naming it the holder, and the manifest's owner, contract, generation and record id. An
/// owner records a commit's receipt only if so: it is what evidence of a breach will ask of it
/// ([`crate::protocol::fairness::evidence`]), and a holder must not be able to hand over one
/// that later proves nothing.
pub fn receipts(receipt: &Signed<Receipt>, manifest: &Manifest, holder: &NodeId) -> bool {
    let r = &receipt.body;
    receipt.verify_by(holder).is_ok()
        && r.holder == *holder
        && r.owner == manifest.owner
        && r.contract == manifest.contract
        && r.generation == manifest.generation
        && RecordId::of(manifest).is_ok_and(|id| id == r.manifest)
}

/// A source of random numbers: BLAKE3's extendable output from a seed.
#[derive(Debug)]
pub struct Rng(blake3::OutputReader);

impl Rng {
    /// A generator from a 32-byte seed.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Rng(blake3::Hasher::new_derive_key("kaana-like 2026-11 challenge rng").update(&seed).finalize_xof())
    }

    /// A uniform number below `n` (`n` > 0).
    pub fn below(&mut self, n: u64) -> u64 {
        // Rejection sampling keeps it exactly uniform.
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let mut b = [0u8; 8];
            self.0.fill(&mut b);
            let x = u64::from_le_bytes(b);
            if x < zone {
                return x % n;
            }
        }
    }

    /// 16 random bytes as hex.
    pub fn nonce(&mut self) -> String {
        let mut b = [0u8; 16];
        self.0.fill(&mut b);
        encoding::hex_encode(&b)
    }
}

/// Picks `k` samples: distinct extents while there are enough (a partial shuffle), then extents
/// again; one random chunk in each.
pub fn pick(g: Geometry, k: usize, rng: &mut Rng) -> Vec<[u64; 2]> {
    let order = distinct(g.count(), k, rng);
    order.into_iter().map(|e| [e, rng.below(proof::chunks(g.len(e) as u64))]).collect()
}

/// [`pick`] among the extents `among` only (indexes into the copy): what a challenge of an older
/// generation samples, the extents the newest does not share. Empty if `among` is.
pub fn pick_among(g: Geometry, among: &[u64], k: usize, rng: &mut Rng) -> Vec<[u64; 2]> {
    let order = distinct(among.len() as u64, k, rng);
    order.into_iter().map(|i| among[i as usize]).map(|e| [e, rng.below(proof::chunks(g.len(e) as u64))]).collect()
}

/// `k` draws from `0..n`: distinct while they can be, then with repeats.
fn distinct(n: u64, k: usize, rng: &mut Rng) -> Vec<u64> {
    if n == 0 || k == 0 {
        return Vec::new();
    }
    let mut order: Vec<u64> = Vec::with_capacity(k);
    let mut swapped = std::collections::HashMap::new();
    for i in 0..k as u64 {
        let e = if i < n {
            // Fisher-Yates over 0..n without materialising it.
            let j = i + rng.below(n - i);
            let at_j = *swapped.get(&j).unwrap_or(&j);
            let at_i = *swapped.get(&i).unwrap_or(&i);
            swapped.insert(j, at_i);
            at_j
        } else {
            rng.below(n)
        };
        order.push(e);
    }
    order
}

/// Proofs may stop at the root (0) or at the owner's tops ([`proof::TOP_LEVELS`]).
pub fn depth_allowed(depth: u32) -> bool {
    depth == 0 || depth == proof::TOP_LEVELS
}

/// Checks that a challenge asks for something a holder of a copy of geometry `g` can prove:
/// 1 to [`MAX_SAMPLES`] samples, each a chunk of an extent of the copy, and an allowed depth.
/// A holder refuses anything else, and evidence built on anything else is no evidence.
pub fn check_request(g: Geometry, picks: &[[u64; 2]], depth: u32) -> Result<(), String> {
    if picks.is_empty() || picks.len() > MAX_SAMPLES {
        return Err(format!("a challenge asks for 1 to {MAX_SAMPLES} samples, not {}", picks.len()));
    }
    if !depth_allowed(depth) {
        return Err(format!("proofs may stop at depth 0 or {}, not {depth}", proof::TOP_LEVELS));
    }
    for (i, [e, c]) in picks.iter().enumerate() {
        if *e >= g.count() || *c >= proof::chunks(g.len(*e) as u64) {
            return Err(format!("sample {i} (extent {e}, chunk {c}) is outside the copy"));
        }
    }
    Ok(())
}

/// The length of a correct answer's raw bytes.
pub fn answer_len(g: Geometry, picks: &[[u64; 2]], depth: u32) -> Option<usize> {
    picks.iter().try_fold(0usize, |acc, [e, c]| {
        let len = g.len(*e) as u64;
        (len > 0 && *c < proof::chunks(len))
            .then(|| acc + proof::chunk_len(len, *c) + 32 * proof::proof_len_to(len, *c, depth))
    })
}

/// Appends one pick's chunk and siblings to an answer.
pub fn encode_item(out: &mut Vec<u8>, chunk: &[u8], siblings: &[[u8; 32]]) {
    out.extend_from_slice(chunk);
    for s in siblings {
        out.extend_from_slice(s);
    }
}

/// The tops a check of `picks` needs: for each pick whose extent has tops at `depth`, in pick
/// order, that extent's 2^depth chaining values (from `tops_of`, by extent index). `None` if one
/// is missing or does not merge to its extent's hash.
pub fn tops_for(
    g: Geometry,
    hashes: &[ExtentHash],
    picks: &[[u64; 2]],
    depth: u32,
    mut tops_of: impl FnMut(u64) -> Option<Vec<[u8; 32]>>,
) -> Option<Vec<[u8; 32]>> {
    let mut out = Vec::new();
    for [e, _] in picks {
        let len = g.len(*e) as u64;
        if !proof::has_tops(len, depth) {
            continue;
        }
        let tops = tops_of(*e)?;
        let root = proof::root_of_tops(len, depth, &tops)?;
        if hashes.get(*e as usize) != Some(root.as_bytes()) {
            return None;
        }
        out.extend(tops);
    }
    Some(out)
}

/// Checks an answer's raw bytes: every pick's chunk must prove against its extent's hash, or
/// against the top over it where the extent has tops at `depth` (`tops` as [`tops_for`] gives
/// them). Returns how many picks failed (0: pass).
pub fn check(
    g: Geometry,
    hashes: &[ExtentHash],
    picks: &[[u64; 2]],
    raw: &[u8],
    depth: u32,
    tops: &[[u8; 32]],
) -> usize {
    if answer_len(g, picks, depth) != Some(raw.len()) {
        return picks.len().max(1);
    }
    let (mut at, mut failed, mut next_top) = (0, 0, 0);
    for [e, c] in picks {
        let len = g.len(*e) as u64;
        let (clen, slen) = (proof::chunk_len(len, *c), proof::proof_len_to(len, *c, depth));
        let chunk = &raw[at..at + clen];
        let siblings: Vec<[u8; 32]> =
            raw[at + clen..at + clen + 32 * slen].chunks_exact(32).map(|s| s.try_into().unwrap_or([0; 32])).collect();
        at += clen + 32 * slen;
        let ok = if proof::has_tops(len, depth) {
            let per_top = proof::chunks(len) >> depth;
            let top = tops.get(next_top + (*c / per_top) as usize);
            next_top += 1 << depth;
            top.is_some_and(|top| proof::verify_to_top(len, *c, chunk, &siblings, depth, top))
        } else {
            hashes.get(*e as usize).is_some_and(|root| proof::verify(len, *c, chunk, &siblings, root))
        };
        if !ok {
            failed += 1;
        }
    }
    failed
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A receipt is of a manifest only if every field a breach's evidence checks says so: a
    /// holder that signs receipts naming another holder, owner, contract, generation or
    /// manifest has them refused, as one signed by another key.
    #[test]
    fn a_receipt_is_of_a_manifest_only_if_every_field_says_so() {
        use crate::protocol::identity::Identity;
        let (owner, holder) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let manifest = Manifest {
            contract: "0a".repeat(32).parse().unwrap(),
            owner: owner.node_id(),
            generation: 3,
            volume_size: 4096,
            extent_size: 4096,
            extent_count: 1,
            extents: "00".repeat(32),
            created_at: Timestamp::from_unix(100),
        };
        let right = Receipt {
            contract: manifest.contract,
            owner: owner.node_id(),
            holder: holder.node_id(),
            generation: 3,
            manifest: RecordId::of(&manifest).unwrap(),
            at: Timestamp::from_unix(101),
        };
        let h = holder.node_id();
        assert!(receipts(&Signed::sign(right.clone(), &holder).unwrap(), &manifest, &h));
        assert!(!receipts(&Signed::sign(right.clone(), &owner).unwrap(), &manifest, &h), "another key");
        let other = Identity::from_seed([3; 32]).node_id();
        let wrong: [fn(&mut Receipt, NodeId); 5] = [
            |r, other| r.holder = other,
            |r, other| r.owner = other,
            |r, _| r.contract = "0b".repeat(32).parse().unwrap(),
            |r, _| r.generation = 4,
            |r, _| r.manifest = "0c".repeat(32).parse().unwrap(),
        ];
        for (i, change) in wrong.iter().enumerate() {
            let mut r = right.clone();
            change(&mut r, other);
            assert!(!receipts(&Signed::sign(r, &holder).unwrap(), &manifest, &h), "field {i}");
        }
    }

    #[test]
    fn picks_are_distinct_extents_while_they_last() {
        let g = Geometry::new(100 * 4096 + 100, 4096).unwrap();
        let mut rng = Rng::from_seed([1; 32]);
        let picks = pick(g, 44, &mut rng);
        assert_eq!(picks.len(), 44);
        let mut extents: Vec<u64> = picks.iter().map(|p| p[0]).collect();
        extents.sort();
        extents.dedup();
        assert_eq!(extents.len(), 44);
        assert!(picks.iter().all(|[e, c]| *e < 101 && *c < proof::chunks(g.len(*e) as u64)));
        // Fewer extents than samples: all of them, then repeats.
        let small = Geometry::new(3 * 4096, 4096).unwrap();
        let picks = pick(small, 10, &mut rng);
        let first: std::collections::HashSet<u64> = picks[..3].iter().map(|p| p[0]).collect();
        assert_eq!(first.len(), 3);
    }

    /// An answer checks with proofs to the root (depth 0) or to the tops; tops that are missing
    /// or do not merge to their extent's hash are refused before any check.
    #[test]
    fn answers_check_to_the_root_or_to_the_tops() {
        let g = Geometry::new(3 * 65_536 + 5_000, 65_536).unwrap();
        let extents: Vec<Vec<u8>> =
            (0..g.count()).map(|e| (0..g.len(e)).map(|i| (i as u64 * 31 + e * 7) as u8).collect()).collect();
        let (hashes, tops): (Vec<ExtentHash>, Vec<Vec<[u8; 32]>>) = extents
            .iter()
            .map(|d| {
                let (h, t) = proof::hash_with_tops(d, proof::TOP_LEVELS);
                (*h.as_bytes(), t)
            })
            .unzip();
        let picks = vec![[0, 3], [1, 63], [3, 4], [2, 0]];
        for depth in [0, proof::TOP_LEVELS] {
            let mut raw = Vec::new();
            for [e, c] in &picks {
                let d = &extents[*e as usize];
                let len = d.len() as u64;
                let (groups, _) = proof::outboard(d);
                let start = (*c * proof::CHUNK / proof::GROUP * proof::GROUP) as usize;
                let group = if len <= proof::GROUP { &d[..] } else { &d[start..(start + 16_384).min(d.len())] };
                let mut siblings = proof::prove(len, *c, group, &groups);
                siblings.truncate(proof::proof_len_to(len, *c, depth));
                let at = (*c * proof::CHUNK) as usize;
                encode_item(&mut raw, &d[at..at + proof::chunk_len(len, *c)], &siblings);
            }
            assert_eq!(answer_len(g, &picks, depth), Some(raw.len()));
            let given = tops_for(g, &hashes, &picks, depth, |e| Some(tops[e as usize].clone())).unwrap();
            assert_eq!(given.len(), if depth == 0 { 0 } else { 3 << depth }, "the short last extent has none");
            assert_eq!(check(g, &hashes, &picks, &raw, depth, &given), 0, "depth {depth}");
            raw[10] ^= 1;
            assert_eq!(check(g, &hashes, &picks, &raw, depth, &given), 1, "depth {depth}");
        }
        let depth = proof::TOP_LEVELS;
        assert!(tops_for(g, &hashes, &picks, depth, |e| (e != 1).then(|| tops[e as usize].clone())).is_none());
        assert!(tops_for(g, &hashes, &picks, depth, |e| Some(tops[(e as usize + 1) % 3].clone())).is_none());
    }

    #[test]
    fn the_default_catches_ten_percent_loss_with_99_percent() {
        assert!(1.0 - 0.9f64.powi(DEFAULT_SAMPLES as i32) >= 0.99);
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut rng = Rng::from_seed([2; 32]);
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            counts[rng.below(10) as usize] += 1;
        }
        assert!(counts.iter().all(|c| (850..1150).contains(c)), "{counts:?}");
    }

    proptest::proptest! {
        /// Arbitrary bytes never make the decoders of manifests, challenges and verdicts panic,
        /// and what they accept encodes back to the same value.
        #[test]
        fn decoders_never_panic_and_round_trip(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            fn check<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Result<(), proptest::test_runner::TestCaseError> {
                if let Ok(v) = serde_json::from_slice::<T>(bytes) {
                    let again: T = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
                    proptest::prop_assert_eq!(again, v);
                }
                Ok(())
            }
            check::<crate::protocol::record::Signed<crate::protocol::manifest::Manifest>>(&bytes)?;
            check::<crate::protocol::record::Signed<Challenge>>(&bytes)?;
            check::<crate::protocol::record::Signed<Verdict>>(&bytes)?;
        }
    }
}
