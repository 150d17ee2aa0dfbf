//! Finding nodes beyond the address book, as pure rules and records: a node's signed address
//! record (a pkarr packet under its own key, for the Mainline DHT), the DHT topic under which
//! nodes that keep a board announce themselves, when to publish again, which of two records
//! wins, and whether this node can be reached from outside.

use std::net::{IpAddr, SocketAddr};

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
/// How long, without any peer reaching it, a node with contracts counts itself unreachable:
/// twice the four hours between cron's challenges.
pub const SILENCE_SECS: u64 = 8 * 3600;

/// What a node says about itself on the DHT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressRecord {
    /// Where its server can be reached (`HOST:PORT`), most preferred first.
    pub addrs: Vec<String>,
    /// Whether its server keeps a board.
    pub board: bool,
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
        found = Some(AddressRecord { addrs, board: strings.iter().any(|s| s == "board") });
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

/// Whether a record with sequence number `fetched` replaces one already known with `known`:
/// only a newer one does, so a replayed older record changes nothing.
pub fn replaces(known: Option<u64>, fetched: u64) -> bool {
    known.is_none_or(|k| fetched > k)
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

/// What a node knows of where it can be reached, to build the addresses it announces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Whereabouts {
    /// The addresses the person configured (`advertise`).
    pub advertise: Vec<String>,
    /// The address the server is bound to.
    pub listen: Option<SocketAddr>,
    /// The address the router forwards to it (a port mapping), if one holds.
    pub mapped: Option<SocketAddr>,
    /// The public IP address the DHT's nodes see this node at.
    pub public_ip: Option<IpAddr>,
    /// Whether the DHT is the public one (then loopback and private addresses are of no use to
    /// anyone reading the record, and are left out).
    pub public_dht: bool,
}

/// The addresses a node announces, most preferred first, without repeats: those configured, the
/// router's mapped address, the listen address when it is a definite one, and when it listens on
/// every interface, the public IP the DHT sees with the listen port. On the public DHT, loopback,
/// private and link-local addresses are left out.
pub fn announced(w: &Whereabouts) -> Vec<String> {
    let mut out: Vec<String> = w.advertise.clone();
    out.extend(w.mapped.map(|m| m.to_string()));
    if let Some(listen) = w.listen {
        if !listen.ip().is_unspecified() {
            out.push(listen.to_string());
        } else if let Some(ip) = w.public_ip {
            out.push(SocketAddr::new(ip, listen.port()).to_string());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|a| seen.insert(a.clone()));
    if w.public_dht {
        out.retain(|a| a.parse::<SocketAddr>().map_or(true, |s| is_global(s.ip())));
    }
    out.truncate(MAX_ADDRS);
    out
}

/// Whether `ip` can be reached from the Internet at large (not loopback, private, link-local,
/// unspecified, or shared address space).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            let s = v6.segments();
            !(v6.is_loopback() || v6.is_unspecified() || (s[0] & 0xfe00) == 0xfc00 || (s[0] & 0xffc0) == 0xfe80)
        }
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

/// What the server last learned of its own reachability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sightings {
    /// Whether the server is running.
    pub serving: bool,
    /// When the server started.
    pub since: Option<Timestamp>,
    /// The addresses it last announced.
    pub announced: Vec<String>,
    /// The router's mapping, if one holds (`external` address).
    pub mapped: Option<String>,
    /// Why there is no mapping, if it was asked for and refused.
    pub mapping_error: Option<String>,
    /// When a peer with a contract last reached the server, and which.
    pub last_reached: Option<(Timestamp, NodeId)>,
    /// Whether this node has contracts whose peers should be reaching it.
    pub has_contracts: bool,
}

