//! The market's part of the state directory: own offers, the board, offers seen elsewhere,
//! contracts and their local state, and where the server is listening.
//!
//! Longer than 400 lines: every typed file of the state directory, with the node's methods that
//! read and write them; a tenth is tests.
//!
//! A contract is two files: `contracts/<id>.json` holds the double-signed contract and is the
//! same, byte for byte, on both nodes; `contracts/<id>.state.json` holds this node's view of it
//! (status, standings), which changes. Callers hold the state lock around read-modify-writes.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::protocol::challenge::Verdict;
use crate::protocol::fairness::deliberate::{Mode, Plan};
use crate::protocol::fairness::evidence::Statement;
use crate::protocol::fairness::health::{Health, Reach};
use crate::protocol::fairness::judge::PeerRecord;
use crate::protocol::fairness::standing::Standing;
use crate::protocol::identity::NodeId;
use crate::protocol::market::{Contract, Notice, Offer, RecordId};
use crate::protocol::record::Signed;
use crate::protocol::time::Timestamp;
use crate::store::home::{Schema, StateError, create_dir};
use crate::store::node::Node;

/// `offers/<id>.json`: one of this node's own offers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OwnOffer {
    /// Always 1.
    pub schema: Schema,
    /// The signed offer.
    pub offer: Signed<Offer>,
    /// The contract it became, once taken: an offer makes at most one contract.
    pub taken_by: Option<RecordId>,
    /// Made by `ensure` for a new replica: only a node this one has no contract with may take it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub for_a_new_peer: bool,
    /// When it was withdrawn (`ensure`, once the replicas it was made for are there): no one may
    /// take it any more.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub withdrawn: Option<Timestamp>,
}

impl OwnOffer {
    /// Whether someone may still take it at `now`: not taken, not withdrawn, not expired.
    pub fn open(&self, now: Timestamp) -> bool {
        self.taken_by.is_none() && self.withdrawn.is_none() && now < self.offer.body.expires_at
    }
}

/// `board.json` and `offers/seen.json`: a list of signed offers.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OfferList {
    /// Always 1.
    pub schema: Schema,
    /// The offers.
    pub offers: Vec<Signed<Offer>>,
    /// Of those, the ids of the offers vouched for (`board.json` only; see [`crate::protocol::board`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vouched: Vec<RecordId>,
}

/// `contracts/<id>.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractFile {
    /// Always 1.
    pub schema: Schema,
    /// The double-signed contract.
    pub contract: Contract,
}

/// Which side of a contract this node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// It made the offer.
    Offerer,
    /// It accepted the offer.
    Taker,
}

/// Where a contract stands, here.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case", deny_unknown_fields)]
pub enum Status {
    /// Both sides hold each other's data.
    Active,
    /// One side gave notice: the data is kept until `delete_after`, then pruned.
    Terminated {
        /// The signed notice.
        notice: Signed<Notice>,
        /// When the data may be deleted.
        delete_after: Timestamp,
        /// Whether the peer has acknowledged the notice (ours only; theirs is always true).
        delivered: bool,
    },
    /// The peer's data here is gone; nothing more is owed.
    Ended {
        /// When.
        at: Timestamp,
        /// Why.
        reason: String,
        /// The notice that ended it, if one did: what this node shows a peer that still asks.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        notice: Option<Signed<Notice>>,
    },
}

impl Status {
    /// `active`, `terminated` or `ended`.
    pub fn name(&self) -> &'static str {
        match self {
            Status::Active => "active",
            Status::Terminated { .. } => "terminated",
            Status::Ended { .. } => "ended",
        }
    }

    /// Whether it is `ended`.
    pub fn is_ended(&self) -> bool {
        matches!(self, Status::Ended { .. })
    }

    /// Whether nothing is owed under the contract any more at `now`: it ended, or its notice
    /// ran out (the peer may have pruned this node's copy already: a challenge would only judge
    /// that).
    pub fn owes_nothing(&self, now: Timestamp) -> bool {
        match self {
            Status::Active => false,
            Status::Terminated { delete_after, .. } => *delete_after <= now,
            Status::Ended { .. } => true,
        }
    }
}

