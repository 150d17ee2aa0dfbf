//! The node's configuration (`config.json`) and its address book (`peers.json`), and the
//! `ID@HOST:PORT` peer syntax.
//!
//! Longer than 400 lines: each of the thirteen settings is read and checked here as a person
//! types it, in one place for `init` and `config set`; the address book shares the peer syntax.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::protocol::identity::{IdentityError, NodeId};
use crate::store::home::Schema;

/// The port a node listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7447;
/// How long a failing peer's data is kept unless an offer says otherwise: 7 days.
pub const DEFAULT_GRACE_SECS: u64 = 7 * 86_400;
/// Contracts a node wants unless told otherwise.
pub const DEFAULT_REPLICAS: u32 = 2;
/// Fraction of challenges answered wrongly on purpose, to audit peers' honesty.
pub const DEFAULT_AUDIT_RATE: f64 = 0.02;
/// How long this node's offers keep a peer's superseded generations unless told otherwise.
pub const DEFAULT_HISTORY_SECS: u64 = 14 * 86_400;

fn default_history_secs() -> u64 {
    DEFAULT_HISTORY_SECS
}

fn default_history_percent() -> u64 {
    crate::protocol::history::DEFAULT_SHARE_PERCENT
}

/// `config.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Always 1.
    pub schema: Schema,
    /// The address `kaana-sync serve` binds.
    pub listen: SocketAddr,
    /// The encrypted volume this node backs up (a LUKS block device or image file).
    pub volume: Option<PathBuf>,
    /// Where peers' data is kept.
    pub storage: PathBuf,
    /// Bytes this node may commit to peers, in total.
    pub capacity: u64,
    /// How many peers should hold this node's volume.
    pub replicas: u32,
    /// Grace period of this node's offers, in seconds.
    pub grace_secs: u64,
    /// Fraction (0 to 1) of challenges this node answers wrongly on purpose.
    pub audit_rate: f64,
    /// Addresses (`HOST:PORT`) peers should use to reach this node, when the listen address is
    /// not one they can reach (e.g. `0.0.0.0`).
    #[serde(default)]
    pub advertise: Vec<String>,
    /// How long this node's offers keep a peer's superseded generations, in seconds (0: the
    /// newest generation only).
    #[serde(default = "default_history_secs")]
    pub history_secs: u64,
    /// The history allowance of this node's offers, in percent of their size.
    #[serde(default = "default_history_percent")]
    pub history_percent: u64,
    /// The DHT's bootstrap nodes (`HOST:PORT`): `None` for the public DHT, empty for no DHT.
    #[serde(default)]
    pub dht_bootstrap: Option<Vec<String>>,
    /// Whether the server asks the router to forward a UDP port to it (UPnP IGD).
    #[serde(default = "default_port_mapping")]
    pub port_mapping: bool,
    /// Bytes per second push, restore and verify move at most, unless told otherwise with
    /// `--limit-rate` (`None`: as fast as the path allows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_rate: Option<u64>,
}

fn default_port_mapping() -> bool {
    true
}

/// A setting of `config.json` that `kaana-offer config` reads and changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Key {
    /// `listen`.
    Listen,
    /// `advertise`.
    Advertise,
    /// `volume`.
    Volume,
    /// `storage` (read only: peers' data lives there).
    Storage,
    /// `capacity`.
    Capacity,
    /// `replicas`.
    Replicas,
    /// `grace_secs`.
    GraceSecs,
    /// `audit_rate`.
    AuditRate,
    /// `history_secs`.
    HistorySecs,
    /// `history_percent`.
    HistoryPercent,
    /// `dht_bootstrap`.
    DhtBootstrap,
    /// `port_mapping`.
    PortMapping,
    /// `limit_rate`.
    LimitRate,
}

