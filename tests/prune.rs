//! Pruning: a failing peer's data is kept for the whole grace period, then deleted; moving time
//! with `KAANA_NOW`.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use kaana_proto::protocol::time::Timestamp;

use crate::common::story::{HOUR, keep_watch};
use crate::common::{
    ServerProc, TestNode, assert_exit, assert_state_consistent, assert_success, at, json_lines, make_contract_sized,
    now_unix, pseudo_random, recovered, walk_files,
};

const DAY: u64 = 86_400;

#[derive(Debug, Deserialize)]
struct Step {
    contract: Option<String>,
    peer: Option<String>,
    action: String,
    bytes: u64,
    reason: String,
}

fn node_with_volume(dir: &Path, name: &str, seed: u64, capacity: &str) -> TestNode {
    let v = dir.join(name);
    fs::write(&v, pseudo_random(2 << 20, seed)).unwrap();
    TestNode::init_with(&["--capacity", capacity, "--audit-rate", "0", "--volume", v.to_str().unwrap()])
}

fn prune_cmd(node: &TestNode, t: u64) -> std::process::Command {
    let mut cmd = node.cmd("kaana-prune");
    cmd.env("KAANA_NOW", at(t)).env("KAANA_CONNECT_TIMEOUT", "2s").env("KAANA_READ_TIMEOUT", "2s");
    cmd
}

fn prune(node: &TestNode, dry: bool, t: u64) -> Vec<Step> {
    let mut cmd = prune_cmd(node, t);
    if dry {
        cmd.arg("--dry-run");
    }
    let out = cmd.output().unwrap();
    assert_success(&out);
    // Each line says whether it was only planned or done.
    for line in json_lines::<serde_json::Value>(&out) {
        assert_eq!(line["dry_run"], dry, "{line}");
    }
    json_lines(&out)
}

/// The holder challenges its peer, which is offline, at every run for a day after its second
/// unanswered try: the peer is failing from the last of these tries, whose time is returned.
/// (The holder reaches another node, so it does not suspect its own connection.)
fn fails_while_offline(holder: &TestNode, contract: &str) -> u64 {
    let t0 = now_unix();
    for h in [0, 8, 16, 24, 32] {
        let out = holder
            .cmd("kaana-challenge")
            .arg(contract)
            .env("KAANA_NOW", at(t0 + h * 3_600))
            .env("KAANA_CONNECT_TIMEOUT", "1s")
            .output()
            .unwrap();
        assert_exit(&out, 0);
    }
    let line: Vec<serde_json::Value> = json_lines(&holder.run("kaana-offer", &["contracts"]));
    let failing = line.iter().find(|l| l["id"] == contract).unwrap()["their_standing"].clone();
    assert_eq!(failing["state"], "failing", "{failing}");
    t0 + 32 * 3_600
}

/// A and B, each with a volume and a server, a 32 MiB contract, each side's volume pushed.
struct Pushed {
    work: tempfile::TempDir,
    a: TestNode,
    b: TestNode,
    sa: ServerProc,
    sb: ServerProc,
    contract: String,
}

fn pushed_pair() -> Pushed {
    let work = tempfile::tempdir().unwrap();
    let a = node_with_volume(work.path(), "a.img", 1, "1GiB");
    let b = node_with_volume(work.path(), "b.img", 2, "1GiB");
    let (sa, sb) = (ServerProc::start(&a, &[]), ServerProc::start(&b, &[]));
    let contract = make_contract_sized(&a, &sa, &b, "32MiB");
    assert_success(&a.run("kaana-sync", &["push", &contract]));
    assert_success(&b.run("kaana-sync", &["push", &contract]));
    Pushed { work, a, b, sa, sb, contract }
}

fn store(node: &TestNode, contract: &str) -> PathBuf {
    node.home.join("inbound").join(contract)
}

fn status(node: &TestNode, contract: &str) -> String {
    let lines: Vec<serde_json::Value> = json_lines(&node.run("kaana-offer", &["contracts"]));
    lines.iter().find(|l| l["id"] == contract).unwrap()["status"].as_str().unwrap().to_owned()
}