/// Why a peer may not act on a contract here.
#[derive(Debug, thiserror::Error)]
pub enum Denied {
    /// This node holds no such contract.
    #[error("no contract {0} here")]
    NoContract(RecordId),
    /// It does, and the peer is not its other side.
    #[error("node {peer} is not a side of contract {id}")]
    NotASide {
        /// Who asked.
        peer: NodeId,
        /// The contract.
        id: RecordId,
    },
    /// Its files could not be read.
    #[error(transparent)]
    State(StateError),
}

/// `contracts/<id>.state.json`: this node's view of a contract.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ContractState {
    /// Always 1.
    pub schema: Schema,
    /// This node's side.
    pub role: Role,
    /// The other side.
    pub peer: NodeId,
    /// Active, terminated or ended.
    pub status: Status,
    /// How this node judges the peer.
    pub their_standing: Standing,
    /// This node's record of the peer: passes, failures, unreachable spells.
    #[serde(default)]
    pub their_record: PeerRecord,
    /// The last verdict this node signed about the peer (what it shows when asked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub their_verdict: Option<Signed<Verdict>>,
    /// How the peer judges this node, as last learned.
    pub our_standing: Standing,
    /// When `our_standing` was learned.
    pub our_standing_at: Option<Timestamp>,
    /// The peer's latest signed word on how it judges this node (a challenge it sent, or a
    /// verdict): what shows the peer contradicting itself, should it later claim this node's
    /// grace had run out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub our_statement: Option<LearnedStatement>,
    /// Fail the peer's next challenge on purpose (`kaana-challenge fail-next`).
    #[serde(default)]
    pub fail_next: bool,
    /// The form `fail_next` asked for (else one at random).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_next_mode: Option<Mode>,
    /// This node's last deliberate failure and its audit.
    #[serde(default)]
    pub audit: Option<Plan>,
    /// A scrub of the peer's copy here found extents damaged (and removed them) at this time:
    /// the peer's next push re-sends them. Until then this node does not ask to be
    /// challenged again.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub awaiting_repush: Option<Timestamp>,
    /// The samples of this node's last challenge of the peer that got no answer: asked again
    /// until answered, so that a holder cannot pick which challenges to answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_picks: Option<PendingPicks>,
    /// When this node last rolled the dice for a deliberate failure on this contract.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_roll: Option<Timestamp>,
    /// The peer's latest signed word that this node was `ok` (kept beside `our_statement`,
    /// which a later failing word replaces): what shows a grace the peer backdates for false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub our_last_ok: Option<LearnedStatement>,
    /// The latest time this node signed a word on the peer (a challenge, an answer, a
    /// standing, a verdict). A judgement that the peer is failing is dated no earlier, so that
    /// nothing this node said before a grace began can read as contradicting that grace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub said_at: Option<Timestamp>,
    /// When this node last checked its copy of the peer's data after a failing verdict.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scrubbed_at: Option<Timestamp>,
    /// How many of those checks in a row found nothing wrong: each puts the next further off
    /// ([`crate::protocol::fairness::scrub_gap_secs`]).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub clean_scrubs: u32,
    /// Breaches an audit found on this contract (the peer deleted this node's data early), kept
    /// for good: the peer's record, which `ensure` chooses peers by.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub breaches: u32,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

impl ContractState {
    /// Whether an audit ever found the peer breaching this contract.
    pub fn breached(&self) -> bool {
        self.breaches > 0 || self.audit.as_ref().and_then(|a| a.result.as_deref()) == Some("breach")
    }
}

/// How far ahead of this node's clock a peer's word may be dated and still be learned (a
/// word from the far future would otherwise hide every later one).
pub const MAX_AHEAD_SECS: u64 = 3_600;

/// A word of the peer's about this node, with how far the peer's clock was ahead of this
/// node's when it was learned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnedStatement {
    /// The peer-signed statement.
    pub statement: Statement,
    /// The peer's clock minus this node's, in seconds.
    pub skew_secs: i64,
}

