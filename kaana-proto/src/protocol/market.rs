//! The market's records: offers, the double-signed contract, and termination notices; and the
//! checks a board, an offerer and a taker make on them. Pure: `now` is a parameter.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::encoding;
use crate::protocol::history::History;
use crate::protocol::identity::{Identity, NodeId, Signature};
pub use crate::protocol::record::RecordId;
use crate::protocol::record::{self, Record, RecordError, Signed};
use crate::protocol::time::Timestamp;

/// Addresses an offer may list.
pub const MAX_ADDRS: usize = 8;
/// How far ahead an offer may expire: a board holds an offer no longer than this (plus an hour
/// for clocks that disagree), so a board filled with offers empties again.
pub const MAX_OFFER_TTL_SECS: u64 = 30 * 86_400;
/// Characters one address may have.
const MAX_ADDR_LEN: usize = 255;

/// "I will hold `size` bytes of yours if you hold as much of mine, and keep yours for
/// `grace_secs` after you fail a challenge." Signed by `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Offer {
    /// Who offers.
    pub node: NodeId,
    /// Where its server listens (`HOST:PORT`).
    pub addrs: Vec<String>,
    /// Bytes each side may store at the other.
    pub size: u64,
    /// Seconds a failing peer's data is kept before it may be deleted.
    pub grace_secs: u64,
    /// When the offer lapses.
    pub expires_at: Timestamp,
    /// Random, so that two offers with the same terms have different ids (32 hex digits).
    pub nonce: String,
    /// How much of each side's history the other keeps; none: the newest generation only.
    /// (Left out of the signed encoding when none, so offers made before history still verify.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
}

impl Record for Offer {
    const KIND: &'static str = "offer";
}

impl Offer {
    /// Bytes each side may take at the other: the size and the history allowance.
    pub fn held_bytes(&self) -> u64 {
        self.size.saturating_add(crate::protocol::history::allowance(self.history.as_ref()))
    }
}

/// Why an offer, acceptance, contract or notice was refused.
#[derive(Debug, Error)]
pub enum MarketError {
    /// A signature does not check out.
    #[error(transparent)]
    Signature(#[from] RecordError),
    /// The offer has lapsed.
    #[error("offer {id} expired at {at}")]
    Expired {
        /// The offer.
        id: RecordId,
        /// When it lapsed.
        at: Timestamp,
    },
    /// A field is out of bounds or the parts do not agree.
    #[error("{0}")]
    Invalid(String),
}

fn invalid(msg: impl Into<String>) -> MarketError {
    MarketError::Invalid(msg.into())
}

/// Checks an offer as a board or a taker does: signed by the node it names, well-formed, and
/// not expired at `now`. Returns its id.
pub fn check_offer(offer: &Signed<Offer>, now: Timestamp) -> Result<RecordId, MarketError> {
    offer.verify_by(&offer.body.node)?;
    let id = RecordId::of(&offer.body)?;
    let b = &offer.body;
    if b.size == 0 {
        return Err(invalid(format!("offer {id} is for 0 bytes")));
    }
    if b.grace_secs == 0 {
        return Err(invalid(format!("offer {id} has no grace period")));
    }
    if b.addrs.is_empty() || b.addrs.len() > MAX_ADDRS || b.addrs.iter().any(|a| a.is_empty() || a.len() > MAX_ADDR_LEN)
    {
        return Err(invalid(format!("offer {id} must list 1 to {MAX_ADDRS} addresses")));
    }
    if b.nonce.len() != 32 || encoding::hex_decode::<16>(&b.nonce).is_err() {
        return Err(invalid(format!("offer {id} has a malformed nonce")));
    }
    if let Some(h) = &b.history {
        h.check(b.size).map_err(|e| invalid(format!("offer {id}: {e}")))?;
    }
    if now >= b.expires_at {
        return Err(MarketError::Expired { id, at: b.expires_at });
    }
    if b.expires_at > now.plus_secs(MAX_OFFER_TTL_SECS + 3_600) {
        return Err(invalid(format!("offer {id} expires at {}, more than 30 days ahead", b.expires_at)));
    }
    Ok(id)
}

/// What both sides sign: the terms of one offer between its offerer and its taker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractBody {
    /// The offer this contract takes.
    pub offer: RecordId,
    /// Who made the offer.
    pub offerer: NodeId,
    /// Who took it.
    pub taker: NodeId,
    /// Bytes each side may store at the other.
    pub size: u64,
    /// Seconds a failing side's data is kept before it may be deleted.
    pub grace_secs: u64,
    /// When the taker accepted.
    pub created_at: Timestamp,
    /// The offer's history terms (left out of the signed encoding when none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub history: Option<History>,
}

impl Record for ContractBody {
    const KIND: &'static str = "contract";
}

