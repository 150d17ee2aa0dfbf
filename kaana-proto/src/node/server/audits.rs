//! The server's side of challenges: answering them (failing on purpose now and then, to audit
//! the peer), hearing verdicts (and checking its copy after a failing one), telling a peer how
//! it stands, and challenging a peer again on the peer's own connection when it asks.

use std::sync::Arc;

use super::ctx::Ctx;
use super::reply::{Handled, blocking, internal, now};
use crate::net::wire::{ErrorCode, ErrorReply, Response};
use crate::node::answer::{self, Honesty};
use crate::node::audit::{self, Heard};
use crate::protocol::challenge::{Challenge, Outcome, Verdict};
use crate::protocol::fairness::evidence::Statement;
use crate::protocol::fairness::judge::{self, Admission};
use crate::protocol::identity::NodeId;
use crate::protocol::market::RecordId;
use crate::protocol::record::Signed;
use crate::protocol::time::Timestamp;
use crate::store::files::ContractEntry;
use crate::store::home::StateError;

fn side(ctx: &Ctx, peer: NodeId, id: &RecordId) -> Result<ContractEntry, ErrorReply> {
    ctx.node.contract_for(peer, id).map_err(crate::node::refusal::denied)
}

/// `challenge`: prove we hold the peer's copy (`busy` beyond the contract's challenges an hour).
pub(super) async fn answer(ctx: &Arc<Ctx>, peer: NodeId, challenge: Signed<Challenge>) -> Handled {
    let c = ctx.clone();
    blocking(move || {
        // Counted when the sender is a side of the contract (anything else is refused below,
        // as it always was).
        if side(&c, peer, &challenge.body.contract).is_ok() {
            c.take_challenge(challenge.body.contract)?;
        }
        let seed = audit::seed().map_err(internal)?;
        let (answer, raw) = answer::answer(&c.node, peer, &challenge, now()?, Honesty::MayAudit, seed)
            .map_err(crate::node::refusal::unanswerable)?;
        Ok((Response::Answer { answer, len: raw.len() as u64 }, Some(raw.into())))
    })
    .await
}

/// `verdict`: how the peer judged our answer; recorded as our standing there (if newer than
/// what we hold). After a newly learned failing one, the copy of the peer's data here is
/// checked, as a holder that learns it failed does (at most once an hour).
pub(super) async fn verdict(ctx: &Arc<Ctx>, peer: NodeId, verdict: Signed<Verdict>) -> Handled {
    let c = ctx.clone();
    blocking(move || {
        verdict.verify_by(&peer).map_err(|e| ErrorReply::new(ErrorCode::Unauthorized, e.to_string()))?;
        if verdict.body.holder != c.node.id() {
            return Err(ErrorReply::new(ErrorCode::BadRequest, "the verdict is about another node"));
        }
        let id = verdict.body.contract;
        side(&c, peer, &id)?;
        let now = now()?;
        let failed = verdict.body.result == Some(Outcome::Fail);
        let learned = audit::learn(&c.node, &id, Statement::Verdict(verdict), now).map_err(internal)?;
        if learned && failed && answer::mark_for_scrub(&c.node, &id, now).map_err(internal)? {
            let node = c.clone();
            tokio::task::spawn_blocking(move || {
                if let Err(e) = answer::scrub_after_failure(&node.node, &id, now) {
                    node.say(format_args!("checking contract {}: {e}", id.short()));
                }
            });
        }
        Ok((Response::Ack, None))
    })
    .await
}

/// `standing`: how we see the peer, signed now.
pub(super) async fn standing(ctx: &Arc<Ctx>, peer: NodeId, id: RecordId) -> Handled {
    let c = ctx.clone();
    blocking(move || {
        let entry = side(&c, peer, &id)?;
        Ok((Response::Standing { verdict: standing_verdict(&c, &entry, now()?)? }, None))
    })
    .await
}