/// Whether this node can be reached from outside, and why it is thought so: `Some(true)` on
/// evidence (a peer reached it lately, or the router maps a port to it), `Some(false)` when it
/// cannot be (no server, nothing to announce, or peers with contracts silent for
/// [`SILENCE_SECS`]), `None` when nothing tells yet.
pub fn reachable(s: &Sightings, now: Timestamp) -> (Option<bool>, String) {
    if !s.serving {
        return (Some(false), "the server is not running (start `kaana-sync serve`)".into());
    }
    let recent = |t: Timestamp| now.unix() < t.unix().saturating_add(SILENCE_SECS);
    if let Some((at, peer)) = s.last_reached.filter(|(at, _)| recent(*at)) {
        return (Some(true), format!("peer {} reached this node at {at}", peer.short()));
    }
    let up_long = s.since.is_some_and(|since| !recent(since));
    if s.has_contracts && up_long {
        let last = s.last_reached.map_or("never".to_owned(), |(at, _)| format!("last at {at}"));
        let mapping = s.mapping_error.as_ref().map(|e| format!("; the router refused a port mapping: {e}"));
        return (
            Some(false),
            format!(
                "no peer has reached this node for {}h ({last}) though it has contracts{}: forward UDP to the \
                 listen port on the router, or set `advertise`",
                SILENCE_SECS / 3600,
                mapping.unwrap_or_default()
            ),
        );
    }
    if let Some(m) = &s.mapped {
        return (Some(true), format!("the router forwards {m} to this node"));
    }
    if s.announced.is_empty() {
        let why = s.mapping_error.as_ref().map(|e| format!(" (port mapping: {e})")).unwrap_or_default();
        return (
            Some(false),
            format!(
                "no address peers can reach: the server listens on no definite address, no `advertise` is set and no port is mapped{why}"
            ),
        );
    }
    (None, format!("announced at {}; no peer has reached it yet", s.announced.join(", ")))
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
        let record = AddressRecord { addrs: vec!["127.0.0.1:7447".into(), "example.org:7000".into()], board: true };
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
        let record = AddressRecord { addrs: vec!["no port".into(), "1.2.3.4:5".into()], board: false };
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
        assert!(replaces(None, 1));
        assert!(replaces(Some(1), 2));
        assert!(!replaces(Some(2), 2));
        assert!(!replaces(Some(3), 2), "an older record is ignored");
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
    fn announced_addresses() {
        let w = Whereabouts {
            advertise: vec!["backup.example.org:7447".into()],
            listen: Some("0.0.0.0:7447".parse().unwrap()),
            mapped: Some("203.0.113.9:40000".parse().unwrap()),
            public_ip: Some("198.51.100.7".parse().unwrap()),
            public_dht: false,
        };
        assert_eq!(announced(&w), ["backup.example.org:7447", "203.0.113.9:40000", "198.51.100.7:7447"]);
        let lan = Whereabouts { listen: Some("192.168.1.5:7447".parse().unwrap()), ..Whereabouts::default() };
        assert_eq!(announced(&lan), ["192.168.1.5:7447"]);
        assert!(announced(&Whereabouts { public_dht: true, ..lan }).is_empty());
        let lo = Whereabouts { listen: Some("127.0.0.1:9".parse().unwrap()), ..Whereabouts::default() };
        assert_eq!(announced(&lo), ["127.0.0.1:9"]);
        assert!(is_global("8.8.8.8".parse().unwrap()) && !is_global("100.64.0.1".parse().unwrap()));
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

    #[test]
    fn reachability() {
        let a = Identity::from_seed([1; 32]).node_id();
        let off = Sightings::default();
        assert_eq!(reachable(&off, t(0)).0, Some(false));
        let on = Sightings { serving: true, since: Some(t(0)), announced: vec!["1.2.3.4:5".into()], ..off };
        assert_eq!(reachable(&on, t(10)).0, None);
        let reached = Sightings { last_reached: Some((t(5), a)), has_contracts: true, ..on.clone() };
        assert_eq!(reachable(&reached, t(10)).0, Some(true));
        assert_eq!(reachable(&reached, t(5 + SILENCE_SECS)).0, Some(false), "silent peers for 8h");
        let young = Sightings { has_contracts: true, ..on.clone() };
        assert_eq!(reachable(&young, t(SILENCE_SECS - 1)).0, None, "a server just started is not judged");
        let nothing = Sightings { announced: vec![], mapping_error: Some("no router".into()), ..on };
        let (r, why) = reachable(&nothing, t(10));
        assert_eq!(r, Some(false));
        assert!(why.contains("no router"), "{why}");
    }
}
