//! Challenges as the challenger runs them: what to ask about, the exchange, judging the reply
//! by the fairness rules ([`crate::protocol::fairness`]), the verdicts both ways, standing queries,
//! "challenge me again", and breach evidence.
//!
//! Longer than 400 lines: one conversation run from both ends (a challenge, and a rechallenge the
//! server opens back) with the judging of its reply, the verdicts both ways and the evidence it
//! yields; apart, each piece would need the others' private steps.
//!
//! The same exchange runs on a stream the client opens (a routine challenge or an audit) and on
//! one the server opens back on the client's connection (a rechallenge: "challenge me again").

use std::path::PathBuf;
use std::sync::Arc;

use quinn::{RecvStream, SendStream};
use serde_json::json;
use thiserror::Error;

use crate::net::transport::{Client, Connection, NetError, read_exact, read_frame, read_paced, write_frame};
use crate::net::wire::{ErrorCode, ErrorReply, FrameError, PROTOCOL_VERSION, Request, Response};
use crate::node::answer::{self, Honesty};
use crate::protocol::challenge::{self, Answer, Challenge, Outcome, Reply, Rng, Verdict};
use crate::protocol::encoding;
use crate::protocol::fairness::evidence::{self, Breach, Evidence, Failed, Statement};
use crate::protocol::fairness::health::Reach;
use crate::protocol::fairness::judge::{self, Effect, Seen};
use crate::protocol::fairness::standing::Standing;
use crate::protocol::history::CLOCK_SLACK_SECS;
use crate::protocol::identity::NodeId;
use crate::protocol::market::{Notice, RecordId};
use crate::protocol::proof;
use crate::protocol::record::{RecordError, Signed};
use crate::protocol::time::Timestamp;
use crate::store::files::{ContractEntry, LearnedStatement, PendingPicks};
use crate::store::home::{Schema, StateError, create_dir};
use crate::store::node::Node;
use crate::store::outbound::Target;

/// Why a challenge could not be run (as opposed to a holder failing it).
#[derive(Debug, Error)]
pub enum AuditError {
    /// Nothing was pushed to this peer yet, so there is nothing to ask about.
    #[error("nothing pushed to node {0} yet: run `kaana-sync push` first")]
    NothingPushed(NodeId),
    /// The state directory failed.
    #[error(transparent)]
    State(#[from] StateError),
    /// Signing failed.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// The network failed before the challenge could be asked.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Randomness was not available.
    #[error("no randomness: {0}")]
    Random(String),
    /// The generation asked about has no extent of its own (it shares them all with the next).
    #[error("generation {0} shares every extent with the next kept generation: nothing of its own to ask about")]
    NothingOwn(u64),
    /// The generation asked about is not one the holder must keep.
    #[error("generation {generation} is not one the holder must keep now (it must keep {kept:?})")]
    NotKept {
        /// The generation asked about.
        generation: u64,
        /// Those it must keep.
        kept: Vec<u64>,
    },
}

/// 32 bytes from the OS: the seed of a challenge's picks or of a deliberate failure's choices.
pub fn seed() -> Result<[u8; 32], AuditError> {
    let mut s = [0u8; 32];
    getrandom::fill(&mut s).map_err(|e| AuditError::Random(e.to_string()))?;
    Ok(s)
}

/// What the holder's reply showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Heard {
    /// Every sample proved.
    Pass,
    /// A failure; `signed` when the holder signed a failing reply (proofs that do not check, or
    /// "I no longer hold it"): when by its clock, and how it said it judged this node.
    Fail {
        /// When the holder signed it, and the standing it stated.
        signed: Option<(Timestamp, Standing)>,
        /// What was wrong, for people.
        why: String,
    },
    /// "Superseded": the holder committed a newer generation meanwhile.
    Superseded {
        /// Its generation.
        generation: u64,
        /// Its manifest's id.
        manifest: RecordId,
    },
    /// No reply.
    Unreachable(String),
    /// The holder showed a notice, signed by a side, that ended the contract by the time of its
    /// answer: nothing is owed any more.
    Ended {
        /// The notice.
        notice: Signed<Notice>,
    },
}

