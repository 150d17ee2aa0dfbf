//! Node identity: an ed25519 key pair, the node id that names it everywhere, and the recovery
//! phrase that brings it back.
//!
//! A node id is the public key in z-base-32 (52 characters), the same text pkarr uses, so that
//! an id can later be looked up on the Mainline DHT as it is. The secret never leaves this
//! module except as the key file's text or the recovery phrase, and `Debug` never shows it.

use std::fmt;
use std::str::FromStr;

use ed25519_dalek::{Signer as _, SigningKey, VerifyingKey};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

use crate::protocol::encoding::{self, DecodeError};

/// Bytes of the checksum appended to the secret in a recovery phrase.
const PHRASE_CHECKSUM: usize = 3;
/// Characters per group in a recovery phrase.
const PHRASE_GROUP: usize = 4;

/// Why a node id, signature, key or phrase was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum IdentityError {
    /// The node id's text is not 52 z-base-32 characters.
    #[error("not a node id ({0})")]
    NodeIdText(DecodeError),
    /// The node id decodes, but is not a valid ed25519 public key.
    #[error("not a node id (not a valid ed25519 public key)")]
    NodeIdKey,
    /// The signature's text is not 128 lowercase hex digits.
    #[error("not a signature ({0})")]
    SignatureText(DecodeError),
    /// The signature does not match the message and key.
    #[error("signature does not match")]
    BadSignature,
    /// The key file does not hold a 64-hex-digit secret key (its content is never echoed).
    #[error("not a secret key: expected 64 lowercase hex digits")]
    SecretText,
    /// The recovery phrase has the wrong length or a character outside its alphabet.
    #[error("not a recovery phrase: expected 56 letters and digits in groups of 4 ({0})")]
    PhraseText(DecodeError),
    /// The recovery phrase's checksum does not match: a word was mistyped.
    #[error("recovery phrase checksum does not match: check it for a typing mistake")]
    PhraseChecksum,
}

/// A node's public identity: its ed25519 public key.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// The raw public key bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A node id from raw public key bytes, checked to be a valid ed25519 key.
    pub fn from_bytes(bytes: [u8; 32]) -> Result<Self, IdentityError> {
        VerifyingKey::from_bytes(&bytes).map_err(|_| IdentityError::NodeIdKey)?;
        Ok(NodeId(bytes))
    }

    /// Checks `sig` over `msg` with this key.
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), IdentityError> {
        let key = VerifyingKey::from_bytes(&self.0).map_err(|_| IdentityError::NodeIdKey)?;
        let sig = ed25519_dalek::Signature::from_bytes(&sig.0);
        // Strict: refuses small-order keys and non-canonical signatures, so one message has one
        // valid signature text per key.
        key.verify_strict(msg, &sig).map_err(|_| IdentityError::BadSignature)
    }

    /// A short form for people (first 8 characters), never for parsing.
    pub fn short(&self) -> String {
        let mut s = self.to_string();
        s.truncate(8);
        s
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encoding::zbase32_encode(&self.0))
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bytes = encoding::zbase32_decode::<32>(s).map_err(IdentityError::NodeIdText)?;
        NodeId::from_bytes(bytes)
    }
}

impl Serialize for NodeId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for NodeId {
    /// Decoded strictly (one spelling per key), but not checked to be a valid curve point here:
    /// records carry several ids each and are read often (a holder's history reads its kept
    /// generations' records at every commit), and a point's decompression costs more than the
    /// rest of the record's parse. A key that is no valid point fails where it is used: at the
    /// first signature checked against it, and at the handshake. (Text a person types goes
    /// through `FromStr`, which checks it at once.)
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        encoding::zbase32_decode::<32>(&text)
            .map(NodeId)
            .map_err(|e| serde::de::Error::custom(IdentityError::NodeIdText(e)))
    }
}

/// An ed25519 signature, written as 128 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Signature([u8; 64]);

impl Signature {
    /// The raw signature bytes.
    pub fn as_bytes(&self) -> &[u8; 64] {
        &self.0
    }

    /// A signature from raw bytes (not checked until verified).
    pub fn from_bytes(bytes: [u8; 64]) -> Self {
        Signature(bytes)
    }
}

impl fmt::Display for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&encoding::hex_encode(&self.0))
    }
}

impl fmt::Debug for Signature {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Signature({self})")
    }
}

impl FromStr for Signature {
    type Err = IdentityError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        encoding::hex_decode::<64>(s).map(Signature).map_err(IdentityError::SignatureText)
    }
}

impl Serialize for Signature {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Signature {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// A node's secret key. `Debug` shows only the node id.
#[derive(Clone)]
pub struct Identity {
    key: SigningKey,
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Identity").field("node", &self.node_id()).finish_non_exhaustive()
    }
}

impl Identity {
    /// The identity whose secret seed is `seed`.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Identity { key: SigningKey::from_bytes(&seed) }
    }

