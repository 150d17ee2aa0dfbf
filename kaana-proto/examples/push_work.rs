//! What a first push of this implementation must do, timed apart from everything else it does:
//! for `scripts/bench.sh` to print beside the push it measures, on the same machine at the same
//! moment.
//!
//!   cargo run --release -p kaana-proto --example push_work -- [BYTES] [CORES]
//!
//! **Its computing.** Per byte of the volume, whatever else a push does: the owner marks it
//! (keyed XXH3), applies the contract's keystream and hashes it (BLAKE3, with its tops); QUIC
//! seals it (AES-128-GCM, in packets of the size loopback reaches); the holder opens it and
//! checks its hash (BLAKE3, with its outboard). Each step runs on one core over the extents of
//! BYTES (default 1 GiB) from one buffer in memory, the fastest of three rounds: no reading, no
//! copying, no system call, no disk.
//!
//! **QUIC alone.** The same BYTES sent from this process to a second one (`--serve`) over
//! 127.0.0.1 with this project's QUIC endpoints and settings, an extent a stream and as many in
//! flight as a push has, each stream answered with one byte once its last has come; the
//! receiver drops what it gets (no copy, no hash, no disk). The fastest of three transfers, and
//! the CPU both processes spent in it.
//!
//! **The least a push could take** doing this work and nothing else, on CORES cores (default:
//! the machine's) kept perfectly busy: QUIC alone's CPU and the owner's and the holder's own
//! computing (the marks, keystream and hashes: QUIC's sealing and opening are in QUIC alone's
//! CPU already), over CORES. A real push also reads the volume, copies each extent into the
//! holder's buffer, writes and syncs it, and keeps records.
//!
//! Prints one JSON line (seconds).

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::str::FromStr;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use kaana_proto::net::transport::{self, Client, MAX_UDP_PAYLOAD, Traffic};
use kaana_proto::node::backup::PUSH_IN_FLIGHT;
use kaana_proto::protocol::identity::Identity;
use kaana_proto::protocol::manifest::{DEFAULT_EXTENT_SIZE, Keystream};
use kaana_proto::protocol::market::RecordId;
use kaana_proto::protocol::{proof, push};
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, Tag, UnboundKey};

/// The made-up keys of the two ends of QUIC alone: the receiver's, which the sender expects.
const RECEIVER_SEED: [u8; 32] = [1; 32];
const SENDER_SEED: [u8; 32] = [2; 32];
/// Rounds of each measure, of which the fastest counts.
const ROUNDS: usize = 3;
/// A QUIC packet's payload at the largest packets this project sends (on loopback MTU discovery
/// reaches them): less the packet's header and its stream frame's.
const PACKET: usize = MAX_UDP_PAYLOAD as usize - 64;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--serve") {
        return tokio::runtime::Runtime::new()?.block_on(serve());
    }
    let bytes: u64 = args.next().map_or(Ok(1 << 30), |a| a.parse()).context("BYTES")?;
    let cores: u64 = match args.next() {
        Some(a) => a.parse().context("CORES")?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    };
    anyhow::ensure!(bytes > 0 && cores > 0, "BYTES and CORES must be more than 0");
    let extent = u64::from(DEFAULT_EXTENT_SIZE);
    // Each extent's length: whole extents, the last one short if BYTES says so.
    let lens: Vec<usize> = (0..bytes.div_ceil(extent)).map(|i| (bytes - i * extent).min(extent) as usize).collect();

    let c = computing(&lens)?;
    let (quic_s, sender_cpu_s, receiver_cpu_s) = fastest_transfer(&lens)?;
    let quic_cpu_s = sender_cpu_s + receiver_cpu_s;
    let own_cpu_s = c.marks + c.keystream + c.hash + c.check;
    let cpu_s = own_cpu_s + c.seal + c.open;
    let line = serde_json::json!({
        "bytes": bytes, "cores": cores,
        "marks_s": c.marks, "keystream_s": c.keystream, "hash_s": c.hash,
        "seal_s": c.seal, "open_s": c.open, "check_s": c.check,
        "cpu_s": cpu_s, "computing_s": cpu_s / cores as f64,
        "transport_s": quic_s, "transport_cpu_s": quic_cpu_s,
        "sender_cpu_s": sender_cpu_s, "receiver_cpu_s": receiver_cpu_s,
        "least_s": (quic_cpu_s + own_cpu_s) / cores as f64,
    });
    println!("{line}");
    Ok(())
}

/// Seconds of one core each step of a first push's computing takes over extents of `lens`.
struct Computing {
    marks: f64,
    keystream: f64,
    hash: f64,
    seal: f64,
    open: f64,
    check: f64,
}