impl Heard {
    /// As the challenge line says it.
    pub fn outcome(&self) -> Outcome {
        match self {
            Heard::Pass => Outcome::Pass,
            Heard::Fail { .. } => Outcome::Fail,
            Heard::Superseded { .. } | Heard::Unreachable(_) => Outcome::Unreachable,
            Heard::Ended { .. } => Outcome::Ended,
        }
    }
}

/// The records of one exchange.
#[derive(Debug, Clone)]
pub struct Transcript {
    /// The signed challenge.
    pub challenge: Signed<Challenge>,
    /// The holder's signed reply, if it gave one.
    pub answer: Option<Signed<Answer>>,
    /// The raw answer bytes.
    pub answer_bytes: Vec<u8>,
    /// The tops the proofs were checked against (see [`challenge::tops_for`]).
    pub tops: Vec<[u8; 32]>,
}

/// One exchange.
#[derive(Debug, Clone)]
pub struct Exchanged {
    /// What the reply showed.
    pub heard: Heard,
    /// The records.
    pub transcript: Transcript,
    /// What was asked about.
    pub target: Target,
    /// How many samples.
    pub samples: usize,
}

/// Sends a challenge of `samples` samples (or of `picks`, asked before and not answered) about
/// `target` on an open stream and reads the reply.
#[allow(clippy::too_many_arguments)]
pub async fn exchange(
    (send, recv, read_timeout): (&mut SendStream, &mut RecvStream, std::time::Duration),
    node: &Node,
    entry: &ContractEntry,
    target: Target,
    samples: usize,
    picks: Option<Vec<[u64; 2]>>,
    now: Timestamp,
) -> Result<Exchanged, AuditError> {
    let peer = entry.state.peer;
    let g = target.manifest.body.geometry().map_err(|e| StateError::damaged(node.home.root(), e))?;
    let hashes = target.manifest.body.check_list(&target.list).map_err(|e| StateError::damaged(node.home.root(), e))?;
    let mut rng = Rng::from_seed(seed()?);
    let picks = picks.unwrap_or_else(|| match &target.only {
        Some(only) => challenge::pick_among(g, only, samples, &mut rng),
        None => challenge::pick(g, samples, &mut rng),
    });
    // Proofs stop at the tops this node kept while pushing, if it has them all and they hold.
    let kept = target.tops.as_ref().and_then(|all| {
        let per = 1usize << proof::TOP_LEVELS;
        challenge::tops_for(g, &hashes, &picks, proof::TOP_LEVELS, |e| {
            all.get(e as usize * per..(e as usize + 1) * per).map(<[_]>::to_vec)
        })
    });
    let (depth, tops) = match kept {
        Some(tops) => (proof::TOP_LEVELS, tops),
        None => (0, Vec::new()),
    };
    // The standing stated. That it was said at `now` is recorded by the judgement of the
    // reply, made at `now` or later (one state write per challenge, not two).
    let standing = node.contract(&entry.id)?.state.their_standing;
    let body = Challenge {
        contract: entry.id,
        challenger: node.id(),
        holder: peer,
        manifest: RecordId::of(&target.manifest.body)?,
        generation: target.generation(),
        standing,
        nonce: rng.nonce(),
        picks,
        depth,
        at: now,
    };
    let challenge_id = RecordId::of(&body)?;
    let signed = Signed::sign(body, &node.identity)?;
    write_frame(send, &Request::Challenge { challenge: signed.clone() }).await?;
    let _ = send.finish();
    let expected = challenge::answer_len(g, &signed.body.picks, depth).unwrap_or(0);
    let unsigned = |why: &str| Heard::Fail { signed: None, why: why.to_owned() };
    let (mut answer, mut raw) = (None, Vec::new());
    let heard = match read_frame::<Response>(recv, read_timeout).await {
        Ok(Some(Response::Answer { answer: a, len })) => {
            let attributed = a.verify_by(&peer).is_ok() && a.body.challenge == challenge_id && a.body.holder == peer;
            let heard = match &a.body.reply {
                _ if !attributed => unsigned("a reply that is not the holder's signed answer to this challenge"),
                Reply::Proof { .. } if len as usize > expected => unsigned("an answer longer than its proofs"),
                Reply::Proof { proof } => {
                    raw = vec![0u8; len as usize];
                    match read_exact(recv, &mut raw, read_timeout, "the answer").await {
                        Err(e) => Heard::Unreachable(e.to_string()),
                        Ok(()) if *proof != encoding::hex_encode(blake3::hash(&raw).as_bytes()) => {
                            unsigned("the answer's bytes are not the ones it signed")
                        }
                        Ok(()) => match challenge::check(g, &hashes, &signed.body.picks, &raw, depth, &tops) {
                            0 => Heard::Pass,
                            n => Heard::Fail {
                                signed: Some((a.body.at, a.body.standing)),
                                why: format!("{n} of {} samples do not prove", signed.body.picks.len()),
                            },
                        },
                    }
                }
                Reply::NotHeld { reason } => Heard::Fail {
                    signed: Some((a.body.at, a.body.standing)),
                    why: format!("the holder says: {reason}"),
                },
                Reply::Refused { reason } => unsigned(&format!("the holder declined: {reason}")),
                // Judged at the answer's time, but no later than this node's clock allows: an
                // answer dated ahead ends no grace early.
                Reply::Ended { notice }
                    if evidence::ended_by(
                        &entry.contract,
                        notice,
                        a.body.at.min(now.plus_secs(CLOCK_SLACK_SECS)),
                        target.receipt.as_ref().map(|r| &r.body),
                    ) =>
                {
                    Heard::Ended { notice: notice.clone() }
                }
                Reply::Ended { .. } => Heard::Fail {
                    signed: Some((a.body.at, a.body.standing)),
                    why: "the holder says the contract ended, by a notice that had not ended it".into(),
                },
                Reply::Superseded { generation, manifest } => {
                    Heard::Superseded { generation: *generation, manifest: *manifest }
                }
            };
            answer = Some(a);
            heard
        }
        Ok(Some(Response::Error(e))) => match e.code {
            ErrorCode::Busy | ErrorCode::Timeout | ErrorCode::Internal => Heard::Unreachable(e.message),
            _ => unsigned(&format!("the holder refused: {}", e.message)),
        },
        Ok(Some(_)) => unsigned("a reply that is not an answer"),
        Ok(None) => Heard::Unreachable("the stream ended without a reply".into()),
        // A peer on another protocol version cannot answer: as if unreachable (judged failing
        // only if it stays so for the retry window), not a wrong answer.
        Err(NetError::Frame(FrameError::Version(v))) => {
            Heard::Unreachable(format!("the holder speaks protocol version {v}, this node {PROTOCOL_VERSION}"))
        }
        Err(NetError::Frame(e)) => unsigned(&format!("a bad frame: {e}")),
        Err(e) => Heard::Unreachable(e.to_string()),
    };
    let transcript = Transcript { challenge: signed, answer, answer_bytes: raw, tops };
    Ok(Exchanged { heard, transcript, target, samples })
}

