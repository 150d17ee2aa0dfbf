//! Challenges as nodes run them: answering as a holder (honestly, or wrongly on purpose to audit
//! the peer), challenging as an owner and judging the answer, standings, and breach evidence.
//!
//! The same exchange runs on a stream the client opens (a routine challenge or an audit) and on
//! one the server opens back on the client's connection (a rechallenge: "challenge me again").

use std::path::PathBuf;

use quinn::{RecvStream, SendStream};
use serde::{Deserialize, Serialize};
use serde_json::json;
use thiserror::Error;

use crate::challenge::{self, Answer, Challenge, Outcome, Receipt, Rng, Verdict};
use crate::encoding;
use crate::identity::NodeId;
use crate::inbound::Inbound;
use crate::manifest::{Geometry, Manifest};
use crate::market::{Contract, RecordId};
use crate::net::transport::{Connection, NetError, read_exact, read_frame, read_timeout, write_frame};
use crate::net::wire::{ErrorCode, ErrorReply, Request, Response};
use crate::node::Node;
use crate::proof;
use crate::record::{RecordError, Signed};
use crate::state::{Schema, StateError, create_dir};
use crate::store::{Audit, ContractEntry, Status};
use crate::time::Timestamp;

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
    /// The network failed mid-exchange.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Randomness was not available.
    #[error("no randomness: {0}")]
    Random(String),
}

/// Everything a third party needs to check one challenge.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Transcript {
    /// The signed challenge.
    pub challenge: Signed<Challenge>,
    /// The holder's signed answer, if it answered.
    pub answer: Option<Signed<Answer>>,
    /// The raw answer bytes (hex).
    pub answer_bytes: String,
    /// The challenger's tops of the picked extents that have them, in pick order (hex; see
    /// [`challenge::tops_for`]): what proofs that stop short of the root are checked against.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub tops: String,
    /// The challenger's signed verdict.
    pub verdict: Signed<Verdict>,
}

/// The result of one exchange.
#[derive(Debug, Clone)]
pub struct Exchanged {
    /// How it ended.
    pub result: Outcome,
    /// The signed records.
    pub transcript: Transcript,
}

fn seed() -> Result<[u8; 32], AuditError> {
    let mut s = [0u8; 32];
    getrandom::fill(&mut s).map_err(|e| AuditError::Random(e.to_string()))?;
    Ok(s)
}

fn refused(code: ErrorCode, msg: impl Into<String>) -> ErrorReply {
    ErrorReply::new(code, msg)
}

fn internal(e: impl std::fmt::Display) -> ErrorReply {
    ErrorReply::new(ErrorCode::Internal, e.to_string())
}

/// Whether the holder may answer wrongly on purpose (never when it asked to be challenged).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Honesty {
    /// Always answer right.
    Honest,
    /// Lie if `fail-next` is set, or at the configured audit rate.
    MayAudit,
}

