//! A holder's store killed (SIGKILL, a real process) at random points while it commits
//! generation after generation and retires old ones by the history terms: after every kill it
//! keeps every generation the terms promise, each whole, and never retired more than the rule
//! allows; once a commit completes again, its history fits the allowance, on disk too.

#![allow(clippy::unwrap_used)]

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use kaana_proto::protocol::challenge::Receipt;
use kaana_proto::protocol::encoding;
use kaana_proto::protocol::history::{self, History};
use kaana_proto::protocol::identity::Identity;
use kaana_proto::protocol::manifest::{ExtentHash, Manifest, encode_list, list_hash};
use kaana_proto::protocol::market::RecordId;
use kaana_proto::protocol::record::Signed;
use kaana_proto::protocol::time::Timestamp;
use kaana_proto::store::inbound::Inbound;

/// Extents of the volume, and their size.
const N: usize = 32;
const EXT: usize = 4096;
const T0: u64 = 1_800_000_000;
const GAP: u64 = 6 * 3_600;
const TERMS: History = History { keep_secs: 2 * 86_400, bytes: 24 * EXT as u64 };
const DIR_ENV: &str = "KAANA_TEST_HISTORY_CRASH_DIR";
const ONE_ENV: &str = "KAANA_TEST_HISTORY_CRASH_ONE";

