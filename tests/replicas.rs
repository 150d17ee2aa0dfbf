//! Self-healing replicas between real nodes: `kaana-offer ensure` replaces a breaching holder
//! (make before break), adds a copy at once when a holder goes silent but ends its contract only
//! after its grace, keeps a holder that comes back, offers when nothing is on offer, changes
//! nothing with `--dry-run`, and two at once make one contract.

use std::fs;
use std::process::Output;

use crate::common::story::{DAY, HOUR};
use crate::common::{
    ServerProc, TestNode, assert_exit, assert_success, at, json_lines, now_unix, one_json, pseudo_random, stderr,
};

/// Restarts `p`'s server on its port with its clock at `t` (a holder that takes an offer checks
/// the acceptance's time against its own).
fn restart_at(p: &mut Peer, t: u64) {
    let port = p.server.addr.rsplit_once(':').unwrap().1.to_owned();
    let _ = p.server.child.kill();
    let _ = p.server.child.wait();
    p.server = ServerProc::start_at(&p.node, &["--listen", &format!("127.0.0.1:{port}")], t);
}

/// `a` challenges its peers every six hours for thirty hours from now (one of them silent: it is
/// failing after a day of tries); when it began.
fn silence_of_a_day(a: &Peer) -> u64 {
    let t0 = now_unix();
    for h in [0, 6, 12, 18, 24, 30] {
        let out = a
            .node
            .cmd("kaana-challenge")
            .args(["--all"])
            .env("KAANA_NOW", at(t0 + h * HOUR))
            .env("KAANA_CONNECT_TIMEOUT", "1s")
            .output()
            .unwrap();
        assert!(out.status.code().is_some_and(|c| c <= 1), "{}", stderr(&out));
    }
    t0
}

/// A node with servers, as the tests here use it.
struct Peer {
    node: TestNode,
    server: ServerProc,
}

fn peer(extra: &[&str]) -> Peer {
    let mut args = vec!["--capacity", "1GiB"];
    args.extend_from_slice(extra);
    let node = TestNode::init_with(&args);
    let server = ServerProc::start(&node, &[]);
    Peer { node, server }
}

/// `p` offers 16 MiB for 7 days of grace on its own board; the offer's id.
fn offers(p: &Peer) -> String {
    let offer: serde_json::Value = p.node.json("kaana-offer", &["create", "--size", "16MiB", "--grace", "7d"]);
    assert_success(&p.node.run("kaana-offer", &["publish"]));
    offer["id"].as_str().unwrap().to_owned()
}

/// `owner` takes `holder`'s new offer; the contract's id.
fn takes(owner: &Peer, holder: &Peer) -> String {
    let offer = offers(holder);
    assert_success(&owner.node.run("kaana-offer", &["list", "--board", &holder.server.peer()]));
    let c: serde_json::Value = owner.node.json("kaana-offer", &["accept", &offer]);
    c["id"].as_str().unwrap().to_owned()
}

/// Runs `ensure` on `node` (at `t` if given), short time-outs; its output.
fn ensure(node: &TestNode, args: &[&str], t: Option<u64>) -> Output {
    let mut cmd = node.cmd("kaana-offer");
    cmd.arg("ensure").args(args).env("KAANA_CONNECT_TIMEOUT", "2s").env("KAANA_READ_TIMEOUT", "5s");
    if let Some(t) = t {
        cmd.env("KAANA_NOW", at(t));
    }
    cmd.output().unwrap()
}

fn steps(out: &Output) -> Vec<serde_json::Value> {
    json_lines(out)
}

fn step<'a>(steps: &'a [serde_json::Value], action: &str, contract: &str) -> Option<&'a serde_json::Value> {
    steps.iter().find(|s| s["action"] == action && s["contract"] == contract)
}

fn status_of(node: &TestNode, contract: &str) -> String {
    let lines: Vec<serde_json::Value> = json_lines(&node.run("kaana-offer", &["contracts"]));
    lines.iter().find(|l| l["id"] == contract).unwrap()["status"].as_str().unwrap().to_owned()
}

/// An owner A with a volume, wanting 2 replicas, held by B and C (pushed), and D offering on its
/// own board, which A knows.
struct Four {
    work: tempfile::TempDir,
    a: Peer,
    b: Peer,
    c: Peer,
    d: Peer,
    ab: String,
    ac: String,
}

