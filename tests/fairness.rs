//! Fairness against peers who play strategically, between real nodes: deliberate failures in
//! each of their forms, audits, a greedy holder caught with evidence anyone can check, framing
//! refused at the holder, and the guards on rechallenges and on lying while judging.

use std::fs;

use kaana_proto::net::transport::{Client, Connection, read_exact};
use kaana_proto::net::wire::{Request, Response};
use kaana_proto::node::audit::{self, Heard};
use kaana_proto::protocol::challenge::{self, Challenge, Reply, Rng};
use kaana_proto::protocol::fairness::evidence::{Evidence, EvidenceError, Statement};
use kaana_proto::protocol::fairness::standing::Standing;
use kaana_proto::protocol::market::RecordId;
use kaana_proto::protocol::record::Signed;
use kaana_proto::protocol::time::Timestamp;
use kaana_proto::store::home::{Home, Schema};
use kaana_proto::store::node::Node;

use crate::common::story::{DAY, HOUR, challenge, contract_line, kinds, state, story, unix_of, wreck_store};
use crate::common::{ServerProc, TestNode, assert_success, at, json_lines, now_unix, one_json};

fn fail_next(node: &TestNode, contract: &str, mode: &str) {
    let out = node.run("kaana-challenge", &["fail-next", contract, "--mode", mode]);
    assert_success(&out);
    let v: serde_json::Value = one_json(&out);
    assert_eq!((v["fail_next"].as_bool(), v["mode"].as_str()), (Some(true), Some(mode)));
}

fn push(node: &TestNode, contract: &str) -> serde_json::Value {
    node.json("kaana-sync", &["push", contract, "--extent-size", "256KiB"])
}

/// Starts B's server again on its address, with `extra` arguments.
fn restart_b(s: &mut crate::common::story::Story, extra: &[&str]) {
    let addr = s.sb.addr.clone();
    let _ = s.sb.child.kill();
    let _ = s.sb.child.wait();
    let args: Vec<&str> = ["--listen", addr.as_str()].into_iter().chain(extra.iter().copied()).collect();
    s.sb = ServerProc::start(&s.b, &args);
}

/// Runs `f` with `node` opened in this process and connected to `peer_server`.
fn as_node<T>(node: &TestNode, peer: &str, addr: &str, f: impl AsyncFnOnce(&Node, &Connection) -> T) -> T {
    let opened = Node::open(Home::at(&node.home)).unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let client = Client::new(opened.identity.clone());
        let conn = client.connect(peer.parse().unwrap(), addr).await.unwrap();
        let out = f(&opened, &conn).await;
        client.close().await;
        out
    })
}

/// Damaged: A answers zeros for samples in a few extents, as a node with unreadable extents
/// does; B judges it failing (no alarm: a single failure). A keeps its habits (its challenges
/// of B are audits now); B's next push re-sends just the extents A "lost"; A, whole again,
/// audits B and asks to be challenged again, and B's record of A is ok.
#[test]
fn a_damaged_deliberate_failure_heals_with_the_next_push_and_is_forgiven() {
    let s = story();
    let t0 = now_unix();
    fail_next(&s.a, &s.contract, "damaged");
    let (code, lines, err) = challenge(&s.b, &[&s.contract], None);
    assert_eq!(code, Some(0), "one failure needs no person: {err}");
    assert_eq!(kinds(&lines), [("routine", "fail")]);
    let at_b = contract_line(&s.b, &s.contract);
    assert_eq!(at_b["their_standing"]["state"], "failing");
    let delete_after = unix_of(&at_b["their_standing"]["delete_after"]);
    assert!((t0 + 7 * DAY..=now_unix() + 7 * DAY).contains(&delete_after));
    let plan = state(&s.a, &s.contract)["audit"].clone();
    assert_eq!(plan["mode"], "damaged");
    assert!((1..=5).contains(&plan["damaged"].as_array().unwrap().len()), "{plan}");

    // A knows B sees it as failing, and that this is its own doing: nothing for its person.
    let out = s.a.run("kaana-challenge", &["standing"]);
    assert_success(&out);
    let st: Vec<serde_json::Value> = json_lines(&out);
    assert_eq!(st[0]["our_standing"]["state"], "failing");
    // Before B re-sends, A audits B as usual but does not ask to be challenged again.
    let (code, lines, err) = challenge(&s.a, &["--all"], None);
    assert_eq!((code, kinds(&lines)), (Some(0), vec![("audit", "pass")]), "{err}");

    // B's next push (its volume unchanged) re-sends what A showed missing, and only that.
    let pushed = push(&s.b, &s.contract);
    let sent = pushed["extents_sent"].as_u64().unwrap();
    assert!((1..=5).contains(&sent) && pushed["unchanged"] == false, "{pushed}");
    let (code, lines, err) = challenge(&s.a, &["--all"], None);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(kinds(&lines), [("audit", "pass"), ("rechallenge", "pass")]);
    assert_eq!(contract_line(&s.b, &s.contract)["their_standing"], serde_json::json!({"state": "ok"}));
    assert_eq!(state(&s.a, &s.contract)["audit"]["result"], "pass");
    assert_eq!(state(&s.a, &s.contract)["our_standing"]["state"], "ok");
}

