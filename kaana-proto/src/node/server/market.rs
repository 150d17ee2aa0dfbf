//! The server's side of the market: its board (publish, list, forward) and the offerer's side
//! of an acceptance and of a termination notice.
//!
//! Disk work runs on the blocking pool under the state lock, so a slow disk never stalls the
//! event loop and a cron job working on the same directory never sees half a change.

use std::sync::Arc;

use serde_json::json;

use super::ctx::Ctx;
use super::reply::{blocking, internal, now};
use crate::net::transport::NetError;
use crate::net::wire::{ErrorCode, ErrorReply, Request, Response};
use crate::node::machine::now_from_env;
use crate::protocol::board::Inserted;
use crate::protocol::identity::NodeId;
use crate::protocol::market::{self, ContractBody, Notice, Offer, RecordId};
use crate::protocol::record::Signed;
use crate::protocol::time::Timestamp;
use crate::store::board::StoredBoard;
use crate::store::config::is_host_port;
use crate::store::files::{ContractState, Role};

type Reply = Result<Response, ErrorReply>;

/// Loads the board the node's state directory holds, and writes it whole (folding in the log).
pub(super) fn load_board(
    node: &crate::store::node::Node,
    now: Timestamp,
) -> Result<StoredBoard, crate::store::home::StateError> {
    let mut board = StoredBoard::load(&node.home, now)?;
    let _lock = node.home.lock()?;
    board.write_whole(&node.home)?;
    Ok(board)
}

/// `publish`: takes the offer onto the board and, if it is new, queues it to be forwarded to the
/// boards this node knows (every peer in its address book but the signer and the sender).
pub(super) async fn publish(ctx: &Arc<Ctx>, from: NodeId, offer: Signed<Offer>) -> Reply {
    let now = now()?;
    let c = ctx.clone();
    let taken = offer.clone();
    let (inserted, vouched) = blocking(move || {
        // Vouched for when its signer is a node this one knows (or this node itself). Not for
        // the board that forwards it: a stranger's offer forwarded by a known board would be
        // vouched for here, forwarded on without a pause, vouched for again at each board
        // that knows this one, and never make room for a friend's.
        let vouched = c.knows(&taken.body.node);
        let mut board = c.board.lock().map_err(internal)?;
        let inserted = board.insert(&c.node.home, taken, now, vouched).map_err(internal)?;
        Ok((inserted.map_err(|e| ErrorReply::new(ErrorCode::Refused, e.to_string()))?, vouched))
    })
    .await?;
    if inserted == Inserted::New {
        ctx.forwarding.queue(from, offer, vouched);
    }
    Ok(Response::Published { new: inserted == Inserted::New })
}

/// Sends `offer` (which came from `from`) to every board in the address book but the
/// signer's, the sender's and this node's (see [`super::forward`] for when).
/// To all of them at once: a board that is away costs its own time-out, not every other's.
pub(super) async fn forward(ctx: &Arc<Ctx>, from: NodeId, offer: Signed<Offer>) {
    let book = match ctx.node.address_book() {
        Ok(b) => b,
        Err(e) => return ctx.say(format_args!("cannot read the address book to forward an offer: {e}")),
    };
    let me = ctx.node.id();
    let silent = now_from_env().ok().and_then(|now| ctx.node.silent_peers(now).ok()).unwrap_or_default();
    let mut sends = tokio::task::JoinSet::new();
    for (peer, entry) in book.peers {
        if peer == from || peer == offer.body.node || peer == me || silent.contains(&peer) {
            continue;
        }
        let (c, offer) = (ctx.clone(), offer.clone());
        sends.spawn(async move {
            let result: Result<(), NetError> = async {
                let conn = c.client.connect_any(peer, &entry.addrs).await?;
                let r = conn.request(&Request::Publish { offer }).await;
                conn.close();
                r.map(|_| ())
            }
            .await;
            if let Err(e) = result {
                c.say(format_args!("could not forward an offer to board {}: {e}", peer.short()));
            }
        });
    }
    while sends.join_next().await.is_some() {}
}

/// `list_offers`: a page of the board. On the blocking pool: the board's lock may be held by a
/// publish syncing its line to disk, and the event loop must not wait for it.
pub(super) async fn list(ctx: &Arc<Ctx>, after: Option<RecordId>) -> Reply {
    let now = now()?;
    let c = ctx.clone();
    blocking(move || {
        let board = c.board.lock().map_err(internal)?;
        let (offers, more) = board.board().page(after, now);
        Ok(Response::Offers { offers, more })
    })
    .await
}

/// `accept`: the offerer's side. Checks the offer is ours, open and unexpired, that the taker
/// signed the offer's own terms, and that we have room; then countersigns and stores.
pub(super) async fn accept(ctx: &Arc<Ctx>, taker: NodeId, proposal: Signed<ContractBody>, addrs: Vec<String>) -> Reply {
    let now = now()?;
    let c = ctx.clone();
    let (contract, offer_id) = blocking(move || accept_on_disk(&c, taker, proposal, &addrs, now)).await?;
    let c = ctx.clone();
    blocking(move || c.board.lock().map_err(internal)?.remove(&c.node.home, &offer_id).map_err(internal)).await?;
    Ok(Response::Contract { contract })
}

