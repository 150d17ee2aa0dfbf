//! Finding peers on the Mainline DHT: a local testnet of real DHT nodes on 127.0.0.1 stands in
//! for the public DHT. Node B, knowing only node A's id, adds A, finds A's offer on a board
//! announced on the DHT, accepts it, pushes, challenges and restores; A moves to another port
//! and B finds it again without a person; a replayed older record changes nothing; a DHT that
//! does not answer costs a tool seconds and a clear message.

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{TestNode, assert_exit, assert_success, at, json_lines, now_unix, one_json, pseudo_random, stderr};

/// A local Mainline DHT of `count` nodes on 127.0.0.1, and its bootstrap list as the tools take it.
fn testnet(count: usize) -> (mainline::Testnet, String) {
    let net = mainline::Testnet::builder(count).build().expect("DHT testnet");
    let list = net.bootstrap.join(",");
    (net, list)
}

/// A tool run on `node` with the DHT at `boot`, short connect time-outs.
fn on_dht(node: &TestNode, boot: &str, tool: &str, args: &[&str]) -> Command {
    let mut cmd = node.cmd(tool);
    cmd.args(args).env("KAANA_DHT_BOOTSTRAP", boot).env("KAANA_CONNECT_TIMEOUT", "2s").env("KAANA_READ_TIMEOUT", "5s");
    cmd
}

fn run(node: &TestNode, boot: &str, tool: &str, args: &[&str]) -> Output {
    on_dht(node, boot, tool, args).output().expect("run tool")
}

fn json(node: &TestNode, boot: &str, tool: &str, args: &[&str]) -> serde_json::Value {
    let out = run(node, boot, tool, args);
    assert_success(&out);
    one_json(&out)
}

/// A server on the DHT, killed when dropped.
struct Served {
    child: std::process::Child,
    addr: String,
}

