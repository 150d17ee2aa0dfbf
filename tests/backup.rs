//! Push, restore and verify of real LUKS volumes between real nodes.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Deserialize;

use kaana_proto::net::transport::{Client, NetError};
use kaana_proto::net::wire::{ErrorCode, Request, Response};
use kaana_proto::protocol::identity::Identity;
use kaana_proto::protocol::manifest::{Manifest, encode_list, list_hash};
use kaana_proto::protocol::market::RecordId;
use kaana_proto::protocol::record::Signed;

use crate::common::old_holder::OldHolder;
use crate::common::{
    Pair, ServerProc, TestNode, assert_exit, assert_success, contracted_pair, contracted_pair_with, debugfs_cat,
    decrypt_luks, json_lines, make_contract_sized, make_luks, one_json, pseudo_random, recovered, stderr,
    write_in_luks,
};

#[derive(Debug, Deserialize)]
struct PushLine {
    contract: String,
    peer: String,
    generation: u64,
    extents_sent: u64,
    extents_total: u64,
    bytes_sent: u64,
    bytes_total: u64,
    secs: f64,
}

#[derive(Debug, Deserialize)]
struct RestoreLine {
    contract: String,
    generation: u64,
    bytes: u64,
    ok: bool,
    extents_fetched: u64,
    bad_extents: u64,
}

fn push(node: &TestNode, contract: &str) -> PushLine {
    node.json("kaana-sync", &["push", contract])
}

fn restore(node: &TestNode, contract: &str, out: &Path) -> RestoreLine {
    node.json("kaana-sync", &["restore", contract, "--out", out.to_str().unwrap()])
}

fn files() -> Vec<(&'static str, Vec<u8>)> {
    vec![("notes.txt", b"the first byte of my data is b\n".to_vec()), ("photo.raw", pseudo_random(3 << 20, 7))]
}

/// Copies directory `from` to `to` (which must not exist), as it is.
fn copy_dir(from: &Path, to: &Path) {
    assert!(std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap().success());
}

fn luks_volume(dir: &Path) -> PathBuf {
    let f = files();
    let refs: Vec<(&str, &[u8])> = f.iter().map(|(n, d)| (*n, d.as_slice())).collect();
    make_luks(dir, "vol", &refs, 16)
}

fn inbound_extents(holder: &TestNode, contract: &str) -> Vec<PathBuf> {
    let root = holder.home.join("inbound").join(contract).join("extents");
    let mut out = Vec::new();
    for sub in fs::read_dir(root).into_iter().flatten().flatten() {
        for f in fs::read_dir(sub.path()).into_iter().flatten().flatten() {
            let name = f.file_name().to_string_lossy().into_owned();
            if !name.starts_with('.') && !name.ends_with(".ob") {
                out.push(f.path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn a_luks_volume_goes_out_and_comes_back_whole() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let original = fs::read(&volume).unwrap();
    let Pair { a, b, sb, sa: _sa, contract } = contracted_pair(&volume, "64MiB");

    let pushed = push(&a, &contract);
    assert_eq!((pushed.contract.as_str(), pushed.peer.as_str()), (contract.as_str(), sb.node.as_str()));
    assert_eq!(pushed.generation, 1);
    assert_eq!(pushed.bytes_total, original.len() as u64);
    assert_eq!(pushed.extents_total, (original.len() as u64).div_ceil(4 << 20));
    assert_eq!((pushed.extents_sent, pushed.bytes_sent), (pushed.extents_total, pushed.bytes_total));
    assert!(pushed.secs > 0.0);
    // What B holds is not A's volume: every stored extent differs from the plain extent.
    assert_eq!(inbound_extents(&b, &contract).len() as u64, pushed.extents_total);
    for chunk in original.chunks(4 << 20) {
        assert!(inbound_extents(&b, &contract).iter().all(|p| fs::read(p).unwrap() != chunk));
    }

    // A second push with nothing changed sends nothing.
    let again = push(&a, &contract);
    assert_eq!((again.generation, again.extents_sent), (1, 0));

    // Lose the volume; bring it back.
    fs::remove_file(&volume).unwrap();
    let back = work.path().join("restored.luks");
    let restored = restore(&a, &contract, &back);
    assert!(restored.ok);
    assert_eq!(restored.contract, contract);
    assert_eq!((restored.generation, restored.bytes, restored.bad_extents), (1, original.len() as u64, 0));
    assert_eq!(fs::read(&back).unwrap(), original);
    let plain = work.path().join("restored.ext4");
    decrypt_luks(&back, &plain);
    for (name, data) in files() {
        assert_eq!(debugfs_cat(&plain, name), data, "{name}");
    }
    let verified: RestoreLine = a.json("kaana-sync", &["verify", &contract]);
    assert!(verified.ok && verified.bad_extents == 0);
}

#[test]
fn an_incremental_push_sends_only_what_changed() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let Pair { a, b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "64MiB");
    let first = push(&a, &contract);
    write_in_luks(&volume, 9 << 20, 64 << 10, 0xab);
    let second = push(&a, &contract);
    assert_eq!(second.generation, 2);
    assert_eq!(second.extents_sent, 1, "64 KiB inside one 4 MiB extent");
    // The LUKS payload starts 32 KiB short of 2 MiB: the 64 KiB straddle two 1 MiB quarters,
    // and only those go.
    assert_eq!(second.bytes_sent, 2 << 20, "only the quarters of the extent it changed");
    assert_eq!(second.extents_total, first.extents_total);
    // The extent the new generation replaced stays: generation 1 is history now.
    assert_eq!(inbound_extents(&b, &contract).len() as u64, first.extents_total + 1);

    let back = work.path().join("restored.luks");
    let restored = restore(&a, &contract, &back);
    assert_eq!(restored.generation, 2);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&volume).unwrap());
    // Restoring again into the same file fetches nothing: it is already right.
    let again = restore(&a, &contract, &back);
    assert_eq!((again.ok, again.extents_fetched), (true, 0));
}

/// Writes `bytes` into the file at `path` at `offset`, in place.
fn overwrite(path: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt as _;
    fs::OpenOptions::new().write(true).open(path).unwrap().write_all_at(bytes, offset).unwrap();
}

/// A push without `--extent-size` cuts the volume as this node's last push to the contract did,
/// not in the default 4 MiB: the cron job's `push --all` after a first push in other extents
/// sends what changed, not the whole volume again in extents of another size. A size asked for
/// is honoured (the volume goes whole in it) and is the one kept from then on.
#[test]
fn a_push_keeps_the_extent_size_of_the_last_one_unless_asked() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(8 << 20, 11)).unwrap();
    let Pair { a, b: _b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "64MiB");
    let first: PushLine = a.json("kaana-sync", &["push", &contract, "--extent-size", "256KiB"]);
    assert_eq!((first.extents_total, first.extents_sent), (32, 32));

    overwrite(&volume, (3 << 20) + 4096, &pseudo_random(4096, 12));
    let second = push(&a, &contract);
    assert_eq!((second.generation, second.extents_total, second.extents_sent), (2, 32, 1), "in 256 KiB extents");
    assert!(second.bytes_sent <= 256 << 10, "one 256 KiB extent at most: {}", second.bytes_sent);

    let third: PushLine = a.json("kaana-sync", &["push", &contract, "--extent-size", "1MiB"]);
    assert_eq!((third.generation, third.extents_total, third.extents_sent), (3, 8, 8), "asked for: all again");
    overwrite(&volume, 5 << 20, &pseudo_random(4096, 13));
    let fourth = push(&a, &contract);
    assert_eq!((fourth.generation, fourth.extents_total, fourth.extents_sent), (4, 8, 1), "1 MiB extents kept");

    let back = work.path().join("restored.img");
    let restored = restore(&a, &contract, &back);
    assert_eq!((restored.generation, restored.ok), (4, true));
    assert_eq!(fs::read(&back).unwrap(), fs::read(&volume).unwrap());
}