/// Silent: A answers its last challenge and then nothing, as a node that went down does; it
/// sends B nothing either. B judges it failing only after a day of tries. At its audit time A
/// comes back as a node back from an outage does.
#[test]
fn a_silent_deliberate_failure_looks_like_an_outage_and_comes_back_at_its_audit() {
    let s = story();
    let t0 = now_unix();
    fail_next(&s.a, &s.contract, "silent");
    let (code, lines, _) = challenge(&s.b, &[&s.contract], Some(t0));
    assert_eq!((code, kinds(&lines)), (Some(0), vec![("routine", "pass")]), "the last answer before going quiet");
    let plan = state(&s.a, &s.contract)["audit"].clone();
    assert_eq!(plan["mode"], "silent");
    let audit_at = unix_of(&plan["audit_at"]);
    assert!((t0 + DAY + 8 * HOUR..=t0 + DAY + 7 * DAY - 14 * HOUR).contains(&audit_at), "{plan}");

    for h in [6, 12, 18, 24] {
        let (code, lines, _) = challenge(&s.b, &[&s.contract], Some(t0 + h * HOUR));
        assert_eq!((code, kinds(&lines)), (Some(0), vec![("routine", "unreachable")]));
        assert_eq!(lines[0].their_standing["state"], "ok");
    }
    let (_, lines, _) = challenge(&s.b, &[&s.contract], Some(t0 + 36 * HOUR));
    assert_eq!(
        lines[0].their_standing["state"], "failing",
        "a day after the second unanswered try (tries no more than 12 hours apart)"
    );
    // Meanwhile A sends B nothing: no challenge, no push.
    let (code, lines, err) = challenge(&s.a, &["--all"], Some(t0 + DAY));
    assert_eq!((code, lines.len()), (Some(0), 0), "{err}");
    let out = s.a.cmd("kaana-sync").args(["push", "--all"]).env("KAANA_NOW", at(t0 + DAY)).output().unwrap();
    assert_success(&out);
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));

    let (code, lines, err) = challenge(&s.a, &["--all"], Some(audit_at));
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(kinds(&lines), [("audit", "pass"), ("rechallenge", "pass")]);
    assert_eq!(contract_line(&s.b, &s.contract)["their_standing"], serde_json::json!({"state": "ok"}));
    assert_eq!(state(&s.a, &s.contract)["audit"]["result"], "pass");
}

/// Lost: "I no longer hold it", signed, as a node whose storage died; an empty store at B's
/// next push, which re-sends everything; then whole again.
#[test]
fn a_lost_deliberate_failure_says_not_held_and_the_peer_sends_everything_again() {
    let s = story();
    fail_next(&s.a, &s.contract, "lost");
    let (code, lines, _) = challenge(&s.b, &[&s.contract], None);
    assert_eq!((code, kinds(&lines)), (Some(0), vec![("routine", "fail")]));
    assert!(lines[0].message.as_deref().unwrap().contains("no generation of this contract is held here"));
    let pushed = push(&s.b, &s.contract);
    assert_eq!(pushed["extents_sent"], pushed["extents_total"], "{pushed}");
    let (code, lines, err) = challenge(&s.a, &["--all"], None);
    assert_eq!((code, kinds(&lines)), (Some(0), vec![("audit", "pass"), ("rechallenge", "pass")]), "{err}");
    assert_eq!(contract_line(&s.b, &s.contract)["their_standing"], serde_json::json!({"state": "ok"}));
}