/// B holds A's data and C's; A goes silent and fails a challenge at T0. One second before
/// T0 + grace nothing is deleted; one second after, exactly A's data goes.
#[test]
fn a_failing_peers_data_goes_exactly_when_its_grace_runs_out() {
    let work = tempfile::tempdir().unwrap();
    let a = node_with_volume(work.path(), "a.img", 1, "1GiB");
    let b = node_with_volume(work.path(), "b.img", 2, "80MiB");
    let c = node_with_volume(work.path(), "c.img", 3, "1GiB");
    let (sa, sb, _sc) = (ServerProc::start(&a, &[]), ServerProc::start(&b, &[]), ServerProc::start(&c, &[]));
    let with_a = make_contract_sized(&b, &sb, &a, "32MiB");
    let with_c = make_contract_sized(&b, &sb, &c, "32MiB");
    assert_success(&a.run("kaana-sync", &["push", &with_a]));
    assert_success(&c.run("kaana-sync", &["push", &with_c]));
    assert_success(&b.run("kaana-sync", &["push", &with_a]));
    assert!(store(&b, &with_a).exists() && store(&b, &with_c).exists());

    drop(sa);
    let t0 = fails_while_offline(&b, &with_a);
    let delete_after = t0 + 7 * DAY;

    // Cron keeps watch meanwhile (a node that has not checked its connection lately deletes
    // nothing).
    keep_watch(&b, delete_after - DAY, delete_after);
    for dry in [true, false] {
        assert!(prune(&b, dry, delete_after - 1).is_empty());
    }
    assert!(store(&b, &with_a).exists());
    assert_eq!(status(&b, &with_a), "active");
    // Exactly at delete_after the data is still owed.
    assert!(prune(&b, false, delete_after).is_empty());

    let dry = prune(&b, true, delete_after + 1);
    assert_eq!(dry.len(), 1);
    assert!(store(&b, &with_a).exists(), "a dry run deletes nothing");
    let steps = prune(&b, false, delete_after + 1);
    assert_eq!(steps.len(), 1);
    let s = &steps[0];
    assert_eq!(
        (s.contract.as_deref(), s.peer.as_deref(), s.action.as_str()),
        (Some(with_a.as_str()), Some(a.id().as_str()), "delete")
    );
    assert!(s.bytes >= 2 << 20, "{}", s.bytes);
    assert!(s.reason.contains("failing"), "{}", s.reason);
    assert!(!store(&b, &with_a).exists());
    assert_eq!(status(&b, &with_a), "ended");
    // C's data, whose contract is ok, is untouched, and still restores.
    assert!(store(&b, &with_c).exists());
    assert_eq!(status(&b, &with_c), "active");
    assert_success(&c.run("kaana-sync", &["verify", &with_c]));
    // Nothing more to do.
    assert!(prune(&b, false, delete_after + 2).is_empty());
    let events = fs::read_to_string(b.home.join("events.jsonl")).unwrap();
    assert!(events.lines().any(|l| l.contains("\"prune\"") && l.contains(&with_a)));

    // The freed space takes a new contract at once: B's 64 MiB were all committed.
    let d = node_with_volume(work.path(), "d.img", 4, "1GiB");
    let _sd = ServerProc::start(&d, &[]);
    let out = d.cmd("kaana-offer").args(["create", "--size", "32MiB"]).output().unwrap();
    let offer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let id = offer["id"].as_str().unwrap();
    assert_success(&d.run("kaana-offer", &["publish", id]));
    assert_success(&b.run("kaana-offer", &["list", "--board", &format!("{}@{}", d.id(), _sd.addr)]));
    assert_success(&b.run("kaana-offer", &["accept", id]));
}