/// An extent of which some quarters changed goes as those quarters only, and the holder
/// rebuilds it on the one it holds; one whose copy at the holder is damaged goes whole. Either
/// way what comes back is the volume, and challenges of the rebuilt extent pass.
#[test]
fn a_partly_changed_extent_sends_only_its_changed_quarters() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(16 << 20, 5)).unwrap();
    let Pair { a, b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "64MiB");
    push(&a, &contract);
    let before = inbound_extents(&b, &contract);

    // Extent 1 (4 to 8 MiB): a few bytes in its second and fourth quarters.
    overwrite(&volume, (5 << 20) + 100, &pseudo_random(4096, 6));
    overwrite(&volume, (7 << 20) + 5, &pseudo_random(10, 7));
    let second = push(&a, &contract);
    assert_eq!((second.generation, second.extents_sent, second.bytes_sent), (2, 1, 2 << 20), "{second:?}");
    let back = work.path().join("back.img");
    assert_eq!(restore(&a, &contract, &back).generation, 2);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&volume).unwrap());
    let challenged: serde_json::Value = a.json("kaana-challenge", &[&contract]);
    assert_eq!(challenged["result"].as_str(), Some("pass"), "{challenged}");

    // The holder's copy of the rebuilt extent rots in a quarter that does not change next: the
    // patch on it cannot match its hash, the holder says so, and the extent goes whole.
    let rebuilt: Vec<_> = inbound_extents(&b, &contract).into_iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(rebuilt.len(), 1, "{rebuilt:?}");
    let mut rotten = fs::read(&rebuilt[0]).unwrap();
    rotten[10] ^= 1;
    fs::write(&rebuilt[0], &rotten).unwrap();
    overwrite(&volume, (6 << 20) + 7, &pseudo_random(64, 8));
    let third = push(&a, &contract);
    assert_eq!((third.generation, third.extents_sent), (3, 1), "{third:?}");
    assert_eq!(third.bytes_sent, (1 << 20) + (4 << 20), "the quarter refused, then the whole extent");
    assert_eq!(restore(&a, &contract, &back).generation, 3);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&volume).unwrap());

    // The holder's copy cannot be read at all (a directory where its file was): the holder
    // says it is not there to patch, and the extent goes whole.
    let whole: Vec<_> = inbound_extents(&b, &contract).into_iter().filter(|p| !before.contains(p)).collect();
    let unreadable = whole.iter().find(|p| !rebuilt.contains(p)).unwrap();
    fs::remove_file(unreadable).unwrap();
    fs::create_dir(unreadable).unwrap();
    overwrite(&volume, (4 << 20) + 9, &pseudo_random(64, 9));
    let fourth = push(&a, &contract);
    assert_eq!((fourth.generation, fourth.extents_sent), (4, 1), "{fourth:?}");
    assert!(fourth.bytes_sent >= 4 << 20, "the extent went whole: {fourth:?}");
    assert_eq!(restore(&a, &contract, &back).generation, 4);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&volume).unwrap());
}

/// A holder too busy to serve any extent has not shown the copy damaged: a drill says it could
/// not check (exit 2), not that extents are bad (exit 1), as a challenge counts it unreachable.
#[test]
fn a_drill_against_a_busy_holder_is_an_error_not_damage() {
    use crate::common::old_holder::Lie;
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(8 << 20, 23)).unwrap();
    let Pair { a, b, sa: _sa, sb, contract } = contracted_pair(&volume, "64MiB");
    push(&a, &contract);
    let addr = sb.addr.clone();
    drop(sb);
    let sb = ServerProc::start(&b, &[]);
    let _busy = OldHolder::lying(&addr, &b.identity(), &a.identity(), &sb.addr, Lie::BusyExtents);
    let out = a.run("kaana-sync", &["verify", &contract]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("too busy"), "{}", stderr(&out));
    assert!(json_lines::<serde_json::Value>(&out).iter().all(|l| l["bad_extents"].as_u64().unwrap_or(0) == 0));
}

/// A holder that lets a connection open but never a stream (its stream credit withheld, the
/// connection kept alive): a drill gives up at the read time-out, saying so, instead of waiting
/// for ever.
#[test]
fn a_holder_that_never_lets_a_stream_open_is_not_waited_for() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(4 << 20, 24)).unwrap();
    let Pair { a, b, sa: _sa, sb, contract } = contracted_pair(&volume, "64MiB");
    push(&a, &contract);
    let addr = sb.addr.clone();
    drop(sb);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let _endpoint = rt.block_on(async {
        let mut config = kaana_proto::net::transport::server_config(&b.identity()).unwrap();
        let mut none = quinn::TransportConfig::default();
        none.max_concurrent_bidi_streams(0u32.into())
            .max_concurrent_uni_streams(0u32.into())
            .keep_alive_interval(Some(Duration::from_secs(1)));
        config.transport_config(std::sync::Arc::new(none));
        let endpoint = quinn::Endpoint::server(config, addr.parse().unwrap()).unwrap();
        let accepting = endpoint.clone();
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Some(incoming) = accepting.accept().await {
                if let Ok(conn) = incoming.await {
                    held.push(conn);
                }
            }
        });
        endpoint
    });
    let started = Instant::now();
    let mut verify = a
        .cmd("kaana-sync")
        .args(["verify", &contract])
        .env("KAANA_READ_TIMEOUT", "2s")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    while verify.try_wait().unwrap().is_none() {
        if started.elapsed() > Duration::from_secs(60) {
            let _ = verify.kill();
            panic!("verify waited a minute for a stream to open");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = verify.wait_with_output().unwrap();
    assert_exit(&out, 2);
    assert!(
        stderr(&out).contains("timed out after 2s waiting for the peer to take another stream"),
        "{}",
        stderr(&out)
    );
}

/// A holder sends an extent from its file a part at a time as the peer takes it: a peer that
/// asks for large extents on every stream it may open and takes none of them holds a part or so
/// of each in the holder's memory, not each whole (16 extents of 16 MiB held 256 MiB before),
/// and each is still served whole once taken.
#[test]
fn a_peer_that_takes_its_extents_slowly_holds_little_of_them_in_the_holders_memory() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(64 << 20, 25)).unwrap();
    let Pair { a, b, sa: _sa, sb, contract } = contracted_pair(&volume, "128MiB");
    assert_success(&a.run("kaana-sync", &["push", &contract, "--extent-size", "16MiB"]));
    let id: RecordId = contract.parse().unwrap();
    let hashes: Vec<[u8; 32]> = inbound_extents(&b, &contract)
        .iter()
        .filter(|p| fs::metadata(p).unwrap().len() == 16 << 20)
        .map(|p| kaana_proto::protocol::encoding::hex_decode::<32>(&p.file_name().unwrap().to_string_lossy()).unwrap())
        .collect();
    assert_eq!(hashes.len(), 4);
    let rss_kib = || -> u64 {
        let status = fs::read_to_string(format!("/proc/{}/status", sb.child.id())).unwrap();
        let line = status.lines().find(|l| l.starts_with("VmRSS")).unwrap().to_owned();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = Client::new(a.identity());
        let before = rss_kib();
        // Four connections of four streams: what each connection lets the holder send ahead
        // (its receive window) stays short of blocking the replies themselves.
        let mut held = Vec::new();
        for _ in 0..4 {
            let conn = client.connect(sb.node.parse().unwrap(), &sb.addr).await.unwrap();
            for hash in &hashes {
                let mut ex = conn.open(&Request::GetExtent { contract: id, hash: *hash }).await.unwrap();
                ex.finish().unwrap();
                assert!(matches!(ex.reply().await, Ok(Response::ExtentIs { len }) if len == 16 << 20));
                held.push((*hash, ex));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let grew = rss_kib().saturating_sub(before);
        assert!(grew < 96 << 10, "the holder holds {grew} KiB for 16 extents of 16 MiB not taken");
        for (hash, mut ex) in held.into_iter().take(2) {
            let mut bytes = vec![0u8; 16 << 20];
            ex.read_bulk(&mut bytes, "an extent").await.unwrap();
            assert_eq!(*blake3::hash(&bytes).as_bytes(), hash);
        }
        client.close().await;
    });
}

/// A holder from before patches, which answers `patch_extent` as any server answers a request
/// it cannot decode: the owner sends the changed extent whole instead, and the push, the
/// restore and a challenge all go through as with any holder.
#[test]
fn a_holder_that_knows_no_patches_gets_a_changed_extent_whole() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(16 << 20, 21)).unwrap();
    let Pair { a, b, sa: _sa, sb, contract } = contracted_pair(&volume, "64MiB");
    push(&a, &contract);
    // The holder's server moves to another port, and the old holder takes its address.
    let addr = sb.addr.clone();
    drop(sb);
    let sb = ServerProc::start(&b, &[]);
    let old = OldHolder::start(&addr, &b.identity(), &a.identity(), &sb.addr);

    // Extent 2 (8 to 12 MiB) changes in one quarter.
    overwrite(&volume, (9 << 20) + 3, &pseudo_random(100, 22));
    let second = push(&a, &contract);
    assert_eq!((second.generation, second.extents_sent), (2, 1), "{second:?}");
    assert_eq!(old.patches_refused(), 1, "the quarter was offered once");
    // The whole extent, and the quarter if it went out before the holder stopped reading.
    assert!([4 << 20, 5 << 20].contains(&second.bytes_sent), "{second:?}");
    let back = work.path().join("back.img");
    assert_eq!(restore(&a, &contract, &back).generation, 2);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&volume).unwrap());
    let challenged: serde_json::Value = a.json("kaana-challenge", &[&contract]);
    assert_eq!(challenged["result"].as_str(), Some("pass"), "{challenged}");
}