impl ContractBody {
    /// The contract `taker` proposes by accepting `offer` at `now`.
    pub fn for_offer(offer: &Signed<Offer>, offer_id: RecordId, taker: NodeId, now: Timestamp) -> Self {
        ContractBody {
            offer: offer_id,
            offerer: offer.body.node,
            taker,
            size: offer.body.size,
            grace_secs: offer.body.grace_secs,
            created_at: now,
            history: offer.body.history,
        }
    }

    /// Bytes each side may take at the other: the size and the history allowance.
    pub fn held_bytes(&self) -> u64 {
        self.size.saturating_add(crate::protocol::history::allowance(self.history.as_ref()))
    }

    /// The other side of the contract from `me`, if `me` is a side.
    pub fn peer_of(&self, me: &NodeId) -> Option<NodeId> {
        if *me == self.offerer {
            Some(self.taker)
        } else if *me == self.taker {
            Some(self.offerer)
        } else {
            None
        }
    }
}

/// A contract signed by both sides. Its id is the hash of its body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Contract {
    /// The terms.
    pub body: ContractBody,
    /// The offerer's signature over the body.
    pub offerer_sig: Signature,
    /// The taker's signature over the body.
    pub taker_sig: Signature,
}

impl Contract {
    /// The contract's id.
    pub fn id(&self) -> Result<RecordId, RecordError> {
        RecordId::of(&self.body)
    }

    /// Checks both signatures.
    pub fn verify(&self) -> Result<(), MarketError> {
        let digest = record::digest(&self.body)?;
        for (who, sig) in [(&self.body.offerer, &self.offerer_sig), (&self.body.taker, &self.taker_sig)] {
            who.verify(&digest, sig).map_err(|_| RecordError::Signature { kind: ContractBody::KIND, signer: *who })?;
        }
        if self.body.offerer == self.body.taker {
            return Err(invalid("a contract needs two different nodes"));
        }
        Ok(())
    }
}

/// Checks what a taker proposes for `offer` as the offerer does: the taker signed it, it is the
/// offer's terms unchanged, and the taker is not the offerer. `now` bounds `created_at`.
pub fn check_acceptance(
    offer: &Signed<Offer>,
    offer_id: RecordId,
    proposed: &Signed<ContractBody>,
    authenticated_taker: &NodeId,
    now: Timestamp,
) -> Result<(), MarketError> {
    if proposed.signer != *authenticated_taker || proposed.body.taker != *authenticated_taker {
        return Err(invalid("the acceptance must be signed by the node that sends it"));
    }
    proposed.verify()?;
    let expected = ContractBody::for_offer(offer, offer_id, *authenticated_taker, proposed.body.created_at);
    if proposed.body != expected {
        return Err(invalid(format!("the acceptance does not match the terms of offer {offer_id}")));
    }
    if proposed.body.taker == offer.body.node {
        return Err(invalid("a node cannot accept its own offer"));
    }
    // Clocks differ a little; an acceptance from far in the past or future is a replay or a bug.
    if proposed.body.created_at.unix().abs_diff(now.unix()) > 3_600 {
        return Err(invalid("the acceptance's time is more than an hour off this node's clock"));
    }
    Ok(())
}

/// The offerer's countersignature: the full contract.
pub fn countersign(proposed: Signed<ContractBody>, offerer: &Identity) -> Result<Contract, MarketError> {
    let sig = offerer.sign(&record::digest(&proposed.body)?);
    Ok(Contract { body: proposed.body, offerer_sig: sig, taker_sig: proposed.sig })
}

/// "I end contract `contract`": the data is kept for the grace period, then pruned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Notice {
    /// The contract ended.
    pub contract: RecordId,
    /// Who gives notice.
    pub from: NodeId,
    /// When.
    pub at: Timestamp,
}

impl Record for Notice {
    const KIND: &'static str = "notice";
}

/// A commitment the capacity cannot hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("{size} bytes asked, {free} free of a {capacity}-byte capacity ({committed} committed to contracts)")]
pub struct NoRoom {
    /// What was asked.
    pub size: u64,
    /// What is free.
    pub free: u64,
    /// The node's capacity.
    pub capacity: u64,
    /// What its contracts (not ended) commit already.
    pub committed: u64,
}

