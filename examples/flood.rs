//! The hostile client of the fault tests as a program, for `scripts/bench.sh`:
//!
//! ```text
//! flood ID@HOST:PORT [--as HOME CONTRACT] [--secs N]
//! ```
//!
//! Floods the server at `ID@HOST:PORT` from fresh keys and, with `--as`, as the node whose state
//! directory is `HOME` (a contract peer of the server's under `CONTRACT`, replaying the last
//! manifest it committed there), for `N` seconds (default 60) or until interrupted; then prints
//! what it sent as one JSON line. Only for servers of one's own, on 127.0.0.1.

#[path = "../tests/common/flood.rs"]
mod flood;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context as _, bail};
use kaana_proto::protocol::identity::Identity;

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: flood ID@HOST:PORT [--as HOME CONTRACT] [--secs N]";
    let target = args.first().context(usage)?;
    let (server, addr) = target.split_once('@').context(usage)?;
    let (mut peer, mut secs) = (None, 60u64);
    let mut rest = args[1..].iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--as" => {
                let (home, contract) = (rest.next().context(usage)?, rest.next().context(usage)?);
                let home = std::path::Path::new(home);
                let key = Identity::from_key_file(&std::fs::read_to_string(home.join("identity.key"))?)?;
                let path = home.join("outbound").join(contract).join("committed.json");
                let committed: serde_json::Value = serde_json::from_slice(&std::fs::read(&path)?)?;
                let manifest = serde_json::from_value(committed["manifest"].clone())?;
                peer = Some((key, contract.parse()?, manifest));
            }
            "--secs" => secs = rest.next().context(usage)?.parse()?,
            other => bail!("unknown argument {other}\n{usage}"),
        }
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs();
    let aim = flood::Aim {
        server: server.parse()?,
        addr: addr.to_owned(),
        peer,
        expires_at: kaana_proto::protocol::time::Timestamp::from_unix(now + 86_400),
    };
    let (stop, counts) = (Arc::new(AtomicBool::new(false)), Arc::new(flood::Counts::default()));
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async {
        let flooding = tokio::spawn(flood::flood(aim, stop.clone(), counts.clone()));
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            () = tokio::time::sleep(Duration::from_secs(secs)) => {}
        }
        stop.store(true, Ordering::Relaxed);
        let _ = flooding.await;
    });
    println!("{}", counts.json());
    Ok(())
}