/// A greedy B deletes A's data right after A's deliberate failure. A, alive, challenges B at
/// its next run: an audit, and a breach with evidence a third party can check with nothing but
/// the file; each part of it is needed.
#[test]
fn a_greedy_peer_that_deletes_early_is_caught_with_evidence() {
    let s = story();
    fail_next(&s.a, &s.contract, "damaged");
    let (_, lines, _) = challenge(&s.b, &[&s.contract], None);
    assert_eq!(lines[0].result, "fail");
    fs::remove_dir_all(s.b.home.join("inbound").join(&s.contract).join("extents")).unwrap();

    let (code, lines, err) = challenge(&s.a, &["--all"], None);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("BREACH"), "{err}");
    assert_eq!(kinds(&lines), [("audit", "fail")]);
    assert!(lines[0].breach);
    assert_eq!(lines[0].their_standing["state"], "failing");
    assert_eq!(state(&s.a, &s.contract)["audit"]["result"], "breach");
    let evidence = lines[0].evidence.clone().unwrap();
    let events = fs::read_to_string(s.a.home.join("events.jsonl")).unwrap();
    assert!(events.lines().any(|l| l.contains("\"breach\"") && l.contains(&evidence)));

    let check = |path: &std::path::Path| {
        let out = crate::common::tool("kaana-challenge").arg("check-evidence").arg(path).output().unwrap();
        (out.status.code(), one_json::<serde_json::Value>(&out))
    };
    let (code, v) = check(evidence.as_ref());
    assert_eq!(code, Some(0), "{v}");
    assert_eq!(
        (v["valid"].as_bool(), v["holder"].as_str(), v["owner"].as_str()),
        (Some(true), Some(s.sb.node.as_str()), Some(s.sa.node.as_str()))
    );
    assert!(v["failed_samples"].as_u64().unwrap() > 0);
    let original: serde_json::Value = serde_json::from_slice(&fs::read(&evidence).unwrap()).unwrap();
    let forged = s.work.path().join("forged.json");
    let mut tries = vec![
        ("/answer/body/holder", serde_json::Value::String(s.sa.node.clone()), "not consistent"),
        ("/answer/body/standing", serde_json::json!({"state": "ok"}), "not consistent"),
        ("/receipt", serde_json::Value::Null, "does not show the holder's receipt"),
        ("/answer", serde_json::Value::Null, "does not show a signed reply"),
    ];
    let tops = original["tops"].as_str().unwrap().to_owned();
    assert!(!tops.is_empty() && original["challenge"]["body"]["depth"] == 2);
    let flipped = format!("{}{}", if tops.starts_with('0') { "1" } else { "0" }, &tops[1..]);
    tries.push(("/tops", serde_json::Value::String(flipped), "tops"));
    for (pointer, value, reason) in tries {
        let mut tampered = original.clone();
        *tampered.pointer_mut(pointer).unwrap() = value;
        fs::write(&forged, serde_json::to_vec(&tampered).unwrap()).unwrap();
        let (code, v) = check(&forged);
        assert_eq!((code, v["valid"].as_bool()), (Some(1), Some(false)), "{pointer}");
        assert!(v["reason"].as_str().unwrap().contains(reason), "{pointer}: {v}");
    }
    // A breach file of protocol 1 (an exchange, no stated grace) proves nothing, and says why.
    let mut old = original.clone();
    let fields = old.as_object_mut().unwrap();
    let exchange = serde_json::json!({"challenge": fields.remove("challenge"), "answer": fields.remove("answer")});
    fields.insert("transcript".into(), exchange);
    fs::write(&forged, serde_json::to_vec(&old).unwrap()).unwrap();
    let (code, v) = check(&forged);
    assert_eq!((code, v["valid"].as_bool()), (Some(1), Some(false)));
    assert!(v["reason"].as_str().unwrap().contains("before protocol 2"), "{v}");
}