/// Samples a challenge asked for and got no answer to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PendingPicks {
    /// The manifest they are of.
    pub manifest: RecordId,
    /// `[extent, chunk]` pairs.
    pub picks: Vec<[u64; 2]>,
}

impl ContractState {
    /// The state of a new contract.
    pub fn new(role: Role, peer: NodeId) -> Self {
        ContractState {
            schema: Schema,
            role,
            peer,
            status: Status::Active,
            their_standing: Standing::Ok,
            their_record: PeerRecord::default(),
            their_verdict: None,
            our_standing: Standing::Ok,
            our_standing_at: None,
            our_statement: None,
            fail_next: false,
            fail_next_mode: None,
            audit: None,
            awaiting_repush: None,
            pending_picks: None,
            last_roll: None,
            our_last_ok: None,
            said_at: None,
            scrubbed_at: None,
            clean_scrubs: 0,
            breaches: 0,
        }
    }

    /// This node's standing of the peer, to state in a word signed at `now`; records that it
    /// said so (call it under the contract's update, and sign with what it returns).
    pub fn say(&mut self, now: Timestamp) -> Standing {
        self.said_at = self.said_at.max(Some(now));
        self.their_standing
    }

    /// The time to judge the peer at: `now`, or the last time this node signed a word on it if
    /// that is later (a clock set back). A word signed at the second a grace begins does not
    /// contradict it (see [`crate::protocol::fairness::evidence::breach`]).
    pub fn judging_time(&self, now: Timestamp) -> Timestamp {
        // A word dated far ahead (a clock that jumped forward, then back) is not waited for.
        self.said_at.filter(|s| *s <= now.plus_secs(MAX_AHEAD_SECS)).map_or(now, |s| now.max(s))
    }

    /// The peer's words that may contradict a grace it states (its latest, and its latest
    /// `ok`), each with the skew learned with it.
    pub fn words(&self) -> impl Iterator<Item = &LearnedStatement> {
        self.our_statement.iter().chain(self.our_last_ok.iter())
    }

    /// Whether this node's deliberate failure keeps it silent toward the peer at `now`.
    pub fn silent(&self, now: Timestamp) -> bool {
        self.audit.as_ref().is_some_and(|p| p.silent(now))
    }

    /// Learns the peer's signed word on this node, unless older (by the peer's clock) than what
    /// this node holds; `now` is this node's clock. Of two words signed in the same second, the
    /// one heard last counts (a rechallenge's verdict right after a standing). Returns whether
    /// it was learned.
    pub fn learn(&mut self, statement: Statement, now: Timestamp) -> bool {
        let at = statement.at();
        if self.our_statement.as_ref().is_some_and(|l| l.statement.at() > at) || at > now.plus_secs(MAX_AHEAD_SECS) {
            return false;
        }
        self.our_standing = statement.standing();
        self.our_standing_at = Some(now);
        let learned = LearnedStatement { skew_secs: at.unix() as i64 - now.unix() as i64, statement };
        if !learned.statement.standing().is_failing() {
            self.our_last_ok = Some(learned.clone());
        }
        self.our_statement = Some(learned);
        true
    }
}

/// A contract and this node's view of it.
#[derive(Debug, Clone)]
pub struct ContractEntry {
    /// Its id.
    pub id: RecordId,
    /// The double-signed contract.
    pub contract: Contract,
    /// This node's view.
    pub state: ContractState,
}

/// A contract as the tools print it (one JSON line): the fields scripts rely on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContractSummary {
    /// The contract's id.
    pub id: RecordId,
    /// The other side.
    pub peer: NodeId,
    /// This node's side: `offerer` or `taker`.
    pub role: Role,
    /// Bytes each side may store at the other.
    pub size: u64,
    /// The grace period, in seconds.
    pub grace_secs: u64,
    /// How long each side keeps the other's superseded generations, in seconds (0: the newest
    /// only).
    #[serde(default)]
    pub history_secs: u64,
    /// Bytes of superseded generations each side keeps beyond the newest.
    #[serde(default)]
    pub history_bytes: u64,
    /// `active`, `terminated` or `ended`.
    pub status: String,
    /// When it was made.
    pub created_at: Timestamp,
    /// How this node judges the peer (`failing` carries `delete_after` of its data here).
    pub their_standing: Standing,
    /// How the peer judges this node, as last learned.
    pub our_standing: Standing,
    /// This node's record of the peer: challenges passed and failed, tries unanswered.
    pub their_record: PeerRecord,
    /// For a terminated contract: when its data may be deleted.
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub delete_after: Option<Timestamp>,
}

