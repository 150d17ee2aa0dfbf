//! The owner's record of its copy at a peer, as a challenge asks about it: the manifest the
//! holder committed, its extent list, the holder's receipt, and the tops this node kept.

use crate::protocol::challenge::Receipt;
use crate::protocol::manifest::Manifest;
use crate::protocol::record::{RecordId, Signed};
use crate::store::home::StateError;
use crate::store::inbound::Inbound;
use crate::store::node::Node;

/// What a challenge asks about: a manifest of ours that the holder committed, and what the
/// answer is checked against.
#[derive(Debug, Clone)]
pub struct Target {
    /// The owner-signed manifest.
    pub manifest: Signed<Manifest>,
    /// Its extent list.
    pub list: Vec<u8>,
    /// The holder's receipt of it, if this node has it.
    pub receipt: Option<Signed<Receipt>>,
    /// Every extent's tops, when this node kept them for this generation.
    pub tops: Option<Vec<[u8; 32]>>,
}

impl Target {
    /// This node's record of what the holder of `id` last committed.
    pub fn from_record(node: &Node, id: &RecordId) -> Result<Option<Target>, StateError> {
        let record = Inbound::outbound(node.home.root(), id);
        // Under the record's lock, shared: a push may be replacing it.
        let _shared = record.lock(false)?;
        Ok(record.committed_with_receipt()?.map(|(manifest, list, receipt)| {
            let tops = record.tops(manifest.body.generation);
            Target { manifest, list, receipt, tops }
        }))
    }

    /// The generation the target is of.
    pub fn generation(&self) -> u64 {
        self.manifest.body.generation
    }
}
