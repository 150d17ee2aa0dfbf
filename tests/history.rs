//! History at the holder: generations kept by the contract's terms, restored by number or time,
//! challenged across; and the push guard that keeps a ransomwared volume from becoming the newest.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::Deserialize;

use crate::common::{
    LUKS_PASS, Pair, ServerProc, TestNode, assert_exit, assert_success, at, contracted_pair_with, debugfs_cat,
    decrypt_luks, json_lines, make_contract_sized, make_luks, now_unix, pseudo_random, stderr,
};

const DAY: u64 = 86_400;

#[derive(Debug, Deserialize)]
struct HistoryLine {
    contract: String,
    generation: u64,
    committed_at: String,
    bytes: u64,
    unique_bytes: u64,
    newest: bool,
}

#[derive(Debug, Deserialize)]
struct RestoreLine {
    generation: u64,
    bytes: u64,
    ok: bool,
}

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Writes `data` as file `name` into the ext4 file system inside the LUKS image, in place: the
/// image is decrypted, the file written with debugfs, and the file system written back through
/// the same LUKS key (sectors that did not change encrypt to the same bytes).
fn add_file_in_luks(work: &Path, img: &Path, name: &str, data: &[u8]) {
    let plain = work.join("edit.ext4");
    decrypt_luks(img, &plain);
    let src = work.join(format!("{name}.src"));
    fs::write(&src, data).unwrap();
    run_ok(Command::new("debugfs").args(["-w", "-R", &format!("write {} /{name}", src.display())]).arg(&plain));
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-n", "-f", "raw"])
            .arg(&plain)
            .args(["--object", &format!("secret,id=s,data={LUKS_PASS}"), "--target-image-opts"])
            .arg(format!("driver=luks,key-secret=s,file.filename={}", img.display())),
    );
    fs::remove_file(&plain).unwrap();
}

/// The owner's and the holder's clocks, moved together (`KAANA_NOW`).
struct Clocked<'a> {
    node: &'a TestNode,
    t: u64,
}

impl Clocked<'_> {
    fn run(&self, tool: &str, args: &[&str]) -> std::process::Output {
        self.node.cmd(tool).env("KAANA_NOW", at(self.t)).args(args).output().unwrap()
    }
}

/// Restarts `node`'s server on the same address with its clock at `t`.
fn restart_at(server: &mut ServerProc, node: &TestNode, t: u64) {
    let addr = server.addr.clone();
    server.signal("TERM");
    assert_eq!(server.wait(10), Some(0));
    *server = ServerProc::start_at(node, &["--listen", &addr], t);
}

fn restore_to(a: &Clocked, contract: &str, out: &Path, pick: &[&str]) -> std::process::Output {
    let mut args = vec!["restore", contract, "--out", out.to_str().unwrap()];
    args.extend_from_slice(pick);
    a.run("kaana-sync", &args)
}

fn only_json<T: serde::de::DeserializeOwned>(out: &std::process::Output) -> T {
    assert_success(out);
    let mut lines: Vec<T> = json_lines(out);
    assert_eq!(lines.len(), 1);
    lines.remove(0)
}

/// The extents (paths at the holder) that generation `old` names and generation `new` does not.
fn unique_to(holder: &TestNode, contract: &str, old: u64, new: u64) -> Vec<PathBuf> {
    let store = holder.home.join("inbound").join(contract);
    let list = |g: u64| -> Vec<String> {
        fs::read(store.join("lists").join(format!("{g}.bin")))
            .unwrap()
            .chunks(32)
            .map(|c| c.iter().map(|b| format!("{b:02x}")).collect())
            .collect()
    };
    let newer = list(new);
    list(old).into_iter().filter(|h| !newer.contains(h)).map(|h| store.join("extents").join(&h[..2]).join(&h)).collect()
}