impl ContractEntry {
    /// Takes a termination notice (this node's own, or the peer's): an active contract becomes
    /// terminated, the data owed until the notice's time plus the contract's grace, which is
    /// returned. A contract already terminated or ended keeps its first notice (`None`).
    pub fn take_notice(&mut self, notice: Signed<Notice>, delivered: bool) -> Option<Timestamp> {
        if !matches!(self.state.status, Status::Active) {
            return None;
        }
        let delete_after = notice.body.at.plus_secs(self.contract.body.grace_secs);
        self.state.status = Status::Terminated { notice, delete_after, delivered };
        Some(delete_after)
    }

    /// Marks this node's notice as told to the peer.
    pub fn notice_delivered(&mut self) {
        if let Status::Terminated { delivered, .. } = &mut self.state.status {
            *delivered = true;
        }
    }

    /// The printed form.
    pub fn summary(&self) -> ContractSummary {
        let delete_after = match &self.state.status {
            Status::Terminated { delete_after, .. } => Some(*delete_after),
            _ => None,
        };
        ContractSummary {
            id: self.id,
            peer: self.state.peer,
            role: self.state.role,
            size: self.contract.body.size,
            grace_secs: self.contract.body.grace_secs,
            history_secs: self.contract.body.history.map_or(0, |h| h.keep_secs),
            history_bytes: self.contract.body.history.map_or(0, |h| h.bytes),
            status: self.state.status.name().to_owned(),
            created_at: self.contract.body.created_at,
            their_standing: self.state.their_standing,
            our_standing: self.state.our_standing,
            their_record: self.state.their_record.clone(),
            delete_after,
        }
    }
}

/// `health.json`: this node's record of its own connection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct HealthFile {
    schema: Schema,
    health: Health,
}

/// `server.json`: where this node's server is bound, written when it starts.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerInfo {
    /// Always 1.
    pub schema: Schema,
    /// The server's node.
    pub node: NodeId,
    /// The address it is bound to.
    pub listen: SocketAddr,
    /// Its process id.
    pub pid: u32,
}

/// Why a record named by (a prefix of) its id was not found.
#[derive(Debug, thiserror::Error)]
pub enum LookupError {
    /// Nothing matches.
    #[error("no {kind} matches {prefix:?}")]
    NotFound {
        /// What was looked for.
        kind: &'static str,
        /// The id or prefix given.
        prefix: String,
    },
    /// More than one matches.
    #[error("{prefix:?} matches more than one {kind}: give more of the id")]
    Ambiguous {
        /// What was looked for.
        kind: &'static str,
        /// The id or prefix given.
        prefix: String,
    },
    /// Too short to be a prefix.
    #[error("{prefix:?} is too short: give at least 8 hex digits of the {kind} id")]
    TooShort {
        /// What was looked for.
        kind: &'static str,
        /// The id or prefix given.
        prefix: String,
    },
    /// The state could not be read.
    #[error(transparent)]
    State(#[from] StateError),
}

/// Picks the one item whose id starts with `prefix`.
pub fn find_by_prefix<T>(
    items: impl IntoIterator<Item = (RecordId, T)>,
    prefix: &str,
    kind: &'static str,
) -> Result<(RecordId, T), LookupError> {
    if prefix.len() < 8 {
        return Err(LookupError::TooShort { kind, prefix: prefix.to_owned() });
    }
    let mut found = items.into_iter().filter(|(id, _)| id.matches(prefix));
    let first = found.next().ok_or_else(|| LookupError::NotFound { kind, prefix: prefix.to_owned() })?;
    if found.any(|(id, _)| id != first.0) {
        return Err(LookupError::Ambiguous { kind, prefix: prefix.to_owned() });
    }
    Ok(first)
}

/// The `<record id>.json` files of a directory (none if it does not exist), by id.
fn records_in(dir: &std::path::Path) -> Result<Vec<(RecordId, PathBuf)>, StateError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(StateError::io(dir, e)),
    };
    let mut out = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| StateError::io(dir, e))?.path();
        let id = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".json"))
            .and_then(|s| s.parse().ok());
        if let Some(id) = id {
            out.push((id, path));
        }
    }
    Ok(out)
}

