//! Challenges, standings, deliberate failures and audits between real nodes, moving time with
//! `KAANA_NOW`: the seed's story, step by step.

use std::fs;
use std::path::Path;

use serde::Deserialize;

use kaana_proto::identity::Identity;
use kaana_proto::net::transport::{Client, NetError};
use kaana_proto::net::wire::{ErrorCode, Request};
use kaana_proto::record::Signed;
use kaana_proto::time::Timestamp;

use crate::common::{
    ServerProc, TestNode, assert_exit, assert_success, at, json_lines, make_contract_sized, now_unix, pseudo_random,
    stderr,
};

const DAY: u64 = 86_400;

#[derive(Debug, Deserialize)]
struct Line {
    contract: String,
    peer: String,
    kind: String,
    result: String,
    breach: bool,
    their_standing: serde_json::Value,
    evidence: Option<String>,
}

/// A and B, each with a volume, a 7-day contract, each side's volume pushed to the other, no
/// random deliberate failures.
struct Story {
    _work: tempfile::TempDir,
    a: TestNode,
    b: TestNode,
    sa: ServerProc,
    sb: ServerProc,
    contract: String,
}

fn volume(dir: &Path, name: &str, seed: u64) -> String {
    let path = dir.join(name);
    fs::write(&path, pseudo_random(3 << 20, seed)).unwrap();
    path.to_str().unwrap().to_owned()
}

fn story() -> Story {
    let work = tempfile::tempdir().unwrap();
    let init = |name, seed| {
        let v = volume(work.path(), name, seed);
        TestNode::init_with(&["--capacity", "1GiB", "--audit-rate", "0", "--volume", &v])
    };
    let (a, b) = (init("a.img", 1), init("b.img", 2));
    let (sa, sb) = (ServerProc::start(&a, &[]), ServerProc::start(&b, &[]));
    let offer: serde_json::Value = a.json("kaana-offer", &["create", "--size", "64MiB", "--grace", "7d"]);
    let _ = offer;
    let contract = make_contract_sized(&a, &sa, &b, "64MiB");
    // 256 KiB extents: a dozen extents per 3 MiB volume, so samples spread over many.
    for node in [&a, &b] {
        assert_success(&node.run("kaana-sync", &["push", &contract, "--extent-size", "256KiB"]));
    }
    Story { _work: work, a, b, sa, sb, contract }
}

fn contract_line(node: &TestNode) -> serde_json::Value {
    let lines: Vec<serde_json::Value> = json_lines(&node.run("kaana-offer", &["contracts"]));
    lines.into_iter().next().unwrap()
}

fn challenge(node: &TestNode, args: &[&str], now: Option<u64>) -> (Option<i32>, Vec<Line>, String) {
    let mut cmd = node.cmd("kaana-challenge");
    cmd.args(args);
    if let Some(t) = now {
        cmd.env("KAANA_NOW", at(t));
    }
    let out = cmd.output().unwrap();
    (out.status.code(), json_lines(&out), stderr(&out))
}

fn state(node: &TestNode, contract: &str) -> serde_json::Value {
    serde_json::from_slice(&fs::read(node.home.join("contracts").join(format!("{contract}.state.json"))).unwrap())
        .unwrap()
}

#[test]
fn routine_challenges_pass_both_ways() {
    let s = story();
    for (node, peer) in [(&s.a, &s.sb), (&s.b, &s.sa)] {
        let (code, lines, err) = challenge(node, &[&s.contract], None);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(lines.len(), 1);
        let l = &lines[0];
        assert_eq!(
            (l.contract.as_str(), l.peer.as_str(), l.kind.as_str(), l.result.as_str()),
            (s.contract.as_str(), peer.node.as_str(), "routine", "pass")
        );
        assert!(!l.breach);
        assert_eq!(l.their_standing["state"], "ok");
    }
    // Every exchange is in the log.
    let events = fs::read_to_string(s.a.home.join("events.jsonl")).unwrap();
    assert!(events.lines().any(|l| l.contains("\"verdict\"") && l.contains("\"pass\"")));
}