#[test]
fn a_terminated_contract_keeps_its_data_for_the_grace_then_it_goes() {
    let Pushed { work: _work, a, b, sa: _sa, sb: _sb, contract } = pushed_pair();
    let line: serde_json::Value =
        serde_json::from_slice(&a.run("kaana-offer", &["terminate", &contract]).stdout).unwrap();
    let delete_after: Timestamp = line["delete_after"].as_str().unwrap().parse().unwrap();
    let delete_after = delete_after.unix();
    for node in [&a, &b] {
        assert!(prune(node, false, delete_after - 1).is_empty());
        assert!(store(node, &contract).exists());
        // The peer can still bring its data back during the notice.
    }
    assert_success(&a.run("kaana-sync", &["verify", &contract]));
    for node in [&a, &b] {
        let steps = prune(node, false, delete_after + 1);
        assert_eq!(steps.len(), 1);
        assert!(steps[0].reason.contains("terminated"), "{}", steps[0].reason);
        assert!(!store(node, &contract).exists());
        assert_eq!(status(node, &contract), "ended");
    }
    // Each node's record of its own copy at the other stays for the contract's grace after the
    // end (the peer may not have seen it yet), then goes.
    let grace = 7 * 86_400;
    let record = |node: &TestNode| node.home.join("outbound").join(&contract);
    for node in [&a, &b] {
        assert!(record(node).join("committed.json").exists());
        assert!(prune(node, false, delete_after + 1 + grace - 1).is_empty());
        assert!(record(node).exists());
        let steps = prune(node, false, delete_after + 1 + grace);
        assert_eq!(steps.len(), 1, "{steps:?}");
        assert_eq!(
            (steps[0].action.as_str(), steps[0].contract.as_deref()),
            ("remove_orphan", Some(contract.as_str()))
        );
        assert!(steps[0].reason.contains("record of its copy at the peer") && steps[0].bytes > 0, "{steps:?}");
        assert!(!record(node).exists());
        assert!(prune(node, false, delete_after + 2 + grace).is_empty(), "nothing more");
        assert_eq!(status(node, &contract), "ended", "the contract is still listed without the record");
        assert_state_consistent(&node.home);
    }
}