impl Node {
    fn contract_path(&self, id: &RecordId) -> PathBuf {
        self.home.contracts_dir().join(format!("{id}.json"))
    }

    fn contract_state_path(&self, id: &RecordId) -> PathBuf {
        self.home.contracts_dir().join(format!("{id}.state.json"))
    }

    /// Every contract, with this node's view of it, oldest first.
    pub fn contracts(&self) -> Result<Vec<ContractEntry>, StateError> {
        let mut out = Vec::new();
        for (id, _) in records_in(&self.home.contracts_dir())? {
            out.push(self.contract(&id)?);
        }
        out.sort_by_key(|e| (e.contract.body.created_at, e.id));
        Ok(out)
    }

    /// One contract by its full id.
    pub fn contract(&self, id: &RecordId) -> Result<ContractEntry, StateError> {
        let path = self.contract_path(id);
        let file: ContractFile = self.home.read(&path)?;
        if file.contract.id().ok() != Some(*id) {
            return Err(StateError::damaged(&path, "its content does not hash to its name"));
        }
        let state = self.home.read(&self.contract_state_path(id))?;
        Ok(ContractEntry { id: *id, contract: file.contract, state })
    }

    /// Contract `id`, if `peer` is its other side: the one check of who may act on a contract
    /// here. A contract file this node cannot read is [`Denied::State`], never "no contract":
    /// a passing disk trouble must not read as a failure.
    pub fn contract_for(&self, peer: NodeId, id: &RecordId) -> Result<ContractEntry, Denied> {
        let entry = self.contract(id).map_err(|e| match e {
            StateError::Io { error, .. } if error.kind() == std::io::ErrorKind::NotFound => Denied::NoContract(*id),
            other => Denied::State(other),
        })?;
        if entry.state.peer != peer {
            return Err(Denied::NotASide { peer, id: *id });
        }
        Ok(entry)
    }

    /// One contract by its id or a prefix of it (at least 8 hex digits).
    pub fn find_contract(&self, prefix: &str) -> Result<ContractEntry, LookupError> {
        let all = self.contracts()?;
        let (_, entry) = find_by_prefix(all.into_iter().map(|e| (e.id, e)), prefix, "contract")?;
        Ok(entry)
    }

    /// Stores a new contract: the signed contract first, then its state (a contract file without
    /// a state file is never listed as active by mistake: reading it fails loudly).
    pub fn save_new_contract(&self, contract: &Contract, state: &ContractState) -> Result<RecordId, StateError> {
        let dir = self.home.contracts_dir();
        create_dir(&dir)?;
        let id = contract.id().map_err(|e| StateError::damaged(&dir, e))?;
        self.home.write(&self.contract_path(&id), &ContractFile { schema: Schema, contract: contract.clone() })?;
        self.save_contract_state(&id, state)?;
        Ok(id)
    }

    /// Replaces a contract's local state. The caller holds the state lock (see
    /// [`Node::update_contract`], the one way to change a contract's state).
    pub fn save_contract_state(&self, id: &RecordId, state: &ContractState) -> Result<(), StateError> {
        self.home.write(&self.contract_state_path(id), state)
    }

    /// Changes contract `id`'s state under the state lock: reads it fresh, lets `change` edit
    /// it, and saves it if `change` returns `Ok`. No caller can forget the lock or save a stale
    /// copy.
    pub fn update_contract<T, E: From<StateError>>(
        &self,
        id: &RecordId,
        change: impl FnOnce(&mut ContractEntry) -> Result<T, E>,
    ) -> Result<T, E> {
        let _lock = self.home.lock()?;
        let mut entry = self.contract(id)?;
        let before = entry.state.clone();
        let out = change(&mut entry)?;
        if entry.state != before {
            self.save_contract_state(id, &entry.state)?;
        }
        Ok(out)
    }

