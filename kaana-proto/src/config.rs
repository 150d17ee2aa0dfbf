//! The node's configuration (`config.json`) and its address book (`peers.json`), and the
//! `ID@HOST:PORT` peer syntax.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::identity::{IdentityError, NodeId};
use crate::state::Schema;

/// The port a node listens on unless told otherwise.
pub const DEFAULT_PORT: u16 = 7447;
/// How long a failing peer's data is kept unless an offer says otherwise: 7 days.
pub const DEFAULT_GRACE_SECS: u64 = 7 * 86_400;
/// Contracts a node wants unless told otherwise.
pub const DEFAULT_REPLICAS: u32 = 2;
/// Fraction of challenges answered wrongly on purpose, to audit peers' honesty.
pub const DEFAULT_AUDIT_RATE: f64 = 0.02;

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

/// Whether `addr` is `HOST:PORT` (IPv6 hosts in brackets).
pub fn is_host_port(addr: &str) -> bool {
    if addr.parse::<SocketAddr>().is_ok() {
        return true;
    }
    let Some((host, port)) = addr.rsplit_once(':') else { return false };
    let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || c == '.';
    port.parse::<u16>().is_ok() && !host.is_empty() && host.chars().all(name_ok)
}

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

    /// The addresses known for `node`, newest first.
    pub fn addrs(&self, node: &NodeId) -> &[String] {
        self.peers.get(node).map_or(&[], |e| &e.addrs)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Identity;

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
}