/// A record from before the volume's marks were kept (the BLAKE3 hash of each extent in
/// `raw-<gen>.bin`, or of each quarter in `volume-tops-<gen>.bin`): the next push reads and
/// encodes every extent, and still sends only the one that changed (whole: no marks to patch
/// on); then it keeps the marks and drops the old files, and the push after that sends only a
/// quarter.
#[test]
fn a_record_from_before_the_volume_marks_still_pushes_only_what_changed() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(16 << 20, 21)).unwrap();
    let Pair { a, b: _b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "64MiB");
    assert_eq!(push(&a, &contract).generation, 1);
    let record = a.home.join("outbound").join(&contract);
    let marks = record.join("volume-marks-1.bin");
    assert_eq!(fs::metadata(&marks).unwrap().len(), 4 * 128, "four marks of 32 bytes per extent");
    let (raw, tops) = (record.join("raw-1.bin"), record.join("volume-tops-1.bin"));
    let bytes = fs::read(&volume).unwrap();
    fs::write(&raw, bytes.chunks(4 << 20).flat_map(|e| *blake3::hash(e).as_bytes()).collect::<Vec<u8>>()).unwrap();
    fs::write(&tops, bytes.chunks(1 << 20).flat_map(|q| *blake3::hash(q).as_bytes()).collect::<Vec<u8>>()).unwrap();
    fs::remove_file(&marks).unwrap();

    overwrite(&volume, (9 << 20) + 3, &pseudo_random(100, 22));
    let second = push(&a, &contract);
    assert_eq!((second.generation, second.extents_sent, second.bytes_sent), (2, 1, 4 << 20), "{second:?}");
    assert!(!raw.exists() && !tops.exists() && record.join("volume-marks-2.bin").is_file());
    overwrite(&volume, (13 << 20) + 3, &pseudo_random(100, 23));
    let third = push(&a, &contract);
    assert_eq!((third.generation, third.extents_sent, third.bytes_sent), (3, 1, 1 << 20), "{third:?}");
    let back = work.path().join("back.img");
    assert_eq!(restore(&a, &contract, &back).generation, 3);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&volume).unwrap());
}

/// An extent the holder cannot patch is read again to go whole; if the volume was written there
/// meanwhile, it goes as it is then, and the record follows it: the commit names what the holder
/// stored, the restore gives the volume as it is, challenges of that generation pass, and the
/// next push finds nothing changed.
#[test]
fn an_extent_written_while_its_patch_is_refused_goes_as_it_is_then() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(8 << 20, 41)).unwrap();
    let Pair { a, b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "64MiB");
    // 1 MiB extents: quarters of 256 KiB, 4 s each at the slowest rate allowed.
    let push_args = |extra: &[&'static str]| {
        let mut args = vec!["push", contract.as_str(), "--extent-size", "1MiB"];
        args.extend_from_slice(extra);
        args
    };
    let pushed = |out: &std::process::Output| -> serde_json::Value {
        assert_success(out);
        serde_json::from_slice(&out.stdout).unwrap()
    };
    pushed(&a.run("kaana-sync", &push_args(&[])));
    let before = inbound_extents(&b, &contract);
    overwrite(&volume, (1 << 20) + 7, &pseudo_random(64, 42));
    let second = pushed(&a.run("kaana-sync", &push_args(&[])));
    assert_eq!(second["bytes_sent"].as_u64(), Some(256 << 10), "{second}");
    // The holder's copy of extent 1 rots, so its next patch cannot rebuild it.
    let rebuilt: Vec<_> = inbound_extents(&b, &contract).into_iter().filter(|p| !before.contains(p)).collect();
    assert_eq!(rebuilt.len(), 1, "{rebuilt:?}");
    let mut rotten = fs::read(&rebuilt[0]).unwrap();
    rotten[(3 << 18) + 10] ^= 1;
    fs::write(&rebuilt[0], &rotten).unwrap();

    // Its second quarter changes, and goes as a patch held to 64 KiB/s: 4 s for the quarter.
    // Meanwhile (after the push has read the extent, long before the holder has all the
    // quarter) its last quarter changes too; the holder refuses the patch, and the extent read
    // again carries both.
    overwrite(&volume, (1 << 20) + (1 << 18) + 7, &pseudo_random(64, 43));
    let pushing = a
        .cmd("kaana-sync")
        .args(push_args(&["--limit-rate", "64KiB"]))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the push has read extent 1 (its marks are in the record's file being written).
    let record = a.home.join("outbound").join(&contract);
    let read = |path: &Path| fs::read(path).ok().filter(|m| m.len() >= 256 && m[128..256] != [0; 128]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read_dir(&record).unwrap().flatten().any(|f| {
        let name = f.file_name().to_string_lossy().into_owned();
        name.starts_with(".volume-marks.") && name.ends_with(".partial") && read(&f.path()).is_some()
    }) {
        assert!(Instant::now() < deadline, "the push never read extent 1");
        std::thread::sleep(Duration::from_millis(10));
    }
    overwrite(&volume, (1 << 20) + (3 << 18) + 7, &pseudo_random(64, 44));
    let third = pushed(&pushing.wait_with_output().unwrap());
    assert_eq!(third["generation"].as_u64(), Some(3), "{third}");
    assert_eq!(
        third["bytes_sent"].as_u64(),
        Some((1 << 18) + (1 << 20)),
        "the quarter, then the extent whole: {third}"
    );

    let back = work.path().join("back.img");
    assert_eq!(restore(&a, &contract, &back).generation, 3);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&volume).unwrap(), "the volume as it was when read again");
    // (Generation 2, kept as history, has the rotten copy: asked about it, the holder fails.)
    let challenged: serde_json::Value = a.json("kaana-challenge", &[&contract, "--generation", "3"]);
    assert_eq!(challenged["result"].as_str(), Some("pass"), "{challenged}");
    let again = pushed(&a.run("kaana-sync", &push_args(&[])));
    assert_eq!((again["generation"].as_u64(), again["extents_sent"].as_u64()), (Some(3), Some(0)), "{again}");
}

/// The volume's marks and tops are caches: a push the holder committed whose marks cannot be
/// put in place is still recorded, says so in a warning, and the next push reads every extent
/// once and goes on.
#[test]
fn a_push_whose_marks_cannot_be_kept_is_still_recorded_and_the_next_goes_on() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(16 << 20, 31)).unwrap();
    let Pair { a, b: _b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "64MiB");
    assert_eq!(push(&a, &contract).generation, 1);
    let record = a.home.join("outbound").join(&contract);
    // Where generation 2's marks would go, a directory: they cannot be renamed there.
    fs::create_dir(record.join("volume-marks-2.bin")).unwrap();
    overwrite(&volume, (5 << 20) + 3, &pseudo_random(100, 32));
    let out = a.run("kaana-sync", &["push", &contract]);
    assert_success(&out);
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((line["generation"].as_u64(), line["extents_sent"].as_u64()), (Some(2), Some(1)), "{line}");
    assert!(
        stderr(&out).contains("warning: the volume's marks and tops of this push were not kept"),
        "{}",
        stderr(&out)
    );
    assert!(!record.join("tops-2.bin").exists());

    overwrite(&volume, (13 << 20) + 3, &pseudo_random(100, 33));
    let third = push(&a, &contract);
    assert_eq!((third.generation, third.extents_sent, third.bytes_sent), (3, 1, 4 << 20), "{third:?}");
    assert!(record.join("volume-marks-3.bin").is_file() && record.join("tops-3.bin").is_file());
    let back = work.path().join("back.img");
    assert_eq!(restore(&a, &contract, &back).generation, 3);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&volume).unwrap());
    let challenged: serde_json::Value = a.json("kaana-challenge", &[&contract]);
    assert_eq!(challenged["result"].as_str(), Some("pass"), "{challenged}");
}

