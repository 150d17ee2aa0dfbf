//! The extents a push sends, as the holder takes them: whole (`put_extent`) or as the quarters
//! that changed on an extent it holds (`patch_extent`). Either way it checks the peer, the
//! contract's size and room first, then every extent's hash before it stores and syncs it.

use std::sync::Arc;

use quinn::RecvStream;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, SemaphorePermit};

use super::ctx::{Ctx, PUT_SHARE};
use super::reply::{Handled, blocking, internal, refused};
use super::sync::{authorise, map_inbound, pretence};
use crate::net::transport::read_paced;
use crate::net::wire::{ErrorCode, ErrorReply, Response};
use crate::protocol::fairness::deliberate::Pretence;
use crate::protocol::identity::NodeId;
use crate::protocol::manifest::{ExtentHash, MAX_EXTENT_SIZE};
use crate::protocol::market::RecordId;
use crate::protocol::{encoding, push};
use crate::store::buffer::Pooled;
use crate::store::files::ContractEntry;
use crate::store::inbound::Inbound;

/// Bytes counted against a contract's room for an extent on its way in: when dropped, no
/// longer on their way, and counted as on disk if the extent was stored.
struct Counted {
    ctx: Arc<Ctx>,
    id: RecordId,
    len: u32,
    stored: bool,
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Ok(mut rooms) = self.ctx.stored.lock() {
            let room = rooms.entry(self.id).or_default();
            let len = u64::from(self.len);
            room.in_flight = room.in_flight.saturating_sub(len);
            if self.stored {
                room.on_disk = room.on_disk.map(|d| d.saturating_add(len));
            }
        }
    }
}

/// Room and a place for one extent coming in ([`admit`]).
struct Admitted<'a> {
    entry: ContractEntry,
    inbound: Inbound,
    counted: Counted,
    _share: OwnedSemaphorePermit,
    _place: SemaphorePermit<'a>,
}

impl Admitted<'_> {
    /// Checks `data` against `hash`, stores and syncs it: then its bytes stay counted. The
    /// buffer and the place go back once the bytes are written, before the sync: another
    /// extent can come in while the disk makes this one durable (among a bounded number).
    async fn store(mut self, hash: ExtentHash, data: Pooled) -> Handled {
        let inbound = self.inbound.clone();
        let written = blocking(move || inbound.write(&hash, &data).map_err(map_inbound)).await?;
        let ctx = self.counted.ctx.clone();
        let _syncing = ctx.sync_permits.acquire().await.map_err(internal)?;
        drop((self._share, self._place));
        blocking(move || written.sync().map_err(map_inbound)).await?;
        self.counted.stored = true;
        Ok((Response::Stored, None))
    }
}

/// What `put_extent` and `patch_extent` check first: that `peer` may store an extent of `len`
/// bytes at `offset` under `id`, within the contract's room (counted until stored); then a
/// place among the server's puts.
async fn admit(ctx: &Arc<Ctx>, peer: NodeId, id: RecordId, offset: u64, len: u32) -> Result<Admitted<'_>, ErrorReply> {
    let c = ctx.clone();
    let (entry, inbound, on_disk) = blocking(move || {
        let (entry, inbound) = authorise(&c, peer, &id, true)?;
        // What the store holds, when this server has not measured it since it started or since
        // the last commit freed some (or the peer skipped `push_begin`): the quota is what is
        // on disk, not what was sent since.
        let known = c.stored.lock().map_err(internal)?.get(&id).is_some_and(|r| r.on_disk.is_some());
        let on_disk = if known { None } else { Some(inbound.stored_bytes().map_err(internal)?) };
        Ok((entry, inbound, on_disk))
    })
    .await?;
    let size = entry.contract.body.size;
    if len == 0 || len > MAX_EXTENT_SIZE || offset.saturating_add(u64::from(len)) > size {
        return Err(refused(format!("{len} bytes at offset {offset} are past contract {id}'s size of {size} bytes")));
    }
    let counted = {
        // The kept history and the old and new generations live side by side during a push:
        // at most twice the size and the history allowance.
        let mut rooms = ctx.stored.lock().map_err(internal)?;
        let room = rooms.entry(id).or_default();
        if room.on_disk.is_none() {
            room.on_disk = on_disk;
        }
        let now = room.counted();
        if now + u64::from(len) > 2 * size + crate::protocol::history::allowance(entry.contract.body.history.as_ref()) {
            return Err(refused(format!("contract {id} already stores {now} bytes here; no more until a commit")));
        }
        room.in_flight += u64::from(len);
        Counted { ctx: ctx.clone(), id, len, stored: false }
    };
    // The peer's share first, then a place among all: a peer that stalls its pushes holds at
    // most half the places, whatever contracts it pushes under, and other peers' pushes go on.
    let share = {
        let mut shares = ctx.put_shares.lock().map_err(internal)?;
        shares.entry(peer).or_insert_with(|| Arc::new(Semaphore::new(PUT_SHARE))).clone()
    };
    let _share = share.acquire_owned().await.map_err(internal)?;
    let _place = ctx.put_permits.acquire().await.map_err(internal)?;
    Ok(Admitted { entry, inbound, counted, _share, _place })
}