impl Served {
    fn start(node: &TestNode, boot: &str, listen: &str) -> Served {
        use std::io::BufRead as _;
        let mut child = on_dht(node, boot, "kaana-sync", &["serve", "--listen", listen])
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("serve");
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        Served { child, addr: v["listen"].as_str().unwrap().to_owned() }
    }
}

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until the server of `home` has published a record giving `addr` (`reach.json`).
fn wait_announced(home: &Path, addr: &str) {
    // The server tries again every 30 s if its first try fails.
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let reach: serde_json::Value = std::fs::read(home.join("reach.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if reach["announced"].as_array().is_some_and(|a| a.iter().any(|x| x == addr)) {
            return;
        }
        assert!(Instant::now() < deadline, "the server did not announce {addr}: {reach}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn peer_addrs(node: &TestNode, id: &str) -> Vec<String> {
    let peers: Vec<serde_json::Value> = json_lines(&node.run("kaana-offer", &["peer", "list"]));
    let entry = peers.iter().find(|p| p["node"] == id).unwrap_or_else(|| panic!("{id} not in the address book"));
    entry["addrs"].as_array().unwrap().iter().map(|a| a.as_str().unwrap().to_owned()).collect()
}

#[test]
fn a_peer_known_only_by_its_id_is_found_traded_with_and_found_again_after_it_moves() {
    let (dht, boot) = testnet(20);
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("b.vol");
    std::fs::write(&volume, pseudo_random(6 << 20, 21)).unwrap();
    let a = TestNode::init_with(&["--capacity", "1GiB", "--dht-bootstrap", &boot]);
    let b =
        TestNode::init_with(&["--capacity", "1GiB", "--volume", volume.to_str().unwrap(), "--dht-bootstrap", &boot]);
    let a_id = a.id();

    // A's server announces it; `announce` publishes again at once and says where.
    let sa = Served::start(&a, &boot, "127.0.0.1:0");
    wait_announced(&a.home, &sa.addr);
    let announced = json(&a, &boot, "kaana-offer", &["announce"]);
    assert_eq!(announced["addrs"], serde_json::json!([sa.addr]), "{announced}");
    assert_eq!(announced["board"], true);
    assert!(announced["stored_on"].as_u64().unwrap() > 0, "{announced}");
    let offer = json(&a, &boot, "kaana-offer", &["create", "--size", "16MiB", "--grace", "7d"]);
    let offer_id = offer["id"].as_str().unwrap().to_owned();
    // A second offer, to be taken after A has moved: its address will be stale by then.
    let later_offer = json(&a, &boot, "kaana-offer", &["create", "--size", "8MiB", "--grace", "7d"]);
    let later_offer = later_offer["id"].as_str().unwrap().to_owned();
    assert_success(&run(&a, &boot, "kaana-offer", &["publish"]));

    // B knows A's id only. (B serves too: a contract binds both ways.)
    let _sb = Served::start(&b, &boot, "127.0.0.1:0");
    let added = json(&b, &boot, "kaana-offer", &["peer", "add", &a_id]);
    assert_eq!(added["addrs"], serde_json::json!([sa.addr]), "{added}");
    let listed = run(&b, &boot, "kaana-offer", &["list", "--dht"]);
    assert_success(&listed);
    let offers: Vec<serde_json::Value> = json_lines(&listed);
    assert!(offers.iter().any(|o| o["id"] == offer_id.as_str()), "A's offer is listed: {offers:?}");
    assert!(stderr(&listed).contains("1 board(s) answered"), "{}", stderr(&listed));
    let contract = json(&b, &boot, "kaana-offer", &["accept", &offer_id]);
    let contract = contract["id"].as_str().unwrap().to_owned();
    assert_success(&run(&b, &boot, "kaana-sync", &["push", &contract]));
    let challenged = json(&b, &boot, "kaana-challenge", &[&contract]);
    assert_eq!(challenged["result"], "pass", "{challenged}");
    let back = work.path().join("back.vol");
    assert_success(&run(&b, &boot, "kaana-sync", &["restore", &contract, "--out", back.to_str().unwrap()]));
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&volume).unwrap(), "restored byte for byte");

    // The record before A moves, as the DHT holds it: replayed later, it must change nothing.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (reader, key) = (dht.nodes[0].clone().as_async(), pubkey_of(&a_id));
    let old_item = rt.block_on(reader.get_mutable_most_recent(&key, None)).expect("A's record on the DHT");

    // A restarts on another port.
    let old_addr = sa.addr.clone();
    drop(sa);
    let sa = Served::start(&a, &boot, "127.0.0.1:0");
    assert_ne!(sa.addr, old_addr);
    wait_announced(&a.home, &sa.addr);
    // Someone replays A's older record to the DHT: the nodes keep the newer one.
    let writer = dht.nodes[1].clone().as_async();
    let _ = rt.block_on(writer.put_mutable(old_item, None));

    let resolved_at = |b: &TestNode| -> u64 {
        let peers: serde_json::Value =
            serde_json::from_slice(&std::fs::read(b.home.join("peers.json")).unwrap()).unwrap();
        let at: kaana_proto::protocol::time::Timestamp =
            peers["peers"][&a_id]["dht"]["resolved_at"].as_str().unwrap().parse().unwrap();
        at.unix()
    };

    // B takes A's second offer, whose address is A's old one: accept finds A on the DHT, reaches
    // it there, and (holding no lock while it reaches A) writes the new address down.
    let out = on_dht(&b, &boot, "kaana-offer", &["accept", &later_offer])
        .env("KAANA_NOW", at(now_unix().max(resolved_at(&b) + 400)))
        .output()
        .unwrap();
    assert_success(&out);
    let second: serde_json::Value = one_json(&out);
    assert_eq!(second["status"], "active", "{second}");
    assert_eq!(peer_addrs(&b, &a_id).first(), Some(&sa.addr), "learned by the accept");

    // A moves again. Within the record's TTL (5 minutes after B looked A up), B does not ask the
    // DHT again: A is unreachable at the address B has.
    let moved_addr = sa.addr.clone();
    drop(sa);
    let sa = Served::start(&a, &boot, "127.0.0.1:0");
    assert!(sa.addr != moved_addr && sa.addr != old_addr);
    wait_announced(&a.home, &sa.addr);
    let now = resolved_at(&b) + 120;
    let out = on_dht(&b, &boot, "kaana-challenge", &[&contract]).env("KAANA_NOW", at(now)).output().unwrap();
    let line: serde_json::Value = one_json(&out);
    assert_eq!(line["result"], "unreachable", "{line}");
    // Ten minutes later (past the TTL) B's next challenge finds A's new address on the DHT.
    let later = now_unix().max(now) + 600;
    let out = on_dht(&b, &boot, "kaana-challenge", &[&contract]).env("KAANA_NOW", at(later)).output().unwrap();
    assert_success(&out);
    let line: serde_json::Value = one_json(&out);
    assert_eq!(line["result"], "pass", "{line}: {}", stderr(&out));
    assert_eq!(peer_addrs(&b, &a_id).first(), Some(&sa.addr), "the new address comes first");
    for gone in [&old_addr, &moved_addr] {
        assert!(!peer_addrs(&b, &a_id).contains(gone), "the old records' addresses are dropped");
    }

    // A looked up again: still the new address, whatever the replay did.
    let out =
        on_dht(&b, &boot, "kaana-sync", &["verify", &contract]).env("KAANA_NOW", at(later + 600)).output().unwrap();
    assert_success(&out);
    assert_eq!(peer_addrs(&b, &a_id).first(), Some(&sa.addr));
}