/// The holder rebuilds an extent only on one it holds for the contract, of the patch's length,
/// from a peer of the contract, into bytes of the hash named; anything else is refused and
/// stores nothing.
#[test]
fn a_holder_patches_only_an_extent_it_holds_into_the_hash_named() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let Pair { a, b, sb, sa: _sa, contract } = contracted_pair(&volume, "64MiB");
    push(&a, &contract);
    let (owner, id, holder, addr) =
        (a.identity(), contract.parse().unwrap(), sb.node.parse().unwrap(), sb.addr.clone());
    let stored_before = inbound_extents(&b, &contract).len();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = Client::new(owner);
        let conn = client.connect(holder, &addr).await.unwrap();
        let code = |r: Result<Response, NetError>| match r {
            Err(NetError::Remote(e)) => Some(e.code),
            other => panic!("{other:?}"),
        };
        // A base of 16 KiB, held: parts of 4 KiB.
        let base = pseudo_random(16 << 10, 11);
        let base_hash = *blake3::hash(&base).as_bytes();
        let mut ex =
            conn.open(&Request::PutExtent { contract: id, offset: 0, hash: base_hash, len: 16 << 10 }).await.unwrap();
        ex.send.write_all(&base).await.unwrap();
        ex.finish().unwrap();
        assert!(matches!(ex.reply().await, Ok(Response::Stored)));
        let part = pseudo_random(4 << 10, 12);
        let mut rebuilt = base.clone();
        rebuilt[8 << 10..12 << 10].copy_from_slice(&part);
        let hash = *blake3::hash(&rebuilt).as_bytes();
        let patch = |base, hash, len, parts| Request::PatchExtent { contract: id, offset: 0, base, hash, len, parts };
        let send = |req: Request, bytes: Vec<u8>| {
            let conn = conn.clone();
            async move {
                let mut ex = conn.open(&req).await.unwrap();
                let _ = ex.send.write_all(&bytes).await;
                let _ = ex.finish();
                ex.reply().await
            }
        };
        // No parts, or parts beyond the fourth; an extent with no quarters of whole chunks.
        assert_eq!(code(send(patch(base_hash, hash, 16 << 10, 0), vec![]).await), Some(ErrorCode::BadRequest));
        assert_eq!(code(send(patch(base_hash, hash, 16 << 10, 0x10), part.clone()).await), Some(ErrorCode::BadRequest));
        assert_eq!(code(send(patch(base_hash, hash, 3 << 10, 1), vec![0; 768]).await), Some(ErrorCode::BadRequest));
        // A base not held here; one of another length.
        assert_eq!(code(send(patch([7; 32], hash, 16 << 10, 0b100), part.clone()).await), Some(ErrorCode::NotFound));
        assert_eq!(
            code(send(patch(base_hash, hash, 32 << 10, 0b100), part.clone()).await),
            Some(ErrorCode::BadRequest)
        );
        // Parts that do not make the hash named.
        assert_eq!(
            code(send(patch(base_hash, hash, 16 << 10, 0b010), part.clone()).await),
            Some(ErrorCode::BadRequest)
        );
        // A stranger's patch, right as it is.
        let stranger = Client::new(Identity::generate().unwrap());
        let sconn = stranger.connect(holder, &addr).await.unwrap();
        let mut ex = sconn.open(&patch(base_hash, hash, 16 << 10, 0b100)).await.unwrap();
        let _ = ex.send.write_all(&part).await;
        let _ = ex.finish();
        assert_eq!(code(ex.reply().await), Some(ErrorCode::Unauthorized));
        stranger.close().await;
        assert_eq!(inbound_extents(&b, &contract).len(), stored_before + 1, "only the base was stored");

        // The owner's patch: stored, and served back as the rebuilt extent.
        assert!(matches!(send(patch(base_hash, hash, 16 << 10, 0b100), part.clone()).await, Ok(Response::Stored)));
        let mut ex = conn.open(&Request::GetExtent { contract: id, hash }).await.unwrap();
        ex.finish().unwrap();
        assert!(matches!(ex.reply().await, Ok(Response::ExtentIs { len }) if len == 16 << 10));
        let mut back = vec![0u8; 16 << 10];
        ex.recv.read_exact(&mut back).await.unwrap();
        assert_eq!(back, rebuilt);
        client.close().await;
    });
    assert_eq!(inbound_extents(&b, &contract).len(), stored_before + 2);
}

/// A holder that went back to an old copy (generation 1 after committing generation 2): restore
/// and the restore drill say the copy is stale and exit non-zero; the old generation is still
/// there for whoever asks for it by number.
#[test]
fn a_holder_serving_an_older_generation_is_caught_by_restore_and_verify() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let v1 = fs::read(&volume).unwrap();
    let Pair { a, b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "64MiB");
    push(&a, &contract);
    let store = b.home.join("inbound").join(&contract);
    let old = work.path().join("old-copy");
    copy_dir(&store, &old);
    write_in_luks(&volume, 9 << 20, 64 << 10, 0xab);
    assert_eq!(push(&a, &contract).generation, 2);
    fs::remove_dir_all(&store).unwrap();
    copy_dir(&old, &store);

    let back = work.path().join("back.luks");
    let out = a.run("kaana-sync", &["restore", &contract, "--out", back.to_str().unwrap()]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("serves generation 1, older than generation 2"), "{}", stderr(&out));
    let out = a.run("kaana-sync", &["verify", &contract]);
    assert_ne!(out.status.code(), Some(0));
    assert!(stderr(&out).contains("its copy is stale"), "{}", stderr(&out));
    let out = a.run("kaana-sync", &["verify", "--all"]);
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("its copy is stale"), "{}", stderr(&out));
    // Asked for by number, the old generation comes back.
    let out = a.run("kaana-sync", &["restore", &contract, "--out", back.to_str().unwrap(), "--generation", "1"]);
    assert_success(&out);
    assert_eq!(fs::read(&back).unwrap(), v1);
}

/// A holder that claims a generation this node never pushed (here its own record edited to
/// 999) is refused, and the push stops rather than wrap or skip generations.
#[test]
fn a_holder_claiming_a_generation_never_pushed_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let Pair { a, b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "64MiB");
    assert_eq!(push(&a, &contract).generation, 1);
    let store = b.home.join("inbound").join(&contract);
    let committed = store.join("committed.json");
    let mut c: serde_json::Value = serde_json::from_slice(&fs::read(&committed).unwrap()).unwrap();
    c["manifest"]["body"]["generation"] = 999.into();
    fs::write(&committed, serde_json::to_vec(&c).unwrap()).unwrap();
    fs::rename(store.join("lists").join("1.bin"), store.join("lists").join("999.bin")).unwrap();
    write_in_luks(&volume, 9 << 20, 64 << 10, 0xab);
    let out = a.run("kaana-sync", &["push", &contract]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("claims to have committed generation 999"), "{}", stderr(&out));
    // Just one beyond the record (as a lost reply would leave it) is no easier: it must be shown.
    c["manifest"]["body"]["generation"] = 2.into();
    fs::write(&committed, serde_json::to_vec(&c).unwrap()).unwrap();
    fs::rename(store.join("lists").join("999.bin"), store.join("lists").join("2.bin")).unwrap();
    let out = a.run("kaana-sync", &["push", &contract]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("claims to have committed generation 2"), "{}", stderr(&out));
}

/// Two pushes whose replies were lost (here: this node's record set back two generations): the
/// holder is ahead of the record, shows a manifest this node signed, and the next push goes on.
#[test]
fn a_holder_ahead_of_the_record_by_pushes_whose_replies_were_lost_is_believed() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let Pair { a, b: _b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "64MiB");
    assert_eq!(push(&a, &contract).generation, 1);
    let record = a.home.join("outbound").join(&contract);
    let saved = work.path().join("record-at-1");
    copy_dir(&record, &saved);
    for (i, byte) in [0xab, 0xcd].into_iter().enumerate() {
        write_in_luks(&volume, 9 << 20, 64 << 10, byte);
        assert_eq!(push(&a, &contract).generation, 2 + i as u64);
    }
    fs::remove_dir_all(&record).unwrap();
    copy_dir(&saved, &record);
    write_in_luks(&volume, 9 << 20, 64 << 10, 0xef);
    assert_eq!(push(&a, &contract).generation, 4);
    // The record has the newest the holder showed (3) beside 1 and 4: 2 stays unknown to it.
    let kept: Vec<u64> = fs::read_dir(record.join("kept"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().trim_end_matches(".json").parse().unwrap())
        .collect::<std::collections::BTreeSet<u64>>()
        .into_iter()
        .collect();
    assert_eq!(kept, vec![1, 3]);
}

/// An owner that sends extent after extent and never commits: the holder stores at most twice
/// the contract's size, counted from what is on its disk, so neither skipping `push_begin` nor
/// a restart of the holder resets the count.
#[test]
fn a_holder_stores_at_most_twice_the_contract_and_its_history_even_across_a_restart() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let Pair { a, b, sa: _sa, sb, contract } = contracted_pair(&volume, "16MiB");
    let owner = a.identity();
    let id: RecordId = contract.parse().unwrap();
    let holder = sb.node.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let put = |addr: &str, seeds: std::ops::Range<u64>| -> (usize, usize) {
        rt.block_on(async {
            let client = Client::new(owner.clone());
            let conn = client.connect(holder, addr).await.unwrap();
            let (mut stored, mut refused) = (0, 0);
            for seed in seeds {
                let data = pseudo_random(4 << 20, 1_001 + 2 * seed); // (odd: `seed | 1` makes pairs alike)
                let hash = *blake3::hash(&data).as_bytes();
                let offset = (seed % 4) * (4 << 20);
                let mut ex = conn.open(&Request::PutExtent { contract: id, offset, hash, len: 4 << 20 }).await.unwrap();
                let _ = ex.send.write_all(&data).await;
                let _ = ex.finish();
                match ex.reply().await {
                    Ok(Response::Stored) => stored += 1,
                    Err(NetError::Remote(e)) if e.code == ErrorCode::Refused => refused += 1,
                    other => panic!("{other:?}"),
                }
            }
            client.close().await;
            (stored, refused)
        })
    };
    // A 16 MiB contract with the default history allowance of 25%: 2 × 16 + 4 MiB.
    assert_eq!(put(&sb.addr, 0..10), (9, 1), "36 MiB for a 16 MiB contract and its history, then no more");
    let addr = sb.addr.clone();
    drop(sb);
    let _sb = ServerProc::start(&b, &["--listen", &addr]);
    assert_eq!(put(&addr, 10..13), (0, 3), "a restart does not reset what is on disk");
}

