//! The node's domain errors as the wire says them: handlers and answers map at this edge, and
//! the layers below never name a wire error code.

use crate::net::wire::{ErrorCode, ErrorReply};
use crate::store::files::Denied;

/// A peer's request about a contract it may not act on.
pub fn denied(e: Denied) -> ErrorReply {
    let code = match &e {
        Denied::NoContract(_) => ErrorCode::NotFound,
        Denied::NotASide { .. } => ErrorCode::Unauthorized,
        Denied::State(_) => ErrorCode::Internal,
    };
    ErrorReply::new(code, e.to_string())
}