/// `init --recover` of `node` from `phrase`, configured with the DHT at `config_boot`, run with
/// the DHT at `run_boot`.
fn recover(node: &TestNode, run_boot: &str, config_boot: &str, phrase: &str) -> Output {
    let args = ["init", "--recover", "--listen", "127.0.0.1:0", "--dht-bootstrap", config_boot];
    let mut child = on_dht(node, run_boot, "kaana-offer", &args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), phrase.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

fn pubkey_of(id: &str) -> [u8; 32] {
    let node: kaana_proto::protocol::identity::NodeId = id.parse().unwrap();
    *node.as_bytes()
}

#[test]
fn a_dht_that_does_not_answer_costs_seconds_and_says_so() {
    // A bootstrap node that never answers: a socket this test holds (so no other test's DHT node
    // can take its port) and never reads.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let boot = dead.local_addr().unwrap().to_string();
    let a = TestNode::init_with(&["--dht-bootstrap", &boot]);
    let other = TestNode::init();
    let started = Instant::now();
    let out = run(&a, &boot, "kaana-offer", &["peer", "add", &other.id()]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("DHT"), "{}", stderr(&out));
    let out = run(&a, &boot, "kaana-offer", &["list", "--dht"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("DHT"), "{}", stderr(&out));
    let out = run(&a, &boot, "kaana-offer", &["announce"]);
    assert_exit(&out, 2);
    // Three tools, each giving up within a few seconds (the DHT's time-out is 5 s).
    assert!(started.elapsed() < Duration::from_secs(40), "took {:?}", started.elapsed());
    // Nothing else breaks: the node's own commands work.
    assert_success(&run(&a, &boot, "kaana-offer", &["peer", "list"]));
    let status = run(&a, &boot, "kaana-offer", &["status"]);
    let line: serde_json::Value = one_json(&status);
    assert_eq!(line["reachable"], false, "no server: {line}");
    drop(dead);
}

#[test]
fn a_node_that_lost_everything_but_its_phrase_finds_its_peers_on_the_dht_and_restores() {
    let (_dht, boot) = testnet(20);
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("a.vol");
    std::fs::write(&volume, pseudo_random(4 << 20, 31)).unwrap();
    let a =
        TestNode::init_with(&["--capacity", "1GiB", "--volume", volume.to_str().unwrap(), "--dht-bootstrap", &boot]);
    let b = TestNode::init_with(&["--capacity", "1GiB", "--dht-bootstrap", &boot]);
    let (sa, sb) = (Served::start(&a, &boot, "127.0.0.1:0"), Served::start(&b, &boot, "127.0.0.1:0"));
    let offer = json(&b, &boot, "kaana-offer", &["create", "--size", "16MiB"]);
    assert_success(&run(&b, &boot, "kaana-offer", &["publish"]));
    let b_at = format!("{}@{}", b.id(), sb.addr);
    assert_success(&run(&a, &boot, "kaana-offer", &["list", "--board", &b_at]));
    let contract = json(&a, &boot, "kaana-offer", &["accept", offer["id"].as_str().unwrap()]);
    let contract = contract["id"].as_str().unwrap().to_owned();
    assert_success(&run(&a, &boot, "kaana-sync", &["push", &contract]));
    let phrase: serde_json::Value = a.json("kaana-offer", &["recovery-phrase"]);
    let phrase = phrase["recovery_phrase"].as_str().unwrap().to_owned();
    // While healthy, the node keeps its locator on the DHT (its server does it hourly;
    // `announce` at once).
    let announced = json(&a, &boot, "kaana-offer", &["announce"]);
    assert_eq!(announced["locator"], true, "{announced}");
    // B's server keeps A's locator alive too (the DHT forgets an item no one stores again): at
    // its start, then hourly, it looks its contract peers up and stores their locators again.
    drop(sb);
    let _sb = Served::start(&b, &boot, "127.0.0.1:0");
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let reach: serde_json::Value = std::fs::read(b.home.join("reach.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if reach["peers_locators"][1] == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "B did not keep A's locator: {reach}");
        std::thread::sleep(Duration::from_millis(100));
    }

    // A loses everything: its server, its state directory. Only the phrase is left.
    drop(sa);
    std::fs::remove_dir_all(&a.home).unwrap();
    let again = TestNode::new();
    let out = recover(&again, &boot, &boot, &phrase);
    assert_success(&out);
    let line: serde_json::Value = one_json(&out);
    assert_eq!((line["recovered"].as_bool(), line["peers_found"].as_u64()), (Some(true), Some(1)), "{line}");
    assert_eq!(line["contracts_found"], serde_json::json!([contract]), "{line}");
    assert!(stderr(&out).contains(&format!("kaana-sync restore {contract}")), "{}", stderr(&out));
    let back = work.path().join("back.vol");
    assert_success(&run(&again, &boot, "kaana-sync", &["restore", &contract, "--out", back.to_str().unwrap()]));
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&volume).unwrap(), "restored byte for byte");

    // Recovering while the DHT does not answer: init says so (exit 1), and once it answers,
    // `contracts --fetch` finds the locator itself.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let dead_boot = dead.local_addr().unwrap().to_string();
    let later = TestNode::new();
    let out = recover(&later, &dead_boot, &boot, &phrase);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("contracts --fetch"), "{}", stderr(&out));
    let out = run(&later, &boot, "kaana-offer", &["contracts", "--fetch"]);
    assert_success(&out);
    let lines: Vec<serde_json::Value> = json_lines(&out);
    assert!(lines.iter().any(|l| l["id"] == contract.as_str()), "{lines:?}");
    drop(dead);
}