/// B gave notice while A was down (never delivered); the notice ran out, B pruned A's copy and
/// ended the contract. A's next run asks B, which shows the notice: nothing is judged, no
/// breach, and A takes the notice, so that its own prune lets B's copy go and `--all` asks no
/// more.
#[test]
fn a_contract_ended_by_notice_is_no_breach_when_the_owner_still_asks() {
    let Pushed { work: _work, a, b, sa, sb, contract } = pushed_pair();
    drop(sa);
    let out = b.cmd("kaana-offer").args(["terminate", &contract]).env("KAANA_CONNECT_TIMEOUT", "1s").output().unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["delivered"], false, "{line}");
    let end: Timestamp = line["delete_after"].as_str().unwrap().parse().unwrap();
    let end = end.unix();
    assert_eq!(prune(&b, false, end + 1).len(), 1);
    assert_eq!((status(&b, &contract), status(&a, &contract)), ("ended".into(), "active".into()));
    // B keeps the notice, to show A.
    let state = b.home.join("contracts").join(format!("{contract}.state.json"));
    let state: serde_json::Value = serde_json::from_slice(&fs::read(state).unwrap()).unwrap();
    let notice_at: Timestamp = state["status"]["notice"]["body"]["at"].as_str().unwrap().parse().unwrap();
    assert_eq!(notice_at.unix() + 7 * DAY, end, "{state}");

    // B's server, its clock past the notice too.
    let addr = sb.addr.clone();
    drop(sb);
    let _sb = ServerProc::start_at(&b, &["--listen", &addr], end + 2);
    let challenge = |t: u64| {
        let out = a.cmd("kaana-challenge").arg("--all").env("KAANA_NOW", at(t)).output().unwrap();
        (out.status.code(), json_lines::<serde_json::Value>(&out), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (code, lines, err) = challenge(end + 3);
    assert_eq!((code, lines.len()), (Some(0), 1), "{err} {lines:?}");
    assert_eq!((lines[0]["result"].as_str(), lines[0]["breach"].as_bool()), (Some("ended"), Some(false)), "{lines:?}");
    assert!(lines[0]["message"].as_str().unwrap().contains("ended by a notice"), "{lines:?}");
    assert_eq!(lines[0]["their_standing"]["state"], "ok", "nothing judged: {lines:?}");
    let audits = a.home.join("audits");
    assert!(!audits.exists() || walk_files(&audits) == 0, "no breach file");
    assert_eq!(status(&a, &contract), "terminated");
    // Nothing is owed any more: --all does not ask, and A's prune lets B's copy go.
    let (code, lines, err) = challenge(end + 4);
    assert_eq!((code, lines.len()), (Some(0), 0), "{err} {lines:?}");
    let steps = prune(&a, false, end + 5);
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert!(!store(&a, &contract).exists());
    assert_eq!(status(&a, &contract), "ended");
}

/// B drops A's copy at once behind a notice it dates back past the grace. A's server refuses
/// the notice (dated before B's own receipt of A's push), and when B shows it to A's challenge
/// it ends nothing: B answered for data it no longer holds, and A judges it so, keeps the
/// contract and keeps challenging.
#[test]
fn a_notice_dated_back_before_the_holders_own_receipt_ends_nothing() {
    let Pushed { work: _work, a, b, sa: _sa, sb: _sb, contract } = pushed_pair();
    let now = now_unix();
    let out = b.cmd("kaana-offer").args(["terminate", &contract]).env("KAANA_NOW", at(now - 8 * DAY)).output().unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["delivered"], false, "{line} {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(status(&a, &contract), "active", "A's server took a notice dated back");
    let steps = prune(&b, false, now);
    assert!(steps.iter().any(|s| s.action == "delete"), "{steps:?}");
    assert!(!store(&b, &contract).exists());

    // A failure, signed by B: judged failing from now (one failure alone asks no person yet).
    let lines: Vec<serde_json::Value> = json_lines(&a.run("kaana-challenge", &[&contract]));
    assert_eq!((&lines[0]["result"], &lines[0]["their_standing"]["state"]), (&"fail".into(), &"failing".into()));
    assert!(lines[0]["message"].as_str().unwrap().contains("a notice that had not ended it"), "{lines:?}");
    assert_eq!(status(&a, &contract), "active");
    let out = a.run("kaana-challenge", &["--all"]);
    assert_eq!(json_lines::<serde_json::Value>(&out).len(), 1, "--all still asks B");
}

/// B gives notice, then drops A's copy a day into its grace and answers A's challenge from a
/// clock set past it ("the contract has ended"). A judges the notice by its own clock (within
/// the slack two clocks may differ by): it has not ended, and B answered for data it dropped.
#[test]
fn an_answer_dated_ahead_ends_no_grace_early() {
    let Pushed { work: _work, a, b, sa: _sa, sb, contract } = pushed_pair();
    let line: serde_json::Value =
        serde_json::from_slice(&b.run("kaana-offer", &["terminate", &contract]).stdout).unwrap();
    let end: Timestamp = line["delete_after"].as_str().unwrap().parse().unwrap();
    let end = end.unix();
    assert_eq!(status(&a, &contract), "terminated");
    assert_eq!(prune(&b, false, end + 1).len(), 1, "B's clock says the grace ran out");
    let addr = sb.addr.clone();
    drop(sb);
    let _sb = ServerProc::start_at(&b, &["--listen", &addr], end + 2);

    let out = a.cmd("kaana-challenge").arg(&contract).env("KAANA_NOW", at(end - 6 * DAY)).output().unwrap();
    let lines: Vec<serde_json::Value> = json_lines(&out);
    assert_eq!(lines.len(), 1, "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!((&lines[0]["result"], &lines[0]["their_standing"]["state"]), (&"fail".into(), &"failing".into()));
    assert!(lines[0]["message"].as_str().unwrap().contains("a notice that had not ended it"), "{lines:?}");
}

/// B gave notice while A was down. A's nightly push is refused with the notice's dates, and
/// B's next challenge run tells A, which then holds the same notice.
#[test]
fn a_notice_the_peer_missed_is_told_by_the_next_challenge_run() {
    let Pushed { work: _work, a, b, sa, sb: _sb, contract } = pushed_pair();
    let addr = sa.addr.clone();
    drop(sa);
    let out = b.cmd("kaana-offer").args(["terminate", &contract]).env("KAANA_CONNECT_TIMEOUT", "1s").output().unwrap();
    assert_exit(&out, 1);
    assert!(String::from_utf8_lossy(&out.stderr).contains("kaana-offer terminate"), "a hint to run it again");
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(line["delivered"], false);
    let _sa = ServerProc::start(&a, &["--listen", &addr]);
    assert_eq!(status(&a, &contract), "active");

    let out = a.run("kaana-sync", &["push", &contract]);
    assert_exit(&out, 2);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("is terminated by node") && err.contains(line["delete_after"].as_str().unwrap()), "{err}");

    let out = b.run("kaana-challenge", &["--all"]);
    assert_success(&out);
    assert!(String::from_utf8_lossy(&out.stderr).contains("now told"), "{}", String::from_utf8_lossy(&out.stderr));
    let at_a: Vec<serde_json::Value> = json_lines(&a.run("kaana-offer", &["contracts"]));
    assert_eq!((at_a[0]["status"].as_str(), &at_a[0]["delete_after"]), (Some("terminated"), &line["delete_after"]));
    let again: serde_json::Value =
        serde_json::from_slice(&b.run("kaana-offer", &["terminate", &contract]).stdout).unwrap();
    assert_eq!(again["delivered"], true);
}

/// B's system disk dies; its storage disk survives. Rebuilt from its phrase, B does not yet know
/// its contracts: prune keeps A's data (even with `--leftovers`, for a week after the rebuild),
/// `contracts --fetch` brings the contract back, and A's restore drill finds its copy whole.
/// Data nobody can explain goes only when a person asks, a week after a rebuild.
#[test]
fn a_node_rebuilt_from_its_phrase_deletes_nothing_it_cannot_explain() {
    let work = tempfile::tempdir().unwrap();
    let a = node_with_volume(work.path(), "a.img", 1, "1GiB");
    let storage = work.path().join("storage");
    let b = TestNode::init_with(&["--capacity", "1GiB", "--storage", storage.to_str().unwrap()]);
    let (sa, sb) = (ServerProc::start(&a, &[]), ServerProc::start(&b, &[]));
    let contract = make_contract_sized(&a, &sa, &b, "32MiB");
    assert_success(&a.run("kaana-sync", &["push", &contract]));
    let phrase: serde_json::Value = b.json("kaana-offer", &["recovery-phrase"]);
    let addr = sb.addr.clone();
    drop(sb);
    drop(b); // the system disk is gone; the storage disk is not

    let phrase = phrase["recovery_phrase"].as_str().unwrap();
    let rebuilt = recovered(phrase, &["--capacity", "1GiB", "--storage", storage.to_str().unwrap()]);
    let held = storage.join("inbound").join(&contract);
    let files = walk_files(&held);
    let t = now_unix() + 2 * DAY;
    for extra in [&[][..], &["--leftovers"]] {
        let out = prune_cmd(&rebuilt, t).args(extra).output().unwrap();
        assert_success(&out);
        assert!(out.stdout.is_empty(), "{extra:?}: {}", String::from_utf8_lossy(&out.stdout));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("for no contract this node knows, kept"), "{err}");
        assert_eq!(walk_files(&held), files, "{extra:?}");
    }
    assert!(
        String::from_utf8_lossy(&prune_cmd(&rebuilt, t).arg("--leftovers").output().unwrap().stderr)
            .contains("rebuilt from its phrase")
    );

    let _sb = ServerProc::start(&rebuilt, &["--listen", &addr]);
    assert_success(&rebuilt.run("kaana-offer", &["peer", "add", &sa.peer()]));
    let out = rebuilt.run("kaana-offer", &["contracts", "--fetch"]);
    assert_success(&out);
    assert!(prune(&rebuilt, false, t).is_empty());
    assert_success(&a.run("kaana-sync", &["verify", &contract]));

    // Data nobody can explain, a week after the rebuild, when a person asks.
    let stray = storage.join("inbound").join("ab".repeat(32));
    fs::create_dir_all(stray.join("extents")).unwrap();
    fs::write(stray.join("extents").join("x"), b"?").unwrap();
    let later = now_unix() + 8 * DAY;
    assert!(prune(&rebuilt, false, later).is_empty());
    assert!(stray.exists());
    let out = prune_cmd(&rebuilt, later).arg("--leftovers").output().unwrap();
    assert_success(&out);
    let steps: Vec<Step> = json_lines(&out);
    assert_eq!((steps.len(), steps[0].action.as_str()), (1, "remove_orphan"), "{steps:?}");
    assert!(!stray.exists() && held.exists());
}