/// A deliberate failure never hands the peer evidence against the liar: every answer says how
/// its signer judges the challenger, and A fails on purpose only while it judges B ok; so B,
/// holding A's signed failing answer and whatever A signed about B, proves nothing. And while A
/// judges B failing, A does not fail on purpose at all.
#[test]
fn a_deliberate_failure_is_never_evidence_against_the_liar() {
    let s = story();
    fail_next(&s.a, &s.contract, "damaged");
    let (_, lines, _) = challenge(&s.b, &[&s.contract], None);
    assert_eq!((lines[0].result.as_str(), lines[0].breach), ("fail", false));
    // B, in this process, asks A again (A keeps up its pretence) and builds the best evidence
    // it can: A's own signed failing answer, and the last verdict A signed about B.
    let (addr, peer) = (s.sa.addr.clone(), s.sa.node.clone());
    let ex = as_node(&s.b, &peer, &addr, async |b, conn| {
        let entry = b.contract(&s.contract.parse().unwrap()).unwrap();
        audit::challenge_peer(conn, b, &entry, 132, None, Timestamp::from_unix(now_unix())).await.unwrap()
    });
    let Heard::Fail { signed: Some((_, standing)), .. } = ex.heard else { panic!("{:?}", ex.heard) };
    assert_eq!(standing, Standing::Ok, "A's failing answer says it judges B ok");
    let a_verdict: Option<Signed<challenge::Verdict>> =
        serde_json::from_value(state(&s.a, &s.contract)["their_verdict"].clone()).unwrap();
    let b = Node::open(Home::at(&s.b.home)).unwrap();
    let entry = b.contract(&s.contract.parse().unwrap()).unwrap();
    let evidence = Evidence {
        schema: Schema,
        contract: entry.contract,
        manifest: ex.target.manifest.clone(),
        receipt: ex.target.receipt.clone(),
        extent_list: kaana_proto::protocol::encoding::hex_encode(&ex.target.list),
        challenge: ex.transcript.challenge.clone(),
        answer: ex.transcript.answer.clone(),
        answer_bytes: kaana_proto::protocol::encoding::hex_encode(&ex.transcript.answer_bytes),
        tops: kaana_proto::protocol::encoding::hex_encode(ex.transcript.tops.as_flattened()),
        contradiction: a_verdict.map(Statement::Verdict),
    };
    assert!(
        matches!(evidence.check(), Err(EvidenceError::NoBreach(ref m)) if m.contains("judged the owner ok")),
        "{:?}",
        evidence.check()
    );

    // Now B really loses A's data: A judges B failing. With that verdict open, A answers B
    // honestly whatever fail-next says.
    let s = story();
    wreck_store(&s.b, &s.contract);
    let (_, lines, _) = challenge(&s.a, &[&s.contract], None);
    assert_eq!(lines[0].their_standing["state"], "failing");
    fail_next(&s.a, &s.contract, "damaged");
    // (B knows it is failing at A, so its challenge of A is an audit; it found its copy of A's
    // data damaged, so it waits for A's next push before asking to be challenged again.)
    let (code, lines, err) = challenge(&s.b, &[&s.contract], None);
    assert_eq!((code, kinds(&lines)), (Some(1), vec![("audit", "pass")]), "{err}");
    assert!(err.contains("judges this node failing"), "{err}");
    let st = state(&s.a, &s.contract);
    assert_eq!((st["fail_next"].as_bool(), st["audit"].is_null()), (Some(true), true), "{st}");
}

