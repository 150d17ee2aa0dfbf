//! Finding nodes beyond the address book, as pure rules and records: a node's signed address
//! record (a pkarr packet under its own key, for the Mainline DHT), the DHT topic under which
//! nodes that keep a board announce themselves, when to publish again, and which of two records
//! wins. What a node announces, and whether it can be reached, is [`super::reachability`].

use core::net::SocketAddr;

use pkarr::dns::rdata::TXT;
use pkarr::{Keypair, SignedPacket};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::identity::{Identity, NodeId};
use crate::protocol::time::Timestamp;

/// The DNS name, under the node's key, of its address record.
pub const RECORD_NAME: &str = "_kaana";
/// The text every address record starts with: the record's format version.
const VERSION: &str = "v=1";
/// How long a resolved record is trusted before it is asked for again (its DNS TTL), in seconds.
pub const RECORD_TTL_SECS: u32 = 300;
/// How often a node publishes its record again when nothing changed: pkarr's advice (the DHT
/// forgets items after about two hours).
pub const REPUBLISH_SECS: u64 = 3600;
/// How often a board announces itself again under the topic (BEP 5 peers are forgotten after
/// about thirty minutes).
pub const REANNOUNCE_SECS: u64 = 15 * 60;
/// At most this many addresses go into a record (a pkarr packet holds 1000 bytes).
pub const MAX_ADDRS: usize = 8;
/// The fixed, versioned string the board topic is derived from.
pub const BOARD_TOPIC: &str = "kaana-like boards v1";
/// What a node says about itself on the DHT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRecord {
    /// Where its server can be reached (`HOST:PORT`), most preferred first.
    pub addrs: Vec<String>,
    /// Whether its server keeps a board.
    pub board: bool,
    /// The key its recovery locator is kept under (hex), so that its peers can keep the
    /// locator alive on the DHT when the node itself is gone (see [`super::locator`]).
    pub locator: Option<String>,
}

/// Why a record was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum RecordError {
    /// Signed by another key than the node asked for.
    #[error("the record is signed by {found}, not by {expected}")]
    OtherKey {
        /// The node asked for.
        expected: NodeId,
        /// The key that signed it.
        found: String,
    },
    /// Not a valid signed packet, or not one of ours.
    #[error("not an address record: {0}")]
    Malformed(String),
}

/// The 20-byte DHT info-hash of the board topic: BLAKE3 of [`BOARD_TOPIC`], cut to 20 bytes.
pub fn board_topic() -> [u8; 20] {
    let hash = blake3::hash(BOARD_TOPIC.as_bytes());
    let mut id = [0u8; 20];
    id.copy_from_slice(&hash.as_bytes()[..20]);
    id
}

/// The record's sequence number when it is signed at `now`, having last published `previous`:
/// microseconds (pkarr's timestamps), and always past the previous one, so that a restart within
/// the same second, or a clock set back, still publishes a record that wins.
pub fn next_seq(now: Timestamp, previous: Option<u64>) -> u64 {
    let at = now.unix().saturating_mul(1_000_000);
    previous.map_or(at, |p| at.max(p.saturating_add(1)))
}

/// Signs `record` as `identity`'s address record, with sequence number `seq` (see [`next_seq`]).
pub fn sign(identity: &Identity, record: &AddressRecord, seq: u64) -> Result<SignedPacket, RecordError> {
    let malformed = |e: &dyn std::fmt::Display| RecordError::Malformed(e.to_string());
    let mut strings = vec![VERSION.to_owned()];
    strings.extend(record.addrs.iter().take(MAX_ADDRS).map(|a| format!("addr={a}")));
    if record.board {
        strings.push("board".to_owned());
    }
    if let Some(key) = &record.locator {
        strings.push(format!("loc={key}"));
    }
    let mut txt = TXT::new();
    for s in &strings {
        txt.add_string(s).map_err(|e| malformed(&e))?;
    }
    let name = RECORD_NAME.try_into().map_err(|e| malformed(&e))?;
    SignedPacket::builder()
        .txt(name, txt.into_owned(), RECORD_TTL_SECS)
        .timestamp(seq.into())
        .sign(&Keypair::from_secret_key(&identity.seed()))
        .map_err(|e| malformed(&e))
}

