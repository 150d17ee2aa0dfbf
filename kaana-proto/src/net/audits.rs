//! The server's side of challenges: answering them (wrongly on purpose now and then, to audit
//! the peer), hearing verdicts, telling a peer how it stands, and challenging a peer again on
//! the peer's own connection when it asks.

use std::sync::Arc;

use super::server::Ctx;
use super::sync::Handled;
use super::wire::{ErrorCode, ErrorReply, Response};
use crate::audit::{self, Honesty};
use crate::challenge::{self, Challenge, Verdict};
use crate::identity::NodeId;
use crate::market::RecordId;
use crate::record::Signed;
use crate::store::ContractEntry;
use crate::time::now_from_env;

fn internal(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, e.to_string())
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, ErrorReply> + Send + 'static,
) -> Result<T, ErrorReply> {
    tokio::task::spawn_blocking(f).await.map_err(internal)?
}

fn side(ctx: &Ctx, peer: NodeId, id: &RecordId) -> Result<ContractEntry, ErrorReply> {
    let entry =
        ctx.node.contract(id).map_err(|_| ErrorReply::new(ErrorCode::NotFound, format!("no contract {id} here")))?;
    if entry.state.peer != peer {
        return Err(ErrorReply::new(ErrorCode::Unauthorized, format!("node {peer} is not a side of contract {id}")));
    }
    Ok(entry)
}

/// `challenge`: prove we hold the peer's copy.
pub(super) async fn answer(ctx: &Arc<Ctx>, peer: NodeId, challenge: Signed<Challenge>) -> Handled {
    let c = ctx.clone();
    blocking(move || {
        let now = now_from_env().map_err(internal)?;
        let (answer, raw) = audit::answer(&c.node, peer, &challenge, now, Honesty::MayAudit)?;
        Ok((Response::Answer { answer, len: raw.len() as u64 }, Some(raw.into())))
    })
    .await
}

/// `verdict`: how the peer judged our answer; recorded as our standing there.
pub(super) async fn verdict(ctx: &Arc<Ctx>, peer: NodeId, verdict: Signed<Verdict>) -> Handled {
    let c = ctx.clone();
    blocking(move || {
        verdict.verify_by(&peer).map_err(|e| ErrorReply::new(ErrorCode::Unauthorized, e.to_string()))?;
        if verdict.body.holder != c.node.id() {
            return Err(ErrorReply::new(ErrorCode::BadRequest, "the verdict is about another node"));
        }
        side(&c, peer, &verdict.body.contract)?;
        audit::learn_standing(&c.node, &verdict.body.contract, &verdict).map_err(internal)?;
        Ok((Response::Ack, None))
    })
    .await
}

/// `standing`: how we see the peer.
pub(super) async fn standing(ctx: &Arc<Ctx>, peer: NodeId, id: RecordId) -> Handled {
    let c = ctx.clone();
    blocking(move || {
        let entry = side(&c, peer, &id)?;
        Ok((Response::Standing { standing: entry.state.their_standing }, None))
    })
    .await
}

/// `rechallenge`: the peer asks to be challenged again; we do it at once, on its connection.
pub(super) async fn rechallenge(ctx: &Arc<Ctx>, conn: &quinn::Connection, peer: NodeId, id: RecordId) -> Handled {
    let c = ctx.clone();
    let entry = blocking(move || side(&c, peer, &id)).await?;
    let now = now_from_env().map_err(internal)?;
    let (mut send, mut recv) = conn.open_bi().await.map_err(internal)?;
    let exchanged = audit::run_challenge(&mut send, &mut recv, &ctx.node, &entry, challenge::DEFAULT_SAMPLES, now)
        .await
        .map_err(|e| ErrorReply::new(ErrorCode::Refused, format!("could not challenge you: {e}")))?;
    Ok((Response::Rechallenged { verdict: exchanged.transcript.verdict }, None))
}