/// Day 1 a volume, day 2 a file added, day 3 the whole image overwritten with random bytes (the
/// guard refuses it; `--force` pushes it): each day's volume comes back byte for byte, by time
/// and by number, and its files read back as they were. The history is listed and shown on both
/// sides; a challenge of an old generation passes, and fails once the holder deleted what only
/// that generation has.
#[test]
fn each_day_comes_back_as_it_was_even_after_a_ransomwared_push() {
    let work = tempfile::tempdir().unwrap();
    let notes = b"day one notes\n".to_vec();
    let photo = pseudo_random(2 << 20, 11);
    let volume = make_luks(work.path(), "vol", &[("notes.txt", &notes), ("photo.raw", &photo)], 16);
    // Days ahead of the real clock: the contract is made now, by the real clock.
    let day0 = (now_unix() / DAY + 1) * DAY;
    let a = TestNode::init_with(&["--capacity", "1GiB", "--volume", volume.to_str().unwrap()]);
    let b = TestNode::init_with(&["--capacity", "1GiB"]);
    let sa = ServerProc::start(&a, &[]);
    let mut sb = ServerProc::start_at(&b, &[], day0);
    // A 128 MiB contract: by default a history of 14 days and 25% (32 MiB) of space.
    let contract = make_contract_sized(&a, &sa, &b, "128MiB");
    let contracts: Vec<serde_json::Value> = json_lines(&a.run("kaana-offer", &["contracts"]));
    assert_eq!(contracts[0]["history_secs"], 14 * DAY);
    assert_eq!(contracts[0]["history_bytes"], 32u64 << 20);

    let days: Vec<u64> = (0..3).map(|d| day0 + d * DAY + 3_600).collect();
    let push = |t: u64, extra: &[&str]| {
        let mut args = vec!["push", &contract, "--extent-size", "1MiB"];
        args.extend_from_slice(extra);
        Clocked { node: &a, t }.run("kaana-sync", &args)
    };

    // Day 1.
    restart_at(&mut sb, &b, days[0]);
    let day1 = fs::read(&volume).unwrap();
    assert_success(&push(days[0], &[]));
    // Day 2: a file added, in place.
    restart_at(&mut sb, &b, days[1]);
    add_file_in_luks(work.path(), &volume, "day2.txt", b"written on day two\n");
    let day2 = fs::read(&volume).unwrap();
    assert_ne!(day1, day2);
    let pushed: serde_json::Value = only_json(&push(days[1], &[]));
    assert_eq!(pushed["generation"], 2);
    // Day 3: ransomware overwrites the whole image. The guard refuses it and says why.
    restart_at(&mut sb, &b, days[2]);
    fs::write(&volume, pseudo_random(day1.len(), 99)).unwrap();
    let refused = push(days[2], &[]);
    assert_exit(&refused, 1);
    let why = stderr(&refused);
    assert!(why.contains("LUKS header is gone") && why.contains("--force"), "{why}");
    let a3 = Clocked { node: &a, t: days[2] };
    let kept: Vec<HistoryLine> = json_lines(&a3.run("kaana-sync", &["history", &contract]));
    assert_eq!(kept.iter().map(|g| g.generation).collect::<Vec<_>>(), vec![1, 2], "nothing committed");
    let forced: serde_json::Value = only_json(&push(days[2], &["--force"]));
    assert_eq!(forced["generation"], 3);
    let day3 = fs::read(&volume).unwrap();

    // The history: three generations, committed on their days, each with bytes of its own.
    let history = a3.run("kaana-sync", &["history", &contract]);
    assert_success(&history);
    let kept: Vec<HistoryLine> = json_lines(&history);
    assert_eq!(kept.iter().map(|g| g.generation).collect::<Vec<_>>(), vec![1, 2, 3]);
    for (g, day) in kept.iter().zip(&days) {
        assert_eq!(g.committed_at, at(*day));
        assert_eq!(g.contract, contract);
        assert_eq!(g.bytes, day1.len() as u64);
        assert!(g.unique_bytes > 0, "{g:?}");
        assert_eq!(g.newest, g.generation == 3);
    }
    // Both sides show the history: the owner's record of its copy, the holder's of its peer's.
    let status: Vec<serde_json::Value> = json_lines(&a3.run("kaana-sync", &["status"]));
    assert_eq!(status[0]["ours"]["generations"], 3, "{status:?}");
    assert!(status[0]["ours"]["history_bytes"].as_u64().unwrap() > 0);
    let status: Vec<serde_json::Value> = json_lines(&b.run("kaana-sync", &["status"]));
    assert_eq!(status[0]["theirs"]["generations"], 3, "{status:?}");
    let held = status[0]["theirs"]["history_bytes"].as_u64().unwrap();
    assert!(held > 0 && held <= 32 << 20, "{held}");

    // Lose the volume; bring back each day, by time and by number.
    fs::remove_file(&volume).unwrap();
    let out = work.path().join("back.luks");
    for (pick, want, image) in [
        (vec!["--at", &at(days[1] - 60)], 1, &day1),
        (vec!["--at", &at(days[1] + 60)], 2, &day2),
        (vec!["--generation", "1"], 1, &day1),
        (vec![], 3, &day3),
    ] {
        let _ = fs::remove_file(&out);
        let restored: RestoreLine = only_json(&restore_to(&a3, &contract, &out, &pick));
        assert!(restored.ok);
        assert_eq!((restored.generation, restored.bytes), (want, day1.len() as u64), "{pick:?}");
        assert!(fs::read(&out).unwrap() == **image, "{pick:?} gives generation {want}'s volume byte for byte");
    }
    // The files of days 1 and 2, as they were.
    for (pick, has_day2) in [("1", false), ("2", true)] {
        let _ = fs::remove_file(&out);
        assert_success(&restore_to(&a3, &contract, &out, &["--generation", pick]));
        let plain = work.path().join(format!("back{pick}.ext4"));
        decrypt_luks(&out, &plain);
        assert_eq!(debugfs_cat(&plain, "notes.txt"), notes);
        assert_eq!(debugfs_cat(&plain, "photo.raw"), photo);
        let day2_file = debugfs_cat(&plain, "day2.txt");
        assert_eq!(day2_file == b"written on day two\n", has_day2, "generation {pick}");
    }
    // Before the first generation, and a generation never kept: clear errors.
    let none = restore_to(&a3, &contract, &out, &["--at", &at(day0)]);
    assert_exit(&none, 2);
    assert!(stderr(&none).contains("keeps no generation committed at or before"), "{}", stderr(&none));
    let never = restore_to(&a3, &contract, &out, &["--generation", "9"]);
    assert_exit(&never, 2);
    assert!(stderr(&never).contains("generation 9 is not kept"), "{}", stderr(&never));
    let verified: RestoreLine = only_json(&a3.run("kaana-sync", &["verify", &contract, "--generation", "1"]));
    assert!(verified.ok && verified.generation == 1);

    // A challenge of generation 1 asks about what only it has, and passes.
    let challenge = |g: &str| -> serde_json::Value {
        let out = a3.run("kaana-challenge", &[&contract, "--generation", g]);
        assert!(out.status.code().is_some_and(|c| c < 2), "{}", stderr(&out));
        json_lines::<serde_json::Value>(&out).remove(0)
    };
    // The owner keeps, for each older generation, the tops of its own extents (what its
    // challenges sample), so that they ask for proofs as short as the newest's.
    for g in [1, 2] {
        let tops = fs::read(a.home.join("outbound").join(&contract).join(format!("older-tops-{g}.bin"))).unwrap();
        assert!(!tops.is_empty() && tops.len().is_multiple_of(136), "generation {g}: {} bytes", tops.len());
    }
    let passed = challenge("1");
    assert_eq!((passed["result"].as_str(), passed["generation"].as_u64()), (Some("pass"), Some(1)), "{passed}");
    // The holder deletes what only generation 1 names (keeping the others whole): caught.
    let gone = unique_to(&b, &contract, 1, 2);
    assert!(!gone.is_empty());
    for path in &gone {
        fs::remove_file(path).unwrap();
    }
    let failed = challenge("1");
    assert_eq!((failed["result"].as_str(), failed["generation"].as_u64()), (Some("fail"), Some(1)), "{failed}");
    drop(sa);
}