/// An owner that opens extents and holds back their bytes, then asks `push_begin` (which
/// measures what is on disk) gains no room by it: the extents on their way stay counted until
/// they are stored or given up, and then are no longer counted.
#[test]
fn extents_on_their_way_stay_counted_across_a_push_begin_until_given_up() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let Pair { a, b: _b, sa: _sa, sb, contract } = contracted_pair(&volume, "16MiB");
    let owner = a.identity();
    let id: RecordId = contract.parse().unwrap();
    let holder = sb.node.parse().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = Client::new(owner.clone());
        let held_back = client.connect(holder, &sb.addr).await.unwrap();
        let put = |seed: u64| Request::PutExtent {
            contract: id,
            offset: (seed % 4) * (4 << 20),
            hash: *blake3::hash(&pseudo_random(4 << 20, seed)).as_bytes(),
            len: 4 << 20,
        };
        // Refused at once, or admitted (it then waits for its bytes, or for a place).
        let refused = |conn: kaana_proto::net::transport::Connection, seed: u64| async move {
            let mut ex = conn.open(&put(seed)).await.unwrap();
            match tokio::time::timeout(Duration::from_secs(3), ex.reply()).await {
                Ok(Err(NetError::Remote(e))) if e.code == ErrorCode::Refused => (true, None),
                Ok(other) => panic!("{other:?}"),
                Err(_) => (false, Some(ex)),
            }
        };
        // A 16 MiB contract with the default history allowance of 25%: 2 × 16 + 4 MiB, nine
        // extents of 4 MiB, all held back.
        let mut open = Vec::new();
        for seed in 0..9 {
            open.push(held_back.open(&put(100 + seed)).await.unwrap());
        }
        // Once all nine are counted, a tenth is refused (one sent before they all were is
        // admitted instead, and then one of them is refused: nine are counted either way).
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match refused(held_back.clone(), 200).await {
                (true, _) => break,
                (false, ex) => open.extend(ex),
            }
            assert!(Instant::now() < deadline, "the room never filled");
        }
        let begin = Request::PushBegin { contract: id, volume_size: 16 << 20, extent_size: 4 << 20 };
        assert!(matches!(held_back.request(&begin).await, Ok(Response::PushReady { .. })));
        let (refused_after_begin, _) = refused(held_back.clone(), 300).await;
        assert!(refused_after_begin, "push_begin forgot the extents on their way");

        // Given up (the connection closed): no longer counted, and a whole extent is stored.
        drop(open);
        held_back.close();
        let conn = client.connect(holder, &sb.addr).await.unwrap();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let data = pseudo_random(4 << 20, 400);
            let hash = *blake3::hash(&data).as_bytes();
            let mut ex = conn.open(&Request::PutExtent { contract: id, offset: 0, hash, len: 4 << 20 }).await.unwrap();
            let _ = ex.send.write_all(&data).await;
            let _ = ex.finish();
            match ex.reply().await {
                Ok(Response::Stored) => break,
                // The server may not have seen every held-back stream end yet.
                Err(NetError::Remote(e)) if e.code == ErrorCode::Refused => {}
                other => panic!("{other:?}"),
            }
            assert!(Instant::now() < deadline, "the extents given up are still counted");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        client.close().await;
    });
}

#[test]
fn a_holder_killed_mid_push_keeps_the_last_generation_and_the_push_resumes() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(96 << 20, 1)).unwrap();
    let v1 = fs::read(&volume).unwrap();
    let Pair { a, b, sb, sa: _sa, contract } = contracted_pair(&volume, "128MiB");
    let extent = ["--extent-size", "256KiB"];
    let first: PushLine = a.json("kaana-sync", &[&["push", &contract][..], &extent[..]].concat());
    assert_eq!(first.extents_total, 384);

    // Generation 2 changes everything (so the push guard wants --force); kill the holder
    // part-way through.
    fs::write(&volume, pseudo_random(96 << 20, 2)).unwrap();
    let port = sb.addr.rsplit_once(':').unwrap().1.to_owned();
    let mut sb = sb;
    let pusher = a
        .cmd("kaana-sync")
        .args(["push", &contract, "--force"])
        .args(extent)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let before = first.extents_total as usize;
    let deadline = Instant::now() + Duration::from_secs(60);
    while inbound_extents(&b, &contract).len() < before + 40 {
        assert!(Instant::now() < deadline, "the push made no progress");
        std::thread::sleep(Duration::from_millis(2));
    }
    sb.child.kill().unwrap();
    let _ = sb.child.wait();
    // The pusher would notice the dead holder only at its read time-out; stop it too.
    let mut pusher = pusher;
    let _ = pusher.kill();
    let _ = pusher.wait();
    let stored_before_restart = inbound_extents(&b, &contract).len() - before;
    assert!(stored_before_restart < 384, "the push finished before the kill");

    let sb = ServerProc::start(&b, &["--listen", &format!("127.0.0.1:{port}")]);
    // The committed generation is still 1, whole.
    let back = work.path().join("back.img");
    let restored = restore(&a, &contract, &back);
    assert_eq!(restored.generation, 1);
    assert!(fs::read(&back).unwrap() == v1);
    // The next push does not send again what the holder already stored.
    let resumed: PushLine = a.json("kaana-sync", &[&["push", &contract, "--force"][..], &extent[..]].concat());
    assert_eq!(resumed.generation, 2);
    assert_eq!(resumed.extents_sent as usize, 384 - stored_before_restart);
    let restored = restore(&a, &contract, &back);
    assert_eq!(restored.generation, 2);
    assert!(fs::read(&back).unwrap() == fs::read(&volume).unwrap());
    drop(sb);
}

#[test]
fn two_holders_of_one_volume_hold_different_bytes() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let Pair { a, b, sa, sb: _sb, contract: with_b } = contracted_pair(&volume, "64MiB");
    let c = TestNode::init_with(&["--capacity", "1GiB"]);
    let _sc = ServerProc::start(&c, &[]);
    let with_c = make_contract_sized(&a, &sa, &c, "64MiB");
    let lines: Vec<PushLine> = json_lines(&a.run("kaana-sync", &["push", "--all"]));
    assert_eq!(lines.len(), 2);
    let (at_b, at_c) = (inbound_extents(&b, &with_b), inbound_extents(&c, &with_c));
    assert_eq!(at_b.len(), at_c.len());
    let names = |v: &[PathBuf]| v.iter().map(|p| p.file_name().unwrap().to_owned()).collect::<Vec<_>>();
    assert!(names(&at_b).iter().all(|n| !names(&at_c).contains(n)));
    for (x, y) in at_b.iter().zip(&at_c) {
        assert_ne!(fs::read(x).unwrap(), fs::read(y).unwrap());
    }
}

