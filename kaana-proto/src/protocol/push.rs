//! What a push sends, given what the holder has; and which of the holder's claims to believe.
//! Pure: the volume's hashes and the holder's answers come in as values.
//!
//! Before sending anything the holder says which generation it committed and which extents
//! (by hash) it holds. An extent whose volume bytes have the marks they had at the last push
//! ([`MarkKey::marks`]), and whose encoded bytes the holder still holds, is neither encoded nor
//! sent again; any other extent is encoded and hashed, and sent only if the holder does not hold
//! that hash (of one that changed only in some parts, only those, [`changed_parts`]). The holder's claims
//! are bounded first: no more extents than two generations of the smallest extents make, and no
//! generation beyond the last this node pushed plus one unless the holder shows a manifest of it
//! that this node signed (a push whose reply was lost), nor near where the next would wrap.

use crate::protocol::identity::Identity;
use crate::protocol::manifest::{ExtentHash, MAX_EXTENT_SIZE, MIN_EXTENT_SIZE};
use crate::protocol::proof;
use crate::protocol::record::RecordId;

/// Generations a holder may claim, at most: far beyond any real count of pushes, far from
/// where adding one would wrap.
pub const MAX_GENERATION: u64 = 1 << 48;

/// The most extents a holder of a contract of `size` bytes (with its history allowance) may say
/// it holds: the old and the new generation side by side, of the smallest extents.
pub fn max_held(size: u64) -> u64 {
    2 * size / u64::from(MIN_EXTENT_SIZE) + 1
}

/// What to make of the generation a holder says it committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Claim {
    /// At most one beyond the last this node recorded (or nothing recorded): believed.
    Believed,
    /// Further beyond: believed only if the holder shows a manifest of that generation that
    /// this node signed (pushes whose replies were lost).
    NeedsProof,
    /// Near where the next generation would wrap: never.
    Refused,
}

/// Judges the holder's `claimed` generation against the last one this node `recorded`.
pub fn judge_claim(claimed: u64, recorded: Option<u64>) -> Claim {
    if claimed >= MAX_GENERATION {
        Claim::Refused
    } else if recorded.is_some_and(|r| claimed > r + 1) {
        Claim::NeedsProof
    } else {
        Claim::Believed
    }
}

/// The extents a holder says it holds, sorted: 32 bytes each, looked up by halving (a hash set
/// of a terabyte volume's extents would take twice the room).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Held(Vec<ExtentHash>);

impl Held {
    /// The extents of a holder's list (32 bytes each; a short tail is ignored).
    pub fn from_list(list: &[u8]) -> Self {
        Held::new(list.chunks_exact(32).filter_map(|c| c.try_into().ok()).collect())
    }

    /// These extents (in any order, repeated or not).
    pub fn new(mut hashes: Vec<ExtentHash>) -> Self {
        hashes.sort_unstable();
        hashes.dedup();
        Held(hashes)
    }

    /// Each extent once, in order.
    pub fn iter(&self) -> impl Iterator<Item = &ExtentHash> {
        self.0.iter()
    }

    /// Whether `hash` is among them.
    pub fn contains(&self, hash: &ExtentHash) -> bool {
        self.0.binary_search(hash).is_ok()
    }
}

/// For one extent, the last push's (volume marks, sent hash) when the holder still holds what
/// was sent: such an extent, unchanged, is not encoded again. `marks` and `sent` are what the
/// last push recorded of it (none when its geometry differs, or the extent is new).
pub fn reusable<T: Copy>(marks: Option<&T>, sent: Option<&ExtentHash>, held: &Held) -> Option<(T, ExtentHash)> {
    match (marks, sent) {
        (Some(m), Some(h)) if held.contains(h) => Some((*m, *h)),
        _ => None,
    }
}

/// What to do with one extent whose volume bytes' marks are now `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Unchanged since the last push and still held: its hash is `sent`; nothing to encode.
    Reuse {
        /// The hash the holder holds it under.
        sent: ExtentHash,
    },
    /// Encode and hash it; then [`must_send`] says whether the holder needs it.
    Encode,
}

/// Decides for one extent, from what [`reusable`] found for it.
pub fn step<T: PartialEq>(known: Option<&(T, ExtentHash)>, now: &T) -> Step {
    match known {
        Some((then, sent)) if then == now => Step::Reuse { sent: *sent },
        _ => Step::Encode,
    }
}

