//! A board: the offers a node's server holds and lists for others. Pure: `now` is a parameter.
//!
//! A board takes an offer only if its signature is valid, it has not expired, and its signer is
//! under the per-signer cap; it drops offers as they expire; and it holds at most `total_cap`.
//! Offers are kept by id, so the same offer arriving twice (forwarded by two boards) is one.
//!
//! Fresh keys cost nothing, so a flood of signers can fill a board. An offer *vouched for* (its
//! signer is a node this board's node knows, or that node itself) is taken even
//! then: it replaces the offer from a stranger that expires first. Strangers' offers wait for
//! room.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::protocol::identity::NodeId;
use crate::protocol::market::{self, MarketError, Offer, RecordId};
use crate::protocol::record::Signed;
use crate::protocol::time::Timestamp;

/// Offers one signer may have on a board at once.
pub const PER_SIGNER_CAP: usize = 8;
/// Offers a board holds at once.
pub const TOTAL_CAP: usize = 4096;
/// Offers listed per page.
pub const PAGE: usize = 500;
/// Bytes of offers (as JSON) a page holds at most: well inside a frame.
pub const PAGE_BYTES: usize = 512 << 10;

/// Offers a node keeps of those it saw on earlier listings of other boards (`offers/seen.json`,
/// where `accept` looks), besides the last listing's: four full boards' worth. Boards list at
/// most [`TOTAL_CAP`] each, but the offers of every listing would otherwise pile up until they
/// expire (up to 30 days), a hostile board's fresh ones each time.
pub const SEEN_CAP: usize = 4 * TOTAL_CAP;

/// What `offers/seen.json` keeps, most recent first: every offer just listed, then the ones it
/// held (most recent first), each once, while there are fewer than [`SEEN_CAP`] in all. The
/// last listing is never cut: an offer a person was just shown can be taken.
pub fn keep_seen<T, I: Eq + std::hash::Hash + Copy>(
    listed: impl IntoIterator<Item = (I, T)>,
    held: impl IntoIterator<Item = (I, T)>,
) -> Vec<(I, T)> {
    let mut ids = std::collections::HashSet::new();
    let mut kept: Vec<(I, T)> = listed.into_iter().filter(|(id, _)| ids.insert(*id)).collect();
    let room = SEEN_CAP.saturating_sub(kept.len());
    kept.extend(held.into_iter().filter(|(id, _)| ids.insert(*id)).take(room));
    kept
}

fn encoded_len(offer: &Signed<Offer>) -> usize {
    serde_json::to_vec(offer).map_or(usize::MAX / 2, |v| v.len())
}

/// Why a board refused an offer.
#[derive(Debug, Error)]
pub enum BoardRefusal {
    /// The offer is not valid (signature, fields, expired).
    #[error(transparent)]
    Invalid(#[from] MarketError),
    /// Its signer already has as many offers here as allowed.
    #[error("node {0} already has {PER_SIGNER_CAP} offers on this board")]
    SignerCap(NodeId),
    /// The board is full.
    #[error("this board is full ({TOTAL_CAP} offers)")]
    Full,
}

/// What inserting an offer did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Inserted {
    /// It was new here.
    New,
    /// The board already had it.
    Known,
}

/// A board's offers.
#[derive(Debug, Clone, Default)]
pub struct Board {
    offers: BTreeMap<RecordId, Signed<Offer>>,
    /// The offers vouched for (never replaced by another).
    vouched: std::collections::BTreeSet<RecordId>,
}

impl Board {
    /// A board holding `offers` (invalid or expired ones are dropped, and caps applied).
    pub fn from_offers(offers: impl IntoIterator<Item = Signed<Offer>>, now: Timestamp) -> Self {
        let mut board = Board::default();
        for offer in offers {
            let _ = board.insert(offer, now);
        }
        board
    }

    /// Takes `offer` if it is valid at `now` and within the caps.
    pub fn insert(&mut self, offer: Signed<Offer>, now: Timestamp) -> Result<Inserted, BoardRefusal> {
        self.insert_as(offer, now, false)
    }

    /// Takes `offer` as [`Board::insert`] does; `vouched`: its signer is known
    /// here, so a full board makes room for it by dropping the stranger's offer that expires
    /// first.
    pub fn insert_as(&mut self, offer: Signed<Offer>, now: Timestamp, vouched: bool) -> Result<Inserted, BoardRefusal> {
        let id = market::check_offer(&offer, now)?;
        if self.offers.contains_key(&id) {
            if vouched {
                self.vouched.insert(id);
            }
            return Ok(Inserted::Known);
        }
        self.purge(now);
        let signer = offer.body.node;
        if self.offers.values().filter(|o| o.body.node == signer).count() >= PER_SIGNER_CAP {
            return Err(BoardRefusal::SignerCap(signer));
        }
        if self.offers.len() >= TOTAL_CAP {
            let stranger = self
                .offers
                .iter()
                .filter(|(id, _)| !self.vouched.contains(id))
                .min_by_key(|(_, o)| o.body.expires_at)
                .map(|(id, _)| *id);
            match stranger {
                Some(out) if vouched => {
                    self.offers.remove(&out);
                }
                _ => return Err(BoardRefusal::Full),
            }
        }
        self.offers.insert(id, offer);
        if vouched {
            self.vouched.insert(id);
        }
        Ok(Inserted::New)
    }