/// An owner that tries to frame its holder: samples outside the copy, or a second manifest it
/// signed for the same generation, are refused by the holder in a signed reply that is no
/// failure, and no evidence.
#[test]
fn a_holder_refuses_what_could_frame_it() {
    let s = story();
    let (addr, holder) = (s.sb.addr.clone(), s.sb.node.clone());
    let contract: RecordId = s.contract.parse().unwrap();
    let replies = as_node(&s.a, &holder, &addr, async |a, conn| {
        let entry = a.contract(&contract).unwrap();
        let target = kaana_proto::store::outbound::Target::from_record(a, &contract).unwrap().unwrap();
        let mut second = target.manifest.body.clone();
        second.created_at = Timestamp::from_unix(second.created_at.unix() + 1);
        let g = target.manifest.body.geometry().unwrap();
        let mut out = Vec::new();
        for (manifest, picks) in [
            (RecordId::of(&target.manifest.body).unwrap(), vec![[g.count(), 0]]),
            (RecordId::of(&target.manifest.body).unwrap(), vec![[0, 1 << 20]]),
            (RecordId::of(&second).unwrap(), vec![[0, 0]]),
        ] {
            let body = Challenge {
                contract,
                challenger: a.id(),
                holder: entry.state.peer,
                manifest,
                generation: target.manifest.body.generation,
                standing: Standing::Ok,
                nonce: Rng::from_seed([7; 32]).nonce(),
                picks,
                depth: 0,
                at: Timestamp::from_unix(now_unix()),
            };
            let mut ex =
                conn.open(&Request::Challenge { challenge: Signed::sign(body, &a.identity).unwrap() }).await.unwrap();
            ex.finish().unwrap();
            match ex.reply().await.unwrap() {
                Response::Answer { answer, len } => {
                    answer.verify_by(&entry.state.peer).unwrap();
                    let mut raw = vec![0u8; len as usize];
                    read_exact(&mut ex.recv, &mut raw, conn.read_timeout(), "raw").await.unwrap();
                    out.push(answer.body.reply);
                }
                other => panic!("{other:?}"),
            }
        }
        out
    });
    assert!(matches!(&replies[0], Reply::Refused { reason } if reason.contains("outside the copy")), "{replies:?}");
    assert!(matches!(&replies[1], Reply::Refused { reason } if reason.contains("outside the copy")), "{replies:?}");
    assert!(
        matches!(&replies[2], Reply::Refused { reason } if reason.contains("not one this node receipted")),
        "{replies:?}"
    );
    // The holder's record of the owner is untouched, and it still passes.
    let (code, lines, _) = challenge(&s.a, &[&s.contract], None);
    assert_eq!((code, kinds(&lines)), (Some(0), vec![("routine", "pass")]));
}

/// Best-of-N: a failing holder may ask to be challenged again once an hour, and each time gets
/// three times the samples.
#[test]
fn rechallenges_are_strong_and_rate_limited() {
    let s = story();
    wreck_store(&s.b, &s.contract);
    let (_, lines, _) = challenge(&s.a, &[&s.contract], None);
    assert_eq!(lines[0].their_standing["state"], "failing");
    let (addr, peer) = (s.sa.addr.clone(), s.sa.node.clone());
    let results = as_node(&s.b, &peer, &addr, async |b, conn| {
        let entry = b.contract(&s.contract.parse().unwrap()).unwrap();
        let now = Timestamp::from_unix(now_unix());
        let first = audit::rechallenge(conn, b, &entry, now).await.map(|v| v.body.result);
        let second = audit::rechallenge(conn, b, &entry, now).await.map(|v| v.body.result);
        (first.map_err(|e| e.to_string()), second.map_err(|e| e.to_string()))
    });
    assert_eq!(results.0, Ok(Some(kaana_proto::protocol::challenge::Outcome::Fail)), "{results:?}");
    assert!(results.1.as_ref().is_err_and(|e| e.contains("too soon")), "{results:?}");
    let events = fs::read_to_string(s.a.home.join("events.jsonl")).unwrap();
    let last = events.lines().rfind(|l| l.contains("\"verdict\"")).unwrap();
    assert!(last.contains("\"samples\":132"), "{last}");
}