/// The seed: B challenges A, A lies, B marks A failing for 7 days; on day 6 A's audit finds B
/// honest, A asks to be challenged again, answers right, and B's record of A is ok again.
#[test]
fn a_deliberate_failure_is_audited_and_forgiven() {
    let s = story();
    let t0 = now_unix();
    assert_success(&s.a.run("kaana-challenge", &["fail-next", &s.contract]));
    let (code, lines, _) = challenge(&s.b, &[&s.contract], None);
    assert_eq!(code, Some(1));
    assert_eq!((lines[0].kind.as_str(), lines[0].result.as_str()), ("routine", "fail"));
    let at_b = contract_line(&s.b);
    assert_eq!(at_b["their_standing"]["state"], "failing");
    let delete_after: Timestamp = at_b["their_standing"]["delete_after"].as_str().unwrap().parse().unwrap();
    assert!((t0 + 7 * DAY..=now_unix() + 7 * DAY).contains(&delete_after.unix()), "{delete_after}");

    // A planned its audit inside the grace: between 1/7 and 6/7 of it.
    let audit = state(&s.a, &s.contract)["audit"].clone();
    let audit_at: Timestamp = audit["audit_at"].as_str().unwrap().parse().unwrap();
    assert!((t0 + DAY..=now_unix() + 6 * DAY).contains(&audit_at.unix()), "{audit}");
    // A knows B sees it as failing, and that this is its own doing: nothing to fix yet.
    let out = s.a.run("kaana-challenge", &["standing"]);
    assert_exit(&out, 0);
    let st: Vec<serde_json::Value> = json_lines(&out);
    assert_eq!(st[0]["our_standing"]["state"], "failing");
    let (code, lines, _) = challenge(&s.a, &["--all"], Some(t0 + DAY / 2));
    assert_eq!(code, Some(0));
    assert!(lines.iter().all(|l| l.kind == "routine"), "no audit before it is due, no rechallenge: {lines:?}");

    // Day 6.
    let (code, lines, err) = challenge(&s.a, &["--all"], Some(t0 + 6 * DAY + 3_600));
    assert_eq!(code, Some(0), "{err}");
    let kinds: Vec<(&str, &str, bool)> = lines.iter().map(|l| (l.kind.as_str(), l.result.as_str(), l.breach)).collect();
    assert_eq!(kinds, [("audit", "pass", false), ("rechallenge", "pass", false)]);
    let at_b = contract_line(&s.b);
    assert_eq!(at_b["their_standing"], serde_json::json!({"state": "ok"}), "B's record of A is ok, the expiry gone");
    assert_eq!(state(&s.a, &s.contract)["audit"]["result"], "pass");
    assert_eq!(state(&s.a, &s.contract)["our_standing"]["state"], "ok");
}

/// A greedy B deletes A's data the day after A's deliberate failure: A's audit is a breach,
/// with evidence a third party can check.
#[test]
fn a_greedy_peer_that_deletes_early_is_caught() {
    let s = story();
    let t0 = now_unix();
    assert_success(&s.a.run("kaana-challenge", &["fail-next", &s.contract]));
    let (code, _, _) = challenge(&s.b, &[&s.contract], None);
    assert_eq!(code, Some(1));
    // B frees the space early, keeping up appearances (its manifest stays).
    let extents = s.b.home.join("inbound").join(&s.contract).join("extents");
    fs::remove_dir_all(&extents).unwrap();

    let (code, lines, err) = challenge(&s.a, &["--all"], Some(t0 + 6 * DAY + 3_600));
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("BREACH"), "{err}");
    let audit = lines.iter().find(|l| l.kind == "audit").unwrap();
    assert_eq!((audit.result.as_str(), audit.breach), ("fail", true));
    assert_eq!(audit.their_standing["state"], "failing");
    assert!(lines.iter().all(|l| l.kind != "rechallenge"), "{lines:?}");
    assert_eq!(contract_line(&s.a)["their_standing"]["state"], "failing");
    let evidence = audit.evidence.clone().unwrap();
    let events = fs::read_to_string(s.a.home.join("events.jsonl")).unwrap();
    assert!(events.lines().any(|l| l.contains("\"breach\"") && l.contains(&evidence)));

    // A third party, with nothing but the file.
    let out = crate::common::tool("kaana-challenge").args(["check-evidence", &evidence]).output().unwrap();
    assert_success(&out);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], true);
    assert_eq!(v["holder"], s.sb.node.as_str());
    assert_eq!(v["owner"], s.sa.node.as_str());
    assert!(v["failed_samples"].as_u64().unwrap() > 0);
    // Tampered evidence does not hold.
    let mut tampered: serde_json::Value = serde_json::from_slice(&fs::read(&evidence).unwrap()).unwrap();
    tampered["transcript"]["answer"]["body"]["holder"] = serde_json::Value::String(s.sa.node.clone());
    let forged = s.a.dir.path().join("forged.json");
    fs::write(&forged, serde_json::to_vec(&tampered).unwrap()).unwrap();
    let out =
        crate::common::tool("kaana-challenge").args(["check-evidence", forged.to_str().unwrap()]).output().unwrap();
    assert_exit(&out, 1);
    // The proofs stopped at the challenger's tops, which travel in the evidence: a changed top
    // does not hold either (it no longer merges to the extent's hash the holder signed for).
    let original: serde_json::Value = serde_json::from_slice(&fs::read(&evidence).unwrap()).unwrap();
    assert_eq!(original["transcript"]["challenge"]["body"]["depth"], 2);
    let tops = original["transcript"]["tops"].as_str().unwrap();
    assert!(!tops.is_empty());
    let mut tampered = original.clone();
    let first = if tops.starts_with('0') { "1" } else { "0" };
    let flipped = format!("{first}{}", &tops[1..]);
    tampered["transcript"]["tops"] = serde_json::Value::String(flipped);
    fs::write(&forged, serde_json::to_vec(&tampered).unwrap()).unwrap();
    let out =
        crate::common::tool("kaana-challenge").args(["check-evidence", forged.to_str().unwrap()]).output().unwrap();
    assert_exit(&out, 1);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["valid"], false);
    assert!(v["reason"].as_str().unwrap().contains("tops"), "{v}");
}