/// Fetches the manifest the holder of `entry` committed, as a target, if this node signed it.
async fn fetch_target(conn: &Connection, node: &Node, entry: &ContractEntry) -> Result<Option<Target>, NetError> {
    let mut ex = conn.open(&Request::GetManifest { contract: entry.id, generation: None }).await?;
    ex.finish()?;
    let (manifest, receipt) = match ex.reply().await? {
        Response::ManifestIs { manifest, receipt } => (*manifest, receipt),
        _ => return Ok(None),
    };
    let m = &manifest.body;
    if manifest.verify_by(&node.id()).is_err() || m.contract != entry.id || m.geometry().is_err() {
        return Ok(None);
    }
    let mut list = vec![0u8; (m.extent_count * 32) as usize];
    read_paced(&mut ex.recv, &mut list, conn.read_timeout(), "the extent list", None).await?;
    if m.check_list(&list).is_err() {
        return Ok(None);
    }
    Ok(Some(Target { manifest, list, receipt, tops: None, only: None }))
}

/// Challenges `entry`'s peer on a new stream of `conn` about a copy this node pushed there,
/// with `samples` samples: `generation` if given, else the newest or, half the time, one of the
/// older generations the history terms still keep (sampling what the newest does not share). If
/// the holder committed a newer generation meanwhile (a push racing the challenge), asks again
/// about that one, once. Samples asked for and not answered are asked again, until answered: a
/// holder cannot choose which challenges to answer.
pub async fn challenge_peer(
    conn: &Connection,
    node: &Node,
    entry: &ContractEntry,
    samples: usize,
    generation: Option<u64>,
    now: Timestamp,
) -> Result<Exchanged, AuditError> {
    let terms = entry.contract.body.history.as_ref();
    let choices = Target::choices(node, &entry.id, terms, now)?;
    let &(newest_generation, newest_id) = choices.last().ok_or(AuditError::NothingPushed(entry.state.peer))?;
    // What was asked and not answered is asked again; else what the caller wants; else a draw.
    let pending = node.contract(&entry.id)?.state.pending_picks;
    let pending_at = pending.as_ref().and_then(|p| choices.iter().position(|(_, m)| *m == p.manifest));
    let at = match (pending_at, generation) {
        (Some(i), _) => i,
        (None, Some(g)) => choices
            .iter()
            .position(|(c, _)| *c == g)
            .ok_or_else(|| AuditError::NotKept { generation: g, kept: choices.iter().map(|(c, _)| *c).collect() })?,
        (None, None) => {
            let mut rng = Rng::from_seed(seed()?);
            let older = choices.len() - 1;
            if older > 0 && rng.below(2) == 0 { rng.below(older as u64) as usize } else { older }
        }
    };
    // An older generation that shares every extent with the next has nothing of its own to ask.
    let target = match (Target::of_generation(node, &entry.id, choices[at].0)?, generation) {
        (Some(t), _) => t,
        (None, Some(g)) => return Err(AuditError::NothingOwn(g)),
        (None, None) => Target::from_record(node, &entry.id)?.ok_or(AuditError::NothingPushed(entry.state.peer))?,
    };
    let picks = pending.filter(|p| RecordId::of(&target.manifest.body).ok() == Some(p.manifest)).map(|p| p.picks);
    let mut ex = conn.open_stream().await?;
    let first =
        exchange((&mut ex.send, &mut ex.recv, conn.read_timeout()), node, entry, target, samples, picks, now).await?;
    let Heard::Superseded { generation, manifest } = first.heard else {
        if first.target.only.is_some() && matches!(first.heard, Heard::Fail { .. }) {
            // What an older generation lost cannot be sent again (this node no longer has it):
            // judged once, it is not asked about again, nor anything older.
            crate::store::outbound::Outbound::at(node.home.root(), &entry.id)
                .forget_through(first.target.generation())?;
        }
        return keep_pending(node, entry, first);
    };
    if generation < newest_generation {
        // An honest holder's "superseded" names the newest generation it committed, never one
        // older than the newest this node recorded it committing: asked about an older
        // generation it dropped, such an answer would move the challenge onto one it still keeps.
        let why = format!(
            "the holder says generation {generation} replaced the one asked about, but it committed generation \
             {newest_generation} since"
        );
        return Ok(Exchanged { heard: Heard::Fail { signed: None, why }, ..first });
    }
    if first.target.generation() < newest_generation && generation == newest_generation && manifest == newest_id {
        // "I no longer keep that older generation": the history terms say whether it may. If
        // this node cannot tell, the newest is asked about instead, as after a racing push.
        if let Some(judged) = retired(node, entry, &first, newest_generation)? {
            return keep_pending(node, entry, judged);
        }
    }
    let newer = |t: &Target| t.generation() == generation && RecordId::of(&t.manifest.body).ok() == Some(manifest);
    let target = match Target::from_record(node, &entry.id)?.filter(newer) {
        Some(t) => Some(t),
        None => fetch_target(conn, node, entry).await?.filter(newer),
    };
    let Some(target) = target.filter(|_| generation > first.target.generation()) else {
        let why = format!("the holder claims a generation {generation} it cannot show");
        return Ok(Exchanged { heard: Heard::Fail { signed: None, why }, ..first });
    };
    let mut ex = conn.open_stream().await?;
    let mut second =
        exchange((&mut ex.send, &mut ex.recv, conn.read_timeout()), node, entry, target, samples, None, now).await?;
    if let Heard::Superseded { .. } = second.heard {
        second.heard = Heard::Unreachable("the holder's copy changed twice during the challenge".into());
    }
    keep_pending(node, entry, second)
}