fn computing(lens: &[usize]) -> anyhow::Result<Computing> {
    let extent = DEFAULT_EXTENT_SIZE as usize;
    let owner = Identity::from_seed([7; 32]);
    let contract = RecordId::from_str(&"ab".repeat(32))?;
    let (marks, stream) = (push::MarkKey::new(&owner, &contract), Keystream::new(&owner, &contract));
    let quic = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[3; 16]).map_err(|_| anyhow::anyhow!("AES key"))?);
    let mut data: Vec<u8> = (0..extent).map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8).collect();
    // What each step computes is folded into `sink`, printed nowhere but read, so that no step
    // is optimised away.
    let mut sink = 0u8;
    let mut fastest = |step: &mut dyn FnMut(u64, &mut [u8]) -> u8| {
        let mut best = Duration::MAX;
        for _ in 0..ROUNDS {
            let start = Instant::now();
            for (index, &len) in lens.iter().enumerate() {
                sink ^= step(index as u64, &mut data[..len]);
            }
            best = best.min(start.elapsed());
        }
        best.as_secs_f64()
    };
    let c_marks = fastest(&mut |_, d| marks.marks(d)[0][0]);
    let c_keystream = fastest(&mut |index, d| {
        stream.apply(index * extent as u64, d);
        d[0]
    });
    let c_hash = fastest(&mut |_, d| proof::hash_with_tops(d, proof::TOP_LEVELS).0.as_bytes()[0]);
    let c_check = fastest(&mut |_, d| proof::outboard(d).1.as_bytes()[0]);
    let (c_seal, c_open) = seal_and_open(&quic, &mut data, lens)?;
    std::hint::black_box(sink);
    Ok(Computing { marks: c_marks, keystream: c_keystream, hash: c_hash, seal: c_seal, open: c_open, check: c_check })
}