/// Reads `node`'s address record from `packet`: refused if another key signed it, or if it
/// holds no record of ours. Addresses that are not `HOST:PORT` are left out.
pub fn read(node: &NodeId, packet: &SignedPacket) -> Result<AddressRecord, RecordError> {
    if packet.public_key().as_bytes() != node.as_bytes() {
        return Err(RecordError::OtherKey { expected: *node, found: packet.public_key().to_z32() });
    }
    let mut found = None;
    for rr in packet.resource_records(RECORD_NAME) {
        let pkarr::dns::rdata::RData::TXT(txt) = &rr.rdata else { continue };
        let strings: Vec<String> =
            txt.iter_raw().map(|(k, v)| (String::from_utf8_lossy(k), v)).map(|(k, v)| join(&k, v)).collect();
        if strings.first().map(String::as_str) != Some(VERSION) {
            continue;
        }
        let addrs = strings
            .iter()
            .filter_map(|s| s.strip_prefix("addr="))
            .filter(|a| is_host_port(a))
            .take(MAX_ADDRS)
            .map(str::to_owned)
            .collect();
        let locator = strings
            .iter()
            .filter_map(|s| s.strip_prefix("loc="))
            .find(|k| k.len() == 64 && k.bytes().all(|b| b.is_ascii_hexdigit()))
            .map(str::to_owned);
        found = Some(AddressRecord { addrs, board: strings.iter().any(|s| s == "board"), locator });
        break;
    }
    found.ok_or_else(|| RecordError::Malformed(format!("no {RECORD_NAME} record of version 1")))
}

fn join(key: &str, value: Option<&[u8]>) -> String {
    match value {
        Some(v) => format!("{key}={}", String::from_utf8_lossy(v)),
        None => key.to_owned(),
    }
}

/// The bytes a record is kept as (signature, sequence number and DNS packet: pkarr's relay
/// payload), for [`read_bytes`].
pub fn to_bytes(packet: &SignedPacket) -> Vec<u8> {
    packet.to_relay_payload().to_vec()
}

/// Reads `node`'s record kept as bytes ([`to_bytes`]), checking its signature against `node`'s
/// key again; returns it and its sequence number.
pub fn read_bytes(node: &NodeId, bytes: &[u8]) -> Result<(AddressRecord, u64), RecordError> {
    let malformed = |e: &dyn std::fmt::Display| RecordError::Malformed(e.to_string());
    let key = pkarr::PublicKey::try_from(node.as_bytes()).map_err(|e| malformed(&e))?;
    let packet =
        SignedPacket::from_relay_payload(&key, &bytes::Bytes::copy_from_slice(bytes)).map_err(|e| malformed(&e))?;
    Ok((read(node, &packet)?, packet.timestamp().as_u64()))
}

/// How far ahead of `now` a record's sequence number (its signing time) may be before it is
/// taken for a clock that was wrong: a day.
pub const FUTURE_SLACK_SECS: u64 = 86_400;

/// Whether a record with sequence number `fetched` replaces one already known with `known`, at
/// `now`: only a newer one does, so a replayed older record changes nothing. A known record
/// signed more than [`FUTURE_SLACK_SECS`] in the future (a peer whose clock was wrong) is
/// replaced by any record that is not, else the peer could never be followed again.
pub fn replaces(known: Option<u64>, fetched: u64, now: Timestamp) -> bool {
    let horizon = now.unix().saturating_add(FUTURE_SLACK_SECS).saturating_mul(1_000_000);
    match known {
        None => true,
        Some(k) if k > horizon => fetched > k || fetched <= horizon,
        Some(k) => fetched > k,
    }
}

/// Whether a peer's record resolved at `resolved_at` is still fresh at `now` (within its TTL):
/// then it is not asked for again.
pub fn fresh(resolved_at: Timestamp, now: Timestamp) -> bool {
    now.unix() < resolved_at.unix().saturating_add(u64::from(RECORD_TTL_SECS)) && now >= resolved_at
}

/// Whether a node that last published `last` (its time and addresses) must publish again at `now`
/// with `addrs`: when it never did, when the addresses changed, or after [`REPUBLISH_SECS`].
pub fn publish_due(last: Option<(Timestamp, &[String])>, addrs: &[String], now: Timestamp) -> bool {
    match last {
        None => true,
        Some((at, old)) => old != addrs || now.unix() >= at.unix().saturating_add(REPUBLISH_SECS) || now < at,
    }
}

/// Whether `addr` is `HOST:PORT` (IPv6 hosts in brackets).
pub fn is_host_port(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = addr.rsplit_once(':') else { return false };
    let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    port.parse::<u16>().is_ok() && !host.is_empty() && host.chars().all(name_ok)
}

