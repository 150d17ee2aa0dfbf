//! `kaana-challenge`: challenges, standings, deliberate failures and their audits.
//!
//! The tool gathers what the rules need (the state, what each peer says) and carries out what
//! they decide ([`kaana_proto::protocol::fairness`]); it decides nothing itself.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde::Serialize;
use serde_json::json;

use kaana_proto::net::transport::{Connection, NetError, Traffic};
use kaana_proto::net::wire::Request;
use kaana_proto::node::audit::{self, AuditError, Heard};
use kaana_proto::node::cli::{Exit, emit};
use kaana_proto::node::machine::Settings;
use kaana_proto::node::machine::now_from_env;
use kaana_proto::protocol::challenge::{DEFAULT_SAMPLES, MAX_SAMPLES, Outcome};
use kaana_proto::protocol::fairness::attention::{self, Concern};
use kaana_proto::protocol::fairness::deliberate::{self, Mode, Plan};
use kaana_proto::protocol::fairness::evidence::{Breach, Evidence};
use kaana_proto::protocol::fairness::health;
use kaana_proto::protocol::fairness::judge::{self, Effect, PeerRecord};
use kaana_proto::protocol::fairness::standing::Standing;
use kaana_proto::protocol::identity::NodeId;
use kaana_proto::protocol::market::RecordId;
use kaana_proto::protocol::time::Timestamp;
use kaana_proto::store::files::{ContractEntry, Status};
use kaana_proto::store::home::StateError;
use kaana_proto::store::node::Node;