/// What a push keeps of an extent's volume bytes, to find what changed at the next one: a mark
/// of each part (the parts a patch sends), or of the whole extent, first, for an extent too
/// short to have parts.
pub type Marks = [ExtentHash; PARTS];

/// The secret an owner's marks of its volume are keyed with, under one contract: XXH3's
/// secret, from the owner's key and the contract, as the keystream is. A push compares an
/// extent with its own earlier bytes: only a collision could hide a change, by chance about one
/// in 2^128 per part. Keyed (not a cryptographic MAC: XXH3 claims no such thing), the marks at
/// least give someone who writes chosen bytes into the volume (a file inside a plaintext one)
/// no known value to aim a collision at: they stay in the owner's record, never sent. XXH3 runs
/// at the speed of memory, where BLAKE3 here would be half of what a whole incremental push
/// costs; what is sent is hashed with BLAKE3 as ever.
pub struct MarkKey([u8; 192]);

impl std::fmt::Debug for MarkKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MarkKey(..)")
    }
}

impl MarkKey {
    /// The secret of `owner`'s marks under `contract`.
    pub fn new(owner: &Identity, contract: &RecordId) -> Self {
        let mut material = [0u8; 64];
        material[..32].copy_from_slice(&owner.seed());
        material[32..].copy_from_slice(contract.as_bytes());
        let key = blake3::derive_key("kaana-like 2026-11 per-contract volume marks, XXH3-128 secret", &material);
        let mut secret = [0u8; 192];
        blake3::Hasher::new_keyed(&key).finalize_xof().fill(&mut secret);
        MarkKey(secret)
    }

    /// An extent's [`Marks`]: each part's keyed 128-bit XXH3, then 16 zero bytes.
    pub fn marks(&self, extent: &[u8]) -> Marks {
        let mut marks = [[0u8; 32]; PARTS];
        let len = extent.len() as u64;
        if proof::has_tops(len, proof::TOP_LEVELS) {
            let part = (len >> proof::TOP_LEVELS) as usize;
            for (mark, bytes) in marks.iter_mut().zip(extent.chunks(part)) {
                *mark = self.mark_of(bytes);
            }
        } else {
            marks[0] = self.mark_of(extent);
        }
        marks
    }

    fn mark_of(&self, bytes: &[u8]) -> ExtentHash {
        let mut mark = [0u8; 32];
        mark[..16].copy_from_slice(&xxhash_rust::xxh3::xxh3_128_with_secret(bytes, &self.0).to_le_bytes());
        mark
    }
}

/// Whether an encoded extent of hash `hash` must be sent: the holder does not hold it.
pub fn must_send(hash: &ExtentHash, held: &Held) -> bool {
    !held.contains(hash)
}

/// Parts an extent is cut into for a patch: the subtrees under its tops
/// ([`proof::TOP_LEVELS`] levels down; 1 MiB each in a 4 MiB extent).
pub const PARTS: usize = 1 << proof::TOP_LEVELS;

/// Which parts of an extent changed since the last push, a bit each (bit `j`: part `j`), when
/// sending only those is worth it: the marks of its volume bytes then (`then`) and now (`now`)
/// are both known, and some parts changed but not all. The holder rebuilds the rest from the
/// extent it holds of the last push.
pub fn changed_parts(then: &[ExtentHash], now: &[ExtentHash]) -> Option<u8> {
    if then.len() != PARTS || now.len() != PARTS {
        return None;
    }
    let parts = (0..PARTS).filter(|&j| then[j] != now[j]).fold(0u8, |mask, j| mask | 1 << j);
    (parts != 0 && parts != full_parts()).then_some(parts)
}

/// Every part's bit.
fn full_parts() -> u8 {
    ((1u16 << PARTS) - 1) as u8
}

/// The parts named by `parts`, in order.
pub fn each_part(parts: u8) -> impl Iterator<Item = usize> {
    (0..PARTS).filter(move |j| parts & (1 << j) != 0)
}

/// The bytes a patch of an extent of `len` bytes carries for `parts` (each part `len /
/// PARTS`), or `None` if it is no patch a holder takes: the extent has no tops, or `parts`
/// names none, or one beyond the extent's.
pub fn patch_len(len: u32, parts: u8) -> Option<u32> {
    let ok = len <= MAX_EXTENT_SIZE && proof::has_tops(u64::from(len), proof::TOP_LEVELS) && parts != 0;
    (ok && parts & !full_parts() == 0).then(|| parts.count_ones() * (len / PARTS as u32))
}