#[test]
fn leftovers_of_interrupted_pushes_go_after_a_day_and_committed_data_stays() {
    let work = tempfile::tempdir().unwrap();
    let a = node_with_volume(work.path(), "a.img", 1, "1GiB");
    let b = node_with_volume(work.path(), "b.img", 2, "1GiB");
    let (sa, _sb) = (ServerProc::start(&a, &[]), ServerProc::start(&b, &[]));
    let contract = make_contract_sized(&a, &sa, &b, "32MiB");
    assert_success(&a.run("kaana-sync", &["push", &contract]));
    // An extent an interrupted push left behind, and a stray temp file of an atomic write.
    let stray = store(&b, &contract).join("extents").join("ff").join("ff".repeat(32));
    fs::create_dir_all(stray.parent().unwrap()).unwrap();
    fs::write(&stray, vec![1u8; 4096]).unwrap();
    let temp = b.home.join(".config.json.999.0.tmp");
    fs::write(&temp, b"{").unwrap();
    // And those of the store's records, cut short by a crash mid-commit.
    let records = [
        store(&b, &contract).join(".committed.json.999.1.tmp"),
        store(&b, &contract).join("kept").join(".1.json.999.2.tmp"),
    ];
    for r in &records {
        fs::create_dir_all(r.parent().unwrap()).unwrap();
        fs::write(r, vec![b'{'; 100]).unwrap();
    }

    assert!(prune(&b, false, now_unix() + 3_600).is_empty(), "a push may still resume within the day");
    let steps = prune(&b, false, now_unix() + DAY + 3_600);
    let actions: Vec<&str> = steps.iter().map(|s| s.action.as_str()).collect();
    assert_eq!(actions, ["remove_leftovers", "remove_temp"]);
    assert_eq!(steps[0].bytes, 4096 + 200);
    assert!(!stray.exists() && !temp.exists());
    assert!(records.iter().all(|r| !r.exists()), "the records' temp files");
    assert_success(&a.run("kaana-sync", &["verify", &contract]));
}