/// Reads a bootstrap setting as a person writes it: `public` (the public DHT: `None`), `none`
/// (no DHT: an empty list), or `HOST:PORT` nodes separated by commas or spaces.
pub fn parse_bootstrap(text: &str) -> Result<Option<Vec<String>>, String> {
    match text.trim() {
        "public" => return Ok(None),
        "none" | "off" | "" => return Ok(Some(Vec::new())),
        _ => {}
    }
    let nodes: Vec<String> =
        text.split([',', ' ']).map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
    if let Some(bad) = nodes.iter().find(|a| !is_host_port(a)) {
        return Err(format!("DHT bootstrap node {bad:?} is not HOST:PORT (or say `public` or `none`)"));
    }
    Ok(Some(nodes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: u64) -> Timestamp {
        Timestamp::from_unix(1_800_000_000 + s)
    }

    #[test]
    fn a_record_round_trips_and_refuses_other_keys() {
        let a = Identity::from_seed([1; 32]);
        let m = Identity::from_seed([2; 32]);
        let record = AddressRecord {
            addrs: vec!["127.0.0.1:7447".into(), "example.org:7000".into()],
            board: true,
            locator: Some("ab".repeat(32)),
        };
        let packet = sign(&a, &record, next_seq(t(0), None)).unwrap();
        assert_eq!(read(&a.node_id(), &packet).unwrap(), record);
        assert_eq!(
            read_bytes(&a.node_id(), &to_bytes(&packet)).unwrap(),
            (record.clone(), packet.timestamp().as_u64())
        );
        let forged = sign(&m, &record, next_seq(t(1), None)).unwrap();
        assert!(matches!(read(&a.node_id(), &forged), Err(RecordError::OtherKey { .. })));
        // Tampered bytes fail the signature.
        let mut bytes = to_bytes(&packet);
        let last = bytes.len() - 1;
        bytes[last] ^= 1;
        assert!(read_bytes(&a.node_id(), &bytes).is_err());
        // Another key's record, kept as bytes, does not pass as this node's.
        assert!(read_bytes(&a.node_id(), &to_bytes(&forged)).is_err());
        assert!(read_bytes(&a.node_id(), &[]).is_err());
    }

    #[test]
    fn a_record_without_ours_is_refused_and_bad_addresses_dropped() {
        let a = Identity::from_seed([1; 32]);
        let record = AddressRecord { addrs: vec!["no port".into(), "1.2.3.4:5".into()], board: false, locator: None };
        let packet = sign(&a, &record, 1).unwrap();
        assert_eq!(read(&a.node_id(), &packet).unwrap().addrs, ["1.2.3.4:5"]);
        let other = SignedPacket::builder()
            .txt("_other".try_into().unwrap(), TXT::new().with_string("v=1").unwrap(), 300)
            .timestamp(1.into())
            .sign(&Keypair::from_secret_key(&a.seed()))
            .unwrap();
        assert!(matches!(read(&a.node_id(), &other), Err(RecordError::Malformed(_))));
    }

    #[test]
    fn sequence_numbers_only_move_forward() {
        assert_eq!(next_seq(t(0), None), t(0).unix() * 1_000_000);
        let first = next_seq(t(5), None);
        assert_eq!(next_seq(t(5), Some(first)), first + 1);
        assert_eq!(next_seq(t(0), Some(first)), first + 1, "a clock set back still moves forward");
        let now = t(0);
        assert!(replaces(None, 1, now));
        assert!(replaces(Some(1), 2, now));
        assert!(!replaces(Some(2), 2, now));
        assert!(!replaces(Some(3), 2, now), "an older record is ignored");
        let future = next_seq(t(10 * 86_400), None);
        assert!(replaces(Some(future), next_seq(now, None), now), "a record from a wrong clock gives way");
        assert!(!replaces(Some(future), future - 1, now), "but not to another from the future");
        assert!(!replaces(Some(next_seq(t(3600), None)), next_seq(now, None), now), "an hour ahead is skew, not wrong");
    }

    #[test]
    fn publishing_is_due_hourly_and_on_change() {
        let addrs = vec!["1.2.3.4:5".to_owned()];
        assert!(publish_due(None, &addrs, t(0)));
        assert!(!publish_due(Some((t(0), &addrs)), &addrs, t(REPUBLISH_SECS - 1)));
        assert!(publish_due(Some((t(0), &addrs)), &addrs, t(REPUBLISH_SECS)));
        assert!(publish_due(Some((t(0), &[])), &addrs, t(1)));
        assert!(fresh(t(0), t(299)) && !fresh(t(0), t(300)) && !fresh(t(10), t(0)));
    }

    #[test]
    fn bootstrap_settings() {
        assert_eq!(parse_bootstrap("public"), Ok(None));
        assert_eq!(parse_bootstrap("none"), Ok(Some(vec![])));
        assert_eq!(
            parse_bootstrap("127.0.0.1:1, 127.0.0.1:2"),
            Ok(Some(vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()]))
        );
        assert!(parse_bootstrap("127.0.0.1").is_err());
    }
}
