//! Signed records: a body, its signer, and a signature over a domain-separated hash of the
//! body's canonical encoding.
//!
//! The canonical encoding is the compact JSON of the typed body, fields in declaration order
//! (bodies hold no maps and no floats, so the encoding is a function of the value). A record
//! read from the wire is parsed into its type, re-encoded and hashed; so a received text that
//! differs from the canonical one can still only verify if it means the same value, and every
//! decoder below the body (ids, signatures, times) accepts one spelling only.

use std::fmt;
use std::str::FromStr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::protocol::encoding::{self, DecodeError};
use crate::protocol::identity::{Identity, NodeId, Signature};

/// A kind of signed record. `KIND` separates the hash domains, so a signature made for one
/// kind of record can never be replayed as another.
pub trait Record: Serialize + DeserializeOwned {
    /// The record's kind, e.g. `"offer"`.
    const KIND: &'static str;
}

/// Why a record could not be signed or verified.
#[derive(Debug, Error)]
pub enum RecordError {
    /// The body could not be encoded.
    #[error("cannot encode record body: {0}")]
    Encode(#[from] serde_json::Error),
    /// The signature does not match the body and signer.
    #[error("invalid signature on {kind} record signed by {signer}")]
    Signature {
        /// The record's kind.
        kind: &'static str,
        /// Who claims to have signed it.
        signer: NodeId,
    },
    /// The record was signed by someone else than required.
    #[error("{kind} record is signed by {found}, expected {expected}")]
    WrongSigner {
        /// The record's kind.
        kind: &'static str,
        /// Who should have signed it.
        expected: NodeId,
        /// Who did.
        found: NodeId,
    },
}

/// A record body with its signer and signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signed<T> {
    /// What is signed.
    pub body: T,
    /// The node whose key signed it.
    pub signer: NodeId,
    /// The signature over [`digest`] of the body.
    pub sig: Signature,
}

/// The canonical encoding of a body.
pub fn canonical<T: Record>(body: &T) -> Result<Vec<u8>, RecordError> {
    Ok(serde_json::to_vec(body)?)
}

/// The domain-separated hash a signature covers; also the record's id where it needs one.
pub fn digest<T: Record>(body: &T) -> Result<[u8; 32], RecordError> {
    let context = format!("kaana-like 2026-11 record {}", T::KIND);
    let mut hasher = blake3::Hasher::new_derive_key(&context);
    hasher.update(&canonical(body)?);
    Ok(*hasher.finalize().as_bytes())
}

impl<T: Record> Signed<T> {
    /// Signs `body` with `identity`.
    pub fn sign(body: T, identity: &Identity) -> Result<Self, RecordError> {
        let sig = identity.sign(&digest(&body)?);
        Ok(Signed { body, signer: identity.node_id(), sig })
    }

    /// Checks the signature against the body and the signer.
    pub fn verify(&self) -> Result<(), RecordError> {
        self.signer
            .verify(&digest(&self.body)?, &self.sig)
            .map_err(|_| RecordError::Signature { kind: T::KIND, signer: self.signer })
    }

    /// Checks the signature and that `expected` is the signer.
    pub fn verify_by(&self, expected: &NodeId) -> Result<(), RecordError> {
        if self.signer != *expected {
            return Err(RecordError::WrongSigner { kind: T::KIND, expected: *expected, found: self.signer });
        }
        self.verify()
    }
}

/// The id of an offer or a contract: the domain-separated hash of its body, 64 hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RecordId([u8; 32]);

impl RecordId {
    /// The id of a record body.
    pub fn of<T: Record>(body: &T) -> Result<Self, RecordError> {
        digest(body).map(RecordId)
    }

    /// The raw bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// Whether `prefix` (at least 8 hex digits) starts this id's text.
    pub fn matches(&self, prefix: &str) -> bool {
        prefix.len() >= 8 && self.to_string().starts_with(prefix)
    }

    /// A short form for people (first 12 digits), never for parsing.
    pub fn short(&self) -> String {
        self.to_string()[..12].to_owned()
    }
}

impl fmt::Display for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encoding::hex_encode(&self.0))
    }
}

impl fmt::Debug for RecordId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "RecordId({self})")
    }
}