/// Answers `challenge` from `peer` as the holder of its copy. Unless honest, may answer wrongly
/// on purpose, and then plans an audit of the peer inside the grace period.
pub fn answer(
    node: &Node,
    peer: NodeId,
    challenge: &Signed<Challenge>,
    now: Timestamp,
    honesty: Honesty,
) -> Result<(Signed<Answer>, Vec<u8>), ErrorReply> {
    let c = &challenge.body;
    if challenge.signer != peer || c.challenger != peer {
        return Err(refused(ErrorCode::Unauthorized, "a challenge must be signed by the node that sends it"));
    }
    if c.holder != node.id() {
        return Err(refused(ErrorCode::BadRequest, format!("the challenge is for node {}, not this one", c.holder)));
    }
    challenge.verify().map_err(|e| refused(ErrorCode::BadRequest, e.to_string()))?;
    if c.picks.len() > challenge::MAX_SAMPLES {
        return Err(refused(ErrorCode::BadRequest, format!("more than {} samples", challenge::MAX_SAMPLES)));
    }
    let entry = node
        .contract(&c.contract)
        .map_err(|_| refused(ErrorCode::NotFound, format!("no contract {} here", c.contract)))?;
    if entry.state.peer != peer {
        return Err(refused(ErrorCode::Unauthorized, format!("node {peer} is not a side of contract {}", c.contract)));
    }
    if matches!(entry.state.status, Status::Ended { .. }) {
        return Err(refused(ErrorCode::NotFound, format!("contract {} has ended", c.contract)));
    }
    let inbound = Inbound::new(&node.config.storage, &c.contract);
    let (manifest, list) = inbound
        .committed()
        .map_err(internal)?
        .ok_or_else(|| refused(ErrorCode::NotFound, "no generation is committed here"))?;
    if manifest.body.generation != c.generation {
        return Err(refused(
            ErrorCode::Refused,
            format!("generation {} asked; generation {} is held here", c.generation, manifest.body.generation),
        ));
    }
    let g = manifest.body.geometry().map_err(internal)?;
    let hashes = manifest.body.check_list(&list).map_err(internal)?;
    let (mut raw, read) = inbound.answer(g, &hashes, &c.picks, c.depth).map_err(internal)?;
    let lie = honesty == Honesty::MayAudit && fail_on_purpose(node, &entry, now)?;
    if lie {
        for b in raw.iter_mut().take(proof::CHUNK as usize) {
            *b ^= 0xa5;
        }
    }
    node.log_event(
        now,
        "answer",
        json!({"contract": c.contract, "peer": peer, "samples": c.picks.len(), "read_bytes": read, "sent_bytes": raw.len(), "on_purpose_wrong": lie}),
    )
    .map_err(internal)?;
    let id = RecordId::of(c).map_err(internal)?;
    let body = Answer {
        challenge: id,
        holder: node.id(),
        proof: encoding::hex_encode(blake3::hash(&raw).as_bytes()),
        at: now,
    };
    Ok((Signed::sign(body, &node.identity).map_err(internal)?, raw))
}

/// Decides whether to answer this challenge wrongly on purpose; if so, plans the audit.
fn fail_on_purpose(node: &Node, entry: &ContractEntry, now: Timestamp) -> Result<bool, ErrorReply> {
    let _lock = node.home.lock().map_err(internal)?;
    let mut state = node.contract(&entry.id).map_err(internal)?.state;
    if state.audit.as_ref().is_some_and(Audit::pending) {
        // One audit at a time: a second lie would only muddle the first.
        return Ok(false);
    }
    let mut rng = Rng::from_seed(seed().map_err(internal)?);
    let by_rate = node.config.audit_rate > 0.0 && (rng.below(1_000_000) as f64) < node.config.audit_rate * 1_000_000.0;
    if !state.fail_next && !by_rate {
        return Ok(false);
    }
    let grace = entry.contract.body.grace_secs;
    let audit_at = now.plus_secs(grace / 7 + rng.below((grace * 5 / 7).max(1)));
    state.fail_next = false;
    state.audit = Some(Audit { failed_at: now, audit_at, result: None });
    node.save_contract_state(&entry.id, &state).map_err(internal)?;
    node.log_event(
        now,
        "deliberate_failure",
        json!({"contract": entry.id, "peer": entry.state.peer, "audit_at": audit_at}),
    )
    .map_err(internal)?;
    Ok(true)
}