/// The holder says it no longer keeps an older generation this node asked about (one the
/// history terms keep an hour from now, by this node's record). A failure, signed by the
/// holder's answer, unless this node's record misses a generation between that one and the
/// newest (a push whose reply was lost: the holder then counted history this node does not
/// know of, and may rightly have retired more): then nothing is judged (`None`). Either way
/// the record forgets that generation and anything older.
fn retired(
    node: &Node,
    entry: &ContractEntry,
    first: &Exchanged,
    newest: u64,
) -> Result<Option<Exchanged>, AuditError> {
    let asked = first.target.generation();
    let record = crate::store::outbound::Outbound::at(node.home.root(), &entry.id);
    let recorded: Vec<u64> = {
        let _shared = record.lock(false)?;
        record.manifests()?.iter().map(|(m, _)| m.body.generation).collect()
    };
    let whole = crate::protocol::history::record_is_whole(&recorded, asked, newest);
    // Judged or not, it is not asked about again, nor anything older.
    record.forget_through(asked)?;
    if !whole {
        return Ok(None);
    }
    let signed = first.transcript.answer.as_ref().map(|a| (a.body.at, a.body.standing));
    let why = format!("the holder no longer keeps generation {asked}, which the contract's history terms still keep");
    Ok(Some(Exchanged { heard: Heard::Fail { signed, why }, ..first.clone() }))
}

