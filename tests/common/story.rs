//! The seed's story as a fixture: A and B, each with a volume, a 7-day contract, each side's
//! volume pushed to the other, no random deliberate failures; and C, a third node both know,
//! so that neither mistakes the other's silence for its own outage.

use std::fs;
use std::path::Path;

use serde::Deserialize;

use super::{ServerProc, TestNode, assert_success, at, json_lines, make_contract_sized, pseudo_random, stderr};

/// A day, in seconds.
pub const DAY: u64 = 86_400;
/// An hour, in seconds.
pub const HOUR: u64 = 3_600;

/// Two nodes with a contract and each other's data, and a witness.
pub struct Story {
    pub work: tempfile::TempDir,
    pub a: TestNode,
    pub b: TestNode,
    pub c: TestNode,
    pub sa: ServerProc,
    pub sb: ServerProc,
    pub sc: ServerProc,
    pub contract: String,
}

fn volume(dir: &Path, name: &str, seed: u64) -> String {
    let path = dir.join(name);
    fs::write(&path, pseudo_random(3 << 20, seed)).unwrap();
    path.to_str().unwrap().to_owned()
}

/// Makes the story: A offered, B took; both pushed in 256 KiB extents (a dozen per volume, so
/// samples spread over many).
pub fn story() -> Story {
    let work = tempfile::tempdir().unwrap();
    let init = |name, seed| {
        let v = volume(work.path(), name, seed);
        TestNode::init_with(&["--capacity", "1GiB", "--volume", &v])
    };
    let (a, b) = (init("a.img", 1), init("b.img", 2));
    let c = TestNode::init_with(&["--capacity", "1GiB"]);
    let (sa, sb, sc) = (ServerProc::start(&a, &[]), ServerProc::start(&b, &[]), ServerProc::start(&c, &[]));
    let contract = make_contract_sized(&a, &sa, &b, "64MiB");
    for node in [&a, &b] {
        assert_success(&node.run("kaana-sync", &["push", &contract, "--extent-size", "256KiB"]));
        assert_success(&node.run("kaana-offer", &["peer", "add", &sc.peer()]));
    }
    Story { work, a, b, c, sa, sb, sc, contract }
}

/// A line of `kaana-challenge`.
#[derive(Debug, Deserialize)]
pub struct ChallengeLine {
    pub contract: String,
    pub peer: String,
    pub kind: String,
    pub result: String,
    pub breach: bool,
    pub their_standing: serde_json::Value,
    pub evidence: Option<String>,
    pub message: Option<String>,
    pub samples: Option<u64>,
}

/// Runs `kaana-challenge ARGS` on `node` at time `now` (else the clock), with short time-outs:
/// its exit code, lines and stderr.
pub fn challenge(node: &TestNode, args: &[&str], now: Option<u64>) -> (Option<i32>, Vec<ChallengeLine>, String) {
    let mut cmd = node.cmd("kaana-challenge");
    cmd.args(args).env("KAANA_CONNECT_TIMEOUT", "2s").env("KAANA_READ_TIMEOUT", "2s");
    if let Some(t) = now {
        cmd.env("KAANA_NOW", at(t));
    }
    let out = cmd.output().unwrap();
    (out.status.code(), json_lines(&out), stderr(&out))
}

/// `(kind, result)` of each line.
pub fn kinds(lines: &[ChallengeLine]) -> Vec<(&str, &str)> {
    lines.iter().map(|l| (l.kind.as_str(), l.result.as_str())).collect()
}

/// The line of `kaana-offer contracts` for `contract`.
pub fn contract_line(node: &TestNode, contract: &str) -> serde_json::Value {
    let lines: Vec<serde_json::Value> = json_lines(&node.run("kaana-offer", &["contracts"]));
    lines.into_iter().find(|l| l["id"] == contract).expect("the contract is listed")
}

/// The node's `contracts/<id>.state.json`.
pub fn state(node: &TestNode, contract: &str) -> serde_json::Value {
    serde_json::from_slice(&fs::read(node.home.join("contracts").join(format!("{contract}.state.json"))).unwrap())
        .unwrap()
}

/// A time from a state file's field.
pub fn unix_of(v: &serde_json::Value) -> u64 {
    v.as_str().unwrap().parse::<kaana_proto::protocol::time::Timestamp>().unwrap().unix()
}

/// Overwrites every extent `holder` stores under `contract` with zeros (a holder that lost it).
pub fn wreck_store(holder: &TestNode, contract: &str) {
    let extents = holder.home.join("inbound").join(contract).join("extents");
    for sub in fs::read_dir(&extents).unwrap().flatten() {
        for f in fs::read_dir(sub.path()).unwrap().flatten() {
            if !f.file_name().to_string_lossy().ends_with(".ob") {
                let len = f.metadata().unwrap().len() as usize;
                fs::write(f.path(), vec![0u8; len]).unwrap();
            }
        }
    }
}

/// Runs `kaana-challenge --all` on `node` every 8 hours from `from` to `to` (both included), as
/// cron would: a node deletes nothing unless it has watched its connection for a day.
pub fn keep_watch(node: &TestNode, from: u64, to: u64) {
    let mut t = from;
    while t <= to {
        let out = node
            .cmd("kaana-challenge")
            .arg("--all")
            .env("KAANA_NOW", at(t))
            .env("KAANA_CONNECT_TIMEOUT", "1s")
            .env("KAANA_READ_TIMEOUT", "2s")
            .output()
            .unwrap();
        assert!(matches!(out.status.code(), Some(0 | 1)), "{}", stderr(&out));
        t += 8 * HOUR;
    }
}
