//! The recovery locator, as pure code: the few bytes a node rebuilt from its recovery phrase
//! alone needs to find its peers again (each contract's peer id and its last address), kept on
//! the Mainline DHT as a BEP 44 mutable item under a key derived from the node's secret. That
//! secret finds it, signs it, and alone decrypts it (a BLAKE3 keystream from the secret and the
//! item's sequence number); it is always 900 bytes. The node's address record names the key, so
//! that its peers can store the signed item again and keep it alive after the node is gone.

use mainline::{MutableItem, SigningKey};

use crate::protocol::identity::{Identity, NodeId};

/// The format's version, the first byte of the plain text.
const VERSION: u8 = 1;
/// BEP 44 values are at most 1000 bytes; the locator stays well inside.
pub const MAX_BYTES: usize = 900;

/// Where a rebuilt node finds its peers.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Locator {
    /// Each peer (a contract's other side) and its last address (`HOST:PORT`), newest first.
    pub peers: Vec<(NodeId, String)>,
}

/// The key as its peers learn it from the node's address record (hex).
pub fn key_hex(identity: &Identity) -> String {
    crate::protocol::encoding::hex_encode(&key(identity))
}

/// The key the locator is signed with, derived from the node's secret.
fn signing_key(identity: &Identity) -> SigningKey {
    SigningKey::from_bytes(&blake3::derive_key("kaana-like 2026-11 recovery locator key", &identity.seed()))
}

/// The public key the locator is kept under on the DHT (not the node id).
pub fn key(identity: &Identity) -> [u8; 32] {
    signing_key(identity).verifying_key().to_bytes()
}

fn keystream(identity: &Identity, seq: i64, len: usize) -> Vec<u8> {
    let key = blake3::derive_key("kaana-like 2026-11 recovery locator encryption", &identity.seed());
    let mut out = vec![0u8; len];
    blake3::Hasher::new_keyed(&key).update(&seq.to_be_bytes()).finalize_xof().fill(&mut out);
    out
}

/// The locator's plain bytes: the version, how many peers, then per peer its 32-byte id, the
/// address's length and the address (as many peers as fit), padded with zeros to
/// [`MAX_BYTES`], so that its size tells nothing of how many peers there are.
pub fn encode(locator: &Locator) -> Vec<u8> {
    let mut out = vec![VERSION, 0];
    let mut count: u8 = 0;
    for (node, addr) in &locator.peers {
        let addr = addr.as_bytes();
        let Ok(len) = u8::try_from(addr.len()) else { continue };
        if out.len() + 33 + addr.len() > MAX_BYTES || count == u8::MAX {
            break;
        }
        out.extend_from_slice(node.as_bytes());
        out.push(len);
        out.extend_from_slice(addr);
        count += 1;
    }
    out[1] = count;
    out.resize(MAX_BYTES, 0);
    out
}

/// Reads [`encode`]'s bytes; `None` if they are not a locator of this version.
pub fn decode(bytes: &[u8]) -> Option<Locator> {
    let (&version, rest) = bytes.split_first()?;
    if version != VERSION {
        return None;
    }
    let (&count, mut rest) = rest.split_first()?;
    let mut peers = Vec::new();
    for _ in 0..count {
        let id: [u8; 32] = rest.get(..32)?.try_into().ok()?;
        let len = usize::from(*rest.get(32)?);
        let addr = std::str::from_utf8(rest.get(33..33 + len)?).ok()?;
        peers.push((NodeId::from_bytes(id).ok()?, addr.to_owned()));
        rest = &rest[33 + len..];
    }
    Some(Locator { peers })
}

/// The locator sealed as a signed DHT item with sequence number `seq` (larger than any before).
pub fn seal(identity: &Identity, locator: &Locator, seq: i64) -> MutableItem {
    let mut bytes = encode(locator);
    for (b, k) in bytes.iter_mut().zip(keystream(identity, seq, MAX_BYTES + 1)) {
        *b ^= k;
    }
    MutableItem::new(signing_key(identity), &bytes, seq, None)
}

/// Opens an item found under [`key`]: `None` if it is not this node's locator.
pub fn open(identity: &Identity, item: &MutableItem) -> Option<Locator> {
    if *item.key() != key(identity) {
        return None;
    }
    let mut bytes = item.value().to_vec();
    let stream = keystream(identity, item.seq(), bytes.len());
    for (b, k) in bytes.iter_mut().zip(stream) {
        *b ^= k;
    }
    decode(&bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_secret_finds_and_opens_it() {
        let me = Identity::from_seed([1; 32]);
        let other = Identity::from_seed([2; 32]);
        let peers = vec![(other.node_id(), "127.0.0.1:7447".to_owned()), (me.node_id(), "example.org:1".to_owned())];
        let locator = Locator { peers };
        let item = seal(&me, &locator, 42);
        assert_eq!(open(&me, &item), Some(locator.clone()));
        assert_ne!(key(&me), *me.node_id().as_bytes(), "not kept under the node id");
        assert_eq!(open(&other, &item), None, "another secret finds nothing");
        assert!(!item.value().windows(9).any(|w| w == b"127.0.0.1"), "the addresses are not readable");
        // The same locator sealed again under another number reads differently.
        assert_ne!(seal(&me, &locator, 43).value(), item.value());
    }

    #[test]
    fn it_stays_within_the_dht_limit_and_decoding_never_panics() {
        let me = Identity::from_seed([1; 32]);
        let many: Vec<(NodeId, String)> = (0..100u8)
            .map(|i| (Identity::from_seed([i; 32]).node_id(), format!("host-{i}.example.org:7447")))
            .collect();
        let bytes = encode(&Locator { peers: many });
        assert_eq!(bytes.len(), MAX_BYTES, "always the same size");
        assert_eq!(encode(&Locator::default()).len(), MAX_BYTES);
        assert!(decode(&bytes).is_some_and(|l| l.peers.len() > 10));
        for cut in 0..bytes.len() {
            let _ = decode(&bytes[..cut]);
        }
        let _ = me;
    }
}