/// QUIC's packet protection over every extent: each extent's packets sealed in place (their
/// tags kept), then opened again, each timed apart; the fastest round of each.
fn seal_and_open(key: &LessSafeKey, data: &mut [u8], lens: &[usize]) -> anyhow::Result<(f64, f64)> {
    // Nonces repeat from round to round: harmless with this made-up key, which seals nothing.
    let nonce = |index: usize, packet: usize| {
        let mut n = [0; 12];
        n[4..].copy_from_slice(&((index as u64) << 20 | packet as u64).to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let mut tags: Vec<Tag> = Vec::with_capacity(data.len().div_ceil(PACKET));
    let (mut best_seal, mut best_open) = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        let (mut seal, mut open) = (Duration::ZERO, Duration::ZERO);
        for (index, &len) in lens.iter().enumerate() {
            tags.clear();
            let start = Instant::now();
            for (j, packet) in data[..len].chunks_mut(PACKET).enumerate() {
                tags.push(
                    key.seal_in_place_separate_tag(nonce(index, j), Aad::empty(), packet)
                        .map_err(|_| anyhow::anyhow!("seal"))?,
                );
            }
            let sealed = Instant::now();
            for ((j, packet), tag) in data[..len].chunks_mut(PACKET).enumerate().zip(&tags) {
                key.open_in_place_separate_tag(nonce(index, j), Aad::empty(), *tag, packet, 0..)
                    .map_err(|_| anyhow::anyhow!("a packet sealed here did not open"))?;
            }
            seal += sealed - start;
            open += sealed.elapsed();
        }
        best_seal = best_seal.min(seal);
        best_open = best_open.min(open);
    }
    Ok((best_seal.as_secs_f64(), best_open.as_secs_f64()))
}

/// The fastest of [`ROUNDS`] transfers of extents of `lens` to a fresh receiver: its seconds,
/// and the seconds of CPU the sender and the receiver spent in it.
fn fastest_transfer(lens: &[usize]) -> anyhow::Result<(f64, f64, f64)> {
    let total: u64 = lens.iter().map(|&l| l as u64).sum();
    let mut best = (f64::MAX, 0.0, 0.0);
    for _ in 0..ROUNDS {
        let receiver = Receiver::start()?;
        let runtime = tokio::runtime::Runtime::new()?;
        let before = cpu_of_this_process()?;
        let took = runtime.block_on(send(&receiver.addr, lens))?;
        let sender_cpu = cpu_of_this_process()? - before;
        drop(runtime);
        let (taken, receiver_cpu) = receiver.finish()?;
        anyhow::ensure!(taken == total, "the receiver took {taken} bytes, not {total}");
        if took < best.0 {
            best = (took, sender_cpu, receiver_cpu);
        }
    }
    Ok(best)
}

/// The receiving process: killed if the sender gives up on it.
struct Receiver {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
    addr: String,
}

impl Receiver {
    fn start() -> anyhow::Result<Self> {
        let mut child =
            Command::new(std::env::current_exe()?).arg("--serve").stdout(Stdio::piped()).spawn().context("--serve")?;
        let out = child.stdout.take().map(BufReader::new);
        let mut receiver = Receiver { child, out: out.context("the receiver's output")?, addr: String::new() };
        receiver.out.read_line(&mut receiver.addr)?;
        receiver.addr = receiver.addr.trim().to_owned();
        anyhow::ensure!(!receiver.addr.is_empty(), "the receiving process did not start (it said nothing)");
        Ok(receiver)
    }

    /// Waits for the receiver's end: the bytes it took and its seconds of CPU.
    fn finish(mut self) -> anyhow::Result<(u64, f64)> {
        let mut line = String::new();
        self.out.read_line(&mut line)?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "the receiving process failed ({status})");
        let mut words = line.split_whitespace();
        let taken = words.next().context("the receiver's count")?.parse().context("the receiver's count")?;
        let cpu = words.next().context("the receiver's CPU")?.parse().context("the receiver's CPU")?;
        Ok((taken, cpu))
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Seconds of CPU this process has spent, all its threads (`/proc/self/stat`, in the kernel's
/// USER_HZ: 100 a second on Linux).
fn cpu_of_this_process() -> anyhow::Result<f64> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // The fields after the command's name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').context("/proc/self/stat")?.1.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).context("/proc/self/stat");
    // utime and stime are the 14th and 15th fields; the name was the 2nd.
    Ok((ticks(11)? + ticks(12)?) as f64 / 100.0)
}

/// The receiving end (`--serve`): prints its address, takes one connection's streams, answers
/// each with one byte once it has taken its last, and prints the bytes it took and its CPU.
async fn serve() -> anyhow::Result<()> {
    let holder = Identity::from_seed(RECEIVER_SEED);
    let server = transport::endpoint("127.0.0.1:0".parse()?, Some(transport::server_config(&holder)?), Traffic::Bulk)?;
    println!("{}", server.local_addr()?);
    let before = cpu_of_this_process()?;
    let mut taken = 0u64;
    // A sender that never comes (it failed first) leaves this process after a minute; one that
    // vanishes mid-way, after QUIC's idle time-out.
    if let Ok(Some(incoming)) = tokio::time::timeout(Duration::from_secs(60), server.accept()).await {
        let conn = incoming.await?;
        transport::open_up(&conn);
        // Every stream at once, as a holder takes them: one read at a time would leave the
        // others' bytes filling the connection's window.
        let mut streams = tokio::task::JoinSet::new();
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            streams.spawn(async move {
                let mut bytes = 0u64;
                while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                    bytes += chunk.bytes.len() as u64;
                }
                send.write_all(&[1]).await?;
                send.finish()?;
                Ok::<_, anyhow::Error>(bytes)
            });
        }
        while let Some(bytes) = streams.join_next().await {
            taken += bytes??;
        }
    }
    println!("{taken} {}", cpu_of_this_process()? - before);
    Ok(())
}

/// Sends extents of `lens` to the receiver at `addr`, [`PUSH_IN_FLIGHT`] streams at once, each
/// waiting for its answer; the seconds it took.
async fn send(addr: &str, lens: &[usize]) -> anyhow::Result<f64> {
    let holder = Identity::from_seed(RECEIVER_SEED).node_id();
    let client = Client::new(Identity::from_seed(SENDER_SEED));
    let conn = client.connect(holder, addr).await?;
    let data = bytes::Bytes::from(vec![5u8; DEFAULT_EXTENT_SIZE as usize]);
    let start = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for &len in lens {
        if sends.len() == PUSH_IN_FLIGHT {
            sends.join_next().await.transpose()?.transpose()?;
        }
        let mut ex = conn.open_stream().await?;
        let data = data.slice(..len);
        sends.spawn(async move {
            ex.send_bulk(data).await?;
            ex.finish()?;
            let mut answer = [0u8; 1];
            ex.read_bulk(&mut answer, "the answer").await?;
            Ok::<_, anyhow::Error>(())
        });
    }
    while let Some(sent) = sends.join_next().await {
        sent??;
    }
    let took = start.elapsed().as_secs_f64();
    conn.close();
    client.close().await;
    Ok(took)
}
