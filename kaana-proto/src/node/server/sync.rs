//! The server's side of push and restore: the holder commits only owner-signed manifests of a
//! newer generation, and gives a copy back only to its owner. (The extents a push sends:
//! [`super::put`].)

use std::sync::Arc;

use quinn::RecvStream;
use serde_json::json;

use super::ctx::Ctx;
use super::reply::{Handled, Payload, blocking, internal, refused};
use crate::net::transport::read_paced;
use crate::net::wire::{ErrorCode, ErrorReply, KeptGeneration, Response};
use crate::node::machine::now_from_env;
use crate::protocol::challenge::Receipt;
use crate::protocol::fairness::deliberate::Pretence;
use crate::protocol::identity::NodeId;
use crate::protocol::manifest::{ExtentHash, Geometry, Manifest};
use crate::protocol::market::RecordId;
use crate::protocol::record::Signed;
use crate::store::files::{ContractEntry, Status};
use crate::store::inbound::{Inbound, InboundError};

/// The most extents a list may have (with 4 MiB extents, an 8 TiB volume).
const MAX_LIST_EXTENTS: u64 = 2 << 20;

/// The contract `id`, if `peer` is its other side. `for_push`: it must also be active.
pub(super) fn authorise(
    ctx: &Ctx,
    peer: NodeId,
    id: &RecordId,
    for_push: bool,
) -> Result<(ContractEntry, Inbound), ErrorReply> {
    let entry = ctx.node.contract_for(peer, id).map_err(crate::node::refusal::denied)?;
    match (&entry.state.status, for_push) {
        (Status::Ended { .. }, _) => {
            return Err(ErrorReply::new(
                ErrorCode::NotFound,
                format!("contract {id} has ended; no data is kept for it"),
            ));
        }
        (Status::Terminated { notice, delete_after, .. }, true) => {
            return Err(refused(format!(
                "contract {id} is terminated by node {}'s notice of {}: no new data (what is held stays until {delete_after})",
                notice.body.from, notice.body.at
            )));
        }
        _ => {}
    }
    let inbound = Inbound::new(&ctx.node.config.storage, id);
    Ok((entry, inbound))
}

pub(super) fn map_inbound(e: InboundError) -> ErrorReply {
    match e {
        InboundError::HashMismatch(_) | InboundError::Manifest(_) | InboundError::Length { .. } => {
            ErrorReply::new(ErrorCode::BadRequest, e.to_string())
        }
        InboundError::Missing(_) | InboundError::Lists { .. } => refused(e.to_string()),
        InboundError::State(s) => ErrorReply::new(ErrorCode::Internal, format!("the holder could not store it: {s}")),
    }
}

/// `push_begin`: checks the volume fits the contract and says what is already here.
pub(super) async fn push_begin(
    ctx: &Arc<Ctx>,
    peer: NodeId,
    id: RecordId,
    volume_size: u64,
    extent_size: u32,
) -> Handled {
    let c = ctx.clone();
    blocking(move || {
        let (entry, inbound) = authorise(&c, peer, &id, true)?;
        let g = Geometry::new(volume_size, extent_size)
            .map_err(|e| ErrorReply::new(ErrorCode::BadRequest, e.to_string()))?;
        if volume_size > entry.contract.body.size {
            return Err(refused(format!(
                "a volume of {volume_size} bytes is more than contract {id} holds ({} bytes)",
                entry.contract.body.size
            )));
        }
        let now = now_from_env().map_err(internal)?;
        // A deliberate failure under way shows the peer what its pretence says is here.
        let pretence = entry.state.audit.as_ref().map_or(Pretence::Nothing, |p| p.pretence(now));
        let mut committed = inbound.committed().map_err(internal)?.map(|(m, _)| m.body.generation);
        // What is here, as the list the peer reads (and nothing more held per extent). An
        // extent of a length no extent of this volume has is damaged (cut short on this disk):
        // left off, so that the peer sends it again and the put replaces it; its bytes count.
        let (mut have, mut stored) = (Vec::new(), 0);
        match &pretence {
            Pretence::All => committed = None,
            Pretence::Nothing | Pretence::Extents(_) => inbound
                .each_present(|hash, len| {
                    if !matches!(&pretence, Pretence::Extents(bad) if bad.contains(&hash)) {
                        if g.fits(len) {
                            have.extend_from_slice(&hash);
                        }
                        stored += len;
                    }
                })
                .map_err(internal)?,
        }
        // Measured afresh; extents still on their way stay counted beside it.
        c.stored.lock().map_err(internal)?.entry(id).or_default().on_disk = Some(stored);
        let count = have.len() as u64 / 32;
        Ok((Response::PushReady { committed, have: count }, Some(have.into())))
    })
    .await
}