#[test]
fn a_plain_volume_is_refused_unless_allowed() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("plain.img");
    fs::write(&volume, b"my diary, unencrypted. ".repeat(200_000)).unwrap();
    let Pair { a, b: _b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "64MiB");
    // Bad input is the tool's error (exit 2), with --all as without, and nothing is sent.
    for args in [&["push", &contract][..], &["push", "--all"]] {
        let out = a.run("kaana-sync", args);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains("does not look encrypted"), "{}", stderr(&out));
        assert_eq!(out.stdout, b"", "{args:?}");
    }
    let out = a.run("kaana-sync", &["push", "--all", "--allow-plaintext", "--extent-size", "3000"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("--extent-size"), "{}", stderr(&out));
    assert_success(&a.run("kaana-sync", &["push", &contract, "--allow-plaintext"]));
    // Without a contract or --all, the tool says both ways.
    let out = a.run("kaana-sync", &["push"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("<CONTRACT|--all>"), "{}", stderr(&out));
}

/// Bytes of `path` in the page cache (`fincore`, util-linux).
fn cached_bytes(path: &Path) -> u64 {
    let out = std::process::Command::new("fincore")
        .args(["--bytes", "--noheadings", "--output", "RES"])
        .arg(path)
        .output()
        .expect("fincore (util-linux-extra; scripts/install-deps.sh installs it)");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Whether reads of files in `dir` can leave the page cache alone: `RWF_DONTCACHE` on ext4 is
/// known to work on this machine's kernel (6.18); older kernels and other file systems may
/// refuse it, and then a push reads as any program does.
fn uncached_reads_expected(dir: &Path) -> bool {
    let run = |cmd: &str, args: &[&std::ffi::OsStr]| {
        let out = std::process::Command::new(cmd).args(args).output().unwrap();
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    };
    let release = run("uname", &["-r".as_ref()]);
    let mut numbers = release.split(|c: char| !c.is_ascii_digit()).filter_map(|n| n.parse::<u32>().ok());
    let version = (numbers.next().unwrap_or(0), numbers.next().unwrap_or(0));
    version >= (6, 18) && run("stat", &["-f".as_ref(), "-c".as_ref(), "%T".as_ref(), dir.as_os_str()]) == "ext2/ext3"
}

/// A push reads the whole volume, every night: it leaves the page cache as it found it. A volume
/// that was not cached is not cached after the push (a large one would otherwise push every
/// other program's files out of memory), and one that was cached stays cached.
#[test]
fn a_push_leaves_the_page_cache_as_it_found_it() {
    // On disk (the build's own temp folder), not in a /tmp that may be tmpfs.
    let work = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let volume = work.path().join("vol.img");
    let size: u64 = 64 << 20;
    fs::write(&volume, pseudo_random(size as usize, 21)).unwrap();
    fs::File::open(&volume).unwrap().sync_all().unwrap();
    // Drop the volume from the page cache (dd's documented way: `iflag=nocache count=0`).
    let dropped = std::process::Command::new("dd")
        .arg(format!("if={}", volume.display()))
        .args(["iflag=nocache", "count=0", "status=none"])
        .status()
        .unwrap();
    assert!(dropped.success());
    let before = cached_bytes(&volume);
    assert!(before < size / 8, "the volume should start out of the page cache: {before} bytes cached");
    let Pair { a, b: _b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "128MiB");

    let first = push(&a, &contract);
    assert_eq!(first.bytes_sent, size);
    let after = cached_bytes(&volume);
    if uncached_reads_expected(work.path()) {
        // Up to the kernel's read-ahead may stay, whatever the volume's size: read ahead for one
        // reader while another was reading it (8 MiB here, of 1 GiB as of 32 MiB).
        assert!(after < size / 2, "a push of a volume not in the page cache left {after} of its {size} bytes there");
    } else {
        eprintln!("this kernel or file system may cache what a push reads: {after} of {size} bytes cached");
    }

    // Cached (read by another program), changed, pushed: still cached, and the push is right.
    assert_eq!(fs::read(&volume).unwrap().len() as u64, size);
    overwrite(&volume, 5 << 20, &pseudo_random(4096, 22));
    assert!(cached_bytes(&volume) > size / 8 * 7);
    let second = push(&a, &contract);
    assert_eq!((second.generation, second.extents_sent), (2, 1));
    let kept = cached_bytes(&volume);
    assert!(kept > size / 8 * 7, "a push evicted a cached volume: {kept} of {size} bytes still cached");
    let back = work.path().join("restored.img");
    let restored = restore(&a, &contract, &back);
    assert_eq!((restored.generation, restored.ok), (2, true));
    assert_eq!(fs::read(&back).unwrap(), fs::read(&volume).unwrap());
}

/// Ctrl-C during a push (here while it waits for a holder that is away): exit 130, and the
/// person is told that running it again resumes.
#[test]
fn an_interrupted_push_says_a_rerun_resumes() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let Pair { a, b: _b, sa: _sa, sb, contract } = contracted_pair(&volume, "64MiB");
    drop(sb);
    let child = a
        .cmd("kaana-sync")
        .args(["push", &contract])
        .env("KAANA_CONNECT_TIMEOUT", "60s")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(800));
    let sent = std::process::Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(sent.success());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("run the same push again to resume"), "{}", stderr(&out));
}

#[test]
fn verify_catches_a_lost_extent() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let Pair { a, b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "64MiB");
    push(&a, &contract);
    let lost = &inbound_extents(&b, &contract)[1];
    fs::remove_file(lost).unwrap();
    let out = a.run("kaana-sync", &["verify", &contract]);
    assert_exit(&out, 1);
    let line: RestoreLine = one_json(&out);
    assert!(!line.ok);
    assert_eq!(line.bad_extents, 1);
    assert!(stderr(&out).contains("damaged"), "{}", stderr(&out));
}

/// An extent cut short on the holder's disk (a crash of its file system, a bad sector) does not
/// stop the owner's pushes until something scrubs it: the holder does not list it as held, the
/// next push sends it again, and its put replaces the short file.
#[test]
fn an_extent_cut_short_at_the_holder_is_sent_again_by_the_next_push() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let Pair { a, b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "64MiB");
    let first = push(&a, &contract);
    let short = inbound_extents(&b, &contract)[1].clone();
    let whole = fs::metadata(&short).unwrap().len();
    fs::File::options().write(true).open(&short).unwrap().set_len(whole / 2).unwrap();

    // Nothing changed in the volume; the holder lacks one extent whole.
    let second = push(&a, &contract);
    assert_eq!((second.generation, second.extents_sent), (2, 1));
    assert_eq!(fs::metadata(&short).unwrap().len(), whole, "whole again at the holder");
    assert_eq!(inbound_extents(&b, &contract).len() as u64, first.extents_total);
    let verified: RestoreLine = a.json("kaana-sync", &["verify", &contract]);
    assert!(verified.ok && verified.bad_extents == 0);
    let back = work.path().join("restored.luks");
    assert!(restore(&a, &contract, &back).ok);
    assert_eq!(fs::read(&back).unwrap(), fs::read(&volume).unwrap());
}

