//! A node as the tools open it: its state directory, identity and configuration, checked.
//!
//! Opening refuses a key file others can read, a key that does not match `identity.json`, and
//! any damaged file, so that no tool ever works on a half-understood state.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::protocol::identity::{Identity, NodeId};
use crate::protocol::time::Timestamp;
use crate::store::config::{AddressBook, Config, PeerAddr};
use crate::store::home::{Home, Schema, StateError, check_key_private, write_atomic};

/// `identity.json`: the node's public id.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityFile {
    /// Always 1.
    pub schema: Schema,
    /// The node id.
    pub node: NodeId,
}

/// `recovered.json`: when the node was rebuilt from its recovery phrase.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Recovered {
    schema: Schema,
    at: Timestamp,
}

/// An opened node.
#[derive(Debug, Clone)]
pub struct Node {
    /// Its state directory.
    pub home: Home,
    /// Its key pair.
    pub identity: Identity,
    /// Its configuration.
    pub config: Config,
}

impl Node {
    /// Opens the node whose state directory is `dir`.
    pub fn open_at(dir: &Path) -> Result<Node, StateError> {
        Node::open(Home::at(dir))
    }

    /// Opens the node in `home`, checking its key's permissions and that its files agree.
    pub fn open(home: Home) -> Result<Node, StateError> {
        // Another user first: to it, a 0700 directory looks empty.
        crate::store::home::check_same_user(home.root())?;
        let id_path = home.identity_json();
        if !id_path.exists() {
            return Err(StateError::NotInitialised(home.root().to_owned()));
        }
        let key_path = home.identity_key();
        check_key_private(&key_path)?;
        let id_file: IdentityFile = home.read(&id_path)?;
        let key_text = std::fs::read_to_string(&key_path).map_err(|e| StateError::io(&key_path, e))?;
        let identity = Identity::from_key_file(&key_text).map_err(|e| StateError::damaged(&key_path, e))?;
        if identity.node_id() != id_file.node {
            return Err(StateError::damaged(
                &key_path,
                format_args!("its key is not node {} named in {}", id_file.node, id_path.display()),
            ));
        }
        let config = home.read(&home.config())?;
        Ok(Node { home, identity, config })
    }

    /// Creates a node in `home` with `identity` and `config`. Never replaces an existing
    /// identity: if `identity.json` or `identity.key` is there, nothing is written.
    pub fn init(home: Home, identity: Identity, config: Config) -> Result<Node, StateError> {
        // A directory made for the node's user (`useradd --create-home`) is initialised by it.
        crate::store::home::check_same_user(home.root())?;
        home.create()?;
        let _lock = home.lock()?;
        let (id_path, key_path) = (home.identity_json(), home.identity_key());
        if let Some(existing) = home.read_optional::<IdentityFile>(&id_path)? {
            return Err(StateError::AlreadyInitialised {
                path: home.root().to_owned(),
                node: existing.node.to_string(),
            });
        }
        if key_path.exists() {
            return Err(StateError::AlreadyInitialised {
                path: home.root().to_owned(),
                node: format!("(an interrupted init left {}; remove it to start over)", key_path.display()),
            });
        }
        // The key and config first, identity.json last: it is what marks the node as made.
        write_atomic(&key_path, identity.to_key_file().as_bytes())?;
        home.write(&home.config(), &config)?;
        home.write(&id_path, &IdentityFile { schema: Schema, node: identity.node_id() })?;
        Ok(Node { home, identity, config })
    }

    /// Records that this node was rebuilt from its recovery phrase at `now` (`recovered.json`):
    /// until its contracts are fetched back, data in its storage may belong to contracts it
    /// does not know yet.
    pub fn mark_recovered(&self, now: Timestamp) -> Result<(), StateError> {
        self.home.write(&self.home.root().join("recovered.json"), &Recovered { schema: Schema, at: now })
    }

    /// When this node was last rebuilt from its recovery phrase, if it was.
    pub fn recovered_at(&self) -> Result<Option<Timestamp>, StateError> {
        let file: Option<Recovered> = self.home.read_optional(&self.home.root().join("recovered.json"))?;
        Ok(file.map(|r| r.at))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.identity.node_id()
    }

    /// Reads the address book (empty if there is none yet).
    pub fn address_book(&self) -> Result<AddressBook, StateError> {
        Ok(self.home.read_optional(&self.home.peers())?.unwrap_or_default())
    }

    /// Adds `peer` to the address book under the state lock; returns whether it changed.
    pub fn add_peer(&self, peer: &PeerAddr) -> Result<bool, StateError> {
        let _lock = self.home.lock()?;
        self.remember_addrs(&peer.node, std::slice::from_ref(&peer.addr))
    }

    /// Takes `peer`'s address record `record` (sequence number `seq`), looked up on the DHT at
    /// `now`, into the address book under the state lock (see [`AddressBook::learn`]); returns
    /// whether its addresses changed.
    pub fn learn_record(
        &self,
        peer: NodeId,
        seq: u64,
        record: &crate::protocol::discovery::AddressRecord,
        now: Timestamp,
    ) -> Result<bool, StateError> {
        let _lock = self.home.lock()?;
        self.learn_record_locked(peer, seq, record, now)
    }

    /// As [`Node::learn_record`], but only if the state lock is free now (`None` if not): for a
    /// lookup made while a caller of this process may hold it (a connection made under the lock
    /// must not wait for it: that would be waiting for itself).
    pub fn learn_record_if_free(
        &self,
        peer: NodeId,
        seq: u64,
        record: &crate::protocol::discovery::AddressRecord,
        now: Timestamp,
    ) -> Result<Option<bool>, StateError> {
        let Some(_lock) = self.home.try_lock()? else { return Ok(None) };
        self.learn_record_locked(peer, seq, record, now).map(Some)
    }

    fn learn_record_locked(
        &self,
        peer: NodeId,
        seq: u64,
        record: &crate::protocol::discovery::AddressRecord,
        now: Timestamp,
    ) -> Result<bool, StateError> {
        let mut book = self.address_book()?;
        let changed = book.learn(peer, seq, record, now);
        self.home.write(&self.home.peers(), &book)?;
        Ok(changed)
    }

    /// Records `addrs` (the preferred first) for `node` in the address book; returns whether it
    /// changed. The caller holds the state lock.
    pub fn remember_addrs(&self, node: &NodeId, addrs: &[String]) -> Result<bool, StateError> {
        let mut book = self.address_book()?;
        let mut changed = false;
        for addr in addrs.iter().rev() {
            changed |= book.add(&PeerAddr { node: *node, addr: addr.clone() });
        }
        if changed {
            self.home.write(&self.home.peers(), &book)?;
        }
        Ok(changed)
    }
}