/// `rechallenge`: the peer asks to be challenged again. A failing peer is challenged at once,
/// strongly, on its own connection (at most once an hour, each failed one making the next
/// stronger); an ok one gets its standing.
pub(super) async fn rechallenge(ctx: &Arc<Ctx>, conn: &quinn::Connection, peer: NodeId, id: RecordId) -> Handled {
    let c = ctx.clone();
    let now = now()?;
    let (entry, admission) = blocking(move || {
        side(&c, peer, &id)?;
        c.node
            .update_contract(&id, |e| {
                let admission = judge::admit_rechallenge(&e.state.their_standing, &e.state.their_record, now);
                if let Admission::Challenge { .. } = admission {
                    e.state.their_record.last_rechallenge = Some(now);
                }
                Ok::<_, StateError>((e.clone(), admission))
            })
            .map_err(internal)
    })
    .await?;
    let samples = match admission {
        Admission::TooSoon { until } => {
            return Err(ErrorReply::new(ErrorCode::Refused, format!("asked again too soon: ask again after {until}")));
        }
        Admission::AlreadyOk => {
            let c = ctx.clone();
            let verdict = blocking(move || standing_verdict(&c, &entry, now)).await?;
            return Ok((Response::Rechallenged { verdict }, None));
        }
        Admission::Challenge { samples } => samples,
    };
    let Some(target) = crate::store::outbound::Target::from_record(&ctx.node, &id).map_err(internal)? else {
        return Err(ErrorReply::new(ErrorCode::Refused, "nothing of ours is at your node to challenge you about"));
    };
    let mut ex = rechallenge_exchange(ctx, conn, &entry, target, samples, now).await?;
    if let Heard::Superseded { generation, .. } = ex.heard {
        // A push committed meanwhile: the peer is challenged on the copy it now holds, which
        // this node must know of (it pushed it); a generation this node never pushed is a lie.
        let newer = crate::store::outbound::Target::from_record(&ctx.node, &id)
            .map_err(internal)?
            .filter(|t| t.generation() == generation && generation > ex.target.generation());
        ex = match newer {
            Some(t) => rechallenge_exchange(ctx, conn, &entry, t, samples, now).await?,
            None => audit::Exchanged {
                heard: Heard::Fail {
                    signed: None,
                    why: format!("the holder claims a generation {generation} it cannot show"),
                },
                ..ex
            },
        };
    }
    if let Heard::Ended { notice } = &ex.heard {
        // It asked to be challenged, then showed the notice that ended the contract: nothing
        // is owed, nothing judged.
        let id = entry.id;
        let _ = blocking({
            let c = ctx.clone();
            let (entry, heard) = (entry.clone(), ex.heard.clone());
            move || audit::judge(&c.node, &entry, &heard, None, 0, true, now, false).map_err(internal)
        })
        .await?;
        return Err(ErrorReply::new(
            ErrorCode::Refused,
            format!("contract {id} ended by a notice given at {}: nothing to rechallenge", notice.body.at),
        ));
    }
    if let Heard::Superseded { .. } | Heard::Unreachable(_) = ex.heard {
        // A peer that asks to be challenged and then does not answer (having seen the samples)
        // has failed that rechallenge: it may ask again in an hour, for a stronger one.
        ex.heard = Heard::Fail { signed: None, why: "no answer to the rechallenge it asked for".into() };
    }
    let c = ctx.clone();
    let judged = blocking(move || {
        audit::judge(&c.node, &entry, &ex.heard, Some(&ex.transcript), ex.samples, true, now, false).map_err(internal)
    })
    .await?;
    let verdict = judged.verdict.ok_or_else(|| internal("no verdict was signed"))?;
    Ok((Response::Rechallenged { verdict }, None))
}

/// One challenge of the peer, on a stream this node opens on the peer's connection.
async fn rechallenge_exchange(
    ctx: &Ctx,
    conn: &quinn::Connection,
    entry: &ContractEntry,
    target: crate::store::outbound::Target,
    samples: usize,
    now: Timestamp,
) -> Result<audit::Exchanged, ErrorReply> {
    // A peer that grants no stream is not waited for past the read time-out.
    let timeout = ctx.opts.client_timeouts.read;
    let (mut send, mut recv) = tokio::time::timeout(timeout, conn.open_bi())
        .await
        .map_err(|_| ErrorReply::new(ErrorCode::Timeout, "you let no stream open to challenge you on"))?
        .map_err(internal)?;
    audit::exchange((&mut send, &mut recv, ctx.opts.client_timeouts.read), &ctx.node, entry, target, samples, None, now)
        .await
        .map_err(|e| ErrorReply::new(ErrorCode::Refused, format!("could not challenge you: {e}")))
}

/// A signed statement of the peer's standing here, now (no challenge behind it): read and
/// recorded as said together, so that a later judgement is dated after it.
fn standing_verdict(ctx: &Ctx, entry: &ContractEntry, now: Timestamp) -> Result<Signed<Verdict>, ErrorReply> {
    let standing = ctx.node.update_contract(&entry.id, |e| Ok::<_, StateError>(e.state.say(now))).map_err(internal)?;
    let body = Verdict {
        contract: entry.id,
        challenge: None,
        answer: None,
        holder: entry.state.peer,
        result: None,
        standing,
        at: now,
    };
    Signed::sign(body, &ctx.node.identity).map_err(internal)
}