impl Key {
    /// Every key, as `config.json` names them.
    pub const ALL: [(&'static str, Key); 13] = [
        ("listen", Key::Listen),
        ("advertise", Key::Advertise),
        ("volume", Key::Volume),
        ("storage", Key::Storage),
        ("capacity", Key::Capacity),
        ("replicas", Key::Replicas),
        ("grace_secs", Key::GraceSecs),
        ("audit_rate", Key::AuditRate),
        ("history_secs", Key::HistorySecs),
        ("history_percent", Key::HistoryPercent),
        ("dht_bootstrap", Key::DhtBootstrap),
        ("port_mapping", Key::PortMapping),
        ("limit_rate", Key::LimitRate),
    ];

    /// Its name in `config.json`.
    pub fn name(self) -> &'static str {
        Key::ALL.iter().find(|(_, k)| *k == self).map_or("", |(n, _)| n)
    }
}

impl FromStr for Key {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Key::ALL.iter().find(|(n, _)| *n == s).map(|(_, k)| *k).ok_or_else(|| {
            let names: Vec<&str> = Key::ALL.iter().map(|(n, _)| *n).collect();
            format!("no setting {s:?}: the settings are {}", names.join(", "))
        })
    }
}

impl Config {
    /// The value of `key`, as `config.json` holds it.
    pub fn get(&self, key: Key) -> serde_json::Value {
        let all = serde_json::to_value(self).unwrap_or_default();
        all.get(key.name()).cloned().unwrap_or(serde_json::Value::Null)
    }

    /// Sets `key` from `text` as a person writes it (`2TiB`, `7d`, `0.02`, `HOST:PORT,...`),
    /// checked as `init` checks it. What needs the disk (the volume's path, the capacity against
    /// the free space) the caller checks too.
    pub fn set(&mut self, key: Key, text: &str) -> Result<(), String> {
        match key {
            Key::Listen => {
                self.listen =
                    text.parse().map_err(|_| format!("listen {text:?} is not an address such as 0.0.0.0:7447"))?;
            }
            Key::Advertise => {
                let addrs: Vec<String> =
                    text.split(',').map(str::trim).filter(|a| !a.is_empty()).map(str::to_owned).collect();
                if let Some(bad) = addrs.iter().find(|a| !is_host_port(a)) {
                    return Err(format!("advertise {bad:?} is not HOST:PORT"));
                }
                self.advertise = addrs;
            }
            Key::Volume => {
                if text.is_empty() {
                    return Err("volume: give the path of the encrypted volume".into());
                }
                self.volume = Some(PathBuf::from(text));
            }
            Key::Storage => {
                return Err("storage cannot be changed: peers' data lives there (move it by hand, with the server \
                            stopped, and edit config.json)"
                    .into());
            }
            Key::Capacity => {
                self.capacity = crate::protocol::size::parse_size(text).map_err(|e| format!("capacity: {e}"))?
            }
            Key::Replicas => match text.parse::<u32>() {
                Ok(n) if n >= 1 => self.replicas = n,
                _ => return Err(format!("replicas must be a whole number, at least 1, not {text:?}")),
            },
            Key::GraceSecs => match crate::protocol::time::parse_duration(text) {
                Ok(secs) if secs >= 1 => self.grace_secs = secs,
                Ok(_) => return Err("grace_secs must be at least 1s".into()),
                Err(e) => return Err(format!("grace_secs: {e}")),
            },
            Key::AuditRate => match text.parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => self.audit_rate = r,
                _ => return Err(format!("audit_rate must be between 0 and 1, not {text:?}")),
            },
            Key::HistorySecs => match crate::protocol::time::parse_duration(text) {
                Ok(secs) if secs <= crate::protocol::history::MAX_KEEP_SECS => self.history_secs = secs,
                Ok(_) => return Err("history_secs must be at most 400d".into()),
                Err(e) => return Err(format!("history_secs: {e}")),
            },
            Key::HistoryPercent => match text.trim_end_matches('%').parse::<u64>() {
                Ok(p) if (1..=400).contains(&p) => self.history_percent = p,
                _ => return Err(format!("history_percent must be a whole number from 1 to 400, not {text:?}")),
            },
            Key::DhtBootstrap => self.dht_bootstrap = crate::protocol::discovery::parse_bootstrap(text)?,
            Key::PortMapping => match text {
                "true" | "on" | "yes" => self.port_mapping = true,
                "false" | "off" | "no" => self.port_mapping = false,
                _ => return Err(format!("port_mapping must be true or false, not {text:?}")),
            },
            Key::LimitRate => {
                self.limit_rate = crate::protocol::size::parse_rate(text).map_err(|e| format!("limit_rate: {e}"))?;
            }
        }
        Ok(())
    }
}