/// What a volume looked like when it was pushed: what the push guard compares.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Shape {
    /// `luks`, `random` (near-random bytes without a LUKS header) or `plain`.
    pub kind: String,
    /// The LUKS header's UUID, for a LUKS volume.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub luks_uuid: Option<String>,
}

/// Why the push guard stops a push: the volume no longer looks like the one pushed before. A
/// LUKS volume whose header is gone or belongs to another volume (a new UUID), or a volume that
/// was structured (plain) and is now near-random: what ransomware, a careless `mkfs` or
/// `cryptsetup luksFormat`, or a dying disk leave behind.
pub fn guard_shape(before: &Shape, now: &Shape) -> Option<String> {
    match (before.kind.as_str(), now.kind.as_str()) {
        ("luks", "luks") if before.luks_uuid != now.luks_uuid => Some(format!(
            "its LUKS header belongs to another volume now (UUID {} before, {} now)",
            before.luks_uuid.as_deref().unwrap_or("?"),
            now.luks_uuid.as_deref().unwrap_or("?")
        )),
        ("luks", "luks") => None,
        ("luks", other) => Some(format!("its LUKS header is gone (it reads as {other} bytes now)")),
        ("plain", "random") => Some("its bytes were structured and are near-random now".into()),
        _ => None,
    }
}