/// A push racing a restore of a contract that keeps no history drops the generation being
/// restored: the restore starts again on the new one, keeping nothing of the old, and what it
/// writes is the volume as pushed last.
#[test]
fn a_restore_raced_by_a_push_starts_again_on_the_new_generation() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let Pair { a, b: _b, sa: _sa, sb: _sb, contract } =
        contracted_pair_with(&volume, &["--size", "64MiB", "--history", "0"]);
    let contract = contract.as_str();
    assert_eq!(push(&a, contract).generation, 1);

    // Extents 3 and 4 change (the LUKS payload begins 32 KiB short of 2 MiB): the push has
    // until the restore asks for extent 3, some six seconds after extent 0 is written.
    write_in_luks(&volume, 11 << 20, 64 << 10, 0x5a);
    write_in_luks(&volume, 15 << 20, 64 << 10, 0x5b);
    let back = work.path().join("back.luks");
    let restoring = a
        .cmd("kaana-sync")
        .args(["restore", contract, "--out", back.to_str().unwrap(), "--limit-rate", "2MiB"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Once the first extent of generation 1 is written (the LUKS header), push generation 2.
    let deadline = Instant::now() + Duration::from_secs(30);
    while !fs::read(&back).is_ok_and(|b| b.starts_with(b"LUKS\xba\xbe")) {
        assert!(Instant::now() < deadline, "the restore never wrote its first extent");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(push(&a, contract).generation, 2);
    let out = restoring.wait_with_output().unwrap();
    assert_success(&out);
    let restored: RestoreLine = one_json(&out);
    assert_eq!((restored.generation, restored.ok), (2, true));
    assert_eq!(fs::read(&back).unwrap(), fs::read(&volume).unwrap(), "the volume as pushed last");
}

#[test]
fn a_node_rebuilt_from_its_phrase_restores_from_one_peer() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let original = fs::read(&volume).unwrap();
    let Pair { a, b: _b, sb, sa: _sa, contract } = contracted_pair(&volume, "64MiB");
    push(&a, &contract);
    let phrase: serde_json::Value = a.json("kaana-offer", &["recovery-phrase"]);
    drop(a); // the disk is gone

    let rebuilt = recovered(phrase["recovery_phrase"].as_str().unwrap(), &[]);
    // With no peer to ask, --fetch says what to do; a peer that cannot be reached is named,
    // and the run needs a person (exit 1), not "0 recovered" and all well.
    let out = rebuilt.run("kaana-offer", &["contracts", "--fetch"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("peer add"), "{}", stderr(&out));
    let gone = Identity::generate().unwrap().node_id();
    assert_success(&rebuilt.run("kaana-offer", &["peer", "add", "--no-check", &format!("{gone}@127.0.0.1:9")]));
    let out =
        rebuilt.cmd("kaana-offer").args(["contracts", "--fetch"]).env("KAANA_CONNECT_TIMEOUT", "1s").output().unwrap();
    assert_exit(&out, 1);
    assert!(stderr(&out).contains(&format!("could not ask node {gone}")), "{}", stderr(&out));
    assert!(stderr(&out).contains("0 contract(s) recovered from 0 of 1 peer(s)"), "{}", stderr(&out));
    assert_success(&rebuilt.run("kaana-offer", &["peer", "add", &sb.peer()]));
    let out =
        rebuilt.cmd("kaana-offer").args(["contracts", "--fetch"]).env("KAANA_CONNECT_TIMEOUT", "1s").output().unwrap();
    assert_exit(&out, 1);
    assert!(stderr(&out).contains("1 contract(s) recovered from 1 of 2 peer(s)"), "{}", stderr(&out));
    let contracts: Vec<serde_json::Value> = json_lines(&out);
    assert_eq!(contracts.len(), 1);
    assert_eq!(contracts[0]["id"], contract.as_str());
    let back = work.path().join("back.luks");
    let restored = restore(&rebuilt, &contract, &back);
    assert!(restored.ok);
    assert_eq!(fs::read(&back).unwrap(), original);
}

/// Requests made with A's own key, as a misbehaving or mistaken owner would.
#[test]
fn a_holder_refuses_bad_extents_foreign_manifests_and_oversize_data() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let Pair { a, b, sb, sa: _sa, contract } = contracted_pair(&volume, "64MiB");
    push(&a, &contract);
    let committed_file = b.home.join("inbound").join(&contract).join("committed.json");
    let committed_before = fs::read(&committed_file).unwrap();
    let owner = a.identity();
    let id: RecordId = contract.parse().unwrap();
    let holder = sb.node.parse().unwrap();
    let addr = sb.addr.clone();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = Client::new(owner.clone());
        let conn = client.connect(holder, &addr).await.unwrap();
        let code = |r: Result<Response, NetError>| match r {
            Err(NetError::Remote(e)) => Some(e.code),
            _ => None,
        };

        // Bytes that do not match their hash.
        let data = vec![1u8; 4096];
        let mut ex =
            conn.open(&Request::PutExtent { contract: id, offset: 0, hash: [9; 32], len: 4096 }).await.unwrap();
        ex.send.write_all(&data).await.unwrap();
        ex.finish().unwrap();
        assert_eq!(code(ex.reply().await), Some(ErrorCode::BadRequest));

        // Data past the contract's size, and a volume larger than the contract.
        let hash = *blake3::hash(&data).as_bytes();
        let mut ex = conn.open(&Request::PutExtent { contract: id, offset: 64 << 20, hash, len: 4096 }).await.unwrap();
        let _ = ex.send.write_all(&data).await;
        let _ = ex.finish();
        assert_eq!(code(ex.reply().await), Some(ErrorCode::Refused));
        let begin = Request::PushBegin { contract: id, volume_size: (64 << 20) + 1, extent_size: 4 << 20 };
        assert_eq!(code(conn.request(&begin).await), Some(ErrorCode::Refused));

        // A manifest signed by someone else, and one with an older generation.
        let hashes = [hash];
        let list = encode_list(&hashes);
        let manifest = |generation, signer: &Identity| {
            let body = Manifest {
                contract: id,
                owner: owner.node_id(),
                generation,
                volume_size: 4096,
                extent_size: 4096,
                extent_count: 1,
                extents: kaana_proto::protocol::encoding::hex_encode(&list_hash(&list)),
                created_at: kaana_proto::protocol::time::Timestamp::from_unix(0),
            };
            Signed::sign(body, signer).unwrap()
        };
        let mut ex = conn.open(&Request::PutExtent { contract: id, offset: 0, hash, len: 4096 }).await.unwrap();
        ex.send.write_all(&data).await.unwrap();
        ex.finish().unwrap();
        assert!(matches!(ex.reply().await, Ok(Response::Stored)));
        for (m, expected) in [
            (manifest(5, &Identity::generate().unwrap()), ErrorCode::Unauthorized),
            (manifest(1, &owner), ErrorCode::Refused),
        ] {
            let mut ex = conn.open(&Request::Commit { contract: id, manifest: Box::new(m) }).await.unwrap();
            ex.send.write_all(&list).await.unwrap();
            ex.finish().unwrap();
            assert_eq!(code(ex.reply().await), Some(expected));
        }

        // A manifest naming an extent stored here that is longer than its geometry says (the
        // holder would keep, count and be challenged on other lengths than the owner signed).
        let long = pseudo_random(8192, 77);
        let long_hash = *blake3::hash(&long).as_bytes();
        let mut ex =
            conn.open(&Request::PutExtent { contract: id, offset: 0, hash: long_hash, len: 8192 }).await.unwrap();
        ex.send.write_all(&long).await.unwrap();
        ex.finish().unwrap();
        assert!(matches!(ex.reply().await, Ok(Response::Stored)));
        let long_list = encode_list(&[long_hash]);
        let mut short = manifest(5, &owner).body;
        short.extents = kaana_proto::protocol::encoding::hex_encode(&list_hash(&long_list));
        let mut ex = conn
            .open(&Request::Commit { contract: id, manifest: Box::new(Signed::sign(short, &owner).unwrap()) })
            .await
            .unwrap();
        ex.send.write_all(&long_list).await.unwrap();
        ex.finish().unwrap();
        let refused = ex.reply().await;
        assert_eq!(code(refused), Some(ErrorCode::BadRequest));

        // A node that is not the contract's peer gets nothing.
        let stranger = Client::new(Identity::generate().unwrap());
        let sconn = stranger.connect(holder, &addr).await.unwrap();
        for req in [
            Request::GetManifest { contract: id, generation: None },
            Request::GetExtent { contract: id, hash },
            Request::PushBegin { contract: id, volume_size: 4096, extent_size: 4096 },
        ] {
            assert_eq!(code(sconn.request(&req).await), Some(ErrorCode::Unauthorized), "{req:?}");
        }
        // Nor is a byte of a stranger's commit read: a manifest announcing a million extents,
        // and no list at all, is refused for who sent it.
        let mut huge = manifest(7, &owner).body;
        (huge.volume_size, huge.extent_count) = (1 << 32, 1 << 20);
        let huge = Signed::sign(huge, &owner).unwrap();
        let mut ex = sconn.open(&Request::Commit { contract: id, manifest: Box::new(huge.clone()) }).await.unwrap();
        ex.finish().unwrap();
        assert_eq!(code(ex.reply().await), Some(ErrorCode::Unauthorized));
        // The owner's own manifest must fit its geometry and the contract before its list is read.
        let mut ex = conn.open(&Request::Commit { contract: id, manifest: Box::new(huge) }).await.unwrap();
        ex.finish().unwrap();
        assert_eq!(code(ex.reply().await), Some(ErrorCode::Refused));
        let mut odd = manifest(7, &owner).body;
        odd.extent_count = 2;
        let mut ex = conn
            .open(&Request::Commit { contract: id, manifest: Box::new(Signed::sign(odd, &owner).unwrap()) })
            .await
            .unwrap();
        ex.finish().unwrap();
        assert_eq!(code(ex.reply().await), Some(ErrorCode::BadRequest));
        stranger.close().await;
        client.close().await;
    });
    assert_eq!(fs::read(&committed_file).unwrap(), committed_before, "the committed generation is unchanged");
    let verified: RestoreLine = a.json("kaana-sync", &["verify", &contract]);
    assert!(verified.ok);
}