/// Challenge peers to prove they still hold this node's data, and audit their honesty.
///
/// `kaana-challenge --all` (from cron) does, for every contract at once: ask the peer how it
/// sees this node; challenge it (an "audit" when the peer sees this node as failing: the peer
/// must then still hold our data, inside the grace it promised); and, where this node is failing
/// there and holds the peer's data whole, ask to be challenged again. One JSON line per
/// exchange. A peer that cannot be reached is tried again at the next run, and judged failing
/// only after a day of tries; a node that reaches fewer than half of the nodes it tries
/// suspects its own connection and judges nobody.
///
/// Exit codes: 0 all well (a single failure of a peer is recorded and shown, not alarmed: honest
/// peers fail on purpose now and then); 1 a breach, this node's data at risk at a peer, a peer
/// failing longer than a deliberate failure lasts, or this node cut off for a day; 2 error.
#[derive(Debug, Parser)]
#[command(name = "kaana-challenge", version, subcommand_precedence_over_arg = true)]
pub struct Args {
    #[command(flatten)]
    pub home: kaana_proto::node::cli::HomeArgs,
    /// The contract to check (its id or at least 8 leading hex digits).
    #[arg(conflicts_with = "all")]
    pub contract: Option<String>,
    /// Check every contract, concurrently.
    #[arg(long)]
    pub all: bool,
    /// Chunks sampled per challenge (the default catches a holder missing 10% of the data with
    /// probability above 99%; a failing peer that asks to be challenged again is asked three
    /// times as many).
    #[arg(long, value_name = "K", default_value_t = DEFAULT_SAMPLES)]
    pub samples: usize,
    /// Ask about this generation of the contract's copy (one the peer's history terms still
    /// keep) [default: the newest, or half the time an older one the terms keep].
    #[arg(long, value_name = "N", conflicts_with = "all")]
    pub generation: Option<u64>,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Other things to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask each peer how it sees this node. Exits 1 if this node's data is at risk at a peer
    /// (it is failing there, and not because of its own deliberate failure).
    Standing,
    /// Fail the peer's next challenge on purpose, then audit the peer inside the grace period.
    FailNext {
        /// The contract (its id or at least 8 leading hex digits).
        contract: String,
        /// The form of the failure: silent (answer nothing, as a node that is down), damaged
        /// (a few unreadable extents), lost ("I no longer hold it"); default: one at random.
        #[arg(long, value_name = "MODE")]
        mode: Option<Mode>,
    },
    /// Check a breach file (from `audits/`) as a third party: signatures, links, that the
    /// holder failed an answer that states the owner failing, inside that grace. Needs no node.
    /// Exits 1 if the evidence does not hold, saying which part is missing.
    CheckEvidence {
        /// The breach file.
        file: PathBuf,
    },
    /// Print shell completions (bash, zsh, fish, elvish, powershell).
    Completions {
        /// The shell.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `kaana-challenge man > kaana-challenge.1`.
    Man,
}

/// One exchange, as printed.
#[derive(Debug, Serialize)]
struct Line {
    contract: RecordId,
    peer: NodeId,
    kind: &'static str,
    result: Outcome,
    breach: bool,
    /// How this node now judges the peer.
    their_standing: Standing,
    #[serde(skip_serializing_if = "Option::is_none")]
    evidence: Option<PathBuf>,
    #[serde(skip_serializing_if = "Option::is_none")]
    message: Option<String>,
    /// Samples asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    samples: Option<usize>,
    /// The generation asked about.
    #[serde(skip_serializing_if = "Option::is_none")]
    generation: Option<u64>,
    /// How long the exchange took, and the bytes it put on the wire.
    #[serde(skip_serializing_if = "Option::is_none")]
    ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wire_bytes: Option<u64>,
}

impl Line {
    fn new(entry: &ContractEntry, kind: &'static str, result: Outcome, their_standing: Standing) -> Self {
        Line {
            contract: entry.id,
            peer: entry.state.peer,
            kind,
            result,
            breach: false,
            their_standing,
            evidence: None,
            message: None,
            samples: None,
            generation: None,
            ms: None,
            wire_bytes: None,
        }
    }
}

/// Runs `kaana-challenge`.
pub fn run(args: Args, settings: Settings) -> anyhow::Result<Exit> {
    match &args.command {
        Some(Command::CheckEvidence { file }) => return check_evidence(file),
        Some(Command::Completions { shell }) => return kaana_proto::node::cli::print_completions::<Args>(*shell),
        Some(Command::Man) => return kaana_proto::node::cli::print_man::<Args>(),
        _ => {}
    }
    let node = args.home.open(&settings)?;
    let now = now_from_env()?;
    match args.command {
        Some(Command::FailNext { contract, mode }) => fail_next(&node, &contract, mode),
        Some(Command::Standing) => kaana_proto::node::cli::runtime()?.block_on(standing(node, settings, now)),
        Some(Command::CheckEvidence { .. } | Command::Completions { .. } | Command::Man) => handled_before(),
        None => {
            if !(1..=MAX_SAMPLES).contains(&args.samples) {
                anyhow::bail!("--samples must be between 1 and {MAX_SAMPLES}");
            }
            let entries = match (&args.contract, args.all) {
                (Some(c), false) => vec![node.find_contract(c)?],
                (None, true) => node.contracts()?.into_iter().filter(|e| !e.state.status.owes_nothing(now)).collect(),
                _ => anyhow::bail!("say which contract to check, or --all"),
            };
            kaana_proto::node::cli::runtime()?.block_on(check_all(
                node,
                settings,
                entries,
                (args.samples, args.generation),
                now,
            ))
        }
    }
}

fn handled_before() -> anyhow::Result<Exit> {
    anyhow::bail!("internal: this command is handled before the node is opened")
}

fn fail_next(node: &Node, prefix: &str, mode: Option<Mode>) -> anyhow::Result<Exit> {
    let entry = node.find_contract(prefix)?;
    node.update_contract(&entry.id, |e| {
        e.state.fail_next = true;
        e.state.fail_next_mode = mode;
        Ok::<_, StateError>(())
    })?;
    emit(&json!({"contract": entry.id, "peer": entry.state.peer, "fail_next": true, "mode": mode}))?;
    Ok(Exit::Ok)
}

/// What checking one contract found.
struct Checked {
    lines: Vec<Line>,
    breach: bool,
}

async fn check_all(
    node: Node,
    settings: Settings,
    entries: Vec<ContractEntry>,
    samples: (usize, Option<u64>),
    now: Timestamp,
) -> anyhow::Result<Exit> {
    let node = Arc::new(node);
    let client = Arc::new(settings.client(&node, Traffic::Short));
    // Toward a peer it is failing on purpose in silence, this node is down: no contact at all,
    // under any contract.
    // (It sees nothing of the peer meanwhile, so a spell of unanswered tries it had begun is
    // forgotten.)
    let silent = node.silent_peers(now)?;
    let (quiet, entries): (Vec<ContractEntry>, Vec<ContractEntry>) =
        entries.into_iter().partition(|e| silent.contains(&e.state.peer));
    for e in quiet.iter().filter(|e| e.state.their_record.tries > 0 || e.state.their_record.last_try.is_some()) {
        node.update_contract(&e.id, |e| Ok::<_, StateError>(judge::forget_spell(&mut e.state.their_record)))?;
    }
    let mut by_peer: BTreeMap<NodeId, Vec<ContractEntry>> = BTreeMap::new();
    for entry in entries {
        by_peer.entry(entry.state.peer).or_default().push(entry);
    }
    let peers: Vec<NodeId> = by_peer.keys().copied().collect();
    let (conns, reach) = audit::connect_all(&client, &node, &peers, now).await?;
    let suspect = health::suspect(reach);
    let health = node.record_health(now, reach)?;
    if suspect {
        eprintln!(
            "kaana-challenge: reached {} of {} nodes: this node's own connection is in doubt, so it judges nobody \
             unreachable in this run",
            reach.reached, reach.tried
        );
    }
    // One connection per peer, its contracts checked at once over it.
    let mut tasks = tokio::task::JoinSet::new();
    for (peer, conn) in conns {
        let entries = by_peer.remove(&peer).unwrap_or_default();
        let node = node.clone();
        tasks.spawn(async move {
            // A peer not reached is said in its contracts' lines (`unreachable`, with why), not
            // on stderr: cron mails stderr, and a peer rebooting needs nobody.
            let conn = conn.map_err(|e| e.to_string());
            // The peer's challenges back to us arrive on streams it opens; one at a time.
            let rechallenges = Arc::new(tokio::sync::Mutex::new(()));
            let mut inner = tokio::task::JoinSet::new();
            for entry in entries {
                let (node, conn, rechallenges) = (node.clone(), conn.clone(), rechallenges.clone());
                inner.spawn(async move {
                    let id = entry.id;
                    (id, check_contract(&node, entry, conn, &rechallenges, samples, now, suspect).await)
                });
            }
            let mut results = Vec::new();
            while let Some(done) = inner.join_next().await {
                results.push(done);
            }
            if let Ok(conn) = conn {
                conn.close();
            }
            results
        });
    }
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        results.extend(done?);
    }
    let (mut exit, mut error) = (Exit::Ok, None);
    let mut checked_ids = Vec::new();
    for done in results {
        let (id, checked) = done?;
        checked_ids.push(id);
        match checked {
            Ok(checked) => {
                for line in &checked.lines {
                    emit(line)?;
                }
                if checked.breach {
                    exit = Exit::Attention;
                }
            }
            Err(e) => {
                eprintln!("kaana-challenge: error: contract {id}: {e:#}");
                error = Some(e);
            }
        }
    }
    client.close().await;
    // What needs a person, by the rules; a single failure does not.
    for id in checked_ids {
        let entry = node.contract(&id)?;
        for concern in contract_concerns(&entry, now) {
            eprintln!("kaana-challenge: contract {} (node {}): {concern}", id.short(), entry.state.peer.short());
            exit = Exit::Attention;
        }
    }
    if let Some(concern) = attention::cut_off(&health, now) {
        eprintln!("kaana-challenge: {concern}: check this node's network");
        exit = Exit::Attention;
    }
    match error {
        Some(e) if exit == Exit::Ok => Err(e),
        _ => Ok(exit),
    }
}