/// A prune killed with SIGKILL while it deletes, run again, ends consistent; and at no point
/// is a contract active with its data gone.
#[test]
fn a_prune_killed_midway_finishes_on_the_next_run() {
    let work = tempfile::tempdir().unwrap();
    let a = node_with_volume(work.path(), "a.img", 1, "1GiB");
    let b = node_with_volume(work.path(), "b.img", 2, "1GiB");
    let (sa, _sb) = (ServerProc::start(&a, &[]), ServerProc::start(&b, &[]));
    let witness = TestNode::init();
    let sw = ServerProc::start(&witness, &[]);
    assert_success(&b.run("kaana-offer", &["peer", "add", &sw.peer()]));
    let contract = make_contract_sized(&a, &sa, &b, "512MiB");
    assert_success(&a.run("kaana-sync", &["push", &contract]));
    assert_success(&b.run("kaana-sync", &["push", &contract]));
    // Many files, so that deleting them takes a while: a large store, in small extents.
    let extents = store(&b, &contract).join("extents");
    for i in 0..30_000u32 {
        let dir = extents.join(format!("{:02x}", i % 256));
        fs::create_dir_all(&dir).unwrap();
        fs::write(dir.join(format!("{:064x}", u64::from(i) + (1 << 40))), b"x").unwrap();
    }
    let count = |p: &Path| walk_files(p);
    let total = count(&store(&b, &contract));
    drop(sa);
    let t0 = fails_while_offline(&b, &contract);
    keep_watch(&b, t0 + 6 * DAY, t0 + 7 * DAY);

    let mut child = prune_cmd(&b, t0 + 7 * DAY + 1).stdout(std::process::Stdio::null()).spawn().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while count(&store(&b, &contract)) == total {
        assert!(Instant::now() < deadline, "prune never started deleting");
        std::thread::sleep(Duration::from_micros(200));
    }
    child.kill().unwrap();
    let _ = child.wait();
    let left = count(&store(&b, &contract));
    assert!(left < total);
    // Data is partly gone: the contract must already say ended.
    assert_eq!(status(&b, &contract), "ended");
    crate::common::assert_state_consistent(&b.home);

    let steps = prune(&b, false, t0 + 7 * DAY + 2);
    if left > 0 {
        assert_eq!(steps.len(), 1);
        assert_eq!(steps[0].action, "remove_orphan");
    }
    assert!(!store(&b, &contract).exists());
    assert_eq!(status(&b, &contract), "ended");
    assert!(prune(&b, false, t0 + 7 * DAY + 3).is_empty());
}