/// Why a peer address was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum PeerAddrError {
    /// No `@` between the node id and the address.
    #[error("{0:?} is not a peer: write it as ID@HOST:PORT")]
    Syntax(String),
    /// The part before `@` is not a node id.
    #[error("{text:?} is not a peer: {error}")]
    Id {
        /// What was given.
        text: String,
        /// Why the id was refused.
        error: IdentityError,
    },
    /// The part after `@` is not HOST:PORT.
    #[error("{0:?} is not a peer: the address must be HOST:PORT (IPv6 in brackets, [::1]:7447)")]
    Address(String),
}

/// A peer as written on the command line: `ID@HOST:PORT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerAddr {
    /// Who the peer is.
    pub node: NodeId,
    /// Where to reach it (`HOST:PORT`).
    pub addr: String,
}

impl FromStr for PeerAddr {
    type Err = PeerAddrError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (id, addr) = s.split_once('@').ok_or_else(|| PeerAddrError::Syntax(s.to_owned()))?;
        let node = id.parse().map_err(|error| PeerAddrError::Id { text: s.to_owned(), error })?;
        if !is_host_port(addr) {
            return Err(PeerAddrError::Address(s.to_owned()));
        }
        Ok(PeerAddr { node, addr: addr.to_owned() })
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}@{}", self.node, self.addr)
    }
}

pub use crate::protocol::discovery::is_host_port;

/// `peers.json`: node id to the addresses it was last seen at, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressBook {
    /// Always 1.
    pub schema: Schema,
    /// Known peers.
    pub peers: BTreeMap<NodeId, PeerEntry>,
}

/// What the address book knows of one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerEntry {
    /// Addresses (`HOST:PORT`), the most recently added first.
    pub addrs: Vec<String>,
    /// What the peer's own address record on the DHT said, when it was looked up.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dht: Option<Resolved>,
}

/// A peer's address record as found on the DHT.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Resolved {
    /// The record's sequence number (when it was signed, in microseconds): only a newer record
    /// replaces it.
    pub seq: u64,
    /// The addresses it gave.
    pub addrs: Vec<String>,
    /// Whether the peer keeps a board.
    pub board: bool,
    /// The key of the peer's recovery locator (hex), which this node's server keeps alive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub locator: Option<String>,
    /// When this node last looked the peer up (a record is not asked for again within its TTL).
    pub resolved_at: crate::protocol::time::Timestamp,
}

impl AddressBook {
    /// Records `peer`, putting its address first; returns whether anything changed.
    pub fn add(&mut self, peer: &PeerAddr) -> bool {
        let entry = self.peers.entry(peer.node).or_default();
        if entry.addrs.first() == Some(&peer.addr) {
            return false;
        }
        entry.addrs.retain(|a| a != &peer.addr);
        entry.addrs.insert(0, peer.addr.clone());
        true
    }

