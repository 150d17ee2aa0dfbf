//! The computing that a first push cannot skip, timed alone: a floor under any push of this
//! design on this machine, for `scripts/bench.sh` to print beside the push it measures.
//!
//!   cargo run --release -p kaana-proto --example push_work -- [BYTES] [CORES]
//!
//! Per byte of the volume, whatever else a push does: the owner marks it (keyed XXH3), applies
//! the contract's keystream and hashes it (BLAKE3, with its tops); QUIC seals it (AES-128-GCM,
//! in packets of the size loopback reaches); the holder opens it and checks its hash (BLAKE3,
//! with its outboard). Each step runs on one core over a 4 MiB extent in memory, repeated for
//! BYTES (default 1 GiB), the fastest of three rounds: no reading, no copying, no system call,
//! no disk. The sum, spread perfectly over CORES (default: the machine's), is the floor; a real
//! push also copies every byte several times, crosses the kernel's network stack and writes to
//! disk.
//!
//! Then the transport alone: the same BYTES sent from one endpoint to another on 127.0.0.1 with
//! this project's QUIC settings, an extent a stream and four in flight as a push sends them, the
//! receiver taking each packet's bytes as they come and dropping them (no copy, no hash, no
//! disk). The receiver is a second process, as a push's holder is.
//!
//! Prints one JSON line (seconds).

use std::str::FromStr;
use std::time::{Duration, Instant};

use kaana_proto::net::transport::{self, Client, Traffic};
use kaana_proto::protocol::identity::Identity;
use kaana_proto::protocol::manifest::{DEFAULT_EXTENT_SIZE, Keystream};
use kaana_proto::protocol::market::RecordId;
use kaana_proto::protocol::{proof, push};
use ring::aead::{AES_128_GCM, Aad, LessSafeKey, Nonce, UnboundKey};

/// A QUIC packet's payload on loopback, where MTU discovery reaches the transport's 6000 bytes.
const PACKET: usize = 5_900;

fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("--serve") {
        return tokio::runtime::Runtime::new()?.block_on(serve());
    }
    let bytes: u64 = args.next().map_or(Ok(1 << 30), |a| a.parse())?;
    let cores: u64 = match args.next() {
        Some(a) => a.parse()?,
        None => std::thread::available_parallelism().map_or(1, |n| n.get() as u64),
    };
    let extent = DEFAULT_EXTENT_SIZE as usize;
    let extents = bytes.div_ceil(extent as u64).max(1);
    let owner = Identity::from_seed([7; 32]);
    let contract = RecordId::from_str(&"ab".repeat(32))?;
    let (marks, stream) = (push::MarkKey::new(&owner, &contract), Keystream::new(&owner, &contract));
    let quic = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &[3; 16]).map_err(|_| anyhow::anyhow!("AES key"))?);
    let mut data: Vec<u8> = (0..extent).map(|i| (i as u32).wrapping_mul(2_654_435_761) as u8).collect();
    let mut packets = data.clone();

    // Each step over every extent; what it computes is folded into `sink`, so that none is
    // optimised away.
    let mut sink = 0u8;
    let mut time = |step: &mut dyn FnMut(u64) -> u8| {
        let fastest = (0..3)
            .map(|_| {
                let start = Instant::now();
                for index in 0..extents {
                    sink ^= step(index);
                }
                start.elapsed()
            })
            .min()
            .unwrap_or(Duration::ZERO);
        fastest.as_secs_f64()
    };
    let marks_s = time(&mut |_| marks.marks(&data)[0][0]);
    let keystream_s = time(&mut |index| {
        stream.apply(index * extent as u64, &mut data);
        data[0]
    });
    let hash_s = time(&mut |_| proof::hash_with_tops(&data, proof::TOP_LEVELS).0.as_bytes()[0]);
    let check_s = time(&mut |_| proof::outboard(&data).1.as_bytes()[0]);
    // Each packet sealed in place; then sealed and opened again (its plaintext back), the open
    // being that round trip less the seal alone. (Nonces repeat from round to round: harmless
    // with this made-up key, which seals nothing secret.)
    let nonce = |index: u64, packet: usize| {
        let mut n = [0; 12];
        n[4..].copy_from_slice(&(index << 20 | packet as u64).to_be_bytes());
        Nonce::assume_unique_for_key(n)
    };
    let mut seal_open = |open: bool| -> anyhow::Result<f64> {
        let mut failed = false;
        let s = time(&mut |index| {
            let mut last = 0;
            for (j, packet) in packets.chunks_mut(PACKET).enumerate() {
                match quic.seal_in_place_separate_tag(nonce(index, j), Aad::empty(), packet) {
                    Ok(tag) if open => {
                        match quic.open_in_place_separate_tag(nonce(index, j), Aad::empty(), tag, packet, 0..) {
                            Ok(plain) => last ^= plain[0],
                            Err(_) => failed = true,
                        }
                    }
                    Ok(tag) => last ^= tag.as_ref()[0],
                    Err(_) => failed = true,
                }
            }
            last
        });
        anyhow::ensure!(!failed, "AES-128-GCM failed");
        Ok(s)
    };
    let seal_s = seal_open(false)?;
    let open_s = (seal_open(true)? - seal_s).max(0.0);
    let transport_s = tokio::runtime::Runtime::new()?.block_on(transport_alone(extents, extent))?;
    let cpu_s = marks_s + keystream_s + hash_s + seal_s + open_s + check_s;
    let line = serde_json::json!({
        "bytes": extents * extent as u64, "cores": cores,
        "marks_s": marks_s, "keystream_s": keystream_s, "hash_s": hash_s,
        "seal_s": seal_s, "open_s": open_s, "check_s": check_s,
        "cpu_s": cpu_s, "floor_s": cpu_s / cores.max(1) as f64, "transport_s": transport_s, "sink": sink,
    });
    println!("{line}");
    Ok(())
}

