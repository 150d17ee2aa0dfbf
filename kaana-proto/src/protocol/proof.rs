//! BLAKE3 chunk proofs: that a 1 KiB chunk is part of an extent whose hash is known. Pure.
//!
//! An extent's BLAKE3 hash is the root of a binary tree over its 1 KiB chunks (the left subtree
//! of every node holds the largest power-of-two number of bytes smaller than the node's). A proof
//! of chunk `i` is the chaining values of the siblings on the path from the chunk to the root,
//! nearest first; the verifier hashes the chunk, merges it up the path and compares the root
//! with the extent's hash, needing nothing else.
//!
//! So that a holder need not read a whole extent to prove one chunk, it keeps an *outboard*: the
//! chaining value of every 16 KiB group of the extent (0.2% of its size), computed in the same
//! pass that checks the extent's hash when it arrives. A proof then reads one group and the
//! outboard. An extent of at most one group needs no outboard (it is read whole).
//!
//! The owner, in turn, keeps the *tops* of each extent: the chaining values of the 2^L subtrees
//! L levels below its root (L = [`TOP_LEVELS`]: 4 values, 128 bytes per 4 MiB extent, 0.003% of
//! the volume), computed in the pass that hashes the extent before sending it. Merged, they give
//! the extent's hash; a proof then needs to climb only to the top over its chunk, L siblings
//! shorter. That keeps a challenge's answer under 64 KiB (44 samples: 2.8 KB less). Tops exist
//! for an extent whose length is a power of two of at least 2^L chunks (subtrees all equal).