    /// Takes in `node`'s address record `record` with sequence number `seq`, looked up at
    /// `now`: a newer record than the last one known puts its addresses first and drops those
    /// only the older record gave; an older or the same record changes no address (a replayed
    /// record is ignored). Returns whether the addresses changed.
    pub fn learn(
        &mut self,
        node: NodeId,
        seq: u64,
        record: &crate::protocol::discovery::AddressRecord,
        now: crate::protocol::time::Timestamp,
    ) -> bool {
        let entry = self.peers.entry(node).or_default();
        let known = entry.dht.as_ref().map(|d| d.seq);
        if !crate::protocol::discovery::replaces(known, seq, now) {
            if let Some(d) = entry.dht.as_mut() {
                d.resolved_at = now;
            }
            return false;
        }
        let before = entry.addrs.clone();
        if let Some(old) = &entry.dht {
            entry.addrs.retain(|a| !old.addrs.contains(a) || record.addrs.contains(a));
        }
        entry.addrs.retain(|a| !record.addrs.contains(a));
        let mut addrs = record.addrs.clone();
        addrs.append(&mut entry.addrs);
        entry.addrs = addrs;
        entry.dht = Some(Resolved {
            seq,
            addrs: record.addrs.clone(),
            board: record.board,
            locator: record.locator.clone(),
            resolved_at: now,
        });
        entry.addrs != before
    }

    /// The addresses known for `node`, newest first.
    pub fn addrs(&self, node: &NodeId) -> &[String] {
        self.peers.get(node).map_or(&[], |e| &e.addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::identity::Identity;

    #[test]
    fn peer_syntax() {
        let id = Identity::from_seed([5; 32]).node_id();
        for addr in ["127.0.0.1:7447", "[::1]:7447", "backup.example.org:7447"] {
            let p: PeerAddr = format!("{id}@{addr}").parse().unwrap();
            assert_eq!(p.node, id);
            assert_eq!(p.to_string(), format!("{id}@{addr}"));
        }
        assert!(matches!(format!("{id}").parse::<PeerAddr>(), Err(PeerAddrError::Syntax(_))));
        assert!(matches!("abc@1.2.3.4:5".parse::<PeerAddr>(), Err(PeerAddrError::Id { .. })));
        assert!(matches!(format!("{id}@host").parse::<PeerAddr>(), Err(PeerAddrError::Address(_))));
        assert!(matches!(format!("{id}@::1:80").parse::<PeerAddr>(), Err(PeerAddrError::Address(_))));
    }

    #[test]
    fn address_book_keeps_newest_first() {
        let id = Identity::from_seed([5; 32]).node_id();
        let mut book = AddressBook::default();
        assert!(book.add(&PeerAddr { node: id, addr: "a:1".into() }));
        assert!(book.add(&PeerAddr { node: id, addr: "b:2".into() }));
        assert!(!book.add(&PeerAddr { node: id, addr: "b:2".into() }));
        assert!(book.add(&PeerAddr { node: id, addr: "a:1".into() }));
        assert_eq!(book.addrs(&id), ["a:1", "b:2"]);
    }

    #[test]
    fn a_newer_record_replaces_what_an_older_one_said_and_keeps_the_rest() {
        use crate::protocol::discovery::AddressRecord;
        let id = Identity::from_seed([5; 32]).node_id();
        let now = crate::protocol::time::Timestamp::from_unix(1_800_000_000);
        let mut book = AddressBook::default();
        book.add(&PeerAddr { node: id, addr: "typed:1".into() });
        let rec = |a: &str| AddressRecord { addrs: vec![a.to_owned()], board: true, locator: None };
        assert!(book.learn(id, 10, &rec("dht:1"), now));
        assert_eq!(book.addrs(&id), ["dht:1", "typed:1"]);
        assert!(book.learn(id, 20, &rec("dht:2"), now));
        assert_eq!(book.addrs(&id), ["dht:2", "typed:1"], "the older record's address is dropped");
        assert!(!book.learn(id, 10, &rec("dht:1"), now), "a replayed older record changes nothing");
        assert!(!book.learn(id, 20, &rec("dht:1"), now), "nor does one with the same number");
        assert_eq!(book.addrs(&id), ["dht:2", "typed:1"]);
    }
}