/// The capacity rule: a node never commits more than its capacity, counting every contract that
/// has not ended (`committed`).
pub fn room_for(size: u64, committed: u64, capacity: u64) -> Result<(), NoRoom> {
    if committed.saturating_add(size) > capacity {
        return Err(NoRoom { size, free: capacity.saturating_sub(committed), capacity, committed });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The decoders of every signed record never panic on arbitrary bytes, and whatever they
        /// accept encodes back to something they read as the same value.
        #[test]
        fn record_decoders_never_panic_and_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            fn check<T: serde::Serialize + serde::de::DeserializeOwned + PartialEq + std::fmt::Debug>(bytes: &[u8]) -> Result<(), TestCaseError> {
                if let Ok(v) = serde_json::from_slice::<T>(bytes) {
                    let again: T = serde_json::from_slice(&serde_json::to_vec(&v).unwrap()).unwrap();
                    prop_assert_eq!(again, v);
                }
                Ok(())
            }
            check::<Signed<Offer>>(&bytes)?;
            check::<Signed<ContractBody>>(&bytes)?;
            check::<Contract>(&bytes)?;
            check::<Signed<Notice>>(&bytes)?;
        }

        /// Valid records survive being wrapped in arbitrary garbage only if the garbage is
        /// whitespace: a decoder reads exactly one value.
        #[test]
        fn a_valid_offer_round_trips(size in 1u64.., grace in 1u64.., expires in 1u64..4_000_000_000) {
            let ident = Identity::from_seed([6; 32]);
            let body = Offer {
                node: ident.node_id(),
                addrs: vec!["127.0.0.1:7447".into()],
                size,
                grace_secs: grace,
                expires_at: Timestamp::from_unix(expires),
                nonce: "ab".repeat(16),
                history: None,
            };
            let signed = Signed::sign(body, &ident).unwrap();
            let text = serde_json::to_vec(&signed).unwrap();
            let back: Signed<Offer> = serde_json::from_slice(&text).unwrap();
            prop_assert_eq!(&back, &signed);
            prop_assert!(check_offer(&back, Timestamp::from_unix(expires - 1)).is_ok());
            let mut trailing = text.clone();
            trailing.extend_from_slice(b" x");
            prop_assert!(serde_json::from_slice::<Signed<Offer>>(&trailing).is_err());
        }
    }

    fn offer(ident: &Identity, expires: u64) -> Signed<Offer> {
        let body = Offer {
            node: ident.node_id(),
            addrs: vec!["127.0.0.1:7447".into()],
            size: 1 << 30,
            grace_secs: 7 * 86_400,
            expires_at: Timestamp::from_unix(expires),
            nonce: "00112233445566778899aabbccddeeff".into(),
            history: None,
        };
        Signed::sign(body, ident).unwrap()
    }

    #[test]
    fn offers_are_checked() {
        let a = Identity::from_seed([1; 32]);
        let o = offer(&a, 1_000);
        let id = check_offer(&o, Timestamp::from_unix(999)).unwrap();
        assert_eq!(id, RecordId::of(&o.body).unwrap());
        assert!(matches!(check_offer(&o, Timestamp::from_unix(1_000)), Err(MarketError::Expired { .. })));
        let mut bigger = o.clone();
        bigger.body.size += 1;
        assert!(matches!(check_offer(&bigger, Timestamp::from_unix(0)), Err(MarketError::Signature(_))));
        // Signed by someone else than the node it names.
        let b = Identity::from_seed([2; 32]);
        let forged = Signed::sign(o.body.clone(), &b).unwrap();
        assert!(check_offer(&forged, Timestamp::from_unix(0)).is_err());
    }

    #[test]
    fn acceptance_and_contract() {
        let (a, b, c) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]), Identity::from_seed([3; 32]));
        let o = offer(&a, 10_000);
        let oid = check_offer(&o, Timestamp::from_unix(5_000)).unwrap();
        let now = Timestamp::from_unix(5_000);
        let proposed = Signed::sign(ContractBody::for_offer(&o, oid, b.node_id(), now), &b).unwrap();
        check_acceptance(&o, oid, &proposed, &b.node_id(), now).unwrap();
        // Sent by another node than the one that signed it.
        assert!(check_acceptance(&o, oid, &proposed, &c.node_id(), now).is_err());
        // Changed terms.
        let mut cheaper = ContractBody::for_offer(&o, oid, b.node_id(), now);
        cheaper.size /= 2;
        let cheaper = Signed::sign(cheaper, &b).unwrap();
        assert!(check_acceptance(&o, oid, &cheaper, &b.node_id(), now).is_err());
        // Its own offer.
        let own = Signed::sign(ContractBody::for_offer(&o, oid, a.node_id(), now), &a).unwrap();
        assert!(check_acceptance(&o, oid, &own, &a.node_id(), now).is_err());

        let contract = countersign(proposed, &a).unwrap();
        contract.verify().unwrap();
        assert_eq!(contract.body.peer_of(&a.node_id()), Some(b.node_id()));
        assert_eq!(contract.body.peer_of(&c.node_id()), None);
        let mut tampered = contract.clone();
        tampered.body.grace_secs = 1;
        assert!(tampered.verify().is_err());
        let mut swapped = contract;
        std::mem::swap(&mut swapped.offerer_sig, &mut swapped.taker_sig);
        assert!(swapped.verify().is_err());
    }
}