/// Runs a challenge of `entry`'s peer on an open stream pair: sends it, reads and judges the
/// answer, records the peer's standing, and signs the verdict.
pub async fn run_challenge(
    send: &mut SendStream,
    recv: &mut RecvStream,
    node: &Node,
    entry: &ContractEntry,
    samples: usize,
    now: Timestamp,
) -> Result<Exchanged, AuditError> {
    let peer = entry.state.peer;
    let record = Inbound::outbound(node.home.root(), &entry.id);
    let (manifest, list) = record.committed()?.ok_or(AuditError::NothingPushed(peer))?;
    let g = manifest.body.geometry().map_err(|e| StateError::damaged(record.dir(), e))?;
    let hashes = manifest.body.check_list(&list).map_err(|e| StateError::damaged(record.dir(), e))?;
    let mut rng = Rng::from_seed(seed()?);
    let picks = challenge::pick(g, samples, &mut rng);
    // Proofs stop at the tops this node kept while pushing, if it has them all and they hold.
    let kept = record.tops(manifest.body.generation).and_then(|all| {
        let per = 1usize << proof::TOP_LEVELS;
        challenge::tops_for(g, &hashes, &picks, proof::TOP_LEVELS, |e| {
            all.get(e as usize * per..(e as usize + 1) * per).map(<[_]>::to_vec)
        })
    });
    let (depth, tops) = match kept {
        Some(tops) => (proof::TOP_LEVELS, tops),
        None => (0, Vec::new()),
    };
    let body = Challenge {
        contract: entry.id,
        challenger: node.id(),
        holder: peer,
        generation: manifest.body.generation,
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
    let (answer, raw) = match read_frame::<Response>(recv, read_timeout()).await? {
        Some(Response::Answer { answer, len }) if len as usize == expected => {
            let mut raw = vec![0u8; expected];
            read_exact(recv, &mut raw, read_timeout(), "the answer").await?;
            (Some(answer), raw)
        }
        // A refusal, a wrong length or no answer at all: the holder did not prove anything.
        _ => (None, Vec::new()),
    };
    let sound = answer.as_ref().is_some_and(|a| {
        a.verify_by(&peer).is_ok()
            && a.body.challenge == challenge_id
            && a.body.holder == peer
            && a.body.proof == encoding::hex_encode(blake3::hash(&raw).as_bytes())
    });
    let result = if sound && challenge::check(g, &hashes, &signed.body.picks, &raw, depth, &tops) == 0 {
        Outcome::Pass
    } else {
        Outcome::Fail
    };
    let answer_id = answer.as_ref().and_then(|a| RecordId::of(&a.body).ok());
    let verdict = judge(node, entry, challenge_id, answer_id, result, now)?;
    Ok(Exchanged {
        result,
        transcript: Transcript {
            challenge: signed,
            answer,
            answer_bytes: encoding::hex_encode(&raw),
            tops: encoding::hex_encode(tops.as_flattened()),
            verdict,
        },
    })
}

/// Records the peer's standing after an outcome and signs the verdict.
pub fn judge(
    node: &Node,
    entry: &ContractEntry,
    challenge: RecordId,
    answer: Option<RecordId>,
    result: Outcome,
    now: Timestamp,
) -> Result<Signed<Verdict>, AuditError> {
    let _lock = node.home.lock()?;
    let mut state = node.contract(&entry.id)?.state;
    state.their_standing = match result {
        Outcome::Pass => state.their_standing.after_pass(),
        Outcome::Fail | Outcome::Unreachable => state.their_standing.after_failure(now, entry.contract.body.grace_secs),
    };
    node.save_contract_state(&entry.id, &state)?;
    let verdict = Verdict {
        contract: entry.id,
        challenge,
        answer,
        holder: entry.state.peer,
        result,
        standing: state.their_standing,
        at: now,
    };
    node.log_event(
        now,
        "verdict",
        json!({"contract": entry.id, "peer": entry.state.peer, "result": result, "standing": state.their_standing}),
    )?;
    Ok(Signed::sign(verdict, &node.identity)?)
}

/// Challenges `entry`'s peer on a new stream of `conn`, then tells it the verdict.
pub async fn challenge_peer(
    conn: &Connection,
    node: &Node,
    entry: &ContractEntry,
    samples: usize,
    now: Timestamp,
) -> Result<Exchanged, AuditError> {
    let mut ex = conn.open_stream().await?;
    let exchanged = run_challenge(&mut ex.send, &mut ex.recv, node, entry, samples, now).await?;
    // Telling the peer is a courtesy: its standing here is decided either way.
    let _ = conn.request(&Request::Verdict { verdict: exchanged.transcript.verdict.clone() }).await;
    Ok(exchanged)
}

/// Records that the peer could not be reached for a challenge: it is failing from now.
pub fn unreachable(node: &Node, entry: &ContractEntry, now: Timestamp) -> Result<Signed<Verdict>, AuditError> {
    judge(node, entry, RecordId::of(&entry.contract.body)?, None, Outcome::Unreachable, now)
}

/// Records how the peer sees this node.
pub fn learn_standing(node: &Node, id: &RecordId, verdict: &Signed<Verdict>) -> Result<(), StateError> {
    let _lock = node.home.lock()?;
    let mut entry = node.contract(id)?;
    entry.state.our_standing = verdict.body.standing;
    entry.state.our_standing_at = Some(verdict.body.at);
    node.save_contract_state(id, &entry.state)
}

/// Asks the peer how it sees this node, and records it.
pub async fn ask_standing(
    conn: &Connection,
    node: &Node,
    entry: &ContractEntry,
    now: Timestamp,
) -> Result<crate::standing::Standing, AuditError> {
    let standing = match conn.request(&Request::Standing { contract: entry.id }).await? {
        Response::Standing { standing } => standing,
        other => return Err(NetError::Unexpected { request: "standing", reply: format!("{other:?}") }.into()),
    };
    let _lock = node.home.lock()?;
    let mut state = node.contract(&entry.id)?.state;
    state.our_standing = standing;
    state.our_standing_at = Some(now);
    node.save_contract_state(&entry.id, &state)?;
    Ok(standing)
}

/// "Challenge me again": asks the peer to challenge this node at once on this connection,
/// answers it honestly, and returns (and records) the peer's verdict.
pub async fn rechallenge(
    conn: &Connection,
    node: &Node,
    entry: &ContractEntry,
    now: Timestamp,
) -> Result<Signed<Verdict>, AuditError> {
    let peer = entry.state.peer;
    let mut ex = conn.open(&Request::Rechallenge { contract: entry.id }).await?;
    ex.finish()?;
    let (mut send, mut recv) = tokio::time::timeout(read_timeout(), conn.accept_stream())
        .await
        .map_err(|_| NetError::Timeout { what: "the peer's challenge", secs: read_timeout().as_secs() })??;
    let reply = match read_frame::<Request>(&mut recv, read_timeout()).await? {
        Some(Request::Challenge { challenge }) => match answer(node, peer, &challenge, now, Honesty::Honest) {
            Ok((answer, raw)) => Ok((Response::Answer { answer, len: raw.len() as u64 }, raw)),
            Err(e) => Err(e),
        },
        _ => Err(ErrorReply::new(ErrorCode::BadRequest, "expected a challenge")),
    };
    match reply {
        Ok((response, raw)) => {
            write_frame(&mut send, &response).await?;
            send.write_all(&raw).await.map_err(|e| NetError::Lost(e.to_string()))?;
        }
        Err(e) => write_frame(&mut send, &Response::Error(e)).await?,
    }
    let _ = send.finish();
    let verdict = match ex.reply().await? {
        Response::Rechallenged { verdict } => verdict,
        other => return Err(ex.unexpected(&other).into()),
    };
    verdict.verify_by(&peer)?;
    if verdict.body.holder != node.id() || verdict.body.contract != entry.id {
        return Err(
            NetError::Unexpected { request: "rechallenge", reply: "a verdict about someone else".into() }.into()
        );
    }
    learn_standing(node, &entry.id, &verdict)?;
    Ok(verdict)
}

/// What a breach file holds: everything a third party needs to check that the holder failed a
/// challenge about a generation it had signed for.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Evidence {
    /// Always 1.
    pub schema: Schema,
    /// The double-signed contract.
    pub contract: Contract,
    /// The owner-signed manifest of the generation asked about.
    pub manifest: Signed<Manifest>,
    /// The holder's signed receipt of that generation.
    pub receipt: Option<Signed<Receipt>>,
    /// The extent list (hex, 32 bytes per extent).
    pub extent_list: String,
    /// The failed exchange.
    pub transcript: Transcript,
}