/// A volume that is not LUKS but near-random (allowed, as encrypted some other way): rewriting
/// most of it at once is refused without --force, and the last good generation stays the newest.
#[test]
fn the_guard_refuses_a_volume_mostly_changed_at_once() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(8 << 20, 5)).unwrap();
    let a = TestNode::init_with(&["--capacity", "1GiB", "--volume", volume.to_str().unwrap()]);
    let b = TestNode::init_with(&["--capacity", "1GiB"]);
    let (sa, sb) = (ServerProc::start(&a, &[]), ServerProc::start(&b, &[]));
    let contract = make_contract_sized(&a, &sa, &b, "64MiB");
    let push = |extra: &[&str]| {
        let mut args = vec!["push", &contract, "--extent-size", "1MiB"];
        args.extend_from_slice(extra);
        a.run("kaana-sync", &args)
    };
    assert_success(&push(&[]));
    // Three of eight extents change: an ordinary day.
    let mut data = fs::read(&volume).unwrap();
    for e in [1usize, 4, 6] {
        data[e << 20..(e << 20) + 100].copy_from_slice(&pseudo_random(100, e as u64 + 50));
    }
    fs::write(&volume, &data).unwrap();
    assert_success(&push(&[]));
    // Five of eight at once: refused, exit 1, with the reason and the way out.
    for e in [0usize, 2, 3, 5, 7] {
        data[e << 20..(e << 20) + 100].copy_from_slice(&pseudo_random(100, e as u64 + 80));
    }
    fs::write(&volume, &data).unwrap();
    let refused = push(&[]);
    assert_exit(&refused, 1);
    let why = stderr(&refused);
    assert!(why.contains("more than half of its 8 extents changed") && why.contains("--force"), "{why}");
    // So it is from a record from before the volume's marks, which are then not there to compare.
    let marks = a.home.join("outbound").join(&contract).join("volume-marks-2.bin");
    fs::remove_file(&marks).unwrap();
    let refused = push(&[]);
    assert_exit(&refused, 1);
    assert!(stderr(&refused).contains("more than half of its 8 extents changed"), "{}", stderr(&refused));
    let kept: Vec<HistoryLine> = json_lines(&a.run("kaana-sync", &["history", &contract]));
    assert_eq!(kept.last().map(|g| (g.generation, g.newest)), Some((2, true)));
    let forced: serde_json::Value = only_json(&push(&["--force"]));
    assert_eq!(forced["generation"], 3);
    drop(sb);
}