fn contract_concerns(entry: &ContractEntry, now: Timestamp) -> Vec<Concern> {
    let s = &entry.state;
    attention::concerns(s.their_standing, s.our_standing, s.audit.as_ref(), entry.contract.body.grace_secs, now)
}

/// What a judgement that decided nothing says.
fn effect_message(effect: Option<Effect>, why: &str) -> String {
    match effect {
        Some(Effect::Retry { tries, failing_from }) => {
            format!("{why}; unanswered {tries} time(s): tried again at the next run, failing only from {failing_from}")
        }
        Some(Effect::Suspended) => format!("{why}; this node's own connection is in doubt: not counted"),
        Some(Effect::Verdict) | None => why.to_owned(),
    }
}

async fn check_contract(
    node: &Node,
    entry: ContractEntry,
    conn: Result<Connection, String>,
    rechallenges: &tokio::sync::Mutex<()>,
    samples: (usize, Option<u64>),
    now: Timestamp,
    suspect: bool,
) -> anyhow::Result<Checked> {
    let mut lines = Vec::new();
    let kind_before = if entry.state.our_standing.is_failing() { "audit" } else { "routine" };
    let unreachable = |entry: &ContractEntry, kind: &'static str, why: String| -> anyhow::Result<Line> {
        let judged = audit::judge(node, entry, &Heard::Unreachable(why.clone()), None, 0, false, now, suspect)?;
        Ok(Line {
            message: Some(effect_message(judged.effect, &why)),
            ..Line::new(entry, kind, Outcome::Unreachable, judged.standing)
        })
    };
    // A notice of ours the peer was never told of (it was away when we gave it): told now.
    if let (Ok(conn), Status::Terminated { notice, delivered: false, .. }) = (&conn, &entry.state.status)
        && notice.body.from == node.id()
        && conn.request(&Request::Notice { notice: notice.clone() }).await.is_ok()
    {
        node.update_contract(&entry.id, |e| {
            e.notice_delivered();
            Ok::<_, StateError>(())
        })?;
        eprintln!("kaana-challenge: contract {}: the peer is now told of this node's notice", entry.id.short());
    }
    if kaana_proto::store::outbound::Target::from_record(node, &entry.id)?.is_none() {
        eprintln!("kaana-challenge: contract {}: nothing pushed yet, nothing to challenge", entry.id.short());
        return Ok(Checked { lines, breach: false });
    }
    let conn = match conn {
        Ok(c) => c,
        Err(why) => {
            lines.push(unreachable(&entry, kind_before, why)?);
            return Ok(Checked { lines, breach: false });
        }
    };
    // How does the peer see us? Failing there, this challenge is an audit.
    let failing_here = match audit::ask_standing(&conn, node, &entry, now).await {
        Ok(s) => s.is_failing(),
        Err(AuditError::Net(e)) => {
            lines.push(unreachable(&entry, kind_before, e.to_string())?);
            return Ok(Checked { lines, breach: false });
        }
        Err(e) => return Err(e.into()),
    };
    let kind = if failing_here { "audit" } else { "routine" };
    let entry = node.contract(&entry.id)?;
    let (started, wire_before) = (std::time::Instant::now(), conn.wire_bytes());
    let audited = match audit::audit(&conn, node, &entry, samples, now, suspect).await {
        Ok(a) => a,
        Err(AuditError::Net(e)) => {
            lines.push(unreachable(&entry, kind, e.to_string())?);
            return Ok(Checked { lines, breach: false });
        }
        Err(e) => return Err(e.into()),
    };
    let ex = &audited.exchanged;
    let message = match &ex.heard {
        Heard::Fail { why, .. } => Some(why.clone()),
        Heard::Unreachable(why) => Some(effect_message(audited.judged.effect, why)),
        Heard::Ended { notice } => Some(format!(
            "the contract ended by a notice given at {}: nothing is owed (its copy here goes when kaana-prune runs after {})",
            notice.body.at,
            notice.body.at.plus_secs(entry.contract.body.grace_secs)
        )),
        _ => None,
    };
    lines.push(Line {
        breach: audited.breach != Breach::No,
        evidence: audited.evidence.clone(),
        message,
        samples: Some(ex.samples),
        generation: Some(ex.target.generation()),
        ms: Some(started.elapsed().as_secs_f64() * 1e3),
        wire_bytes: Some(conn.wire_bytes() - wire_before),
        ..Line::new(&entry, kind, ex.heard.outcome(), audited.judged.standing)
    });
    if audited.breach != Breach::No {
        eprintln!("kaana-challenge: {}", audited.breach_message(&entry));
        return Ok(Checked { lines, breach: true });
    }

    // Failing there, the audit answered (no breach), the peer's data here whole: back to ok.
    let state = node.contract(&entry.id)?.state;
    let passed = ex.heard == Heard::Pass;
    let audited = matches!(ex.heard, Heard::Pass | Heard::Fail { .. });
    if failing_here && deliberate::asks_rechallenge(state.audit.as_ref(), state.awaiting_repush.is_some(), audited, now)
    {
        let _one_at_a_time = rechallenges.lock().await;
        let (result, message) = match audit::rechallenge(&conn, node, &entry, now).await {
            Ok(verdict) => {
                let failing = verdict.body.standing.is_failing();
                (verdict.body.result.unwrap_or(if failing { Outcome::Fail } else { Outcome::Pass }), None)
            }
            Err(e) => (Outcome::Fail, Some(e.to_string())),
        };
        let theirs = node.contract(&entry.id)?.state.their_standing;
        lines.push(Line { message, ..Line::new(&entry, "rechallenge", result, theirs) });
    }
    // A deliberate failure is over once this node is back and ok at the peer, which kept our data.
    node.update_contract(&entry.id, |e| {
        let st = &mut e.state;
        let failing = st.our_standing.is_failing();
        if let Some(plan) = st.audit.clone().filter(|p| deliberate::plan_over(p, passed, failing, now)) {
            st.audit = Some(plan.ended("pass"));
        }
        Ok::<_, StateError>(())
    })?;
    Ok(Checked { lines, breach: false })
}

