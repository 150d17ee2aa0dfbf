//! `kaana-challenge`: challenges, standings, deliberate failures and their audits.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use serde::Serialize;
use serde_json::json;

use kaana_proto::audit::{self, AuditError, Evidence};
use kaana_proto::challenge::{DEFAULT_SAMPLES, MAX_SAMPLES, Outcome};
use kaana_proto::cli::{Exit, emit};
use kaana_proto::identity::NodeId;
use kaana_proto::market::RecordId;
use kaana_proto::net::transport::{Client, Connection, Traffic};
use kaana_proto::node::Node;
use kaana_proto::standing::Standing;
use kaana_proto::store::{Audit, ContractEntry, Status};
use kaana_proto::time::{Timestamp, now_from_env};

/// Challenge peers to prove they still hold this node's data, and audit their honesty.
///
/// `kaana-challenge --all` (from cron) does, for every contract at once: a due audit (after this
/// node failed a challenge on purpose, check the peer kept its data as promised); a standing
/// query (if the peer sees this node as failing, and not because of its own planned audit, ask
/// to be challenged again now); and a routine challenge. One JSON line per exchange.
///
/// Exit codes: 0 all well; 1 a peer failed or could not be reached, a breach was found, or this
/// node's data is at risk at a peer; 2 error.
#[derive(Debug, Parser)]
#[command(name = "kaana-challenge", version, subcommand_precedence_over_arg = true)]
pub struct Args {
    /// The node's state directory [default: $KAANA_HOME, else $XDG_STATE_HOME/kaana, else
    /// ~/.local/state/kaana].
    #[arg(long, global = true, value_name = "DIR")]
    pub home: Option<PathBuf>,
    /// The contract to check (its id or at least 8 leading hex digits).
    #[arg(conflicts_with = "all")]
    pub contract: Option<String>,
    /// Check every contract, concurrently.
    #[arg(long)]
    pub all: bool,
    /// Chunks sampled per challenge (the default catches a holder missing 10% of the data with
    /// probability above 99%).
    #[arg(long, value_name = "K", default_value_t = DEFAULT_SAMPLES)]
    pub samples: usize,
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Other things to do.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Ask each peer how it sees this node. Exits 1 if this node is failing at a peer (outside
    /// an audit it planned).
    Standing,
    /// Answer the peer's next challenge on this contract wrongly on purpose, then audit the
    /// peer inside the grace period.
    FailNext {
        /// The contract (its id or at least 8 leading hex digits).
        contract: String,
    },
    /// Check a breach file (from `audits/`) as a third party: signatures, links, and that the
    /// holder's answer really fails. Needs no node. Exits 1 if the evidence does not hold.
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
    /// For a routine challenge: how long the exchange took, and the bytes it put on the wire.
    #[serde(skip_serializing_if = "Option::is_none")]
    ms: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    wire_bytes: Option<u64>,
}

/// Runs `kaana-challenge`.
pub fn run(args: Args) -> anyhow::Result<Exit> {
    match &args.command {
        Some(Command::CheckEvidence { file }) => return check_evidence(file),
        Some(Command::Completions { shell }) => return kaana_proto::cli::print_completions::<Args>(*shell),
        Some(Command::Man) => return kaana_proto::cli::print_man::<Args>(),
        _ => {}
    }
    let node = Node::open_at(args.home.as_deref())?;
    let now = now_from_env()?;
    match args.command {
        Some(Command::FailNext { contract }) => fail_next(&node, &contract),
        Some(Command::Standing) => kaana_proto::cli::runtime()?.block_on(standing(node, now)),
        Some(Command::CheckEvidence { .. } | Command::Completions { .. } | Command::Man) => handled_before(),
        None => {
            if !(1..=MAX_SAMPLES).contains(&args.samples) {
                anyhow::bail!("--samples must be between 1 and {MAX_SAMPLES}");
            }
            let entries = match (&args.contract, args.all) {
                (Some(c), false) => vec![node.find_contract(c)?],
                (None, true) => {
                    node.contracts()?.into_iter().filter(|e| !matches!(e.state.status, Status::Ended { .. })).collect()
                }
                _ => anyhow::bail!("say which contract to check, or --all"),
            };
            kaana_proto::cli::runtime()?.block_on(check_all(node, entries, args.samples, now))
        }
    }
}

fn handled_before() -> anyhow::Result<Exit> {
    anyhow::bail!("internal: this command is handled before the node is opened")
}

fn fail_next(node: &Node, prefix: &str) -> anyhow::Result<Exit> {
    let _lock = node.home.lock()?;
    let mut entry = node.find_contract(prefix)?;
    entry.state.fail_next = true;
    node.save_contract_state(&entry.id, &entry.state)?;
    emit(&json!({"contract": entry.id, "peer": entry.state.peer, "fail_next": true}))?;
    Ok(Exit::Ok)
}

/// What checking one contract found.
struct Checked {
    lines: Vec<Line>,
    at_risk: bool,
}

async fn check_all(node: Node, entries: Vec<ContractEntry>, samples: usize, now: Timestamp) -> anyhow::Result<Exit> {
    let node = Arc::new(node);
    let client = Arc::new(Client::with_traffic(node.identity.clone(), Traffic::Short));
    // One connection per peer, its contracts checked at once over it: a node with fifty
    // contracts with one peer opens one connection, not fifty.
    let mut by_peer: std::collections::BTreeMap<NodeId, Vec<ContractEntry>> = std::collections::BTreeMap::new();
    for entry in entries {
        by_peer.entry(entry.state.peer).or_default().push(entry);
    }
    let mut tasks = tokio::task::JoinSet::new();
    for (peer, entries) in by_peer {
        let (node, client) = (node.clone(), client.clone());
        tasks.spawn(async move {
            let addrs = node.address_book().map(|b| b.addrs(&peer).to_vec()).unwrap_or_default();
            let conn = match client.connect_any(peer, &addrs).await {
                Ok(c) => Some(c),
                Err(e) => {
                    eprintln!("kaana-challenge: node {}: {e}", peer.short());
                    None
                }
            };
            // The peer's challenges back to us arrive on streams it opens; one at a time.
            let rechallenges = Arc::new(tokio::sync::Mutex::new(()));
            let mut inner = tokio::task::JoinSet::new();
            for entry in entries {
                let (node, conn, rechallenges) = (node.clone(), conn.clone(), rechallenges.clone());
                inner.spawn(async move {
                    let id = entry.id;
                    (id, check_contract(&node, entry, conn, &rechallenges, samples, now).await)
                });
            }
            let mut results = Vec::new();
            while let Some(done) = inner.join_next().await {
                results.push(done);
            }
            if let Some(conn) = conn {
                conn.close();
            }
            results
        });
    }
    let mut exit = Exit::Ok;
    let mut error = None;
    let mut results = Vec::new();
    while let Some(done) = tasks.join_next().await {
        results.extend(done?);
    }
    for done in results {
        let (id, checked) = done?;
        match checked {
            Ok(checked) => {
                for line in &checked.lines {
                    emit(line)?;
                    if line.result != Outcome::Pass || line.breach {
                        exit = Exit::Attention;
                    }
                }
                if checked.at_risk {
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
    match error {
        Some(e) if exit == Exit::Ok => Err(e),
        _ => Ok(exit),
    }
}

async fn check_contract(
    node: &Node,
    entry: ContractEntry,
    conn: Option<Connection>,
    rechallenges: &tokio::sync::Mutex<()>,
    samples: usize,
    now: Timestamp,
) -> anyhow::Result<Checked> {
    let peer = entry.state.peer;
    let mut lines = Vec::new();
    let line = |kind, result, standing, breach, evidence, message| Line {
        contract: entry.id,
        peer,
        kind,
        result,
        breach,
        their_standing: standing,
        evidence,
        message,
        ms: None,
        wire_bytes: None,
    };
    let mut audited = false;
    let due = entry.state.audit.clone().filter(|a| a.pending() && a.audit_at <= now);
    if let Some(audit_plan) = due {
        audited = true;
        match &conn {
            None => {
                let verdict = audit::unreachable(node, &entry, now)?;
                lines.push(line("audit", Outcome::Unreachable, verdict.body.standing, false, None, None));
            }
            Some(conn) => lines.extend(run_audit(conn, node, &entry, audit_plan, rechallenges, samples, now).await?),
        }
    }
    let Some(conn) = conn else {
        if !audited {
            let verdict = audit::unreachable(node, &entry, now)?;
            lines.push(line("routine", Outcome::Unreachable, verdict.body.standing, false, None, None));
        }
        return Ok(Checked { lines, at_risk: false });
    };

    // How does the peer see us? Failing, outside an audit we planned: ask to be checked again.
    // (Not after a breach: that peer already dropped our data, and the person has been told.)
    let audit_pending_or_breached = || {
        node.contract(&entry.id)
            .map(|e| e.state.audit.as_ref().is_some_and(|a| a.pending() || a.result.as_deref() == Some("breach")))
    };
    let mut at_risk = false;
    let standing = audit::ask_standing(&conn, node, &entry, now).await?;
    if matches!(standing, Standing::Failing { .. }) && !audit_pending_or_breached()? {
        let _one_at_a_time = rechallenges.lock().await;
        match audit::rechallenge(&conn, node, &entry, now).await {
            Ok(verdict) => {
                at_risk = verdict.body.result != Outcome::Pass;
                let theirs = node.contract(&entry.id)?.state.their_standing;
                lines.push(line("rechallenge", verdict.body.result, theirs, false, None, None));
            }
            Err(e) => {
                at_risk = true;
                let theirs = node.contract(&entry.id)?.state.their_standing;
                lines.push(line("rechallenge", Outcome::Fail, theirs, false, None, Some(e.to_string())));
            }
        }
    }

    if !audited {
        let (started, wire_before) = (std::time::Instant::now(), conn.wire_bytes());
        match audit::challenge_peer(&conn, node, &entry, samples, now).await {
            Ok(ex) => lines.push(Line {
                ms: Some(started.elapsed().as_secs_f64() * 1e3),
                wire_bytes: Some(conn.wire_bytes() - wire_before),
                ..line("routine", ex.result, ex.transcript.verdict.body.standing, false, None, None)
            }),
            Err(AuditError::NothingPushed(_)) => {
                eprintln!("kaana-challenge: contract {}: nothing pushed yet, nothing to challenge", entry.id.short());
            }
            Err(AuditError::Net(e)) => {
                eprintln!("kaana-challenge: contract {}: {e}", entry.id.short());
                let verdict = audit::unreachable(node, &entry, now)?;
                lines.push(line(
                    "routine",
                    Outcome::Unreachable,
                    verdict.body.standing,
                    false,
                    None,
                    Some(e.to_string()),
                ));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(Checked { lines, at_risk })
}

/// The audit after a deliberate failure: the peer must still hold our data. Pass: ask to be
/// challenged again (we are then ok there). Fail: a breach, with the evidence kept.
async fn run_audit(
    conn: &Connection,
    node: &Node,
    entry: &ContractEntry,
    plan: Audit,
    rechallenges: &tokio::sync::Mutex<()>,
    samples: usize,
    now: Timestamp,
) -> anyhow::Result<Vec<Line>> {
    let peer = entry.state.peer;
    let mut lines = Vec::new();
    let ex = match audit::challenge_peer(conn, node, entry, samples, now).await {
        Ok(ex) => ex,
        Err(AuditError::Net(e)) => {
            let verdict = audit::unreachable(node, entry, now)?;
            return Ok(vec![Line {
                contract: entry.id,
                peer,
                kind: "audit",
                result: Outcome::Unreachable,
                breach: false,
                their_standing: verdict.body.standing,
                evidence: None,
                message: Some(e.to_string()),
                ms: None,
                wire_bytes: None,
            }]);
        }
        Err(e) => return Err(e.into()),
    };
    let breach = ex.result != Outcome::Pass;
    let evidence = if breach { Some(audit::save_evidence(node, entry, &ex.transcript, now)?) } else { None };
    lines.push(Line {
        contract: entry.id,
        peer,
        kind: "audit",
        result: ex.result,
        breach,
        their_standing: ex.transcript.verdict.body.standing,
        evidence: evidence.clone(),
        message: None,
        ms: None,
        wire_bytes: None,
    });
    {
        let _lock = node.home.lock()?;
        let mut state = node.contract(&entry.id)?.state;
        state.audit = Some(Audit { result: Some(if breach { "breach" } else { "pass" }.to_owned()), ..plan });
        node.save_contract_state(&entry.id, &state)?;
        if breach {
            node.log_event(
                now,
                "breach",
                json!({"contract": entry.id, "peer": peer, "evidence": evidence, "failed_at": state.audit.as_ref().map(|a| a.failed_at)}),
            )?;
        }
    }
    if breach {
        eprintln!(
            "kaana-challenge: BREACH: node {peer} no longer holds this node's data, inside the grace period it \
             promised (contract {}). Evidence: {}",
            entry.id,
            evidence.as_ref().map(|p| p.display().to_string()).unwrap_or_default()
        );
        return Ok(lines);
    }
    // The peer kept our data: now prove we keep theirs, so it sees us as ok again.
    let _one_at_a_time = rechallenges.lock().await;
    match audit::rechallenge(conn, node, entry, now).await {
        Ok(verdict) => lines.push(Line {
            contract: entry.id,
            peer,
            kind: "rechallenge",
            result: verdict.body.result,
            breach: false,
            their_standing: node.contract(&entry.id)?.state.their_standing,
            evidence: None,
            message: None,
            ms: None,
            wire_bytes: None,
        }),
        Err(e) => lines.push(Line {
            contract: entry.id,
            peer,
            kind: "rechallenge",
            result: Outcome::Fail,
            breach: false,
            their_standing: node.contract(&entry.id)?.state.their_standing,
            evidence: None,
            message: Some(e.to_string()),
            ms: None,
            wire_bytes: None,
        }),
    }
    Ok(lines)
}

#[derive(Serialize)]
struct StandingLine {
    contract: RecordId,
    peer: NodeId,
    reachable: bool,
    our_standing: Standing,
    our_standing_at: Option<Timestamp>,
    their_standing: Standing,
    #[serde(skip_serializing_if = "Option::is_none")]
    audit: Option<Audit>,
}

async fn standing(node: Node, now: Timestamp) -> anyhow::Result<Exit> {
    let client = Client::with_traffic(node.identity.clone(), Traffic::Short);
    let mut exit = Exit::Ok;
    for entry in node.contracts()?.into_iter().filter(|e| !matches!(e.state.status, Status::Ended { .. })) {
        let addrs = node.address_book()?.addrs(&entry.state.peer).to_vec();
        let reachable = match client.connect_any(entry.state.peer, &addrs).await {
            Ok(conn) => {
                let r = audit::ask_standing(&conn, &node, &entry, now).await;
                conn.close();
                r.is_ok()
            }
            Err(e) => {
                eprintln!("kaana-challenge: contract {}: {e}", entry.id.short());
                false
            }
        };
        let state = node.contract(&entry.id)?.state;
        let planned = state.audit.as_ref().is_some_and(Audit::pending);
        if matches!(state.our_standing, Standing::Failing { .. }) && !planned {
            exit = Exit::Attention;
        }
        emit(&StandingLine {
            contract: entry.id,
            peer: entry.state.peer,
            reachable,
            our_standing: state.our_standing,
            our_standing_at: state.our_standing_at,
            their_standing: state.their_standing,
            audit: state.audit,
        })?;
    }
    client.close().await;
    Ok(exit)
}

fn check_evidence(file: &std::path::Path) -> anyhow::Result<Exit> {
    let text = std::fs::read(file).with_context(|| format!("reading {}", file.display()))?;
    let evidence: Evidence =
        serde_json::from_slice(&text).with_context(|| format!("{} is not a breach file", file.display()))?;
    let c = &evidence.transcript.challenge.body;
    match evidence.check() {
        Ok(failed) => {
            emit(
                &json!({"file": file, "valid": true, "contract": c.contract, "owner": c.challenger, "holder": c.holder,
                "generation": c.generation, "failed_samples": failed, "samples": c.picks.len()}),
            )?;
            Ok(Exit::Ok)
        }
        Err(e) => {
            emit(&json!({"file": file, "valid": false, "reason": e.to_string()}))?;
            Ok(Exit::Attention)
        }
    }
}