/// Whether `peer` may commit `manifest` under contract `id`: a side of it, the owner's signed
/// manifest for it, within its size, of a geometry whose extent count it states.
fn check_commit(
    c: &Ctx,
    peer: NodeId,
    id: RecordId,
    manifest: &Signed<Manifest>,
) -> Result<(ContractEntry, Inbound), ErrorReply> {
    let bad = |msg: String| ErrorReply::new(ErrorCode::BadRequest, msg);
    let (entry, inbound) = authorise(c, peer, &id, true)?;
    let m = &manifest.body;
    if m.contract != id || m.owner != peer {
        return Err(bad(format!("the manifest is not for contract {id} from node {peer}")));
    }
    manifest.verify_by(&peer).map_err(|e| {
        ErrorReply::new(ErrorCode::Unauthorized, format!("the manifest is not signed by the owner: {e}"))
    })?;
    if m.volume_size > entry.contract.body.size {
        return Err(refused(format!("a volume of {} bytes is more than contract {id} holds", m.volume_size)));
    }
    let g = m.geometry().map_err(|e| bad(e.to_string()))?;
    if m.extent_count != g.count() || m.extent_count > MAX_LIST_EXTENTS {
        return Err(bad(format!("{} extents do not fit the manifest's geometry", m.extent_count)));
    }
    Ok((entry, inbound))
}

/// `commit`: the owner-signed manifest of a newer generation whose extents are all here.
pub(super) async fn commit(
    ctx: &Arc<Ctx>,
    peer: NodeId,
    recv: &mut RecvStream,
    id: RecordId,
    manifest: Signed<Manifest>,
) -> Handled {
    let bad = |msg: String| ErrorReply::new(ErrorCode::BadRequest, msg);
    // Who asks, for what, and whether the manifest is the owner's and fits the contract: all
    // checked before a byte of the list is read (its length is the manifest's own count).
    let c = ctx.clone();
    let manifest = blocking(move || check_commit(&c, peer, id, &manifest).map(|_| manifest)).await?;
    let mut list = vec![0u8; (manifest.body.extent_count * 32) as usize];
    read_paced(recv, &mut list, ctx.opts.read_timeout, "the extent list", None)
        .await
        .map_err(|e| bad(e.to_string()))?;
    let c = ctx.clone();
    blocking(move || {
        let (entry, inbound) = check_commit(&c, peer, id, &manifest)?;
        let m = &manifest.body;
        let now = now_from_env().map_err(internal)?;
        let receipt = Receipt {
            contract: id,
            owner: peer,
            holder: c.node.id(),
            generation: m.generation,
            manifest: RecordId::of(m).map_err(internal)?,
            at: now,
        };
        let receipt = Signed::sign(receipt, &c.node.identity).map_err(internal)?;
        let _lock = c.node.home.lock().map_err(internal)?;
        if let Some((current, _)) = inbound.committed().map_err(internal)?
            && current.body.generation >= m.generation
        {
            return Err(refused(format!(
                "generation {} is not newer than the committed generation {}",
                m.generation, current.body.generation
            )));
        }
        let terms = entry.contract.body.history.as_ref();
        // The kept generations' lists take at most the contract's size (see `Inbound::commit`).
        let room = entry.contract.body.size;
        let (freed, unretired) = inbound.commit(&manifest, &list, receipt.clone(), terms, room).map_err(map_inbound)?;
        if let Some(e) = unretired {
            c.report.say(&format!(
                "contract {id}: generation {} committed, but retiring old ones failed: {e}",
                m.generation
            ));
        }
        // The peer's copy here is whole again: what a scrub (or a deliberate failure's
        // pretence) said was missing has been sent.
        let mut state = c.node.contract(&id).map_err(internal)?.state;
        let healed = state.audit.clone().map(|p| p.healed(now));
        if state.awaiting_repush.is_some() || healed != state.audit {
            state.awaiting_repush = None;
            state.audit = healed;
            c.node.save_contract_state(&id, &state).map_err(internal)?;
        }
        // What the new generation no longer needs goes after the reply.
        let (trash, report) = (inbound.clone(), c.report.clone());
        tokio::task::spawn_blocking(move || {
            if let Err(e) = trash.empty_trash() {
                report.say(&e.to_string());
            }
        });
        // The commit freed what no kept generation names: measured again at the next put.
        if let Ok(mut rooms) = c.stored.lock()
            && let Some(room) = rooms.get_mut(&id)
        {
            room.on_disk = None;
        }
        c.node
            .log_event(
                now,
                "commit",
                json!({"contract": id, "peer": peer, "generation": m.generation, "bytes": m.volume_size}),
            )
            .map_err(internal)?;
        Ok((Response::Committed { generation: m.generation, freed, receipt }, None))
    })
    .await
}

