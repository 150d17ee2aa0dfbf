//! The node's domain errors as the wire says them: handlers and answers map at this edge, and
//! the layers below never name a wire error code.

use crate::net::wire::{ErrorCode, ErrorReply};
use crate::node::answer::Unanswerable;
use crate::store::files::Denied;

/// A peer's request about a contract it may not act on.
pub fn denied(e: Denied) -> ErrorReply {
    denied_ref(&e)
}

/// A challenge that gets no signed answer.
pub fn unanswerable(e: Unanswerable) -> ErrorReply {
    let code = match &e {
        Unanswerable::NotSigned => ErrorCode::Unauthorized,
        Unanswerable::NotForUs(_) | Unanswerable::Invalid(_) => ErrorCode::BadRequest,
        Unanswerable::Denied(d) => return denied_ref(d),
        Unanswerable::Internal(_) => ErrorCode::Internal,
    };
    ErrorReply::new(code, e.to_string())
}

fn denied_ref(e: &Denied) -> ErrorReply {
    let code = match e {
        Denied::NoContract(_) => ErrorCode::NotFound,
        Denied::NotASide { .. } => ErrorCode::Unauthorized,
        Denied::State(_) => ErrorCode::Internal,
    };
    ErrorReply::new(code, e.to_string())
}
