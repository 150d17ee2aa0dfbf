//! Challenges between real nodes: routine ones, unreachable peers and the retry schedule, a
//! node that suspects its own connection, a holder that lost data, strangers; moving time with
//! `KAANA_NOW`.

use std::fs;

use kaana_proto::net::transport::{Client, NetError};
use kaana_proto::net::wire::{ErrorCode, Request};
use kaana_proto::protocol::identity::Identity;
use kaana_proto::protocol::record::Signed;
use kaana_proto::protocol::time::Timestamp;

use crate::common::story::{DAY, HOUR, Story, challenge, contract_line, kinds, story, unix_of, wreck_store};
use crate::common::{
    ServerProc, TestNode, assert_exit, assert_success, at, bin_dir, json_lines, make_contract_sized, now_unix,
    one_json, pseudo_random, stderr,
};

#[test]
fn routine_challenges_pass_both_ways() {
    let s = story();
    for (node, peer) in [(&s.a, &s.sb), (&s.b, &s.sa)] {
        let (code, lines, err) = challenge(node, &[&s.contract], None);
        assert_eq!(code, Some(0), "{err}");
        assert_eq!(kinds(&lines), [("routine", "pass")]);
        let l = &lines[0];
        assert_eq!(
            (l.contract.as_str(), l.peer.as_str(), l.samples),
            (s.contract.as_str(), peer.node.as_str(), Some(44))
        );
        assert!(!l.breach);
        assert_eq!(l.their_standing["state"], "ok");
    }
    // Every exchange is in the log, and in the peer's record.
    let events = fs::read_to_string(s.a.home.join("events.jsonl")).unwrap();
    assert!(events.lines().any(|l| l.contains("\"verdict\"") && l.contains("\"pass\"")));
    assert_eq!(contract_line(&s.a, &s.contract)["their_record"]["passes"], 1);
}

/// B goes offline. A's challenges are tried again at each run; B is failing only after a day
/// of unanswered tries. Back inside the grace, B's own run gets it back to ok: it asks how it
/// stands, audits A (A must still hold B's data), and asks to be challenged again.
#[test]
fn an_offline_peer_is_failing_only_after_a_day_and_gets_itself_back_to_ok() {
    let s = story();
    let port = s.sb.addr.rsplit_once(':').unwrap().1.to_owned();
    let Story { a, b, c: _c, sa: _sa, sb, sc: _sc, contract, work: _work } = s;
    drop(sb);
    let t0 = now_unix();
    for h in [0, 6, 12, 18, 24] {
        let (code, lines, err) = challenge(&a, &[&contract], Some(t0 + h * HOUR));
        assert_eq!(code, Some(0), "an unreachable peer alone needs no person: {err}");
        assert_eq!(err, "", "nothing on stderr, which cron mails");
        assert_eq!(kinds(&lines), [("routine", "unreachable")]);
        assert_eq!(lines[0].their_standing["state"], "ok", "hour {h}");
        assert!(lines[0].message.as_deref().unwrap().contains("tried again"), "{:?}", lines[0].message);
    }
    // The window starts at the second unanswered try in a row (one is noise): a day after it.
    let (code, lines, _) = challenge(&a, &[&contract], Some(t0 + 30 * HOUR));
    assert_eq!(code, Some(0));
    assert_eq!(lines[0].their_standing["state"], "failing", "a day of unanswered tries");
    assert_eq!(unix_of(&lines[0].their_standing["since"]), t0 + 30 * HOUR);
    let record = &contract_line(&a, &contract)["their_record"];
    assert_eq!((record["unreachable"].as_u64(), record["tries"].as_u64()), (Some(6), Some(6)));

    let _sb = ServerProc::start(&b, &["--listen", &format!("127.0.0.1:{port}")]);
    let (code, lines, err) = challenge(&b, &["--all"], Some(t0 + 2 * DAY));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(kinds(&lines), [("audit", "pass"), ("rechallenge", "pass")]);
    assert_eq!(contract_line(&a, &contract)["their_standing"], serde_json::json!({"state": "ok"}));
    assert_eq!(contract_line(&b, &contract)["our_standing"], serde_json::json!({"state": "ok"}));
}

/// A node that reaches none of the nodes it knows suspects its own connection: it judges
/// nobody, and after a day of that it tells its person.
#[test]
fn a_node_that_reaches_nobody_judges_nobody() {
    let s = story();
    let Story { a, b: _b, c: _c, sa: _sa, sb, sc, contract, work: _work } = s;
    drop((sb, sc));
    let t0 = now_unix();
    for h in [0, 8, 16, 24, 32] {
        let (code, lines, err) = challenge(&a, &["--all"], Some(t0 + h * HOUR));
        assert_eq!(kinds(&lines), [("routine", "unreachable")]);
        assert_eq!(lines[0].their_standing["state"], "ok", "hour {h}");
        assert!(err.contains("in doubt"), "{err}");
        assert_eq!(code, Some(if h >= 24 { 1 } else { 0 }), "hour {h}: {err}");
    }
    let (_, _, err) = challenge(&a, &["--all"], Some(t0 + 2 * DAY));
    assert!(err.contains("reached too few of its peers since"), "{err}");
    let record = &contract_line(&a, &contract)["their_record"];
    assert_eq!(record["unreachable"], 0, "no try was counted against B");
    let health: serde_json::Value = serde_json::from_slice(&fs::read(a.home.join("health.json")).unwrap()).unwrap();
    assert_eq!(unix_of(&health["health"]["suspect_since"]), t0);
}