/// B holds A's data, and A is failing there. Then B is cut off from every node it knows for
/// longer than the grace: it deletes nothing, and once it reaches its peers again it waits a
/// day (time for A to ask to be challenged again) before A's data goes.
#[test]
fn a_node_cut_off_for_longer_than_the_grace_deletes_nothing() {
    let work = tempfile::tempdir().unwrap();
    let a = node_with_volume(work.path(), "a.img", 1, "1GiB");
    let b = node_with_volume(work.path(), "b.img", 2, "1GiB");
    let c = node_with_volume(work.path(), "c.img", 3, "1GiB");
    let (sa, sb, sc) = (ServerProc::start(&a, &[]), ServerProc::start(&b, &[]), ServerProc::start(&c, &[]));
    let contract = make_contract_sized(&b, &sb, &a, "32MiB");
    assert_success(&a.run("kaana-sync", &["push", &contract]));
    assert_success(&b.run("kaana-sync", &["push", &contract]));
    assert_success(&b.run("kaana-offer", &["peer", "add", &sc.peer()]));
    drop(sa);
    let since = fails_while_offline(&b, &contract);
    let delete_after = since + 7 * DAY;
    // Now B's own link goes: nobody answers it, for nine days.
    let c_port = sc.addr.rsplit_once(':').unwrap().1.to_owned();
    drop(sc);
    let out = prune_cmd(&b, delete_after + 2 * DAY).output().unwrap();
    assert_success(&out);
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(crate::common::stderr(&out).contains("too few of its peers"), "{}", crate::common::stderr(&out));
    assert!(store(&b, &contract).exists());
    assert_eq!(status(&b, &contract), "active");

    // Back: it reaches C again. A's data stays for a day more, with cron keeping watch.
    let _sc = ServerProc::start(&c, &["--listen", &format!("127.0.0.1:{c_port}")]);
    let back = delete_after + 3 * DAY;
    assert!(prune(&b, false, back).is_empty());
    keep_watch(&b, back + 8 * HOUR, back + 16 * HOUR);
    assert!(prune(&b, false, back + DAY - 1).is_empty());
    let steps = prune(&b, false, back + DAY);
    assert_eq!(steps.len(), 1, "{steps:?}");
    assert_eq!(steps[0].action, "delete");
    assert!(!store(&b, &contract).exists());
}