    /// Drops offers that have expired at `now`; returns whether any were dropped.
    pub fn purge(&mut self, now: Timestamp) -> bool {
        let before = self.offers.len();
        self.offers.retain(|_, o| now < o.body.expires_at);
        let offers = &self.offers;
        self.vouched.retain(|id| offers.contains_key(id));
        self.offers.len() != before
    }

    /// Removes one offer (e.g. once it is taken).
    pub fn remove(&mut self, id: &RecordId) -> bool {
        self.vouched.remove(id);
        self.offers.remove(id).is_some()
    }

    /// Up to [`PAGE`] offers with ids after `after`, and whether more follow.
    pub fn page(&self, after: Option<RecordId>, now: Timestamp) -> (Vec<Signed<Offer>>, bool) {
        let range = match after {
            Some(a) => self.offers.range((std::ops::Bound::Excluded(a), std::ops::Bound::Unbounded)),
            None => self.offers.range(..),
        };
        // At most PAGE offers and PAGE_BYTES of them encoded (offers with many long addresses
        // would otherwise make a page too large for one frame), but at least one.
        let live = range.filter(|(_, o)| now < o.body.expires_at).map(|(_, o)| o);
        let (mut page, mut bytes) = (Vec::new(), 0);
        for o in live {
            let len = encoded_len(o);
            if page.len() == PAGE || (!page.is_empty() && bytes + len > PAGE_BYTES) {
                return (page, true);
            }
            bytes += len;
            page.push(o.clone());
        }
        (page, false)
    }

    /// Every offer, by id.
    pub fn offers(&self) -> impl Iterator<Item = (&RecordId, &Signed<Offer>)> {
        self.offers.iter()
    }

    /// Whether offer `id` is here, vouched for.
    pub fn is_vouched(&self, id: &RecordId) -> bool {
        self.vouched.contains(id)
    }

    /// The ids of the offers vouched for.
    pub fn vouched(&self) -> impl Iterator<Item = &RecordId> {
        self.vouched.iter()
    }

    /// How many offers it holds.
    pub fn len(&self) -> usize {
        self.offers.len()
    }