/// Whether `changed` of `total` extents changing since the last push is "most of the volume at
/// once": more than half, on a volume of at least 4 extents. (A day of ordinary use changes a
/// few percent.)
pub fn mostly_changed(changed: u64, total: u64) -> bool {
    total >= 4 && changed * 2 > total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_guard_stops_a_volume_that_is_no_longer_itself() {
        let luks = |uuid: &str| Shape { kind: "luks".into(), luks_uuid: Some(uuid.into()) };
        let kind = |k: &str| Shape { kind: k.into(), luks_uuid: None };
        assert_eq!(guard_shape(&luks("a"), &luks("a")), None);
        assert!(guard_shape(&luks("a"), &luks("b")).unwrap().contains("another volume"));
        assert!(guard_shape(&luks("a"), &kind("random")).unwrap().contains("header is gone"));
        assert!(guard_shape(&kind("plain"), &kind("random")).is_some());
        assert_eq!(guard_shape(&kind("random"), &kind("random")), None);
        assert_eq!(guard_shape(&kind("random"), &luks("a")), None);
        assert!(!mostly_changed(2, 4) && mostly_changed(3, 4) && !mostly_changed(3, 3));
        assert!(!mostly_changed(50, 100) && mostly_changed(51, 100));
    }

    fn h(n: u8) -> ExtentHash {
        [n; 32]
    }

    #[test]
    fn marks_find_the_part_that_changed_and_only_it() {
        let owner = Identity::from_seed([5; 32]);
        let contract: RecordId = "0c".repeat(32).parse().unwrap();
        let key = MarkKey::new(&owner, &contract);
        let marks = |bytes: &[u8]| key.marks(bytes);
        let mut extent: Vec<u8> = (0..4u32 << 20).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let then = marks(&extent);
        assert_eq!(marks(&extent), then, "the same bytes, the same marks");
        // Keyed: another contract's, or another owner's, differ.
        let other: RecordId = "0d".repeat(32).parse().unwrap();
        assert_ne!(MarkKey::new(&owner, &other).marks(&extent), then);
        assert_ne!(MarkKey::new(&Identity::from_seed([6; 32]), &contract).marks(&extent), then);
        assert!(then.iter().all(|m| m[16..] == [0; 16] && m[..16] != [0; 16]));
        // One byte of the third 1 MiB part.
        extent[(2 << 20) + 12345] ^= 1;
        let now = marks(&extent);
        assert_eq!(changed_parts(&then, &now), Some(0b0100));
        // Parts with the same bytes at different places have the same mark: marks compare an
        // extent with itself, part by part.
        let same = vec![7u8; 4 << 20];
        let m = marks(&same);
        assert!(m.iter().all(|x| *x == m[0]));
        // An extent too short for parts: one mark of it all, first.
        let short = marks(&[1, 2, 3]);
        assert_ne!(short[0], [0; 32]);
        assert_eq!(short[1..], [[0; 32]; PARTS - 1]);
        assert_ne!(marks(&[1, 2, 4])[0], short[0]);
        // Marks are kept in the owner's record from one push to the next: they must stay XXH3-128
        // as specified (another library, twox-hash, gives these values too), or after an
        // upgrade every extent would look changed.
        assert_eq!(crate::protocol::encoding::hex_encode(&short[0][..16]), "0c9bcc4625016e4fac679cf886df0dcf");
        assert_eq!(crate::protocol::encoding::hex_encode(&then[3][..16]), "bdc695803f166c5341cc2dff4ecdf207");
    }

    #[test]
    fn an_unchanged_extent_still_held_is_reused_and_nothing_else_is() {
        let (raw, sent) = (vec![h(1), h(2), h(3)], vec![h(11), h(12), h(13)]);
        // The holder lost extent 1 (12); extent 3 is new (the volume grew).
        let held = Held::new(vec![h(13), h(11)]);
        let known: Vec<_> = (0..4).map(|i| reusable(raw.get(i), sent.get(i), &held)).collect();
        assert_eq!(known, vec![Some((h(1), h(11))), None, Some((h(3), h(13))), None]);
        // Extent 0 unchanged: reused. Extent 2 changed since: encoded again.
        assert_eq!(step(known[0].as_ref(), &h(1)), Step::Reuse { sent: h(11) });
        assert_eq!(step(known[2].as_ref(), &h(9)), Step::Encode);
        assert_eq!(step(known[1].as_ref(), &h(2)), Step::Encode);
        assert_eq!(step(known[3].as_ref(), &h(4)), Step::Encode);
        // Encoded, an extent is sent only if the holder lacks its hash (another generation's
        // identical extent is enough).
        assert!(must_send(&h(12), &held));
        assert!(!must_send(&h(13), &held));
    }

    #[test]
    fn a_first_push_or_a_new_geometry_reuses_nothing() {
        let held = Held::new(vec![h(1)]);
        assert_eq!(reusable::<ExtentHash>(None, None, &held), None);
        assert_eq!(reusable(Some(&h(1)), None, &held), None);
    }

    #[test]
    fn only_some_changed_parts_make_a_patch() {
        let then = vec![h(1), h(2), h(3), h(4)];
        assert_eq!(changed_parts(&then, &[h(1), h(9), h(3), h(4)]), Some(0b0010));
        assert_eq!(changed_parts(&then, &[h(9), h(2), h(3), h(9)]), Some(0b1001));
        // Nothing changed (then it is reused whole), everything changed, or no tops known.
        assert_eq!(changed_parts(&then, &then), None);
        assert_eq!(changed_parts(&then, &[h(9), h(9), h(9), h(9)]), None);
        assert_eq!(changed_parts(&[], &then), None);
        assert_eq!(changed_parts(&then, &then[..1]), None);
        assert_eq!(each_part(0b1001).collect::<Vec<_>>(), vec![0, 3]);
    }

    #[test]
    fn a_patch_carries_whole_parts_of_an_extent_with_tops() {
        assert_eq!(patch_len(4 << 20, 0b0010), Some(1 << 20));
        assert_eq!(patch_len(4 << 20, 0b1011), Some(3 << 20));
        assert_eq!(patch_len(64 << 10, 0b0001), Some(16 << 10));
        // No parts, a part beyond the fourth, an extent with no tops (not a power of two), or
        // one larger than any extent.
        assert_eq!(patch_len(4 << 20, 0), None);
        assert_eq!(patch_len(4 << 20, 0b10000), None);
        assert_eq!(patch_len(3 << 20, 0b0001), None);
        assert_eq!(patch_len(MAX_EXTENT_SIZE * 2, 0b0001), None);
    }

    #[test]
    fn claims_beyond_the_last_push_need_proof_and_near_the_wrap_are_refused() {
        assert_eq!(judge_claim(0, None), Claim::Believed);
        assert_eq!(judge_claim(7, None), Claim::Believed);
        assert_eq!(judge_claim(5, Some(4)), Claim::Believed);
        assert_eq!(judge_claim(3, Some(4)), Claim::Believed);
        assert_eq!(judge_claim(6, Some(4)), Claim::NeedsProof);
        assert_eq!(judge_claim(u64::MAX, Some(4)), Claim::Refused);
        assert_eq!(judge_claim(MAX_GENERATION, None), Claim::Refused);
    }

    #[test]
    fn a_holder_may_say_it_holds_two_generations_of_the_smallest_extents() {
        assert_eq!(max_held(64 << 20), 2 * (64 << 20) / 4096 + 1);
        assert_eq!(max_held(0), 1);
    }
}