    /// The peers this node is silent toward at `now` (a deliberate failure under way): it
    /// answers them nothing and sends them nothing.
    pub fn silent_peers(&self, now: Timestamp) -> Result<std::collections::HashSet<NodeId>, StateError> {
        Ok(self.contracts()?.into_iter().filter(|e| e.state.silent(now)).map(|e| e.state.peer).collect())
    }

    /// This node's record of its own connection (`health.json`).
    pub fn health(&self) -> Result<Health, StateError> {
        Ok(self
            .home
            .read_optional::<HealthFile>(&self.home.root().join("health.json"))?
            .map(|f| f.health)
            .unwrap_or_default())
    }

    /// Records a check of this node's connection at `now`; returns the new record.
    pub fn record_health(&self, now: Timestamp, reach: Reach) -> Result<Health, StateError> {
        let _lock = self.home.lock()?;
        let health = self.health()?.after_check(now, reach);
        self.home
            .write(&self.home.root().join("health.json"), &HealthFile { schema: Schema, health: health.clone() })?;
        Ok(health)
    }

    /// Bytes of peers' extents stored here now, under every contract.
    pub fn stored_for_peers(&self) -> Result<u64, StateError> {
        let mut total = 0;
        for entry in self.contracts()? {
            total += crate::store::inbound::Inbound::new(&self.config.storage, &entry.id).stored_bytes()?;
        }
        Ok(total)
    }

    /// Bytes committed to contracts that are not ended (what peers may store here: each
    /// contract's size and history allowance).
    pub fn committed(&self) -> Result<u64, StateError> {
        Ok(self
            .contracts()?
            .iter()
            .filter(|e| !matches!(e.state.status, Status::Ended { .. }))
            .map(|e| e.contract.body.held_bytes())
            .sum())
    }

    /// This node's own offers, by id.
    pub fn own_offers(&self) -> Result<Vec<(RecordId, OwnOffer)>, StateError> {
        let mut out = Vec::new();
        for (id, path) in records_in(&self.home.offers_dir())? {
            out.push((id, self.home.read(&path)?));
        }
        out.sort_by_key(|(id, o): &(RecordId, OwnOffer)| (o.offer.body.expires_at, *id));
        Ok(out)
    }

    /// Stores one of this node's offers.
    pub fn save_own_offer(&self, id: &RecordId, offer: &OwnOffer) -> Result<(), StateError> {
        let dir = self.home.offers_dir();
        create_dir(&dir)?;
        self.home.write(&dir.join(format!("{id}.json")), offer)
    }

    /// Reads an offer list file (empty if missing).
    pub fn offer_list(&self, path: &std::path::Path) -> Result<OfferList, StateError> {
        Ok(self.home.read_optional(path)?.unwrap_or_default())
    }

    /// Where this node's running server was last bound, if it ever ran.
    pub fn server_info(&self) -> Result<Option<ServerInfo>, StateError> {
        self.home.read_optional(&self.home.server_info())
    }

    /// The address to reach this node's own server from this machine.
    pub fn own_server_addr(&self) -> Result<String, StateError> {
        let bound = self.server_info()?.map(|s| s.listen).unwrap_or(self.config.listen);
        let ip = match bound.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        Ok(SocketAddr::new(ip, bound.port()).to_string())
    }

    /// The addresses peers should use to reach this node: the configured `advertise` list, else
    /// the server's bound address, else the listen address, when they are reachable ones.
    pub fn contact_addrs(&self) -> Result<Vec<String>, StateError> {
        if !self.config.advertise.is_empty() {
            return Ok(self.config.advertise.clone());
        }
        let bound = self.server_info()?.map(|s| s.listen);
        Ok([bound, Some(self.config.listen)]
            .into_iter()
            .flatten()
            .find(|a| !a.ip().is_unspecified() && a.port() != 0)
            .map(|a| vec![a.to_string()])
            .unwrap_or_default())
    }

