//! What every handler answers with, and the steps they share: disk work on the blocking pool,
//! the time now, and the error replies for a failure of this node's own.

use bytes::Bytes;

use crate::net::wire::{ErrorCode, ErrorReply, Response};
use crate::node::machine::now_from_env;
use crate::protocol::time::Timestamp;
use crate::store::buffer::PartReader;

/// A reply and the raw bytes that follow it.
pub(super) type Handled = Result<(Response, Option<Payload>), ErrorReply>;

/// The raw bytes that follow a reply: in memory, or an extent read from its file a part at a
/// time as the peer takes it (so that a peer taking many slowly holds a part of each in memory
/// here, not each whole).
pub(super) enum Payload {
    /// Bytes in memory.
    Bytes(Bytes),
    /// A file sent a part at a time as the peer takes it: an extent, a generation's list.
    File(PartReader),
}

impl From<Vec<u8>> for Payload {
    fn from(bytes: Vec<u8>) -> Self {
        Payload::Bytes(bytes.into())
    }
}

/// A failure of this node's own (a disk, a task), never the peer's fault.
pub(super) fn internal(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, e.to_string())
}

/// A request this node will not do, and why.
pub(super) fn refused(msg: impl Into<String>) -> ErrorReply {
    ErrorReply::new(ErrorCode::Refused, msg)
}

/// The time now (`KAANA_NOW` in tests).
pub(super) fn now() -> Result<Timestamp, ErrorReply> {
    now_from_env().map_err(internal)
}

/// Runs disk work on the blocking pool, so that a slow disk never stalls the event loop.
pub(super) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ErrorReply> + Send + 'static,
) -> Result<T, ErrorReply> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}
