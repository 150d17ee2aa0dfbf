//! `reach.json`: what the server last learned of how peers reach this node: the address record
//! it published on the DHT, the port the router maps to it, and when a peer last reached it.
//! `kaana-offer status` reads it to say whether the node can be reached from outside.

use serde::{Deserialize, Serialize};

use crate::protocol::identity::NodeId;
use crate::protocol::time::Timestamp;
use crate::store::home::{Schema, StateError};
use crate::store::node::Node;

/// `reach.json`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reach {
    /// Always 1.
    pub schema: Schema,
    /// When the running server started (cleared when it stops).
    #[serde(default)]
    pub serving_since: Option<Timestamp>,
    /// The sequence number of the address record last published (each one is larger).
    #[serde(default)]
    pub published_seq: Option<u64>,
    /// When it was published, and the addresses it gave.
    #[serde(default)]
    pub published_at: Option<Timestamp>,
    /// The addresses of the last published record.
    #[serde(default)]
    pub announced: Vec<String>,
    /// When the board was last announced under the DHT topic.
    #[serde(default)]
    pub board_announced_at: Option<Timestamp>,
    /// The router's public address and port forwarded to the server, while a mapping holds.
    #[serde(default)]
    pub mapped: Option<String>,
    /// Why the router gave no mapping, when one was asked for.
    #[serde(default)]
    pub mapping_error: Option<String>,
    /// The last DHT error the server met, if the last try failed.
    #[serde(default)]
    pub dht_error: Option<String>,
    /// The sequence number of the recovery locator last stored (whole seconds, each larger).
    #[serde(default)]
    pub locator_seq: Option<i64>,
    /// When the server last stored its contract peers' locators again, and how many.
    #[serde(default)]
    pub peers_locators: Option<(Timestamp, usize)>,
    /// When a known peer (address book or contract) last reached the server, and which.
    #[serde(default)]
    pub last_reached: Option<Reached>,
}

/// A known peer reaching the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reached {
    /// When.
    pub at: Timestamp,
    /// Which peer.
    pub peer: NodeId,
}

impl Node {
    /// `reach.json`, or an empty one if the server never wrote it.
    pub fn reach(&self) -> Result<Reach, StateError> {
        Ok(self.home.read_optional(&self.home.root().join("reach.json"))?.unwrap_or_default())
    }

    /// Changes `reach.json` under the state lock.
    pub fn update_reach(&self, change: impl FnOnce(&mut Reach)) -> Result<Reach, StateError> {
        let _lock = self.home.lock()?;
        let mut reach = self.reach()?;
        change(&mut reach);
        self.home.write(&self.home.root().join("reach.json"), &reach)?;
        Ok(reach)
    }
}