/// `put_extent`: reads the bytes, checks them against their hash, stores and syncs them.
pub(super) async fn put_extent(
    ctx: &Arc<Ctx>,
    peer: NodeId,
    recv: &mut RecvStream,
    id: RecordId,
    offset: u64,
    hash: ExtentHash,
    len: u32,
) -> Handled {
    let admitted = admit(ctx, peer, id, offset, len).await?;
    let mut data = ctx.buffers.take_or_new();
    data.set_len(len as usize);
    // Part by part, each within the time-out: an owner held to a low rate, or on a slow uplink,
    // takes longer than one time-out for a whole extent.
    read_paced(recv, &mut data, ctx.opts.read_timeout, "extent bytes", None)
        .await
        .map_err(|e| ErrorReply::new(ErrorCode::BadFrame, e.to_string()))?;
    admitted.store(hash, data).await
}

/// `patch_extent`: rebuilds an extent from one held here (`base`) and the parts that follow,
/// checks it against its hash, stores and syncs it. A base that is not here (or that a
/// deliberate failure under way says is not) is refused before anything is read, and so is a
/// rebuilt extent of another hash: the owner then sends the extent whole.
#[allow(clippy::too_many_arguments)]
pub(super) async fn patch_extent(
    ctx: &Arc<Ctx>,
    peer: NodeId,
    recv: &mut RecvStream,
    id: RecordId,
    offset: u64,
    (base, hash): (ExtentHash, ExtentHash),
    len: u32,
    parts: u8,
) -> Handled {
    if push::patch_len(len, parts).is_none() {
        return Err(ErrorReply::new(
            ErrorCode::BadRequest,
            format!("parts {parts:#06b} of an extent of {len} bytes are no patch"),
        ));
    }
    let admitted = admit(ctx, peer, id, offset, len).await?;
    let (entry, inbound) = (admitted.entry.clone(), admitted.inbound.clone());
    let data = ctx.buffers.take_or_new();
    let mut data = blocking(move || {
        let hidden = match pretence(&entry)? {
            Pretence::All => true,
            Pretence::Extents(bad) => bad.contains(&base),
            Pretence::Nothing => false,
        };
        let mut data = data;
        // A base that cannot be read is as good as not here: the owner sends the extent whole
        // (a scrub finds the damage).
        let here = !hidden
            && inbound.read_into(&base, &mut data).map_err(|e| {
                ErrorReply::new(
                    ErrorCode::NotFound,
                    format!("extent {} could not be read here to patch: {e}", encoding::hex_encode(&base)),
                )
            })?;
        match here {
            true if data.len() == len as usize => Ok(data),
            true => Err(ErrorReply::new(
                ErrorCode::BadRequest,
                format!("extent {} here has {} bytes, not {len}", encoding::hex_encode(&base), data.len()),
            )),
            false => Err(ErrorReply::new(
                ErrorCode::NotFound,
                format!("extent {} of contract {id} is not here to patch", encoding::hex_encode(&base)),
            )),
        }
    })
    .await?;
    // Each part straight into its place, each within the time-out.
    let part = len as usize / push::PARTS;
    for j in push::each_part(parts) {
        read_paced(recv, &mut data[j * part..(j + 1) * part], ctx.opts.read_timeout, "extent parts", None)
            .await
            .map_err(|e| ErrorReply::new(ErrorCode::BadFrame, e.to_string()))?;
    }
    admitted.store(hash, data).await
}