/// What a deliberate failure under way pretends is missing here.
pub(super) fn pretence(entry: &ContractEntry) -> Result<Pretence, ErrorReply> {
    let now = now_from_env().map_err(internal)?;
    Ok(entry.state.audit.as_ref().map_or(Pretence::Nothing, |p| p.pretence(now)))
}

/// `get_manifest`: a kept manifest (the newest unless `generation` says) and its list, to its
/// owner only.
pub(super) async fn get_manifest(ctx: &Arc<Ctx>, peer: NodeId, id: RecordId, generation: Option<u64>) -> Handled {
    let c = ctx.clone();
    blocking(move || {
        let (entry, inbound) = authorise(&c, peer, &id, false)?;
        // A deliberate failure shows what its pretence says is here, to every request alike.
        // The list is sent from its file a part at a time, as the peer takes it.
        let held = match pretence(&entry)? {
            Pretence::All => None,
            _ => inbound.open_generation(generation).map_err(internal)?,
        };
        match held {
            Some((manifest, receipt, list)) => {
                Ok((Response::ManifestIs { manifest: Box::new(manifest), receipt }, Some(Payload::File(list))))
            }
            None => Err(ErrorReply::new(
                ErrorCode::NotFound,
                match generation {
                    Some(g) => format!("generation {g} of contract {id} is not kept here"),
                    None => format!("no generation of contract {id} is committed here"),
                },
            )),
        }
    })
    .await
}

/// `list_generations`: the generations kept of the owner's copy, to its owner only.
pub(super) async fn list_generations(ctx: &Arc<Ctx>, peer: NodeId, id: RecordId) -> Handled {
    let c = ctx.clone();
    blocking({
        let c = c.clone();
        move || authorise(&c, peer, &id, false).map(|_| ())
    })
    .await?;
    // One history weighed at a time per peer (each reads every kept list into memory): a peer
    // asking on all its streams at once holds one, and waits for the rest; others' go on.
    let share = {
        let mut shares = ctx.history_shares.lock().map_err(internal)?;
        shares.entry(peer).or_insert_with(|| Arc::new(tokio::sync::Semaphore::new(1))).clone()
    };
    let _weighing = share.acquire_owned().await.map_err(internal)?;
    blocking(move || {
        let (entry, inbound) = authorise(&c, peer, &id, false)?;
        let kept = match pretence(&entry)? {
            Pretence::All => Vec::new(),
            _ => {
                let _shared = inbound.lock(false).map_err(internal)?;
                inbound.generations().map_err(internal)?
            }
        };
        let views: Vec<_> = kept.iter().map(crate::store::inbound::view).collect::<Result<_, _>>().map_err(internal)?;
        let unique = crate::protocol::history::unique_bytes(&views);
        let generations = kept
            .iter()
            .zip(views.iter().zip(unique))
            .map(|((m, _, _), (v, unique_bytes))| {
                Ok(KeptGeneration {
                    generation: v.generation,
                    committed_at: v.committed_at,
                    manifest: RecordId::of(&m.body).map_err(internal)?,
                    bytes: m.body.volume_size,
                    unique_bytes,
                })
            })
            .collect::<Result<_, ErrorReply>>()?;
        Ok((Response::Generations { generations }, None))
    })
    .await
}

/// `get_extent`: one extent, to its owner only.
pub(super) async fn get_extent(ctx: &Arc<Ctx>, peer: NodeId, id: RecordId, hash: ExtentHash) -> Handled {
    let c = ctx.clone();
    blocking(move || {
        let (entry, inbound) = authorise(&c, peer, &id, false)?;
        let hidden = match pretence(&entry)? {
            Pretence::All => true,
            Pretence::Extents(bad) => bad.contains(&hash),
            Pretence::Nothing => false,
        };
        // Read as the peer takes it (`Payload::File`); open here, so that a commit removing
        // it meanwhile does not cut it short.
        match (!hidden).then(|| inbound.open_extent(&hash)).transpose().map_err(internal)?.flatten() {
            Some(file) => Ok((Response::ExtentIs { len: file.len() as u32 }, Some(Payload::File(file)))),
            None => Err(ErrorReply::new(
                ErrorCode::NotFound,
                format!("extent {} of contract {id} is not here", crate::protocol::encoding::hex_encode(&hash)),
            )),
        }
    })
    .await
}

/// `list_contracts`: every contract the asking node is a side of.
pub(super) async fn list_contracts(ctx: &Arc<Ctx>, peer: NodeId) -> Handled {
    let c = ctx.clone();
    blocking(move || {
        let contracts = c.node.contracts().map_err(internal)?;
        let mine = contracts.into_iter().filter(|e| e.state.peer == peer).map(|e| e.contract).collect();
        Ok((Response::Contracts { contracts: mine }, None))
    })
    .await
}
