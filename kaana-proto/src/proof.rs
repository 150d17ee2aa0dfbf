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

use blake3::hazmat::{
    ChainingValue, HasherExt as _, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

/// BLAKE3's chunk size.
pub const CHUNK: u64 = 1024;
/// Bytes per outboard entry: 16 chunks.
pub const GROUP: u64 = 16 * CHUNK;

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

/// The chaining value of a subtree made of whole groups, from the outboard.
fn groups_cv(start: u64, size: u64, groups: &[ChainingValue]) -> ChainingValue {
    if size <= GROUP {
        return groups.get((start / GROUP) as usize).copied().unwrap_or([0; 32]);
    }
    let left = left_subtree_len(size);
    merge_subtrees_non_root(&groups_cv(start, left, groups), &groups_cv(start + left, size - left, groups), Mode::Hash)
}

fn root_of_groups(len: u64, groups: &[ChainingValue]) -> blake3::Hash {
    let left = left_subtree_len(len);
    merge_subtrees_root(&groups_cv(0, left, groups), &groups_cv(left, len - left, groups), Mode::Hash)
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