/// Extents a push has in flight at most (`kaana-sync push`'s default).
const IN_FLIGHT: usize = 4;

/// The receiving end (`--serve`): prints its address, takes one connection's streams, answers
/// each with one byte once it has taken its last, and prints how many bytes it took.
async fn serve() -> anyhow::Result<()> {
    let holder = Identity::from_seed([1; 32]);
    let server = transport::endpoint("127.0.0.1:0".parse()?, Some(transport::server_config(&holder)?), Traffic::Bulk)?;
    println!("{}", server.local_addr()?);
    let mut taken = 0u64;
    // A sender that never comes (it failed first) leaves this process after a minute; one that
    // vanishes mid-way, after QUIC's idle time-out.
    if let Ok(Some(incoming)) = tokio::time::timeout(Duration::from_secs(60), server.accept()).await {
        let conn = incoming.await?;
        transport::open_up(&conn);
        while let Ok((mut send, mut recv)) = conn.accept_bi().await {
            while let Some(chunk) = recv.read_chunk(usize::MAX, true).await? {
                taken += chunk.bytes.len() as u64;
            }
            send.write_all(&[1]).await?;
            send.finish()?;
        }
    }
    println!("{taken}");
    Ok(())
}

/// Seconds to carry `extents` extents of `extent` bytes to a receiver in another process on
/// 127.0.0.1 ([`serve`]).
async fn transport_alone(extents: u64, extent: usize) -> anyhow::Result<f64> {
    use std::io::BufRead;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .arg("--serve")
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let mut out = std::io::BufReader::new(child.stdout.take().ok_or_else(|| anyhow::anyhow!("no stdout"))?);
    let mut addr = String::new();
    out.read_line(&mut addr)?;
    anyhow::ensure!(!addr.trim().is_empty(), "the receiving process did not start (it said nothing)");
    let holder = Identity::from_seed([1; 32]).node_id();
    let client = Client::new(Identity::from_seed([2; 32]));
    let conn = client.connect(holder, addr.trim()).await?;
    let data = bytes::Bytes::from(vec![5u8; extent]);
    let start = Instant::now();
    let mut sends = tokio::task::JoinSet::new();
    for _ in 0..extents {
        if sends.len() == IN_FLIGHT {
            sends.join_next().await.transpose()?.transpose()?;
        }
        let mut ex = conn.open_stream().await?;
        let data = data.clone();
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
    let mut taken = String::new();
    out.read_line(&mut taken)?;
    child.wait()?;
    let taken: u64 = taken.trim().parse()?;
    anyhow::ensure!(taken == extents * extent as u64, "the server took {taken} bytes, not {}", extents * extent as u64);
    Ok(took)
}