/// Keeps the samples of a challenge the holder saw and did not answer, to ask them again;
/// forgets them once answered.
fn keep_pending(node: &Node, entry: &ContractEntry, ex: Exchanged) -> Result<Exchanged, AuditError> {
    let pending = match ex.heard {
        Heard::Unreachable(_) => Some(PendingPicks {
            manifest: ex.transcript.challenge.body.manifest,
            picks: ex.transcript.challenge.body.picks.clone(),
        }),
        _ => None,
    };
    node.update_contract(&entry.id, |e| {
        e.state.pending_picks = pending;
        Ok::<_, StateError>(())
    })?;
    Ok(ex)
}

/// A judgement of the peer, recorded.
#[derive(Debug, Clone)]
pub struct Judgement {
    /// The peer's standing now.
    pub standing: Standing,
    /// What it amounted to; `None`: nothing was judged (the contract had ended by a notice).
    pub effect: Option<Effect>,
    /// The verdict signed, if one was due.
    pub verdict: Option<Signed<Verdict>>,
}

/// Judges what a challenge of `entry`'s peer showed, by the fairness rules; records the
/// standing and the peer's record; signs a verdict when one is due. `asked`: the peer asked
/// for this challenge (a rechallenge). `suspect`: this node reached too few of its peers in
/// this run to trust its connection.
#[allow(clippy::too_many_arguments)]
pub fn judge(
    node: &Node,
    entry: &ContractEntry,
    heard: &Heard,
    transcript: Option<&Transcript>,
    samples: usize,
    asked: bool,
    now: Timestamp,
    suspect: bool,
) -> Result<Judgement, AuditError> {
    let seen = match heard {
        Heard::Pass => Seen::Pass { samples, asked },
        Heard::Fail { .. } => Seen::Fail { asked },
        Heard::Superseded { .. } | Heard::Unreachable(_) => Seen::Unreachable,
        Heard::Ended { notice } => return adopt_notice(node, entry, notice, now),
    };
    // Dated no earlier than the clock reads now: another run of this node (cron's beside a
    // person's) may have signed a word on the peer since this one started.
    let now = now.max(crate::node::machine::now_from_env().unwrap_or(now));
    let challenge = transcript.map(|t| RecordId::of(&t.challenge.body)).transpose()?;
    let answer = transcript.and_then(|t| t.answer.as_ref()).map(|a| RecordId::of(&a.body)).transpose()?;
    let grace = entry.contract.body.grace_secs;
    let judgement = node.update_contract(&entry.id, |e| {
        let st = &mut e.state;
        // After every word this node signed on the peer: none of them can then contradict the
        // grace this judgement may start.
        let now = st.judging_time(now);
        st.said_at = Some(now);
        let j = judge::judge(st.their_standing, &st.their_record, seen, now, grace, suspect);
        st.their_standing = j.standing;
        st.their_record = j.record;
        let verdict = match j.effect {
            Effect::Verdict => {
                let body = Verdict {
                    contract: e.id,
                    challenge,
                    answer,
                    holder: st.peer,
                    result: Some(heard.outcome()),
                    standing: j.standing,
                    at: now,
                };
                let v = Signed::sign(body, &node.identity)?;
                st.their_verdict = Some(v.clone());
                Some(v)
            }
            _ => None,
        };
        // Having judged the peer failing, a deliberate failure of ours must not go on: our
        // own failing answers would now read as deleting its data inside the grace we grant.
        if j.standing.is_failing()
            && let Some(plan) = st.audit.take()
        {
            st.audit = Some(if plan.pending() { plan.abandoned(now) } else { plan });
        }
        Ok::<_, AuditError>(Judgement { standing: j.standing, effect: Some(j.effect), verdict })
    })?;
    let effect = match judgement.effect {
        Some(Effect::Verdict) | None => json!("verdict"),
        Some(Effect::Retry { tries, failing_from }) => json!({"retry": tries, "failing_from": failing_from}),
        Some(Effect::Suspended) => json!("suspended"),
    };
    node.log_event(
        now,
        "verdict",
        json!({"contract": entry.id, "peer": entry.state.peer, "result": heard.outcome(),
               "standing": judgement.standing, "effect": effect, "samples": samples}),
    )?;
    Ok(judgement)
}