/// B rolls its copy back to generation 2 and drops generation 1; asked about generation 1, it
/// answers that generation 2 replaced it. An honest holder names the newest generation it
/// committed: A does not move the challenge onto generation 2, which B still holds, but judges
/// the answer a failure.
#[test]
fn a_holder_cannot_move_a_challenge_of_an_old_generation_onto_a_newer_one_it_keeps() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(8 << 20, 7)).unwrap();
    let a = TestNode::init_with(&["--capacity", "1GiB", "--volume", volume.to_str().unwrap()]);
    let b = TestNode::init_with(&["--capacity", "1GiB"]);
    let (sa, _sb) = (ServerProc::start(&a, &[]), ServerProc::start(&b, &[]));
    let contract = make_contract_sized(&a, &sa, &b, "64MiB");
    let mut data = fs::read(&volume).unwrap();
    for g in 1..=3usize {
        if g > 1 {
            data[g << 20..(g << 20) + 100].copy_from_slice(&pseudo_random(100, g as u64 + 60));
            fs::write(&volume, &data).unwrap();
        }
        assert_success(&a.run("kaana-sync", &["push", &contract, "--extent-size", "1MiB"]));
    }
    let challenge = |g: &str| -> serde_json::Value {
        let out = a.run("kaana-challenge", &[&contract, "--generation", g]);
        assert!(out.status.code().is_some_and(|c| c < 2), "{}", stderr(&out));
        json_lines::<serde_json::Value>(&out).remove(0)
    };
    let passed = challenge("1");
    assert_eq!((passed["result"].as_str(), passed["generation"].as_u64()), (Some("pass"), Some(1)), "{passed}");
    let store = b.home.join("inbound").join(&contract);
    fs::rename(store.join("kept").join("2.json"), store.join("committed.json")).unwrap();
    fs::remove_file(store.join("kept").join("1.json")).unwrap();
    let failed = challenge("1");
    assert_eq!((failed["result"].as_str(), failed["generation"].as_u64()), (Some("fail"), Some(1)), "{failed}");
    assert!(failed["message"].as_str().unwrap().contains("generation 2 replaced"), "{failed}");
}