/// `--limit-rate` holds a push and a restore to the rate (never faster: how close to it they come
/// over 30 s is a figure of `scripts/bench.sh`), the config's `limit_rate` is the default and
/// `--limit-rate 0` lifts it. At 256 KiB/s, the volume's one 1 MiB extent takes 4 s, twice the
/// holder's read time-out (2 s here): the holder cuts off a peer that stalls (below), not one
/// that is slow, and the push and the restore complete.
/// An owner committing generation after generation of lists that name one stored extent
/// thousands of times (no history bytes: the same extent every time) fills the holder with
/// lists no longer: the kept generations' lists stop at the contract's size. Not for good:
/// once the history terms would retire the older ones beside a new one (14 days on), that
/// commit is taken, and they are retired.
#[test]
fn an_owner_cannot_fill_its_holder_with_lists() {
    let work = tempfile::tempdir().unwrap();
    let volume = luks_volume(work.path());
    let Pair { a, b, mut sb, sa: _sa, contract } = contracted_pair(&volume, "16MiB");
    let owner = a.identity();
    let id: RecordId = contract.parse().unwrap();
    let holder = sb.node.parse().unwrap();
    let lists = b.home.join("inbound").join(&contract).join("lists");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let data = pseudo_random(4096, 5);
    let hash = *blake3::hash(&data).as_bytes();
    // 16 MiB in 4 KiB extents, each of them that one: a list of 128 KiB.
    let list = encode_list(&vec![hash; 4096]);
    let commit = async |conn: &kaana_proto::net::transport::Connection, generation: u64, at: u64| {
        let body = Manifest {
            contract: id,
            owner: owner.node_id(),
            generation,
            volume_size: 16 << 20,
            extent_size: 4096,
            extent_count: 4096,
            extents: kaana_proto::protocol::encoding::hex_encode(&list_hash(&list)),
            created_at: kaana_proto::protocol::time::Timestamp::from_unix(at),
        };
        let m = Signed::sign(body, &owner).unwrap();
        let mut ex = conn.open(&Request::Commit { contract: id, manifest: Box::new(m) }).await.unwrap();
        ex.send.write_all(&list).await.unwrap();
        ex.finish().unwrap();
        ex.reply().await
    };
    let now = crate::common::now_unix();
    let addr = sb.addr.clone();
    let (committed, refusal) = rt.block_on(async {
        let client = Client::new(owner.clone());
        let conn = client.connect(holder, &addr).await.unwrap();
        let mut ex = conn.open(&Request::PutExtent { contract: id, offset: 0, hash, len: 4096 }).await.unwrap();
        ex.send.write_all(&data).await.unwrap();
        ex.finish().unwrap();
        assert!(matches!(ex.reply().await, Ok(Response::Stored)));
        for generation in 1..=200u64 {
            match commit(&conn, generation, now).await {
                Ok(Response::Committed { .. }) => {}
                Err(NetError::Remote(e)) => return (generation - 1, e),
                other => panic!("generation {generation}: {other:?}"),
            }
        }
        panic!("200 generations of lists committed");
    });
    assert_eq!(refusal.code, ErrorCode::Refused, "{refusal:?}");
    assert!(refusal.message.contains("allowed for them"), "{}", refusal.message);
    assert_eq!(committed, 128, "generations of 128 KiB lists in 16 MiB");
    let on_disk = || -> u64 { fs::read_dir(&lists).unwrap().flatten().map(|f| f.metadata().unwrap().len()).sum() };
    assert!(on_disk() <= 16 << 20, "{} bytes of lists", on_disk());

    // Fifteen days on, the history terms (14 days) keep none of them beside a new one.
    let later = now + 15 * 86_400;
    let _ = sb.child.kill();
    let _ = sb.child.wait();
    sb = ServerProc::start_at(&b, &[], later);
    let addr = sb.addr.clone();
    let again = rt.block_on(async {
        let client = Client::new(owner.clone());
        let conn = client.connect(holder, &addr).await.unwrap();
        commit(&conn, committed + 1, later).await
    });
    assert!(matches!(again, Ok(Response::Committed { .. })), "{again:?}");
    // Kept: the new one, and the one it replaced (kept 14 days from now on); the rest retired.
    assert_eq!(on_disk(), 2 * (128 << 10), "two lists");
}

#[test]
fn limit_rate_holds_push_and_restore_to_the_rate() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    let original = pseudo_random(1 << 20, 11);
    fs::write(&volume, &original).unwrap();
    let a = TestNode::init_with(&["--capacity", "1GiB", "--volume", volume.to_str().unwrap()]);
    let b = TestNode::init_with(&["--capacity", "1GiB"]);
    let (sa, _sb) = (ServerProc::start(&a, &[]), ServerProc::start(&b, &["--read-timeout", "2s"]));
    let contract = make_contract_sized(&a, &sa, &b, "64MiB");
    let rate = 256u64 << 10;
    // 1 MiB at 256 KiB/s (or 2 Mbit/s): 4 s, less one 50 ms burst.
    let at_least = Duration::from_millis(3900);

    let started = Instant::now();
    let out = a.run("kaana-sync", &["push", &contract, "--extent-size", "1MiB", "--limit-rate", "256KiB"]);
    assert_success(&out);
    let pushed: PushLine = one_json(&out);
    assert!(started.elapsed() >= at_least, "a push of 1 MiB at 256 KiB/s took {:?}", started.elapsed());
    assert_eq!((pushed.bytes_sent, pushed.extents_sent), (1 << 20, 1));
    assert!(pushed.bytes_sent as f64 / pushed.secs <= rate as f64 * 1.02, "{pushed:?}");

    let back = work.path().join("back.img");
    let started = Instant::now();
    let out = a.run("kaana-sync", &["restore", &contract, "--out", back.to_str().unwrap(), "--limit-rate", "2Mbit"]);
    assert_success(&out);
    assert!(started.elapsed() >= at_least, "a restore of 1 MiB at 2 Mbit/s took {:?}", started.elapsed());
    assert_eq!(fs::read(&back).unwrap(), original);

    // The config's limit is the default; --limit-rate 0 lifts it.
    assert_success(&a.run("kaana-offer", &["config", "set", "limit_rate", "256KiB/s"]));
    let shown: serde_json::Value = a.json("kaana-offer", &["config", "get", "limit_rate"]);
    assert_eq!(shown["limit_rate"], rate);
    let started = Instant::now();
    let verified: RestoreLine = a.json("kaana-sync", &["verify", &contract]);
    assert!(verified.ok);
    assert!(started.elapsed() >= at_least, "a verify of 1 MiB at the config's 256 KiB/s took {:?}", started.elapsed());
    let verified: serde_json::Value = a.json("kaana-sync", &["verify", &contract, "--limit-rate", "0"]);
    assert_eq!(verified["ok"], true);
    assert!(verified["secs"].as_f64().unwrap() < 2.0, "without a limit: {verified}");

    // Bad rates, and rates below the lowest limit, are refused before anything is sent.
    for bad in ["fast", "100", "10 parsecs", "500kbit"] {
        let out = a.run("kaana-sync", &["push", &contract, "--limit-rate", bad]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains("--limit-rate"), "{}", stderr(&out));
        assert_exit(&a.run("kaana-offer", &["config", "set", "limit_rate", bad]), 2);
    }
    assert_success(&a.run("kaana-offer", &["config", "set", "limit_rate", "none"]));
    assert!(a.json::<serde_json::Value>("kaana-offer", &["config", "get", "limit_rate"])["limit_rate"].is_null());
}

/// Sends `req` and the first of its bytes (`first`), then nothing: the holder (read time-out 2 s)
/// must cut it off with a time-out, after about 2 s.
async fn stall_and_be_cut_off(conn: &kaana_proto::net::transport::Connection, req: Request, first: &[u8]) {
    let mut ex = conn.open(&req).await.unwrap();
    ex.send.write_all(first).await.unwrap();
    let started = Instant::now();
    let reply = ex.reply().await;
    let took = started.elapsed();
    assert!(
        matches!(&reply, Err(NetError::Remote(e)) if e.code == ErrorCode::BadFrame && e.message.contains("timed out")),
        "{reply:?}"
    );
    assert!(took >= Duration::from_millis(1900) && took < Duration::from_secs(10), "cut off after {took:?}");
}

/// A peer that stops sending in the middle of an extent is cut off after the holder's read
/// time-out (2 s), told why, and its place freed: an honest push goes through at once after it.
/// The same for a patch midway through its parts.
#[test]
fn a_push_that_stalls_mid_extent_is_cut_off_at_the_read_time_out() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(1 << 20, 5)).unwrap();
    let a = TestNode::init_with(&["--capacity", "1GiB", "--volume", volume.to_str().unwrap()]);
    let b = TestNode::init_with(&["--capacity", "1GiB"]);
    let (sa, sb) = (ServerProc::start(&a, &[]), ServerProc::start(&b, &["--read-timeout", "2s"]));
    let contract = make_contract_sized(&a, &sa, &b, "64MiB");
    let owner = a.identity();
    let (id, holder, addr): (RecordId, _, _) = (contract.parse().unwrap(), sb.node.parse().unwrap(), sb.addr.clone());

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let client = Client::new(owner.clone());
        let conn = client.connect(holder, &addr).await.unwrap();
        let data = pseudo_random(1 << 20, 6);
        let hash = *blake3::hash(&data).as_bytes();
        let put = Request::PutExtent { contract: id, offset: 0, hash, len: 1 << 20 };
        stall_and_be_cut_off(&conn, put, &data[..64 << 10]).await;
        client.close().await;
    });
    let pushed: PushLine = a.json("kaana-sync", &["push", &contract]);
    assert_eq!(pushed.bytes_sent, 1 << 20);

    // A patch that stalls midway through its parts is cut off the same way, and stores nothing.
    let stored = || inbound_extents(&b, &contract).len();
    let before = stored();
    rt.block_on(async {
        let client = Client::new(owner.clone());
        let conn = client.connect(holder, &addr).await.unwrap();
        let base = fs::read(inbound_extents(&b, &contract)[0].clone()).unwrap();
        let base_hash = *blake3::hash(&base).as_bytes();
        let mut rebuilt = base.clone();
        rebuilt[..256 << 10].copy_from_slice(&pseudo_random(256 << 10, 7));
        let hash = *blake3::hash(&rebuilt).as_bytes();
        let patch = Request::PatchExtent { contract: id, offset: 0, base: base_hash, hash, len: 1 << 20, parts: 1 };
        stall_and_be_cut_off(&conn, patch, &rebuilt[..64 << 10]).await;
        client.close().await;
    });
    assert_eq!(stored(), before);
    overwrite(&volume, 5, &pseudo_random(64, 8));
    let patched: PushLine = a.json("kaana-sync", &["push", &contract]);
    assert_eq!((patched.extents_sent, patched.bytes_sent), (1, 256 << 10), "{patched:?}");
}