#[derive(Serialize)]
struct StandingLine {
    contract: RecordId,
    peer: NodeId,
    reachable: Option<bool>,
    our_standing: Standing,
    our_standing_at: Option<Timestamp>,
    their_standing: Standing,
    their_record: PeerRecord,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit: Option<Plan>,
}

async fn standing(node: Node, settings: Settings, now: Timestamp) -> anyhow::Result<Exit> {
    let client = settings.client(&node, Traffic::Short);
    let mut exit = Exit::Ok;
    let silent = node.silent_peers(now)?;
    for entry in node.contracts()?.into_iter().filter(|e| !e.state.status.owes_nothing(now)) {
        // Silent toward the peer (a deliberate failure): not asked.
        let reachable = if silent.contains(&entry.state.peer) {
            None
        } else {
            let addrs = node.address_book()?.addrs(&entry.state.peer).to_vec();
            Some(match client.connect_any(entry.state.peer, &addrs).await {
                Ok(conn) => {
                    let r = audit::ask_standing(&conn, &node, &entry, now).await;
                    conn.close();
                    r.is_ok()
                }
                Err(NetError::NoAddress(_)) | Err(_) => false,
            })
        };
        let entry = node.contract(&entry.id)?;
        for concern in contract_concerns(&entry, now) {
            if let Concern::AtRisk { .. } = concern {
                eprintln!("kaana-challenge: contract {}: {concern}", entry.id.short());
                exit = Exit::Attention;
            }
        }
        let state = entry.state;
        emit(&StandingLine {
            contract: entry.id,
            peer: state.peer,
            reachable,
            our_standing: state.our_standing,
            our_standing_at: state.our_standing_at,
            their_standing: state.their_standing,
            their_record: state.their_record,
            audit: state.audit,
        })?;
    }
    client.close().await;
    Ok(exit)
}