/// The holder showed the notice that ended the contract: nothing is judged. A contract this
/// node still held active takes the notice (its own copy of the peer's data then goes when
/// `kaana-prune` finds the notice run out).
fn adopt_notice(
    node: &Node,
    entry: &ContractEntry,
    notice: &Signed<Notice>,
    now: Timestamp,
) -> Result<Judgement, AuditError> {
    let (standing, adopted) = node.update_contract(&entry.id, |e| {
        Ok::<_, AuditError>((e.state.their_standing, e.take_notice(notice.clone(), true)))
    })?;
    let from = if notice.body.from == node.id() { "us" } else { "peer" };
    if let Some(delete_after) = adopted {
        node.log_event(
            now,
            "notice",
            json!({"contract": entry.id, "peer": entry.state.peer, "from": from, "delete_after": delete_after}),
        )?;
    }
    Ok(Judgement { standing, effect: None, verdict: None })
}

/// Records a signed word of the peer's about this node (a verdict, or a challenge it sent), if
/// newer than what this node holds. Returns whether it was learned.
pub fn learn(node: &Node, id: &RecordId, statement: Statement, now: Timestamp) -> Result<bool, StateError> {
    node.update_contract(id, |e| Ok(e.state.learn(statement, now)))
}

/// Whether `verdict` is `peer`'s signed verdict about this node under `id`.
fn verdict_about_us(node: &Node, peer: &NodeId, id: &RecordId, verdict: &Signed<Verdict>) -> bool {
    verdict.verify_by(peer).is_ok() && verdict.body.holder == node.id() && verdict.body.contract == *id
}

/// Asks the peer how it sees this node (a fresh verdict, signed), and records it.
pub async fn ask_standing(
    conn: &Connection,
    node: &Node,
    entry: &ContractEntry,
    now: Timestamp,
) -> Result<Standing, AuditError> {
    let peer = entry.state.peer;
    let verdict = match conn.request(&Request::Standing { contract: entry.id }).await? {
        Response::Standing { verdict } => verdict,
        other => return Err(NetError::Unexpected { request: "standing", reply: format!("{other:?}") }.into()),
    };
    if !verdict_about_us(node, &peer, &entry.id, &verdict) {
        return Err(NetError::Unexpected {
            request: "standing",
            reply: "a verdict that is not about this node".into(),
        }
        .into());
    }
    let standing = verdict.body.standing;
    learn(node, &entry.id, Statement::Verdict(verdict), now)?;
    Ok(standing)
}