    /// The 32-byte secret seed. Only the key file, the recovery phrase and key derivations
    /// (TLS, keystreams) may see it.
    pub fn seed(&self) -> [u8; 32] {
        self.key.to_bytes()
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        NodeId(self.key.verifying_key().to_bytes())
    }

    /// Signs `msg`.
    pub fn sign(&self, msg: &[u8]) -> Signature {
        Signature(self.key.sign(msg).to_bytes())
    }

    /// The key file's text: the seed as 64 hex digits and a newline.
    pub fn to_key_file(&self) -> String {
        format!("{}\n", encoding::hex_encode(&self.seed()))
    }

    /// Reads the key file's text. The error never repeats the file's content.
    pub fn from_key_file(text: &str) -> Result<Self, IdentityError> {
        encoding::hex_decode::<32>(text.trim_end_matches('\n'))
            .map(Identity::from_seed)
            .map_err(|_| IdentityError::SecretText)
    }

    /// The recovery phrase: the seed and a 3-byte checksum, z-base-32, in dash-separated
    /// groups of four (14 groups) so that a person can write it down and type it back.
    pub fn recovery_phrase(&self) -> String {
        let seed = self.seed();
        let mut bytes = Vec::with_capacity(32 + PHRASE_CHECKSUM);
        bytes.extend_from_slice(&seed);
        bytes.extend_from_slice(&phrase_checksum(&seed));
        let text = encoding::zbase32_encode(&bytes);
        let groups: Vec<&str> =
            text.as_bytes().chunks(PHRASE_GROUP).map(|c| std::str::from_utf8(c).unwrap_or_default()).collect();
        groups.join("-")
    }

    /// Rebuilds an identity from its recovery phrase. Spaces, dashes, line breaks and case
    /// are ignored; a typing mistake is caught by the checksum.
    pub fn from_recovery_phrase(phrase: &str) -> Result<Self, IdentityError> {
        let compact: String =
            phrase.chars().filter(|c| !c.is_whitespace() && *c != '-').flat_map(char::to_lowercase).collect();
        let bytes =
            encoding::zbase32_decode::<{ 32 + PHRASE_CHECKSUM }>(&compact).map_err(IdentityError::PhraseText)?;
        let mut seed = [0u8; 32];
        seed.copy_from_slice(&bytes[..32]);
        if bytes[32..] != phrase_checksum(&seed) {
            return Err(IdentityError::PhraseChecksum);
        }
        Ok(Identity::from_seed(seed))
    }
}

fn phrase_checksum(seed: &[u8; 32]) -> [u8; PHRASE_CHECKSUM] {
    let hash = blake3::derive_key("kaana-like 2026-11 recovery phrase checksum", seed);
    let mut out = [0u8; PHRASE_CHECKSUM];
    out.copy_from_slice(&hash[..PHRASE_CHECKSUM]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn node_id_text_round_trips() {
        let id = Identity::from_seed([7; 32]).node_id();
        let text = id.to_string();
        assert_eq!(text.len(), 52);
        assert_eq!(text.parse::<NodeId>(), Ok(id));
        assert!(text.to_uppercase().parse::<NodeId>().is_err());
    }

    #[test]
    fn debug_never_shows_the_secret() {
        let ident = Identity::from_seed([9; 32]);
        let shown = format!("{ident:?}");
        assert!(!shown.contains(&encoding::hex_encode(&[9; 32])));
        assert!(shown.contains(&ident.node_id().to_string()));
    }

    #[test]
    fn a_mistyped_phrase_is_caught() {
        let phrase = Identity::from_seed([3; 32]).recovery_phrase();
        assert_eq!(phrase.split('-').count(), 14);
        let mut chars: Vec<char> = phrase.chars().collect();
        chars[5] = if chars[5] == 'y' { 'b' } else { 'y' };
        let typo: String = chars.into_iter().collect();
        assert_eq!(Identity::from_recovery_phrase(&typo).map(|i| i.node_id()), Err(IdentityError::PhraseChecksum));
    }

    #[test]
    fn key_file_errors_do_not_echo_the_content() {
        let err = Identity::from_key_file("ABCDEF0123 secret stuff").unwrap_err();
        assert!(!err.to_string().contains("secret stuff"));
    }

    proptest! {
        #[test]
        fn phrase_round_trips_with_any_spacing(seed in proptest::array::uniform32(any::<u8>())) {
            let ident = Identity::from_seed(seed);
            let phrase = ident.recovery_phrase();
            let spaced = phrase.replace('-', " ").to_uppercase();
            let back = Identity::from_recovery_phrase(&format!("  {spaced}\n")).map(|i| i.node_id());
            prop_assert_eq!(back, Ok(ident.node_id()));
        }

        #[test]
        fn key_file_round_trips(seed in proptest::array::uniform32(any::<u8>())) {
            let ident = Identity::from_seed(seed);
            let back = Identity::from_key_file(&ident.to_key_file()).map(|i| i.node_id());
            prop_assert_eq!(back, Ok(ident.node_id()));
        }
    }
}