fn check_evidence(file: &std::path::Path) -> anyhow::Result<Exit> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let evidence: Evidence = match serde_json::from_slice(&text) {
        Ok(e) => e,
        Err(e) => {
            let old = serde_json::from_slice::<serde_json::Value>(&text).is_ok_and(|v| v.get("transcript").is_some());
            let reason = if old {
                "a breach file from before protocol 2: its answer does not state the grace the holder was in, and \
                 an answer alone can frame an honest holder, so it proves nothing"
                    .to_owned()
            } else {
                format!("not a breach file: {e}")
            };
            emit(&json!({"file": file, "valid": false, "reason": reason}))?;
            return Ok(Exit::Attention);
        }
    };
    let c = &evidence.challenge.body;
    match evidence.check() {
        Ok(proven) => {
            let (since, delete_after) = evidence.answer.as_ref().and_then(|a| a.body.standing.failing()).unzip();
            emit(&json!({"file": file, "valid": true, "contract": c.contract, "owner": c.challenger,
                "holder": c.holder, "generation": c.generation, "failed_samples": proven.failed_samples,
                "samples": proven.samples, "answered_at": evidence.answer.as_ref().map(|a| a.body.at),
                "owner_failing_since": since, "delete_after": delete_after}))?;
            Ok(Exit::Ok)
        }
        Err(e) => {
            emit(&json!({"file": file, "valid": false, "reason": e.to_string()}))?;
            Ok(Exit::Attention)
        }
    }
}