/// "Challenge me again": asks the peer to challenge this node at once on this connection,
/// answers honestly, and returns (and records) the peer's verdict. A peer that sees this node
/// as ok answers at once, without a challenge.
pub async fn rechallenge(
    conn: &Connection,
    node: &Node,
    entry: &ContractEntry,
    now: Timestamp,
) -> Result<Signed<Verdict>, AuditError> {
    let peer = entry.state.peer;
    let mut ex = conn.open(&Request::Rechallenge { contract: entry.id }).await?;
    ex.finish()?;
    let timeout = conn.read_timeout();
    let reply = tokio::select! {
        reply = ex.reply() => reply?,
        stream = tokio::time::timeout(timeout, conn.accept_stream()) => {
            let (mut send, mut recv) =
                stream.map_err(|_| NetError::Timeout { what: "the peer's challenge", secs: timeout.as_secs() })??;
            let answered = match read_frame::<Request>(&mut recv, timeout).await? {
                Some(Request::Challenge { challenge }) => answer::answer(node, peer, &challenge, now, Honesty::Honest, seed()?)
                    .map_err(crate::node::refusal::unanswerable),
                _ => Err(ErrorReply::new(ErrorCode::BadRequest, "expected a challenge")),
            };
            match answered {
                Ok((answer, raw)) => {
                    write_frame(&mut send, &Response::Answer { answer, len: raw.len() as u64 }).await?;
                    send.write_all(&raw).await.map_err(|e| NetError::Lost(e.to_string()))?;
                }
                Err(e) => write_frame(&mut send, &Response::Error(e)).await?,
            }
            let _ = send.finish();
            ex.reply().await?
        }
    };
    let verdict = match reply {
        Response::Rechallenged { verdict } => verdict,
        other => return Err(ex.unexpected(&other).into()),
    };
    if !verdict_about_us(node, &peer, &entry.id, &verdict) {
        return Err(
            NetError::Unexpected { request: "rechallenge", reply: "a verdict about someone else".into() }.into()
        );
    }
    learn(node, &entry.id, Statement::Verdict(verdict.clone()), now)?;
    Ok(verdict)
}

/// What a failed challenge amounts to, by the breach rule; with the evidence file when it
/// proves a breach to anybody. `earlier`: the peer's words this node held before the challenge
/// (the peer may have sent newer ones meanwhile, to replace those that would show it wrong).
pub fn breach_of(
    node: &Node,
    entry: &ContractEntry,
    ex: &Exchanged,
    earlier: &[LearnedStatement],
    now: Timestamp,
) -> Result<(Breach, Option<PathBuf>), AuditError> {
    let Heard::Fail { signed, .. } = ex.heard else { return Ok((Breach::No, None)) };
    let state = node.contract(&entry.id)?.state;
    let held: Vec<LearnedStatement> = earlier.iter().chain(state.words()).cloned().collect();
    let words: Vec<(Timestamp, Standing)> = held.iter().map(|l| (l.statement.at(), l.statement.standing())).collect();
    let skew = state.our_statement.as_ref().or(earlier.first()).map_or(0, |l| l.skew_secs);
    let failed = match signed {
        Some((at, standing)) => Failed::Signed { at, standing },
        None => Failed::Unsigned,
    };
    match evidence::breach(failed, &words, skew, entry.contract.body.grace_secs, now) {
        Breach::Proven => {
            // Only claimed if the file proves it, checked as a third party would: without a
            // contradiction if the answer needs none, else with the first word that does it.
            let evidence = Evidence {
                schema: Schema,
                contract: entry.contract.clone(),
                manifest: ex.target.manifest.clone(),
                receipt: ex.target.receipt.clone(),
                extent_list: encoding::hex_encode(&ex.target.list),
                challenge: ex.transcript.challenge.clone(),
                answer: ex.transcript.answer.clone(),
                answer_bytes: encoding::hex_encode(&ex.transcript.answer_bytes),
                tops: encoding::hex_encode(ex.transcript.tops.as_flattened()),
                contradiction: None,
            };
            let candidates = std::iter::once(None).chain(held.iter().map(|l| Some(l.statement.clone())));
            let Some(evidence) = candidates
                .map(|contradiction| Evidence { contradiction, ..evidence.clone() })
                .find(|e| e.check().is_ok())
            else {
                return Ok((Breach::AtUsOnly, None));
            };
            let dir = node.home.root().join("audits");
            create_dir(&dir)?;
            let path = dir.join(format!("breach-{}-{}.json", entry.id.short(), now.unix()));
            node.home.write(&path, &evidence)?;
            Ok((Breach::Proven, Some(path)))
        }
        other => Ok((other, None)),
    }
}