/// A holder that lies about when it committed each generation: the newest dated months ahead
/// (so that "now" would pick the one before: a silent rollback), or dated before the one it
/// replaced (so that a time before a ransomwared push would pick it). A restore by time chooses
/// by this node's own record of what it signed and the holder receipted; without the record
/// (after a rebuild), the holder's choice must at least have been signed before the time asked.
#[test]
fn a_restore_by_time_goes_by_the_owners_record_not_the_holders_word() {
    use crate::common::old_holder::{Lie, OldHolder};
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(8 << 20, 8)).unwrap();
    let a = TestNode::init_with(&["--capacity", "1GiB", "--volume", volume.to_str().unwrap()]);
    let b = TestNode::init_with(&["--capacity", "1GiB"]);
    let day0 = (now_unix() / DAY + 1) * DAY;
    let days: Vec<u64> = (0..3).map(|d| day0 + d * DAY + 3_600).collect();
    let (sa, mut sb) = (ServerProc::start(&a, &[]), ServerProc::start_at(&b, &[], day0));
    let contract = make_contract_sized(&a, &sa, &b, "64MiB");
    let mut data = fs::read(&volume).unwrap();
    let mut volumes = Vec::new();
    for (g, t) in (1..=3usize).zip(&days) {
        if g > 1 {
            data[g << 20..(g << 20) + 100].copy_from_slice(&pseudo_random(100, g as u64 + 70));
            fs::write(&volume, &data).unwrap();
        }
        volumes.push(data.clone());
        restart_at(&mut sb, &b, *t);
        let a_then = Clocked { node: &a, t: *t };
        assert_success(&a_then.run("kaana-sync", &["push", &contract, "--extent-size", "1MiB"]));
    }
    // The holder's server moves to another port; the lying front takes its address.
    let addr = sb.addr.clone();
    drop(sb);
    let sb = ServerProc::start_at(&b, &[], days[2]);
    let out = work.path().join("back.img");
    let restore_at = |t: u64| {
        let _ = fs::remove_file(&out);
        restore_to(&Clocked { node: &a, t: days[2] + 60 }, &contract, &out, &["--at", &at(t)])
    };
    {
        let ahead = Lie::Times(|g| {
            let newest = g.last_mut().unwrap();
            newest.committed_at = newest.committed_at.plus_secs(100 * DAY);
        });
        let _front = OldHolder::lying(&addr, &b.identity(), &a.identity(), &sb.addr, ahead);
        let restored: RestoreLine = only_json(&restore_at(days[2] + 30));
        assert_eq!(restored.generation, 3, "not rolled back to the generation before");
        assert!(fs::read(&out).unwrap() == volumes[2]);
    }
    let back = Lie::Times(|g| {
        let first = g[0].committed_at;
        g.last_mut().unwrap().committed_at = first.plus_secs(60);
    });
    let _front = OldHolder::lying(&addr, &b.identity(), &a.identity(), &sb.addr, back);
    let restored: RestoreLine = only_json(&restore_at(days[1] + 30));
    assert_eq!(restored.generation, 2, "the day before the last push");
    assert!(fs::read(&out).unwrap() == volumes[1]);
    // Without the record (a node rebuilt from its phrase has none), the holder's choice is
    // refused: this node signed it after the time asked.
    fs::remove_dir_all(a.home.join("outbound").join(&contract)).unwrap();
    let refused = restore_at(days[1] + 30);
    assert_exit(&refused, 2);
    assert!(stderr(&refused).contains("but this node signed it at"), "{}", stderr(&refused));
}

/// A change larger than the history allowance but short of half the volume (ransomware inside a
/// LUKS volume keeps its header): committing it would retire every older generation, so the
/// push is refused without --force, saying so; forced, only the new generation stays.
#[test]
fn a_push_that_would_leave_no_history_needs_force() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(8 << 20, 6)).unwrap();
    let Pair { a, b: _b, sa: _sa, sb: _sb, contract } =
        contracted_pair_with(&volume, &["--size", "64MiB", "--history-space", "2MiB"]);
    let contract = contract.as_str();
    assert_eq!(contract_history_bytes(&a, contract), 2 << 20);
    let push = |extra: &[&str]| {
        let mut args = vec!["push", contract, "--extent-size", "1MiB"];
        args.extend_from_slice(extra);
        a.run("kaana-sync", &args)
    };
    assert_success(&push(&[]));
    // Three of eight 1 MiB extents: 3 MiB, more than the 2 MiB of history.
    let mut data = fs::read(&volume).unwrap();
    for e in [2usize, 5, 7] {
        data[e << 20..(e << 20) + 100].copy_from_slice(&pseudo_random(100, e as u64 + 90));
    }
    fs::write(&volume, &data).unwrap();
    let refused = push(&[]);
    assert_exit(&refused, 1);
    let why = stderr(&refused);
    assert!(why.contains("more than the history allowance of 2.0 MiB") && why.contains("--force"), "{why}");
    let forced: serde_json::Value = only_json(&push(&["--force"]));
    assert_eq!(forced["generation"], 2);
    let kept: Vec<HistoryLine> = json_lines(&a.run("kaana-sync", &["history", contract]));
    assert_eq!(kept.iter().map(|g| g.generation).collect::<Vec<_>>(), vec![2]);
}

fn contract_history_bytes(node: &TestNode, contract: &str) -> u64 {
    let lines: Vec<serde_json::Value> = json_lines(&node.run("kaana-offer", &["contracts"]));
    lines.iter().find(|l| l["id"] == contract).unwrap()["history_bytes"].as_u64().unwrap()
}