/// Why evidence does not hold up.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum EvidenceError {
    /// A signature or a link between the records is wrong.
    #[error("the evidence is not consistent: {0}")]
    Inconsistent(String),
    /// The answer was in fact right.
    #[error("the answer proves every sample: no breach")]
    NoBreach,
}

impl Evidence {
    /// Checks everything: signatures, links, and that the answer fails. Returns the number of
    /// samples the holder failed to prove.
    pub fn check(&self) -> Result<usize, EvidenceError> {
        let bad = |m: &str| EvidenceError::Inconsistent(m.to_owned());
        self.contract.verify().map_err(|e| EvidenceError::Inconsistent(e.to_string()))?;
        let id = self.contract.id().map_err(|e| EvidenceError::Inconsistent(e.to_string()))?;
        let t = &self.transcript;
        let c = &t.challenge.body;
        let (owner, holder) = (c.challenger, c.holder);
        if self.contract.body.peer_of(&owner) != Some(holder) || c.contract != id {
            return Err(bad("the challenge is not between the contract's sides"));
        }
        t.challenge.verify_by(&owner).map_err(|e| EvidenceError::Inconsistent(e.to_string()))?;
        self.manifest.verify_by(&owner).map_err(|e| EvidenceError::Inconsistent(e.to_string()))?;
        let m = &self.manifest.body;
        if m.contract != id || m.owner != owner || m.generation != c.generation {
            return Err(bad("the manifest is not the generation challenged"));
        }
        if let Some(r) = &self.receipt {
            r.verify_by(&holder).map_err(|e| EvidenceError::Inconsistent(e.to_string()))?;
            let manifest_id = RecordId::of(m).map_err(|e| EvidenceError::Inconsistent(e.to_string()))?;
            if r.body.manifest != manifest_id || r.body.generation != m.generation || r.body.holder != holder {
                return Err(bad("the receipt is not for this manifest"));
            }
        }
        let list = encoding_hex_bytes(&self.extent_list).ok_or_else(|| bad("the extent list is not hex"))?;
        let hashes = m.check_list(&list).map_err(|e| EvidenceError::Inconsistent(e.to_string()))?;
        let g: Geometry = m.geometry().map_err(|e| EvidenceError::Inconsistent(e.to_string()))?;
        let raw = encoding_hex_bytes(&t.answer_bytes).ok_or_else(|| bad("the answer bytes are not hex"))?;
        t.verdict.verify_by(&owner).map_err(|e| EvidenceError::Inconsistent(e.to_string()))?;
        let challenge_id = RecordId::of(c).map_err(|e| EvidenceError::Inconsistent(e.to_string()))?;
        if t.verdict.body.challenge != challenge_id {
            return Err(bad("the verdict is about another challenge"));
        }
        match &t.answer {
            None => Err(bad(
                "the holder gave no signed answer (it refused or was silent): the verdict stands on the challenger's word alone",
            )),
            Some(a) => {
                a.verify_by(&holder).map_err(|e| EvidenceError::Inconsistent(e.to_string()))?;
                if a.body.challenge != challenge_id
                    || a.body.proof != encoding::hex_encode(blake3::hash(&raw).as_bytes())
                {
                    return Err(bad("the answer is not for this challenge or not these bytes"));
                }
                // The tops given must be exactly those of the picks that have them, and each
                // set must merge to its extent's hash in the list the holder signed for.
                let given = encoding_hex_bytes(&t.tops).ok_or_else(|| bad("the tops are not hex"))?;
                let mut sets = given.chunks(32 << c.depth.min(16));
                let tops = challenge::tops_for(g, &hashes, &c.picks, c.depth, |_| {
                    sets.next().map(|s| s.chunks_exact(32).map(|cv| cv.try_into().unwrap_or([0; 32])).collect())
                })
                .filter(|tops| tops.as_flattened() == given.as_slice())
                .ok_or_else(|| bad("the tops do not match the extents' hashes"))?;
                match challenge::check(g, &hashes, &c.picks, &raw, c.depth, &tops) {
                    0 => Err(EvidenceError::NoBreach),
                    n => Ok(n),
                }
            }
        }
    }
}

fn encoding_hex_bytes(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    text.as_bytes()
        .chunks(2)
        .map(|p| std::str::from_utf8(p).ok().and_then(|s| encoding::hex_decode::<1>(s).ok()).map(|b| b[0]))
        .collect()
}

/// Writes a breach's evidence to `audits/` and returns its path.
pub fn save_evidence(
    node: &Node,
    entry: &ContractEntry,
    transcript: &Transcript,
    now: Timestamp,
) -> Result<PathBuf, AuditError> {
    let record = Inbound::outbound(node.home.root(), &entry.id);
    let (manifest, list, receipt) =
        record.committed_with_receipt()?.ok_or(AuditError::NothingPushed(entry.state.peer))?;
    let evidence = Evidence {
        schema: Schema,
        contract: entry.contract.clone(),
        manifest,
        receipt,
        extent_list: encoding::hex_encode(&list),
        transcript: transcript.clone(),
    };
    let dir = node.home.root().join("audits");
    create_dir(&dir)?;
    let path = dir.join(format!("breach-{}-{}.json", entry.id.short(), now.unix()));
    node.home.write(&path, &evidence)?;
    Ok(path)
}