use blake3::hazmat::{
    ChainingValue, HasherExt as _, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

/// BLAKE3's chunk size.
pub const CHUNK: u64 = 1024;
/// Bytes per outboard entry: 16 chunks.
pub const GROUP: u64 = 16 * CHUNK;

/// Levels below an extent's root where an owner keeps the subtrees' chaining values.
pub const TOP_LEVELS: u32 = 2;

/// Chunks in an extent of `len` bytes.
pub fn chunks(len: u64) -> u64 {
    len.div_ceil(CHUNK).max(1)
}

/// Length of chunk `index` of an extent of `len` bytes.
pub fn chunk_len(len: u64, index: u64) -> usize {
    (len.saturating_sub(index * CHUNK)).min(CHUNK) as usize
}

/// Siblings in a proof for a chunk of an extent of `len` bytes.
pub fn proof_len(len: u64, index: u64) -> usize {
    let mut n = 0;
    walk(0, len, index * CHUNK, &mut |_, _| n += 1);
    n
}

/// Whether proofs for an extent of `len` bytes can stop `depth` levels below its root: the
/// extent splits there into 2^depth equal subtrees of whole chunks.
pub fn has_tops(len: u64, depth: u32) -> bool {
    depth > 0 && len.is_power_of_two() && len.checked_shr(depth).is_some_and(|sub| sub >= CHUNK)
}

/// Siblings in a proof for a chunk of an extent of `len` bytes that stops `depth` levels below
/// the root where [`has_tops`] allows it (and goes to the root otherwise).
pub fn proof_len_to(len: u64, index: u64, depth: u32) -> usize {
    let full = proof_len(len, index);
    if has_tops(len, depth) { full - depth as usize } else { full }
}

/// The extent's hash and, where [`has_tops`] allows it, its tops `depth` levels down (else
/// none), in one pass over its bytes.
pub fn hash_with_tops(extent: &[u8], depth: u32) -> (blake3::Hash, Vec<ChainingValue>) {
    let len = extent.len() as u64;
    if !has_tops(len, depth) {
        return (blake3::hash(extent), Vec::new());
    }
    let sub = (len >> depth) as usize;
    let tops: Vec<ChainingValue> =
        extent.chunks(sub).enumerate().map(|(j, bytes)| cv_of_bytes((j * sub) as u64, bytes)).collect();
    (root_of_units(len, sub as u64, &tops), tops)
}

/// The top over part `part` of an extent of `len` bytes cut `depth` levels down, from that
/// part's bytes (where [`has_tops`] allows it).
pub fn top_of_part(len: u64, depth: u32, part: usize, bytes: &[u8]) -> ChainingValue {
    cv_of_bytes(part as u64 * (len >> depth), bytes)
}

/// The extent's hash from its tops, if they are as many as `depth` makes.
pub fn root_of_tops(len: u64, depth: u32, tops: &[ChainingValue]) -> Option<blake3::Hash> {
    (has_tops(len, depth) && tops.len() == 1 << depth).then(|| root_of_units(len, len >> depth, tops))
}

/// Checks that `chunk` is chunk `index` of an extent of `len` bytes, given its proof up to the
/// top over it (siblings nearest the chunk first) and that top's chaining value.
pub fn verify_to_top(
    len: u64,
    index: u64,
    chunk: &[u8],
    siblings: &[ChainingValue],
    depth: u32,
    top: &ChainingValue,
) -> bool {
    if !has_tops(len, depth) || index >= chunks(len) || chunk.len() != chunk_len(len, index) {
        return false;
    }
    let sub = len >> depth;
    let target = index * CHUNK;
    let start = target / sub * sub;
    let mut sides = Vec::new();
    walk(start, sub, target, &mut |s, _| sides.push(s > target));
    if siblings.len() != sides.len() {
        return false;
    }
    let mut cv = cv_of_bytes(target, chunk);
    for (sibling, sibling_is_right) in siblings.iter().zip(sides.iter().rev()) {
        let (l, r) = if *sibling_is_right { (&cv, sibling) } else { (sibling, &cv) };
        cv = merge_subtrees_non_root(l, r, Mode::Hash);
    }
    cv == *top
}

/// Walks from the root to the chunk at byte `target`, calling `sibling(start, size)` for each
/// sibling subtree, nearest the root first.
fn walk(start: u64, size: u64, target: u64, sibling: &mut impl FnMut(u64, u64)) {
    if size <= CHUNK {
        return;
    }
    let left = left_subtree_len(size);
    if target < start + left {
        sibling(start + left, size - left);
        walk(start, left, target, sibling);
    } else {
        sibling(start, left);
        walk(start + left, size - left, target, sibling);
    }
}

fn cv_of_bytes(offset: u64, bytes: &[u8]) -> ChainingValue {
    blake3::Hasher::new().set_input_offset(offset).update(bytes).finalize_non_root()
}

/// The outboard of an extent: the chaining value of each 16 KiB group (empty for an extent of
/// at most one group), and the extent's hash, in one pass over its bytes.
pub fn outboard(extent: &[u8]) -> (Vec<ChainingValue>, blake3::Hash) {
    let len = extent.len() as u64;
    if len <= GROUP {
        return (Vec::new(), blake3::hash(extent));
    }
    let groups: Vec<ChainingValue> =
        extent.chunks(GROUP as usize).enumerate().map(|(g, bytes)| cv_of_bytes(g as u64 * GROUP, bytes)).collect();
    let root = root_of_groups(len, &groups);
    (groups, root)
}

/// The chaining value of a subtree made of whole units of `unit` bytes (a power of two), from
/// the units' chaining values.
fn units_cv(start: u64, size: u64, unit: u64, cvs: &[ChainingValue]) -> ChainingValue {
    if size <= unit {
        return cvs.get((start / unit) as usize).copied().unwrap_or([0; 32]);
    }
    let left = left_subtree_len(size);
    merge_subtrees_non_root(
        &units_cv(start, left, unit, cvs),
        &units_cv(start + left, size - left, unit, cvs),
        Mode::Hash,
    )
}

fn root_of_units(len: u64, unit: u64, cvs: &[ChainingValue]) -> blake3::Hash {
    let left = left_subtree_len(len);
    merge_subtrees_root(&units_cv(0, left, unit, cvs), &units_cv(left, len - left, unit, cvs), Mode::Hash)
}

/// The chaining value of a subtree made of whole groups, from the outboard.
fn groups_cv(start: u64, size: u64, groups: &[ChainingValue]) -> ChainingValue {
    units_cv(start, size, GROUP, groups)
}

fn root_of_groups(len: u64, groups: &[ChainingValue]) -> blake3::Hash {
    root_of_units(len, GROUP, groups)
}

/// The extent's hash recomputed from its outboard (to check an outboard read back from disk).
pub fn outboard_root(len: u64, groups: &[ChainingValue]) -> Option<blake3::Hash> {
    (len > GROUP && groups.len() as u64 == len.div_ceil(GROUP)).then(|| root_of_groups(len, groups))
}

/// The proof for chunk `index` of an extent of `len` bytes. `group` holds the bytes of the 16 KiB
/// group that contains the chunk (the whole extent, if it has at most one group); `groups` is the
/// outboard. Siblings come nearest the chunk first.
pub fn prove(len: u64, index: u64, group: &[u8], groups: &[ChainingValue]) -> Vec<ChainingValue> {
    let target = index * CHUNK;
    let group_start = if len <= GROUP { 0 } else { target / GROUP * GROUP };
    let mut siblings = Vec::new();
    walk(0, len, target, &mut |start, size| {
        let inside_group = len <= GROUP || (start >= group_start && start + size <= group_start + GROUP);
        let cv = if inside_group {
            let from = (start - group_start) as usize;
            let to = (from + size as usize).min(group.len());
            cv_of_bytes(start, group.get(from..to).unwrap_or_default())
        } else {
            groups_cv(start, size, groups)
        };
        siblings.push(cv);
    });
    siblings.reverse();
    siblings
}

/// Checks that `chunk` is chunk `index` of an extent of `len` bytes whose hash is `root`, given
/// its proof (siblings nearest the chunk first).
pub fn verify(len: u64, index: u64, chunk: &[u8], siblings: &[ChainingValue], root: &[u8; 32]) -> bool {
    if index >= chunks(len) || chunk.len() != chunk_len(len, index) || siblings.len() != proof_len(len, index) {
        return false;
    }
    if len <= CHUNK {
        return blake3::hash(chunk).as_bytes() == root;
    }
    // Replay the walk to know, at each level, on which side the sibling is.
    let mut sides = Vec::with_capacity(siblings.len());
    let target = index * CHUNK;
    walk(0, len, target, &mut |start, _| sides.push(start > target));
    let mut cv = cv_of_bytes(target, chunk);
    let levels = siblings.len();
    for (level, (sibling, sibling_is_right)) in siblings.iter().zip(sides.iter().rev()).enumerate() {
        let (l, r) = if *sibling_is_right { (&cv, sibling) } else { (sibling, &cv) };
        if level + 1 == levels {
            return merge_subtrees_root(l, r, Mode::Hash).as_bytes() == root;
        }
        cv = merge_subtrees_non_root(l, r, Mode::Hash);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn data(len: usize, seed: u8) -> Vec<u8> {
        (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[1] ^ seed).collect()
    }

    fn prove_from(extent: &[u8], index: u64) -> Vec<ChainingValue> {
        let len = extent.len() as u64;
        let (groups, _) = outboard(extent);
        let group = if len <= GROUP {
            extent
        } else {
            let start = (index * CHUNK / GROUP * GROUP) as usize;
            &extent[start..(start + GROUP as usize).min(extent.len())]
        };
        prove(len, index, group, &groups)
    }

    #[test]
    fn the_outboard_root_is_blake3() {
        for len in [0usize, 1, 1024, 1025, 16 * 1024, 16 * 1024 + 1, 100_000, 4 << 20] {
            let d = data(len, 3);
            let (groups, root) = outboard(&d);
            assert_eq!(root, blake3::hash(&d), "len {len}");
            if len as u64 > GROUP {
                assert_eq!(outboard_root(len as u64, &groups), Some(root));
            }
        }
    }

    #[test]
    fn every_chunk_of_odd_sizes_proves() {
        for len in [1usize, 1000, 1024, 1025, 3000, 16 * 1024, 16 * 1024 + 5, 50_000, 262_144] {
            let d = data(len, 9);
            let root = *blake3::hash(&d).as_bytes();
            let len = len as u64;
            for index in 0..chunks(len) {
                let siblings = prove_from(&d, index);
                let chunk = &d[(index * CHUNK) as usize..((index * CHUNK) as usize + chunk_len(len, index))];
                assert!(verify(len, index, chunk, &siblings, &root), "len {len} chunk {index}");
            }
        }
    }

    #[test]
    fn a_changed_part_and_the_other_tops_give_the_new_hash() {
        let (len, depth) = (1usize << 20, TOP_LEVELS);
        let mut d = data(len, 4);
        let (_, mut tops) = hash_with_tops(&d, depth);
        let sub = len >> depth;
        d[2 * sub + 5] ^= 0xff;
        tops[2] = top_of_part(len as u64, depth, 2, &d[2 * sub..3 * sub]);
        assert_eq!(root_of_tops(len as u64, depth, &tops), Some(blake3::hash(&d)));
        assert_eq!(hash_with_tops(&d, depth).1, tops);
    }

    #[test]
    fn a_four_mib_extent_has_twelve_siblings() {
        let d = data(4 << 20, 1);
        let siblings = prove_from(&d, 1234);
        assert_eq!(siblings.len(), 12);
        assert!(verify(4 << 20, 1234, &d[1234 * 1024..1235 * 1024], &siblings, blake3::hash(&d).as_bytes()));
    }

    #[test]
    fn wrong_chunk_truncated_proof_and_wrong_index_fail() {
        let d = data(100_000, 5);
        let root = *blake3::hash(&d).as_bytes();
        let siblings = prove_from(&d, 7);
        let chunk = &d[7 * 1024..8 * 1024];
        assert!(verify(100_000, 7, chunk, &siblings, &root));
        assert!(!verify(100_000, 8, &d[8 * 1024..9 * 1024], &siblings, &root), "proof for another chunk");
        assert!(!verify(100_000, 7, chunk, &siblings[..siblings.len() - 1], &root), "truncated");
        let mut longer = siblings.clone();
        longer.push([0; 32]);
        assert!(!verify(100_000, 7, chunk, &longer, &root), "padded");
        assert!(!verify(100_000, 7, &chunk[..1000], &siblings, &root), "short chunk");
        assert!(!verify(100_000, 7, chunk, &siblings, blake3::hash(b"other").as_bytes()), "another extent");
    }

    /// Tops merge to the extent's hash, and a proof cut `depth` levels short checks against the
    /// top over its chunk, for every chunk; a wrong chunk, top or length fails.
    #[test]
    fn proofs_stop_at_the_tops() {
        for (len, depth) in [(4usize << 20, TOP_LEVELS), (8192, 3), (1 << 16, 1), (1 << 16, 6)] {
            let d = data(len, 2);
            let (root, tops) = hash_with_tops(&d, depth);
            assert_eq!(root, blake3::hash(&d));
            assert_eq!(tops.len(), 1 << depth);
            assert_eq!(root_of_tops(len as u64, depth, &tops), Some(root));
            let len = len as u64;
            let per_top = chunks(len) >> depth;
            for index in (0..chunks(len)).step_by(7) {
                let mut siblings = prove_from(&d, index);
                siblings.truncate(proof_len_to(len, index, depth));
                let chunk = &d[(index * CHUNK) as usize..((index + 1) * CHUNK) as usize];
                let top = &tops[(index / per_top) as usize];
                assert!(verify_to_top(len, index, chunk, &siblings, depth, top), "len {len} chunk {index}");
                let other = &tops[((index / per_top + 1) % (1 << depth)) as usize];
                assert!(!verify_to_top(len, index, chunk, &siblings, depth, other), "another top");
                let mut wrong = chunk.to_vec();
                wrong[0] ^= 1;
                assert!(!verify_to_top(len, index, &wrong, &siblings, depth, top), "a changed chunk");
            }
        }
        assert_eq!(proof_len_to(4 << 20, 5, TOP_LEVELS), 12 - TOP_LEVELS as usize);
        // No tops where the subtrees would not be whole chunks, or the length is not a power of two.
        for (len, depth) in [(100_000u64, 3), (4096, 3), (4 << 20, 0), (4 << 20, 64)] {
            assert!(!has_tops(len, depth));
            assert_eq!(proof_len_to(len, 1, depth), proof_len(len, 1));
            assert!(hash_with_tops(&data(len as usize, 1), depth).1.is_empty());
        }
        let (_, tops) = hash_with_tops(&data(8192, 4), 3);
        assert_eq!(root_of_tops(8192, 3, &tops[..7]), None, "too few tops");
    }

    proptest! {
        #[test]
        fn a_flipped_bit_anywhere_fails(len in 1usize..70_000, pick in any::<proptest::sample::Index>(), flip in any::<proptest::sample::Index>()) {
            let d = data(len, 7);
            let root = *blake3::hash(&d).as_bytes();
            let len = len as u64;
            let index = pick.index(chunks(len) as usize) as u64;
            let siblings = prove_from(&d, index);
            let start = (index * CHUNK) as usize;
            let mut chunk = d[start..start + chunk_len(len, index)].to_vec();
            prop_assert!(verify(len, index, &chunk, &siblings, &root));
            // Flip one bit in the chunk or in a sibling.
            let bits = chunk.len() * 8 + siblings.len() * 256;
            let b = flip.index(bits);
            let mut siblings = siblings;
            if b < chunk.len() * 8 {
                chunk[b / 8] ^= 1 << (b % 8);
            } else {
                let s = b - chunk.len() * 8;
                siblings[s / 256][(s % 256) / 8] ^= 1 << (s % 8);
            }
            prop_assert!(!verify(len, index, &chunk, &siblings, &root));
        }
    }
}