/// An honest holder is never judged failing for something it did not do: 10 000 challenges,
/// while its owner pushes a changed volume again and again (each push a commit that replaces
/// the generation the challenges ask about), restores, and the holder prunes, with a core kept
/// busy: not one fails.
#[test]
fn ten_thousand_challenges_of_an_honest_holder_never_fail_beside_pushes_restores_and_prunes() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let mut s = story();
    // Far more than the challenges an hour a holder takes by default.
    restart_b(&mut s, &["--challenges-per-hour", "0"]);
    let stop = Arc::new(AtomicBool::new(false));
    let (pushes, restores) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let a_volume: String = serde_json::from_slice::<serde_json::Value>(
        &fs::read(s.a.home.join("config.json")).unwrap(),
    )
    .unwrap()["volume"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut workers = Vec::new();
    // A busy core.
    {
        let stop = stop.clone();
        workers.push(std::thread::spawn(move || {
            let mut x = 1u64;
            while !stop.load(Ordering::Relaxed) {
                for _ in 0..100_000 {
                    x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                }
            }
            std::hint::black_box(x);
        }));
    }
    // The owner changes a random extent of its volume and pushes, again and again.
    {
        let (stop, pushes, home, vol) = (stop.clone(), pushes.clone(), s.a.home.clone(), a_volume.clone());
        let contract = s.contract.clone();
        workers.push(std::thread::spawn(move || {
            let mut rng = Rng::from_seed([9; 32]);
            while !stop.load(Ordering::Relaxed) {
                let mut bytes = fs::read(&vol).unwrap();
                let at = rng.below(bytes.len() as u64 - 4096) as usize;
                bytes[at..at + 4096].copy_from_slice(&crate::common::pseudo_random(4096, rng.below(1 << 40)));
                fs::write(&vol, &bytes).unwrap();
                let out = crate::common::tool("kaana-sync")
                    .arg("--home")
                    .arg(&home)
                    .args(["push", &contract, "--extent-size", "256KiB"])
                    .output()
                    .unwrap();
                if out.status.success() {
                    pushes.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    // Restores by the owner, prunes by the holder.
    {
        let (stop, restores, a_home, b_home) = (stop.clone(), restores.clone(), s.a.home.clone(), s.b.home.clone());
        let (contract, out_path) = (s.contract.clone(), s.work.path().join("restored.img"));
        workers.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let out = crate::common::tool("kaana-sync")
                    .arg("--home")
                    .arg(&a_home)
                    .args(["restore", &contract, "--out"])
                    .arg(&out_path)
                    .output()
                    .unwrap();
                if out.status.success() {
                    restores.fetch_add(1, Ordering::Relaxed);
                }
                let out = crate::common::tool("kaana-prune").arg("--home").arg(&b_home).output().unwrap();
                assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            }
        }));
    }
    let (addr, peer) = (s.sb.addr.clone(), s.sb.node.clone());
    let (outcomes, superseded, older) = as_node(&s.a, &peer, &addr, async |a, conn| {
        let id: RecordId = s.contract.parse().unwrap();
        let (mut outcomes, mut superseded, mut older) = (std::collections::BTreeMap::new(), 0u64, 0u64);
        for i in 0..10_000 {
            let entry = a.contract(&id).unwrap();
            let now = Timestamp::from_unix(now_unix());
            let asked =
                kaana_proto::store::outbound::Target::from_record(a, &id).unwrap().unwrap().manifest.body.generation;
            let ex =
                audit::challenge_peer(conn, a, &entry, kaana_proto::protocol::challenge::DEFAULT_SAMPLES, None, now)
                    .await
                    .unwrap();
            // Asked again about a newer generation: the holder had committed one meanwhile. Or
            // asked about an older one, of the history the holder keeps (retiring it meanwhile).
            let generation = ex.transcript.challenge.body.generation;
            superseded += u64::from(generation > asked);
            older += u64::from(generation < asked);
            let key = match &ex.heard {
                Heard::Pass => "pass".to_owned(),
                other => format!("challenge {i}: {other:?}"),
            };
            *outcomes.entry(key).or_insert(0u64) += 1;
        }
        (outcomes, superseded, older)
    });
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let (pushes, restores) = (pushes.load(Ordering::Relaxed), restores.load(Ordering::Relaxed));
    eprintln!(
        "10 000 challenges beside {pushes} pushes and {restores} restores; {superseded} raced a commit; {older} asked \
         about an older generation"
    );
    assert_eq!(outcomes.get("pass"), Some(&10_000), "{outcomes:?}");
    assert!(older >= 2_000, "the history was challenged too: {older} of 10 000");
    assert!(pushes >= 20 && restores >= 1, "the work ran beside the challenges: {pushes} pushes, {restores} restores");
}

/// A peer that challenges without pause gets its contract's challenges an hour, then `busy`:
/// the holder reads nothing more for it and writes no more lines in `events.jsonl`; the
/// challenger's `kaana-challenge` says unreachable and why, and judges the holder no worse for
/// one such try than for a reboot.
#[test]
fn a_peer_challenging_without_pause_is_answered_busy_beyond_its_challenges_an_hour() {
    let mut s = story();
    restart_b(&mut s, &["--challenges-per-hour", "40"]);
    let answers = |node: &TestNode| {
        let events = fs::read_to_string(node.home.join("events.jsonl")).unwrap();
        events.lines().filter(|l| l.contains("\"event\":\"answer\"")).count()
    };
    let before = answers(&s.b);
    let (peer, addr) = (s.sb.node.clone(), s.sb.addr.clone());
    let heard = as_node(&s.a, &peer, &addr, async |a, conn| {
        let entry = a.contract(&s.contract.parse().unwrap()).unwrap();
        let mut heard = Vec::new();
        for _ in 0..45 {
            let now = Timestamp::from_unix(now_unix());
            let ex = audit::challenge_peer(conn, a, &entry, challenge::DEFAULT_SAMPLES, None, now).await.unwrap();
            heard.push(ex.heard);
        }
        heard
    });
    assert!(heard[..40].iter().all(|h| matches!(h, Heard::Pass)), "{heard:?}");
    for h in &heard[40..] {
        match h {
            Heard::Unreachable(why) => {
                assert!(why.contains("at most 40 an hour") && why.contains("ask again in"), "{why}")
            }
            other => panic!("the 41st and after: {other:?}"),
        }
    }
    assert_eq!(answers(&s.b) - before, 40, "a line for each answer, none for the rest");
    let (code, lines, err) = challenge(&s.a, &[&s.contract], None);
    assert_eq!(code, Some(0), "{err}");
    assert_eq!(kinds(&lines), [("routine", "unreachable")]);
    assert!(lines[0].message.as_deref().is_some_and(|m| m.contains("challenged too often")), "{lines:?}");
    assert!(err.is_empty(), "cron mails nothing for it: {err}");
    assert_eq!(contract_line(&s.a, &s.contract)["their_standing"]["state"], "ok");
    // The cap is per contract and per direction: B's challenges of A are A's to count.
    let (code, lines, err) = challenge(&s.b, &[&s.contract], None);
    assert_eq!((code, kinds(&lines)), (Some(0), vec![("routine", "pass")]), "{err}");
}

/// The hole the simulation found: a greedy B deletes A's data after A's deliberate failure,
/// and A's nightly push comes before its next challenge. A push re-sends what the holder
/// lacks, so it would hide the deletion; instead it asks first how A stands there and, failing,
/// audits B: the breach is found, with evidence, and nothing is sent.
#[test]
fn a_push_audits_a_peer_that_judges_us_failing_before_it_sends_anything() {
    let s = story();
    fail_next(&s.a, &s.contract, "damaged");
    let (_, lines, _) = challenge(&s.b, &[&s.contract], None);
    assert_eq!(lines[0].result, "fail");
    let extents = s.b.home.join("inbound").join(&s.contract).join("extents");
    fs::remove_dir_all(&extents).unwrap();
    let out = s.a.run("kaana-sync", &["push", "--all", "--extent-size", "256KiB"]);
    assert_eq!(out.status.code(), Some(1), "{}", String::from_utf8_lossy(&out.stderr));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("BREACH") && err.contains("Evidence anyone can check"), "{err}");
    let line: serde_json::Value = one_json(&out);
    assert_eq!(line["ok"], false);
    assert!(!extents.exists(), "nothing was sent");
    assert_eq!(state(&s.a, &s.contract)["audit"]["result"], "breach");
    let evidence = fs::read_dir(s.a.home.join("audits")).unwrap().next().unwrap().unwrap().path();
    let out = crate::common::tool("kaana-challenge").arg("check-evidence").arg(&evidence).output().unwrap();
    assert_success(&out);
    // A push to a peer where we stand ok audits nothing and goes on as ever.
    let pushed = push(&s.b, &s.contract);
    assert_eq!(pushed["unchanged"], true, "{pushed}");
}

/// A holder that deleted the data of a node failing there, and answers that node's challenges
/// `busy` (over its challenges an hour) while it takes its pushes, gets no push: the push's
/// audit went unanswered, so nothing is sent, and the loss stays for an audit to find.
#[test]
fn a_push_sends_nothing_to_a_holder_that_leaves_its_audit_unanswered() {
    let mut s = story();
    fail_next(&s.a, &s.contract, "damaged");
    let (_, lines, _) = challenge(&s.b, &[&s.contract], None);
    assert_eq!(lines[0].result, "fail");
    restart_b(&mut s, &["--challenges-per-hour", "1"]);
    let (peer, addr) = (s.sb.node.clone(), s.sb.addr.clone());
    let first = as_node(&s.a, &peer, &addr, async |a, conn| {
        let entry = a.contract(&s.contract.parse().unwrap()).unwrap();
        let now = Timestamp::from_unix(now_unix());
        audit::challenge_peer(conn, a, &entry, challenge::DEFAULT_SAMPLES, None, now).await.unwrap().heard
    });
    assert!(matches!(first, Heard::Pass), "{first:?}");
    let extents = s.b.home.join("inbound").join(&s.contract).join("extents");
    fs::remove_dir_all(&extents).unwrap();
    let out = s.a.run("kaana-sync", &["push", "--all", "--extent-size", "256KiB"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("did not answer the audit") && err.contains("challenged too often"), "{err}");
    assert_eq!(one_json::<serde_json::Value>(&out)["ok"], false);
    assert!(!extents.exists(), "nothing was sent");
}

/// A peer sending B one failing verdict after another, each newer than the last, makes B check
/// its whole copy of the peer's data each time the gap allows: the gap doubles with each check
/// that finds nothing (1 h, 2 h, 4 h...), so hourly verdicts make B read its disk a few times a
/// day at most. A check that finds damage starts the gap at an hour again.
#[test]
fn failing_verdicts_one_after_another_space_out_the_holders_checks() {
    use kaana_proto::protocol::challenge::{Outcome, Verdict};
    use kaana_proto::protocol::identity::NodeId;
    let mut s = story();
    let contract: RecordId = s.contract.parse().unwrap();
    let holder: NodeId = s.sb.node.parse().unwrap();
    let t0 = now_unix();
    let checks = |b: &TestNode| {
        let events = fs::read_to_string(b.home.join("events.jsonl")).unwrap();
        events.lines().filter(|l| l.contains("\"event\":\"scrub\"")).map(str::to_owned).collect::<Vec<_>>()
    };
    // Sends a failing verdict dated `t` to B, whose clock reads `t`; whether B checked its copy.
    let verdict_at = |t: u64, s: &mut crate::common::story::Story| {
        let _ = s.sb.child.kill();
        let _ = s.sb.child.wait();
        s.sb = crate::common::ServerProc::start_at(&s.b, &[], t);
        let before = checks(&s.b).len();
        let at = Timestamp::from_unix(t);
        let body = Verdict {
            contract,
            challenge: None,
            answer: None,
            holder,
            result: Some(Outcome::Fail),
            standing: Standing::Failing { since: Timestamp::from_unix(t0), delete_after: at.plus_secs(7 * DAY) },
            at,
        };
        let (node, addr) = (s.sb.node.clone(), s.sb.addr.clone());
        as_node(&s.a, &node, &addr, async |a, conn| {
            let verdict = Signed::sign(body, &a.identity).unwrap();
            assert!(matches!(conn.request(&Request::Verdict { verdict }).await.unwrap(), Response::Ack));
        });
        let checked = unix_of_opt(&state(&s.b, &s.contract)["scrubbed_at"]) == Some(t);
        if checked {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
            while checks(&s.b).len() == before {
                assert!(std::time::Instant::now() < deadline, "B never finished its check");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
        }
        checked
    };
    let mut t = t0;
    let mut checked = Vec::new();
    for step in [0, HOUR + 60, HOUR, 2 * HOUR, 3 * HOUR, 4 * HOUR] {
        t += step;
        checked.push(verdict_at(t, &mut s));
    }
    assert_eq!(checked, [true, false, true, false, true, false], "gaps of 2, 4 and 8 hours after clean checks");
    assert_eq!(state(&s.b, &s.contract)["clean_scrubs"], 3);
    assert_eq!(checks(&s.b).len(), 3);

    // Damage: the next check (8 h after the last) finds it and moves it aside; the count of
    // clean checks starts again.
    wreck_store(&s.b, &s.contract);
    t += 4 * HOUR;
    assert!(verdict_at(t, &mut s));
    let last: serde_json::Value = serde_json::from_str(checks(&s.b).last().unwrap()).unwrap();
    assert!(last["bad_extents"].as_u64().unwrap() > 0, "{last}");
    let st = state(&s.b, &s.contract);
    assert!(st["clean_scrubs"].is_null() && !st["awaiting_repush"].is_null(), "{st}");
}

fn unix_of_opt(v: &serde_json::Value) -> Option<u64> {
    v.as_str().map(|_| unix_of(v))
}