impl FromStr for RecordId {
    type Err = DecodeError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        encoding::hex_decode::<32>(s).map(RecordId)
    }
}

impl Serialize for RecordId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for RecordId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Note {
        text: String,
        size: u64,
        peer: NodeId,
    }

    impl Record for Note {
        const KIND: &'static str = "test-note";
    }

    #[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct OtherNote {
        text: String,
        size: u64,
        peer: NodeId,
    }

    impl Record for OtherNote {
        const KIND: &'static str = "test-other";
    }

    fn note() -> impl Strategy<Value = (Note, [u8; 32])> {
        ("[ -~]{0,40}", any::<u64>(), proptest::array::uniform32(any::<u8>()), proptest::array::uniform32(any::<u8>()))
            .prop_map(|(text, size, peer_seed, seed)| {
                (Note { text, size, peer: Identity::from_seed(peer_seed).node_id() }, seed)
            })
    }

    #[test]
    fn a_signature_is_bound_to_its_kind() {
        let ident = Identity::from_seed([1; 32]);
        let signed = Signed::sign(Note { text: "a".into(), size: 1, peer: ident.node_id() }, &ident).unwrap();
        let text = serde_json::to_string(&signed).unwrap();
        let other: Signed<OtherNote> = serde_json::from_str(&text).unwrap();
        assert!(other.verify().is_err());
    }

    #[test]
    fn verify_by_names_both_signers() {
        let a = Identity::from_seed([1; 32]);
        let b = Identity::from_seed([2; 32]);
        let signed = Signed::sign(Note { text: "a".into(), size: 1, peer: a.node_id() }, &a).unwrap();
        let err = signed.verify_by(&b.node_id()).unwrap_err().to_string();
        assert!(err.contains(&a.node_id().to_string()) && err.contains(&b.node_id().to_string()));
    }

    proptest! {
        #[test]
        fn sign_then_verify((body, seed) in note()) {
            let signed = Signed::sign(body, &Identity::from_seed(seed)).unwrap();
            prop_assert!(signed.verify().is_ok());
        }

        #[test]
        fn encoding_is_stable((body, seed) in note()) {
            let signed = Signed::sign(body, &Identity::from_seed(seed)).unwrap();
            let first = serde_json::to_string(&signed).unwrap();
            let parsed: Signed<Note> = serde_json::from_str(&first).unwrap();
            prop_assert_eq!(&parsed, &signed);
            prop_assert_eq!(serde_json::to_string(&parsed).unwrap(), first);
            prop_assert!(parsed.verify().is_ok());
        }

        /// Any single flipped bit anywhere in the record's text (body, signer or signature)
        /// makes it either unreadable or invalid.
        #[test]
        fn any_flipped_bit_fails((body, seed) in note(), pos in any::<proptest::sample::Index>(), bit in 0u8..8) {
            let signed = Signed::sign(body, &Identity::from_seed(seed)).unwrap();
            let mut bytes = serde_json::to_vec(&signed).unwrap();
            let i = pos.index(bytes.len());
            bytes[i] ^= 1 << bit;
            if let Ok(parsed) = serde_json::from_slice::<Signed<Note>>(&bytes) {
                prop_assert!(parsed.verify().is_err(), "flip at {} of {} still verifies", i, String::from_utf8_lossy(&bytes));
            }
        }

        #[test]
        fn changed_fields_fail((body, seed) in note(), other_seed in proptest::array::uniform32(any::<u8>())) {
            let ident = Identity::from_seed(seed);
            let signed = Signed::sign(body, &ident).unwrap();
            let mut bigger = signed.clone();
            bigger.body.size = bigger.body.size.wrapping_add(1);
            prop_assert!(bigger.verify().is_err());
            let other = Identity::from_seed(other_seed);
            if other.node_id() != ident.node_id() {
                let mut resigned = signed.clone();
                resigned.signer = other.node_id();
                prop_assert!(resigned.verify().is_err());
            }
            let mut sig = *signed.sig.as_bytes();
            sig[0] ^= 1;
            let mut bad_sig = signed;
            bad_sig.sig = Signature::from_bytes(sig);
            prop_assert!(bad_sig.verify().is_err());
        }
    }
}