fn accept_on_disk(
    ctx: &Ctx,
    taker: NodeId,
    proposal: Signed<ContractBody>,
    addrs: &[String],
    now: Timestamp,
) -> Result<(market::Contract, RecordId), ErrorReply> {
    let node = &ctx.node;
    let refused = |msg: String| ErrorReply::new(ErrorCode::Refused, msg);
    let _lock = node.home.lock().map_err(internal)?;
    let offer_id = proposal.body.offer;
    let own = node.own_offers().map_err(internal)?;
    let Some((_, mut own_offer)) = own.into_iter().find(|(id, _)| *id == offer_id) else {
        return Err(ErrorReply::new(ErrorCode::NotFound, format!("node {} has no offer {offer_id}", node.id())));
    };
    if let Some(cid) = own_offer.taken_by {
        // The same taker asking again (its first accept was cut off before it stored the
        // contract) gets the contract it already made; anyone else is refused.
        if let Ok(existing) = node.contract(&cid)
            && existing.contract.body.taker == taker
        {
            return Ok((existing.contract, offer_id));
        }
        return Err(refused(format!("offer {offer_id} is already taken (contract {cid})")));
    }
    if let Some(at) = own_offer.withdrawn {
        return Err(refused(format!("offer {offer_id} was withdrawn at {at}")));
    }
    if own_offer.for_a_new_peer
        && node.contracts().map_err(internal)?.iter().any(|e| e.state.peer == taker && !e.state.status.is_ended())
    {
        // Made by `ensure` for a replica at a node this one has no contract with: never two
        // contracts with one peer.
        return Err(refused(format!("offer {offer_id} is for a node this one has no contract with")));
    }
    market::check_offer(&own_offer.offer, now).map_err(|e| refused(e.to_string()))?;
    market::check_acceptance(&own_offer.offer, offer_id, &proposal, &taker, now)
        .map_err(|e| ErrorReply::new(ErrorCode::BadRequest, e.to_string()))?;
    let committed = node.committed().map_err(internal)?;
    let size = proposal.body.size;
    // The capacity as config.json says now (`kaana-offer config set capacity` may have
    // lowered it since the server started).
    let config: crate::store::config::Config = node.home.read(&node.home.config()).map_err(internal)?;
    if let Err(no) = market::room_for(proposal.body.held_bytes(), committed, config.capacity) {
        return Err(refused(format!("node {} has no room: {no}", node.id())));
    }
    let contract = market::countersign(proposal, &node.identity).map_err(internal)?;
    let id = node.save_new_contract(&contract, &ContractState::new(Role::Offerer, taker)).map_err(internal)?;
    ctx.forget_known();
    own_offer.taken_by = Some(id);
    node.save_own_offer(&offer_id, &own_offer).map_err(internal)?;
    let reachable: Vec<String> =
        addrs.iter().filter(|a| a.len() <= 255 && is_host_port(a)).take(market::MAX_ADDRS).cloned().collect();
    node.remember_addrs(&taker, &reachable).map_err(internal)?;
    node.log_event(now, "contract", json!({"contract": id, "peer": taker, "role": "offerer", "size": size}))
        .map_err(internal)?;
    Ok((contract, offer_id))
}

/// `notice`: the peer ends a contract; its data is kept for the grace period from the notice.
pub(super) async fn notice(ctx: &Arc<Ctx>, from: NodeId, notice: Signed<Notice>) -> Reply {
    let now = now()?;
    let c = ctx.clone();
    blocking(move || {
        let node = &c.node;
        if notice.signer != from || notice.body.from != from {
            return Err(ErrorReply::new(ErrorCode::Unauthorized, "a notice must be signed by the node that sends it"));
        }
        notice.verify().map_err(|e| ErrorReply::new(ErrorCode::BadRequest, e.to_string()))?;
        if notice.body.at.unix() > now.unix() + 3_600 {
            return Err(ErrorReply::new(ErrorCode::BadRequest, "the notice is dated in the future"));
        }
        let id = notice.body.contract;
        node.contract_for(from, &id).map_err(crate::node::refusal::denied)?;
        // A notice of the peer's dated before its own receipt of our copy was dated back (its
        // grace would have run out before it was given): refused, so that this node keeps
        // challenging the peer, and judges the copy gone early if it is.
        let record = crate::store::outbound::Outbound::at(node.home.root(), &id);
        if let Some((m, _, Some(receipt))) = record.committed_with_receipt().map_err(internal)?
            && receipt.verify_by(&from).is_ok()
            && crate::protocol::fairness::evidence::dated_back(&notice.body, &receipt.body)
        {
            return Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!(
                    "the notice is dated {}, before the receipt of generation {} the node signed at {}",
                    notice.body.at, m.body.generation, receipt.body.at
                ),
            ));
        }
        let taken = node.update_contract(&id, |e| Ok::<_, crate::store::home::StateError>(e.take_notice(notice, true)));
        if let Some(delete_after) = taken.map_err(internal)? {
            node.log_event(
                now,
                "notice",
                json!({"contract": id, "peer": from, "from": "peer", "delete_after": delete_after}),
            )
            .map_err(internal)?;
        }
        Ok(Response::Ack)
    })
    .await
}