/// B lost A's data. A's challenge fails (recorded, no alarm: one failure could be B testing
/// A); once B has been failing longer than a deliberate failure lasts, A's person is told.
#[test]
fn a_holder_that_lost_the_data_fails_and_the_person_is_told_when_it_lasts() {
    let s = story();
    wreck_store(&s.b, &s.contract);
    let t0 = now_unix();
    let (code, lines, err) = challenge(&s.a, &[&s.contract], Some(t0));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!((lines[0].result.as_str(), lines[0].samples), ("fail", Some(44)));
    assert!(lines[0].message.as_deref().unwrap().contains("do not prove"), "{:?}", lines[0].message);
    let (code, lines, _) = challenge(&s.a, &[&s.contract], Some(t0 + HOUR));
    assert_eq!(
        (code, lines[0].result.as_str(), lines[0].their_standing["state"].as_str()),
        (Some(0), "fail", Some("failing"))
    );
    // A deliberate failure's audit is done by a twenty-fourth of the grace before its end.
    let late = t0 + 7 * DAY - 7 * HOUR;
    let (code, _, err) = challenge(&s.a, &[&s.contract], Some(late - HOUR));
    assert_eq!(code, Some(0), "{err}");
    let (code, lines, err) = challenge(&s.a, &[&s.contract], Some(late));
    assert_eq!(code, Some(1), "{err} {lines:?}");
    assert!(err.contains("longer than a deliberate failure lasts"), "{err}");
    let out = s.a.run("kaana-sync", &["verify", &s.contract]);
    assert_exit(&out, 1);
}

#[test]
fn a_challenge_from_a_stranger_is_refused() {
    let s = story();
    let holder = s.sb.node.parse().unwrap();
    let stranger = Identity::generate().unwrap();
    let body = kaana_proto::protocol::challenge::Challenge {
        contract: s.contract.parse().unwrap(),
        challenger: stranger.node_id(),
        holder,
        manifest: s.contract.parse().unwrap(),
        generation: 1,
        standing: kaana_proto::protocol::fairness::standing::Standing::Ok,
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

/// More contracts with one peer than it allows connections from one node: `--all` shares one
/// connection per peer, and every contract is checked.
#[test]
fn all_checks_forty_contracts_with_one_peer_over_one_connection() {
    let work = tempfile::tempdir().unwrap();
    let v = work.path().join("x.img");
    fs::write(&v, pseudo_random(3 << 20, 9)).unwrap();
    let x = TestNode::init_with(&["--capacity", "1GiB", "--volume", v.to_str().unwrap()]);
    let y = TestNode::init_with(&["--capacity", "1GiB"]);
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

/// `kaana-offer status` tells a person in one screen what needs them (a peer not answering and
/// since when, a push that is getting old): JSON lines when piped, a short report on a terminal;
/// exit 1 then, 0 when all is well.
#[test]
fn status_says_what_needs_a_person() {
    let s = story();
    assert_success(&s.a.run("kaana-offer", &["config", "set", "replicas", "1"]));
    let status = |t: u64| s.a.cmd("kaana-offer").arg("status").env("KAANA_NOW", at(t)).output().unwrap();
    let t0 = now_unix();
    let (code, _, err) = challenge(&s.a, &["--all"], Some(t0));
    assert_eq!(code, Some(0), "{err}");
    let out = status(t0);
    assert_exit(&out, 0);
    let line: serde_json::Value = one_json(&out);
    let peer = &line["peers"][0];
    assert_eq!((peer["contract"].as_str(), peer["status"].as_str()), (Some(s.contract.as_str()), Some("active")));
    assert!(peer["last_push"].is_string() && peer["last_pass"].is_string(), "{line}");
    assert!(line["disk_free"].as_u64().unwrap() > 0 && line["problems"] == serde_json::json!([]), "{line}");

    drop(s.sb);
    for h in [4, 8] {
        let (code, _, err) = challenge(&s.a, &[&s.contract], Some(t0 + h * HOUR));
        assert_eq!(code, Some(0), "{err}");
    }
    let late = t0 + 3 * DAY;
    let out = status(late);
    assert_exit(&out, 1);
    let line: serde_json::Value = one_json(&out);
    let problems = line["problems"].to_string();
    assert!(problems.contains("has not answered since") && problems.contains("2 tries"), "{problems}");
    assert!(problems.contains("the last push the peer committed was at"), "{problems}");
    assert!(stderr(&out).contains("has not answered since"), "{}", stderr(&out));
    // On a terminal, the same as a report.
    let home = s.a.home.display().to_string();
    let tty = std::process::Command::new("script")
        .args(["-qec", &format!("kaana-offer --home {home} status"), "/dev/null"])
        .env("PATH", format!("{}:/usr/bin:/bin", bin_dir().display()))
        .env("KAANA_NOW", at(late))
        .output()
        .unwrap();
    let report = String::from_utf8_lossy(&tty.stdout);
    assert!(report.contains("needs attention:") && report.contains("has not answered since"), "{report}");
    assert!(!report.trim_start().starts_with('{'), "{report}");
}