fn four() -> Four {
    let work = tempfile::tempdir().unwrap();
    let with_volume = |name: &str, seed: u64, extra: &[&str]| {
        let volume = work.path().join(name);
        fs::write(&volume, pseudo_random(3 << 20, seed)).unwrap();
        let mut args = vec!["--volume", volume.to_str().unwrap()];
        args.extend_from_slice(extra);
        peer(&args)
    };
    let a = with_volume("a.vol", 7, &["--replicas", "2"]);
    let (b, c, d) = (with_volume("b.vol", 8, &[]), with_volume("c.vol", 9, &[]), with_volume("d.vol", 10, &[]));
    let (ab, ac) = (takes(&a, &b), takes(&a, &c));
    // Each side holds the other's volume (C must hold something of A's to be failing it).
    for p in [&a, &b, &c] {
        assert_success(&p.node.run("kaana-sync", &["push", "--all"]));
    }
    offers(&d);
    assert_success(&a.node.run("kaana-offer", &["peer", "add", &d.server.peer()]));
    Four { work, a, b, c, d, ab, ac }
}

#[test]
fn a_breaching_holder_is_replaced_before_its_contract_is_ended() {
    let f = four();
    // A fails C's challenge on purpose; greedy C deletes A's data at once; A's next run catches it.
    assert_success(&f.a.node.run("kaana-challenge", &["fail-next", &f.ac, "--mode", "damaged"]));
    assert_success(&f.c.node.run("kaana-challenge", &[&f.ac]));
    fs::remove_dir_all(f.c.node.home.join("inbound").join(&f.ac).join("extents")).unwrap();
    let out = f.a.node.run("kaana-challenge", &[&f.ac]);
    assert_exit(&out, 1);
    assert_eq!(json_lines::<serde_json::Value>(&out)[0]["breach"], true);

    let out = ensure(&f.a.node, &[], None);
    assert_success(&out);
    let s = steps(&out);
    assert!(step(&s, "keep", &f.ab).is_some(), "{s:?}");
    let take = s.iter().find(|l| l["action"] == "take").expect("an offer taken");
    assert_eq!((take["peer"].as_str(), take["done"].as_bool()), (Some(f.d.server.node.as_str()), Some(true)));
    let ad = take["contract"].as_str().unwrap().to_owned();
    assert_eq!(step(&s, "push", &ad).unwrap()["done"], true, "{s:?}");
    let end = step(&s, "end", &f.ac).expect("C's contract ended");
    assert_eq!(end["done"], true);
    // Make before break: the push to D is printed (and done) before C's contract is ended.
    let pos = |l: &serde_json::Value| s.iter().position(|x| x == l).unwrap();
    assert!(pos(step(&s, "push", &ad).unwrap()) < pos(end));
    assert_eq!(status_of(&f.a.node, &f.ac), "terminated");

    let status: serde_json::Value = one_json(&f.a.node.run("kaana-offer", &["status"]));
    assert_eq!((status["missing"].as_u64(), status["full_contracts"].as_u64()), (Some(0), Some(2)), "{status}");
    let back = f.work.path().join("back.vol");
    assert_success(&f.a.node.run("kaana-sync", &["restore", &ad, "--out", back.to_str().unwrap()]));
    assert!(fs::read(&back).unwrap() == fs::read(f.work.path().join("a.vol")).unwrap(), "byte for byte from D");
    // The peer records say who is clean: C's breach stays on its record.
    let records: Vec<serde_json::Value> = json_lines(&f.a.node.run("kaana-offer", &["peers", "--records"]));
    let of = |p: &Peer| records.iter().find(|r| r["node"] == p.server.node.as_str()).cloned().unwrap();
    assert_eq!((of(&f.c)["record"]["breaches"].as_u64(), of(&f.c)["clean"].as_bool()), (Some(1), Some(false)));
    assert_eq!(of(&f.c)["record"]["contracts_ended"], 1);
    assert_eq!(of(&f.b)["clean"], true, "{records:?}");
    // Nothing more to do: a second run takes nothing.
    let again = ensure(&f.a.node, &[], None);
    assert_success(&again);
    assert!(!steps(&again).iter().any(|l| l["action"] == "take"), "{}", String::from_utf8_lossy(&again.stdout));
}