/// xorshift, for deterministic test data.
fn stream(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// The extents generation `g` changes: all of them at 1, then 1 to 12 of them.
fn changed(g: u64) -> Vec<usize> {
    if g == 1 {
        return (0..N).collect();
    }
    let r = stream(g, 16);
    let k = 1 + usize::from(r[0]) % 12;
    let mut out: Vec<usize> = r[1..].iter().map(|b| usize::from(*b) % N).take(k).collect();
    out.sort_unstable();
    out.dedup();
    out
}

/// Each extent's bytes at every generation up to `upto`: `versions[g][i]` is the generation
/// extent `i` last changed at, as of generation `g`.
fn versions(upto: u64) -> Vec<[u64; N]> {
    let mut out = vec![[0u64; N]];
    for g in 1..=upto {
        let mut v = *out.last().unwrap();
        for i in changed(g) {
            v[i] = g;
        }
        out.push(v);
    }
    out
}

fn extent(i: usize, version: u64) -> Vec<u8> {
    stream(version * 1_000 + i as u64, EXT)
}

fn hashes(v: &[u64; N]) -> Vec<ExtentHash> {
    (0..N).map(|i| *blake3::hash(&extent(i, v[i])).as_bytes()).collect()
}

fn view(g: u64, v: &[u64; N]) -> history::Generation {
    history::Generation {
        generation: g,
        committed_at: Timestamp::from_unix(T0 + g * GAP),
        extents: hashes(v).into_iter().map(|h| (h, EXT as u64)).collect(),
    }
}

/// The child: commits generation after generation until killed (or one, with `ONE_ENV`).
#[test]
#[ignore = "run by a_holder_killed_while_it_commits_and_retires_keeps_what_it_promised"]
fn commit_forever() {
    let Ok(dir) = std::env::var(DIR_ENV) else { return };
    let store = Inbound::at_dir(Path::new(&dir));
    let owner = Identity::from_seed([7; 32]);
    let contract: RecordId = "77".repeat(32).parse().unwrap();
    let first = store.committed().unwrap().map_or(1, |(m, _)| m.body.generation + 1);
    let all = versions(first + 10_000);
    for g in first.. {
        let v = &all[g as usize];
        for i in changed(g) {
            let data = extent(i, v[i]);
            store.put(blake3::hash(&data).as_bytes(), &data).unwrap();
        }
        let list = encode_list(&hashes(v));
        let at = Timestamp::from_unix(T0 + g * GAP);
        let manifest = Manifest {
            contract,
            owner: owner.node_id(),
            generation: g,
            volume_size: (N * EXT) as u64,
            extent_size: EXT as u32,
            extent_count: N as u64,
            extents: encoding::hex_encode(&list_hash(&list)),
            created_at: at,
        };
        let manifest = Signed::sign(manifest, &owner).unwrap();
        let receipt = Receipt {
            contract,
            owner: owner.node_id(),
            holder: owner.node_id(),
            generation: g,
            manifest: RecordId::of(&manifest.body).unwrap(),
            at,
        };
        let (_, unretired) =
            store.commit(&manifest, &list, Signed::sign(receipt, &owner).unwrap(), Some(&TERMS), u64::MAX).unwrap();
        assert!(unretired.is_none(), "{unretired:?}");
        store.empty_trash().unwrap();
        if std::env::var(ONE_ENV).is_ok() {
            return;
        }
    }
}

fn child(dir: &Path, one: bool) -> std::process::Child {
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args(["--exact", "commit_forever", "--ignored", "--nocapture"])
        .env(DIR_ENV, dir)
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    if one {
        cmd.env(ONE_ENV, "1");
    }
    cmd.spawn().unwrap()
}

/// The generations the store keeps, checked whole: each extent there with the right bytes.
fn kept_whole(store: &Inbound) -> Vec<u64> {
    let kept: Vec<u64> = store.generations().unwrap().iter().map(|(m, _, _)| m.body.generation).collect();
    let all = versions(*kept.last().unwrap_or(&0));
    for g in &kept {
        for (i, h) in hashes(&all[*g as usize]).iter().enumerate() {
            let mut buf = kaana_proto::store::buffer::AlignedBuf::default();
            assert!(store.read_into(h, &mut buf).unwrap(), "generation {g} lost extent {i}");
            assert_eq!(blake3::hash(&buf).as_bytes(), h, "generation {g}'s extent {i} is damaged");
        }
    }
    kept
}

#[test]
fn a_holder_killed_while_it_commits_and_retires_keeps_what_it_promised() {
    let work = tempfile::tempdir().unwrap();
    let dir = work.path().join("store");
    let store = Inbound::at_dir(&dir);
    let mut rng = stream(42, 64).into_iter().cycle();
    // The oldest and the newest kept generation, as last seen.
    let (mut first_kept, mut last_newest) = (1, 0);
    let mut rounds_with_commits = 0;
    for round in 0..12 {
        let mut c = child(&dir, false);
        let wait = 20 + u64::from(rng.next().unwrap()) * 2;
        std::thread::sleep(Duration::from_millis(wait));
        c.kill().unwrap();
        c.wait().unwrap();
        let kept = kept_whole(&store);
        let Some(&newest) = kept.last() else { continue };
        rounds_with_commits += 1;
        // Commits before the newest completed, retirement and all; the newest's retirement may
        // have been cut anywhere. Replay the rule from what was kept before this round.
        let all = versions(newest);
        let views: Vec<history::Generation> = (1..=newest).map(|g| view(g, &all[g as usize])).collect();
        let mut k = first_kept;
        let mut before_newest = k;
        for m in (last_newest + 1).max(k)..=newest {
            before_newest = k;
            let now = Timestamp::from_unix(T0 + m * GAP);
            let range = &views[(k - 1) as usize..m as usize];
            k += history::to_retire(range, Some(&TERMS), now) as u64;
        }
        let lowest = kept[0];
        assert!(
            (before_newest..=k).contains(&lowest),
            "round {round}: kept from {lowest}, the rule keeps from {k} (from {before_newest} before the last commit)"
        );
        assert_eq!(kept, (lowest..=newest).collect::<Vec<_>>(), "round {round}: the newest generations, none missing");
        if lowest == k {
            let range = &views[(k - 1) as usize..newest as usize];
            assert!(history::history_bytes(range) <= TERMS.bytes, "round {round}");
        }
        eprintln!("round {round}: killed after {wait} ms; keeps generations {lowest}..={newest}");
        (first_kept, last_newest) = (lowest, newest);
    }
    assert!(rounds_with_commits >= 6, "the child committed in {rounds_with_commits} rounds of 12");

    // One commit more, to its end: what stays fits the allowance, on disk too, once the
    // leftovers of the kills are gone.
    let mut c = child(&dir, true);
    assert!(c.wait().unwrap().success());
    let kept = kept_whole(&store);
    let newest = *kept.last().unwrap();
    let all = versions(newest);
    let views: Vec<history::Generation> = kept.iter().map(|g| view(*g, &all[*g as usize])).collect();
    assert!(history::history_bytes(&views) <= TERMS.bytes);
    store.remove_leftovers(std::time::SystemTime::now() + Duration::from_secs(3_600)).unwrap();
    let newest_set: HashSet<ExtentHash> = hashes(&all[newest as usize]).into_iter().collect();
    let on_disk: u64 =
        store.present().unwrap().iter().filter(|(h, _)| !newest_set.contains(h)).map(|(_, len)| len).sum();
    assert!(on_disk <= TERMS.bytes, "{on_disk} bytes of history on disk, allowance {}", TERMS.bytes);
    assert_eq!(kept_whole(&store), kept);
}