/// B is offline when A challenges it: failing. Back inside the grace, B's own `--all` gets it
/// back to ok without a person.
#[test]
fn a_node_back_from_offline_gets_itself_back_to_ok() {
    let s = story();
    let port = s.sb.addr.rsplit_once(':').unwrap().1.to_owned();
    let Story { a, b, sa: _sa, sb, contract, _work } = s;
    drop(sb);
    let out = a.cmd("kaana-challenge").arg(&contract).env("KAANA_CONNECT_TIMEOUT", "1s").output().unwrap();
    assert_exit(&out, 1);
    let lines: Vec<Line> = json_lines(&out);
    assert_eq!((lines[0].kind.as_str(), lines[0].result.as_str()), ("routine", "unreachable"));
    assert_eq!(contract_line(&a)["their_standing"]["state"], "failing");

    let _sb = ServerProc::start(&b, &["--listen", &format!("127.0.0.1:{port}")]);
    let (code, lines, err) = challenge(&b, &["--all"], Some(now_unix() + 2 * DAY));
    assert_eq!(code, Some(0), "{err}");
    let kinds: Vec<(&str, &str)> = lines.iter().map(|l| (l.kind.as_str(), l.result.as_str())).collect();
    assert_eq!(kinds, [("rechallenge", "pass"), ("routine", "pass")]);
    assert_eq!(contract_line(&a)["their_standing"], serde_json::json!({"state": "ok"}));
    assert_eq!(contract_line(&b)["our_standing"], serde_json::json!({"state": "ok"}));
}

#[test]
fn a_challenge_from_a_stranger_is_refused() {
    let s = story();
    let holder = s.sb.node.parse().unwrap();
    let stranger = Identity::generate().unwrap();
    let body = kaana_proto::challenge::Challenge {
        contract: s.contract.parse().unwrap(),
        challenger: stranger.node_id(),
        holder,
        manifest: s.contract.parse().unwrap(),
        generation: 1,
        nonce: "00".repeat(16),
        picks: vec![[0, 0]],
        depth: 0,
        at: Timestamp::from_unix(now_unix()),
    };
    let challenge = Signed::sign(body, &stranger).unwrap();
    let addr = s.sb.addr.clone();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = Client::new(stranger);
        let conn = client.connect(holder, &addr).await.unwrap();
        let r = conn.request(&Request::Challenge { challenge }).await;
        assert!(matches!(&r, Err(NetError::Remote(e)) if e.code == ErrorCode::Unauthorized), "{r:?}");
        client.close().await;
    });
}

#[test]
fn a_holder_that_lost_one_extent_fails_verify_and_challenges_catch_it_often() {
    let s = story();
    let extents = s.b.home.join("inbound").join(&s.contract).join("extents");
    // Overwrite every stored extent of A's copy: every sample fails.
    for sub in fs::read_dir(&extents).unwrap().flatten() {
        for f in fs::read_dir(sub.path()).unwrap().flatten() {
            if !f.file_name().to_string_lossy().ends_with(".ob") {
                let len = f.metadata().unwrap().len() as usize;
                fs::write(f.path(), vec![0u8; len]).unwrap();
            }
        }
    }
    let (code, lines, _) = challenge(&s.a, &[&s.contract, "--samples", "8"], None);
    assert_eq!(code, Some(1));
    assert_eq!(lines[0].result, "fail");
    let out = s.a.run("kaana-sync", &["verify", &s.contract]);
    assert_exit(&out, 1);
}

/// More contracts with one peer than it allows connections from one node: `--all` shares one
/// connection per peer, and every contract is checked.
#[test]
fn all_checks_forty_contracts_with_one_peer_over_one_connection() {
    let work = tempfile::tempdir().unwrap();
    let v = volume(work.path(), "x.img", 9);
    let x = TestNode::init_with(&["--capacity", "1GiB", "--audit-rate", "0", "--volume", &v]);
    let y = TestNode::init_with(&["--capacity", "1GiB", "--audit-rate", "0"]);
    let (_sx, sy) = (ServerProc::start(&x, &[]), ServerProc::start(&y, &[]));
    for _ in 0..40 {
        make_contract_sized(&y, &sy, &x, "4MiB");
    }
    let pushed: Vec<serde_json::Value> = json_lines(&x.run("kaana-sync", &["push", "--all", "--extent-size", "1MiB"]));
    assert_eq!(pushed.len(), 40);
    let (code, lines, err) = challenge(&x, &["--all"], None);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(lines.len(), 40);
    assert!(lines.iter().all(|l| l.kind == "routine" && l.result == "pass"), "{lines:?}");
}