#[test]
fn a_silent_holder_gets_a_copy_made_elsewhere_at_once_and_loses_its_contract_only_after_its_grace() {
    let Four { work: _work, a, b, c: _c, mut d, ab, ac: _ac } = four();
    let Peer { node: b, server: sb } = b;
    drop(sb);
    let t0 = silence_of_a_day(&a);
    let failing: Vec<serde_json::Value> = json_lines(&a.node.run("kaana-offer", &["contracts"]));
    let b_line = failing.iter().find(|l| l["id"] == ab.as_str()).unwrap();
    assert_eq!(b_line["their_standing"]["state"], "failing", "{b_line}");
    let delete_after: kaana_proto::protocol::time::Timestamp =
        b_line["their_standing"]["delete_after"].as_str().unwrap().parse().unwrap();

    // At once: a copy at D; B waits for its grace to run out.
    restart_at(&mut d, t0 + 31 * HOUR);
    let out = ensure(&a.node, &[], Some(t0 + 31 * HOUR));
    assert_success(&out);
    let s = steps(&out);
    let wait = step(&s, "wait", &ab).expect("B waits");
    assert_eq!(wait["delete_after"], delete_after.to_string());
    assert!(step(&s, "end", &ab).is_none(), "never ended before delete_after: {s:?}");
    let take = s.iter().find(|l| l["action"] == "take" && l["done"] == true).expect("a copy at D");
    assert_eq!(take["peer"], d.server.node.as_str());
    assert_eq!(status_of(&a.node, &ab), "active");

    // Still silent a day before the grace runs out: still kept.
    let out = ensure(&a.node, &[], Some(delete_after.unix() - DAY));
    assert_success(&out);
    assert!(step(&steps(&out), "end", &ab).is_none());
    assert_eq!(status_of(&a.node, &ab), "active");

    // Past it: ended (no new copy is needed: C and D count). B, still away, is not told yet:
    // that needs a person's eye (exit 1); the notice is sent again by the next runs.
    let out = ensure(&a.node, &[], Some(delete_after.unix() + HOUR));
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("the peer was not told yet"), "{}", stderr(&out));
    let s = steps(&out);
    assert_eq!(step(&s, "end", &ab).expect("ended now")["done"], true, "{s:?}");
    assert!(!s.iter().any(|l| l["action"] == "take"), "nothing more taken: {s:?}");
    assert_eq!(status_of(&a.node, &ab), "terminated");
    drop(b);
}

#[test]
fn a_silent_holder_that_comes_back_within_its_grace_keeps_its_contract_and_the_spare_is_kept() {
    let Four { work: _work, a, b, c: _c, mut d, ab, ac: _ac } = four();
    let port = b.server.addr.rsplit_once(':').unwrap().1.to_owned();
    let Peer { node: b, server: sb } = b;
    drop(sb);
    let t0 = silence_of_a_day(&a);
    restart_at(&mut d, t0 + 31 * HOUR);
    let out = ensure(&a.node, &[], Some(t0 + 31 * HOUR));
    assert_success(&out);
    assert!(step(&steps(&out), "wait", &ab).is_some());

    // B comes back: its own run audits A and asks to be challenged again, and is ok.
    let _sb = ServerProc::start(&b, &["--listen", &format!("127.0.0.1:{port}")]);
    let out = b.cmd("kaana-challenge").args(["--all"]).env("KAANA_NOW", at(t0 + 2 * DAY)).output().unwrap();
    assert_success(&out);
    let lines: Vec<serde_json::Value> = json_lines(&a.node.run("kaana-offer", &["contracts"]));
    assert_eq!(lines.iter().find(|l| l["id"] == ab.as_str()).unwrap()["their_standing"]["state"], "ok");

    // Past what was B's delete_after: B counts again and keeps its contract; D's copy, now one
    // more than wanted, is kept too (ensure never ends a healthy contract).
    let out = ensure(&a.node, &[], Some(t0 + 10 * DAY));
    assert_success(&out);
    let s = steps(&out);
    assert!(step(&s, "keep", &ab).is_some(), "{s:?}");
    assert_eq!(s.iter().filter(|l| l["action"] == "keep").count(), 3, "B, C and the spare at D: {s:?}");
    assert!(!s.iter().any(|l| l["action"] == "end" || l["action"] == "take"), "{s:?}");
    assert_eq!(status_of(&a.node, &ab), "active");
}