    /// Whether it holds none.
    pub fn is_empty(&self) -> bool {
        self.offers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seen_offers_keep_the_last_listing_whole_then_what_was_held_up_to_the_cap() {
        let listed: Vec<(u32, &str)> = (0..10).map(|i| (i, "new")).collect();
        let held: Vec<(u32, &str)> = (5..20).map(|i| (i, "old")).collect();
        let kept = keep_seen(listed, held);
        assert_eq!(kept.len(), 20, "each once");
        assert!(kept[..10].iter().all(|(_, v)| *v == "new") && kept[10..].iter().all(|(_, v)| *v == "old"));
        let many = |from: u32, n: usize, v| (from..from + n as u32).map(move |i| (i, v));
        let kept = keep_seen(many(0, 100, "new"), many(1_000_000, SEEN_CAP, "old"));
        assert_eq!(kept.len(), SEEN_CAP);
        assert_eq!(kept.iter().filter(|(_, v)| *v == "new").count(), 100, "the last listing is all kept");
        assert_eq!(kept[100], (1_000_000, "old"), "then the most recent of those held");
        // A listing larger than the cap is kept whole, and nothing of before.
        let kept = keep_seen(many(0, SEEN_CAP + 5, "new"), many(1_000_000, 10, "old"));
        assert_eq!(kept, many(0, SEEN_CAP + 5, "new").collect::<Vec<_>>());
    }

    use crate::protocol::identity::Identity;

    fn offer(ident: &Identity, n: u64, expires: u64) -> Signed<Offer> {
        Signed::sign(
            Offer {
                node: ident.node_id(),
                addrs: vec!["127.0.0.1:1".into()],
                size: 1 + n,
                grace_secs: 60,
                expires_at: Timestamp::from_unix(expires),
                nonce: format!("{n:032x}"),
                history: None,
            },
            ident,
        )
        .unwrap()
    }

    #[test]
    fn caps_dedup_and_expiry() {
        let now = Timestamp::from_unix(100);
        let (a, b) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let mut board = Board::default();
        for n in 0..PER_SIGNER_CAP as u64 {
            assert_eq!(board.insert(offer(&a, n, 1_000), now).unwrap(), Inserted::New);
        }
        assert_eq!(board.insert(offer(&a, 0, 1_000), now).unwrap(), Inserted::Known);
        assert!(matches!(board.insert(offer(&a, 99, 1_000), now), Err(BoardRefusal::SignerCap(_))));
        assert_eq!(board.insert(offer(&b, 0, 200), now).unwrap(), Inserted::New);
        assert!(matches!(board.insert(offer(&b, 1, 50), now), Err(BoardRefusal::Invalid(_))));
        assert_eq!(board.len(), PER_SIGNER_CAP + 1);
        let (page, more) = board.page(None, Timestamp::from_unix(300));
        assert_eq!((page.len(), more), (PER_SIGNER_CAP, false));
        assert!(board.purge(Timestamp::from_unix(300)));
        assert_eq!(board.len(), PER_SIGNER_CAP);
    }

    #[test]
    fn a_board_full_of_strangers_still_takes_a_vouched_offer() {
        let now = Timestamp::from_unix(1_000);
        let mut board = Board::default();
        let strangers: Vec<Identity> = (0..TOTAL_CAP / PER_SIGNER_CAP)
            .map(|i| Identity::from_seed(*blake3::hash(&(i as u64).to_le_bytes()).as_bytes()))
            .collect();
        for (i, s) in strangers.iter().enumerate() {
            for n in 0..PER_SIGNER_CAP as u64 {
                assert_eq!(board.insert(offer(s, n, 10_000 + i as u64), now).unwrap(), Inserted::New);
            }
        }
        assert_eq!(board.len(), TOTAL_CAP);
        let late = Identity::from_seed([9; 32]);
        assert!(matches!(board.insert(offer(&late, 0, 50_000), now), Err(BoardRefusal::Full)));
        // Vouched for: it replaces the stranger's offer that expires first.
        let friend = Identity::from_seed([8; 32]);
        assert_eq!(board.insert_as(offer(&friend, 0, 50_000), now, true).unwrap(), Inserted::New);
        assert_eq!(board.len(), TOTAL_CAP);
        assert!(board.offers.values().any(|o| o.body.node == friend.node_id()));
        assert_eq!(board.offers.values().filter(|o| o.body.node == strangers[0].node_id()).count(), PER_SIGNER_CAP - 1);
        // A board of vouched offers only takes no more.
        let mut full = Board::default();
        for (i, s) in strangers.iter().enumerate() {
            for n in 0..PER_SIGNER_CAP as u64 {
                full.insert_as(offer(s, n, 10_000 + i as u64), now, true).unwrap();
            }
        }
        assert!(matches!(full.insert_as(offer(&friend, 0, 50_000), now, true), Err(BoardRefusal::Full)));
    }

    #[test]
    fn an_offer_expiring_beyond_the_horizon_is_refused() {
        let now = Timestamp::from_unix(1_000);
        let c = Identity::from_seed([3; 32]);
        let mut board = Board::default();
        let horizon = 1_000 + market::MAX_OFFER_TTL_SECS;
        assert_eq!(board.insert(offer(&c, 0, horizon), now).unwrap(), Inserted::New);
        assert!(matches!(board.insert(offer(&c, 1, horizon + 2 * 3_600), now), Err(BoardRefusal::Invalid(_))));
        assert!(matches!(board.insert(offer(&c, 2, 1_000 + 3_650 * 86_400), now), Err(BoardRefusal::Invalid(_))));
    }

    #[test]
    fn a_page_of_offers_with_long_addresses_still_fits_a_frame() {
        let mut board = Board::default();
        // Four labels of 60 letters and one of 6, then a port: 255 characters.
        let long = format!("{}.{}:7447", vec!["a".repeat(60); 4].join("."), "b".repeat(6));
        assert_eq!(long.len(), 255);
        for n in 0..(PAGE as u64 + 100) {
            let ident = Identity::from_seed([
                (n % 251) as u8 + 1,
                (n / 251) as u8 + 1,
                3,
                4,
                5,
                6,
                7,
                8,
                9,
                10,
                11,
                12,
                13,
                14,
                15,
                16,
                17,
                18,
                19,
                20,
                21,
                22,
                23,
                24,
                25,
                26,
                27,
                28,
                29,
                30,
                31,
                32,
            ]);
            let body = Offer {
                node: ident.node_id(),
                addrs: vec![long.clone(); crate::protocol::market::MAX_ADDRS],
                size: 1,
                grace_secs: 60,
                expires_at: Timestamp::from_unix(2_000),
                nonce: format!("{n:032x}"),
                history: None,
            };
            board.insert(Signed::sign(body, &ident).unwrap(), Timestamp::from_unix(1_000)).unwrap();
        }
        let (mut seen, mut after) = (0, None);
        loop {
            let (page, more) = board.page(after, Timestamp::from_unix(1_000));
            let bytes = serde_json::to_vec(&page).unwrap().len();
            assert!(bytes <= PAGE_BYTES + 4_096, "a page of {bytes} bytes");
            assert!(!page.is_empty());
            seen += page.len();
            after = RecordId::of(&page.last().unwrap().body).ok();
            if !more {
                break;
            }
        }
        assert_eq!(seen, PAGE + 100, "every offer is on some page");
    }
}