    /// Appends an event to `events.jsonl`: `{"at": NOW, "event": KIND, ...fields}`.
    pub fn log_event(&self, now: Timestamp, kind: &str, fields: serde_json::Value) -> Result<(), StateError> {
        let mut event = serde_json::Map::new();
        event.insert("at".into(), serde_json::Value::String(now.to_string()));
        event.insert("event".into(), serde_json::Value::String(kind.to_owned()));
        if let serde_json::Value::Object(more) = fields {
            event.extend(more);
        }
        self.home.append_event(&event)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::identity::Identity;

    /// A state file as the tools wrote it before the fairness rules (no record of the peer, no
    /// statements learned, an audit without a form) still reads, with its audit pending.
    #[test]
    fn a_state_file_from_before_the_fairness_rules_still_reads() {
        let peer = Identity::generate().unwrap().node_id();
        let mut old = serde_json::to_value(ContractState::new(Role::Taker, peer)).unwrap();
        let fields = old.as_object_mut().unwrap();
        fields.retain(|k, _| {
            ["schema", "role", "peer", "status", "their_standing", "our_standing", "our_standing_at", "fail_next"]
                .contains(&k.as_str())
        });
        let when = serde_json::to_value(Timestamp::from_unix(1_800_000_000)).unwrap();
        fields.insert("audit".into(), serde_json::json!({"failed_at": when, "audit_at": when, "result": null}));
        let state: ContractState = serde_json::from_value(old).unwrap();
        let plan = state.audit.unwrap();
        assert_eq!((plan.mode, plan.pending(), plan.damaged.len()), (Mode::Damaged, true, 0));
        assert_eq!(
            plan.pretence(Timestamp::from_unix(1_700_000_000)),
            crate::protocol::fairness::deliberate::Pretence::Nothing
        );
        assert_eq!((state.their_record, state.our_statement), (PeerRecord::default(), None));
    }

    /// The peer's words on this node: newer ones replace older ones, the latest "ok" is kept
    /// beside a failing one, and a word dated far ahead of this node's clock is not learned
    /// (it would hide every later word until its date).
    #[test]
    fn words_learned_and_words_refused() {
        let (me, peer) = (Identity::from_seed([1; 32]), Identity::from_seed([2; 32]));
        let t = |s: u64| Timestamp::from_unix(1_800_000_000 + s);
        let word = |standing: Standing, at: u64| {
            let v = Verdict {
                contract: "33".repeat(32).parse().unwrap(),
                challenge: None,
                answer: None,
                holder: me.node_id(),
                result: None,
                standing,
                at: t(at),
            };
            Statement::Verdict(Signed::sign(v, &peer).unwrap())
        };
        let mut state = ContractState::new(Role::Taker, peer.node_id());
        let failing = Standing::Ok.after_failure(t(200), 7 * 86_400);
        assert!(state.learn(word(Standing::Ok, 100), t(100)));
        assert!(state.learn(word(failing, 200), t(210)));
        assert!(!state.learn(word(Standing::Ok, 150), t(220)), "older than what is held");
        assert_eq!(state.our_standing, failing);
        let ats: Vec<(Timestamp, i64)> = state.words().map(|w| (w.statement.at(), w.skew_secs)).collect();
        assert_eq!(ats, [(t(200), -10), (t(100), 0)]);
        assert!(!state.learn(word(Standing::Ok, 300 + MAX_AHEAD_SECS + 1), t(300)), "from the far future");
        assert!(state.learn(word(Standing::Ok, 300 + MAX_AHEAD_SECS), t(300)), "an hour ahead: a clock off");
        assert_eq!(state.our_standing, Standing::Ok);
        // What this node says is recorded, and judgements are dated no earlier.
        assert_eq!(state.say(t(500)), Standing::Ok);
        assert_eq!((state.judging_time(t(400)), state.judging_time(t(600))), (t(500), t(600)));
        state.say(t(10_000));
        assert_eq!(state.judging_time(t(5_000)), t(5_000), "a clock set back by more than an hour");
    }
}