/// Connects to each of `peers` at once. If fewer than half answer, also asks up to three other
/// nodes of the address book who they are, so that this node does not take its own outage
/// for its peers'. Returns each peer's connection (or why not) and what was reached.
pub async fn connect_all(
    client: &Arc<Client>,
    node: &Node,
    peers: &[NodeId],
    now: Timestamp,
) -> Result<(Vec<(NodeId, Result<Connection, NetError>)>, Reach), StateError> {
    let book = node.address_book()?;
    let reach_all = |nodes: Vec<NodeId>| {
        let mut tasks = tokio::task::JoinSet::new();
        for (i, n) in nodes.into_iter().enumerate() {
            let (client, addrs) = (client.clone(), book.addrs(&n).to_vec());
            tasks.spawn(async move { (i, n, client.connect_any(n, &addrs).await) });
        }
        async move {
            let mut out = Vec::new();
            while let Some(done) = tasks.join_next().await {
                if let Ok(r) = done {
                    out.push(r);
                }
            }
            out.sort_by_key(|(i, _, _)| *i);
            out.into_iter().map(|(_, n, c)| (n, c)).collect::<Vec<_>>()
        }
    };
    let conns = reach_all(peers.to_vec()).await;
    let mut reach = Reach { tried: peers.len(), reached: conns.iter().filter(|(_, c)| c.is_ok()).count() };
    if crate::protocol::fairness::health::suspect(reach) {
        // Never a node this node is silent toward (a deliberate failure): it is down to it.
        let silent = node.silent_peers(now)?;
        let witnesses: Vec<NodeId> = book
            .peers
            .keys()
            .filter(|n| !peers.contains(n) && **n != node.id() && !silent.contains(n))
            .take(3)
            .copied()
            .collect();
        reach.tried += witnesses.len();
        for (_, answered) in reach_all(witnesses).await {
            if let Ok(c) = answered {
                reach.reached += 1;
                c.close();
            }
        }
    }
    Ok((conns, reach))
}

/// One audit of a peer, done and recorded.
#[derive(Debug)]
pub struct Audited {
    /// The exchange.
    pub exchanged: Exchanged,
    /// The judgement that followed.
    pub judged: Judgement,
    /// Whether it was a breach.
    pub breach: Breach,
    /// The evidence, when the breach is proven.
    pub evidence: Option<PathBuf>,
}

/// Challenges `entry`'s peer with `samples` samples, judges it, tells it the verdict, and, if
/// this node is failing there and the peer failed, records the breach (event, evidence, the
/// end of a deliberate failure). `suspect`: this node's connection is in doubt in this run.
pub async fn audit(
    conn: &Connection,
    node: &Node,
    entry: &ContractEntry,
    (samples, generation): (usize, Option<u64>),
    now: Timestamp,
    suspect: bool,
) -> Result<Audited, AuditError> {
    let earlier: Vec<LearnedStatement> = node.contract(&entry.id)?.state.words().cloned().collect();
    let ex = challenge_peer(conn, node, entry, samples, generation, now).await?;
    let judged = judge(node, entry, &ex.heard, Some(&ex.transcript), ex.samples, false, now, suspect)?;
    if let Some(v) = &judged.verdict {
        // Telling the peer is a courtesy: its standing here is decided either way.
        let _ = conn.request(&Request::Verdict { verdict: v.clone() }).await;
    }
    let (breach, evidence) = breach_of(node, entry, &ex, &earlier, now)?;
    if breach != Breach::No {
        node.update_contract(&entry.id, |e| {
            e.state.audit = e.state.audit.take().map(|p| if p.pending() { p.ended("breach") } else { p });
            e.state.breaches = e.state.breaches.saturating_add(1);
            Ok::<_, StateError>(())
        })?;
        node.log_event(now, "breach", json!({"contract": entry.id, "peer": entry.state.peer, "evidence": evidence}))?;
    }
    Ok(Audited { exchanged: ex, judged, breach, evidence })
}

impl Audited {
    /// What a person is told of a breach.
    pub fn breach_message(&self, entry: &ContractEntry) -> String {
        let proof = match &self.evidence {
            Some(path) => format!("Evidence anyone can check: {}", path.display()),
            None => "The peer signed nothing that proves it to others.".to_owned(),
        };
        format!(
            "BREACH: node {} no longer holds this node's data, inside the grace period it promised (contract {}). {proof}",
            entry.state.peer, entry.id
        )
    }
}