#[test]
fn with_nothing_on_offer_it_offers_dry_run_changes_nothing_and_two_at_once_make_one_contract() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("a.vol");
    fs::write(&volume, pseudo_random(3 << 20, 8)).unwrap();
    let a = peer(&["--replicas", "2", "--volume", volume.to_str().unwrap()]);
    let b = peer(&[]);
    let ab = takes(&a, &b);
    assert_success(&a.node.run("kaana-sync", &["push", &ab]));

    // Nothing on offer: --dry-run says what it would do and changes nothing.
    let snapshot = |n: &TestNode| {
        let mut files: Vec<(String, Vec<u8>)> = Vec::new();
        for dir in ["contracts", "offers"] {
            if let Ok(rd) = fs::read_dir(n.home.join(dir)) {
                for e in rd.flatten() {
                    files.push((e.path().display().to_string(), fs::read(e.path()).unwrap_or_default()));
                }
            }
        }
        files.sort();
        files
    };
    let before = snapshot(&a.node);
    let out = ensure(&a.node, &["--dry-run"], None);
    assert_exit(&out, 1);
    let s = steps(&out);
    let offer = s.iter().find(|l| l["action"] == "offer").expect("it would offer");
    assert_eq!(offer["done"], false);
    assert_eq!(snapshot(&a.node), before, "--dry-run changed nothing");

    // For real: it publishes an offer of its own and says so.
    let out = ensure(&a.node, &[], None);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("no acceptable offer for 1 more"), "{}", stderr(&out));
    let offer = steps(&out).into_iter().find(|l| l["action"] == "offer").unwrap();
    assert_eq!(offer["done"], true);
    let listed: Vec<serde_json::Value> = json_lines(&a.node.run("kaana-offer", &["list"]));
    assert!(listed.iter().any(|l| l["id"] == offer["offer"] && l["own"] == true), "{listed:?}");
    // Run again: the same offer, not a second one.
    let again = steps(&ensure(&a.node, &[], None)).into_iter().find(|l| l["action"] == "offer").unwrap();
    assert_eq!(again["offer"], offer["offer"]);

    // Two holders offer; two ensures at once take one of them, not both.
    let (d, e) = (peer(&[]), peer(&[]));
    for p in [&d, &e] {
        offers(p);
        assert_success(&a.node.run("kaana-offer", &["peer", "add", &p.server.peer()]));
    }
    let spawn = || {
        a.node
            .cmd("kaana-offer")
            .arg("ensure")
            .env("KAANA_CONNECT_TIMEOUT", "2s")
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    let (one, two) = (spawn(), spawn());
    let (one, two) = (one.wait_with_output().unwrap(), two.wait_with_output().unwrap());
    assert_success(&one);
    assert_success(&two);
    let taken =
        [&one, &two].iter().flat_map(|o| steps(o)).filter(|l| l["action"] == "take" && l["done"] == true).count();
    assert_eq!(taken, 1, "one contract between them");
    let contracts: Vec<serde_json::Value> = json_lines(&a.node.run("kaana-offer", &["contracts"]));
    assert_eq!(contracts.len(), 2, "{contracts:?}");
    // The offer A made for that replica is withdrawn: hidden from A's list, and refused to a
    // taker that still finds it on A's board.
    let listed: Vec<serde_json::Value> = json_lines(&a.node.run("kaana-offer", &["list"]));
    assert!(!listed.iter().any(|l| l["id"] == offer["offer"]), "{listed:?}");
    let late = peer(&[]);
    assert_success(&late.node.run("kaana-offer", &["list", "--board", &a.server.peer()]));
    let out = late.node.run("kaana-offer", &["accept", offer["offer"].as_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("withdrawn"), "{}", stderr(&out));
}

#[test]
fn a_copy_taken_by_hand_and_never_pushed_is_pushed_before_anything_is_ended() {
    let f = four();
    assert_success(&f.a.node.run("kaana-challenge", &["fail-next", &f.ac, "--mode", "damaged"]));
    assert_success(&f.c.node.run("kaana-challenge", &[&f.ac]));
    fs::remove_dir_all(f.c.node.home.join("inbound").join(&f.ac).join("extents")).unwrap();
    assert_exit(&f.a.node.run("kaana-challenge", &[&f.ac]), 1);
    // A person takes D's offer by hand and does not push.
    assert_success(&f.a.node.run("kaana-offer", &["list", "--board", &f.d.server.peer()]));
    let listed: Vec<serde_json::Value> =
        json_lines(&f.a.node.run("kaana-offer", &["list", "--board", &f.d.server.peer()]));
    let ad: serde_json::Value = f.a.node.json("kaana-offer", &["accept", listed[0]["id"].as_str().unwrap()]);
    let ad = ad["id"].as_str().unwrap().to_owned();
    // Not committed, D's copy takes no other offer's place, but makes up for nothing yet.
    let plan = steps(&ensure(&f.a.node, &["--dry-run"], None));
    assert!(!plan.iter().any(|l| l["action"] == "take"), "{plan:?}");
    assert_eq!(step(&plan, "push", &ad).unwrap()["done"], false);
    assert_eq!(step(&plan, "end", &f.ac).unwrap()["done"], false);
    assert_eq!(status_of(&f.a.node, &f.ac), "active", "--dry-run ended nothing");
    // D is down: the push fails, and nothing is ended.
    let mut f = f;
    let _ = f.d.server.child.kill();
    let _ = f.d.server.child.wait();
    let out = ensure(&f.a.node, &[], None);
    assert_exit(&out, 1);
    let s = steps(&out);
    assert_eq!(step(&s, "push", &ad).unwrap()["done"], false, "{s:?}");
    assert_eq!(step(&s, "end", &f.ac).unwrap()["done"], false, "{s:?}");
    assert_eq!(status_of(&f.a.node, &f.ac), "active", "not ended while the new copy is not committed");
    // D is back: pushed, and only then is C's contract ended.
    restart_at(&mut f.d, now_unix());
    let out = ensure(&f.a.node, &[], None);
    assert_success(&out);
    let s = steps(&out);
    assert_eq!(step(&s, "push", &ad).unwrap()["done"], true, "{s:?}");
    assert_eq!(step(&s, "end", &f.ac).unwrap()["done"], true, "{s:?}");
    assert_eq!(status_of(&f.a.node, &f.ac), "terminated");
}

/// Offers whose makers cannot be reached (a stranger's board can hold thousands, each with
/// addresses that only time out) cost a run at most four tries, and are passed over for a day,
/// so that the next run tries others; and the state's lock, which answering a peer's challenge
/// needs too, is free while a maker is being reached.
#[test]
fn offers_whose_makers_cannot_be_reached_cost_a_run_four_tries_hold_no_lock_and_wait_a_day() {
    use std::time::{Duration, Instant};
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("a.vol");
    fs::write(&volume, pseudo_random(3 << 20, 8)).unwrap();
    let a = peer(&["--replicas", "1", "--volume", volume.to_str().unwrap()]);
    // Six strangers put offers on A's board and go away: their addresses take no packets.
    let mut gone = Vec::new();
    for _ in 0..6 {
        let x = peer(&[]);
        let offer: serde_json::Value = x.node.json("kaana-offer", &["create", "--size", "16MiB", "--grace", "7d"]);
        let id = offer["id"].as_str().unwrap();
        assert_success(&x.node.run("kaana-offer", &["publish", id, "--board", &a.server.peer()]));
        gone.push(x.node.id());
    }
    let ensuring = a
        .node
        .cmd("kaana-offer")
        .arg("ensure")
        .env("KAANA_CONNECT_TIMEOUT", "6s")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // A second into the first try (of six seconds), the state's lock is free: a command that
    // takes it is done at once, not when that try gives up.
    std::thread::sleep(Duration::from_secs(1));
    let started = Instant::now();
    assert_success(&a.node.run("kaana-offer", &["peer", "add", &format!("{}@127.0.0.1:9", gone[0]), "--no-check"]));
    assert!(started.elapsed() < Duration::from_secs(4), "waited {:?} for the state's lock", started.elapsed());

    let out = ensuring.wait_with_output().unwrap();
    assert_exit(&out, 1);
    let tried: Vec<serde_json::Value> = steps(&out).into_iter().filter(|l| l["action"] == "take").collect();
    assert_eq!(tried.len(), 4, "{tried:?}");
    assert!(tried.iter().all(|l| l["done"] == false), "{tried:?}");
    assert!(steps(&out).iter().any(|l| l["action"] == "offer" && l["done"] == true), "it offers instead");

    // The next run passes over those four for a day, and tries the two others.
    let out = a.node.cmd("kaana-offer").arg("ensure").env("KAANA_CONNECT_TIMEOUT", "2s").output().unwrap();
    assert_exit(&out, 1);
    let again: Vec<serde_json::Value> = steps(&out).into_iter().filter(|l| l["action"] == "take").collect();
    assert_eq!(again.len(), 2, "{again:?}");
    assert!(again.iter().all(|l| !tried.iter().any(|t| t["offer"] == l["offer"])), "{again:?} after {tried:?}");
    let untaken: serde_json::Value =
        serde_json::from_slice(&fs::read(a.node.home.join("ensure-untaken.json")).unwrap()).unwrap();
    assert_eq!(untaken["untaken"].as_object().unwrap().len(), 6, "{untaken}");
}
