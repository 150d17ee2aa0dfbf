//! Shared helpers for the cross-tool tests: find the built binaries, make temporary nodes, run
//! tools and decode their JSON.

#![allow(dead_code)]

pub mod flood;
pub mod old_holder;
pub mod story;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::de::DeserializeOwned;

/// The directory holding the workspace's binaries (`target/debug`), found from this test
/// binary's own path (`target/debug/deps/integration-…`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe.parent().and_then(Path::parent).expect("target dir").to_owned();
    assert!(
        dir.join("kaana-offer").exists(),
        "the tools are not built in {}: run `cargo build --workspace` before the tests",
        dir.display()
    );
    dir
}

/// What keeps a tool on this machine when a test clears its environment (as cron and systemd
/// do): no public DHT, no router asked for a port. (`.cargo/config.toml` sets the same for
/// every process the tests start with the environment they inherit.)
pub const OFFLINE_ENV: [(&str, &str); 2] = [("KAANA_DHT_BOOTSTRAP", "none"), ("KAANA_PORT_MAPPING", "off")];

/// Runs a shell command quietly; whether it succeeded.
/// Whether the tests run as root; if not, says that the test calling it is not run, and why.
pub fn as_root(why: &str) -> bool {
    use std::os::unix::fs::MetadataExt as _;
    let root = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
    if !root {
        eprintln!("not run: {why}");
    }
    root
}

pub fn sh(cmd: &str) -> bool {
    Command::new("bash")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A command for one of the tools, with a clean environment for the variables they read.
pub fn tool(name: &str) -> Command {
    let mut cmd = Command::new(bin_dir().join(name));
    cmd.env_remove("KAANA_HOME").env_remove("KAANA_NOW").envs(OFFLINE_ENV).stdin(Stdio::null());
    cmd
}

/// A node's state directory in a temporary folder.
pub struct TestNode {
    pub dir: tempfile::TempDir,
    pub home: PathBuf,
}

impl TestNode {
    /// A folder for a node, not initialised.
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        TestNode { dir, home }
    }

    /// A node made with `kaana-offer init` listening on 127.0.0.1 (port 0).
    pub fn init() -> Self {
        TestNode::init_with(&[])
    }

    /// A node made with `kaana-offer init --listen 127.0.0.1:0` and `extra` arguments. Unless
    /// `extra` sets one, its audit rate is 0: at the default rate about one challenge in fifty
    /// fails on purpose, which only tests about deliberate failures want. Unless `extra` names
    /// a DHT, it has none, and it asks no router for a port.
    pub fn init_with(extra: &[&str]) -> Self {
        let node = TestNode::new();
        let rate: &[&str] = if extra.contains(&"--audit-rate") { &[] } else { &["--audit-rate", "0"] };
        let dht: &[&str] = if extra.contains(&"--dht-bootstrap") { &[] } else { &["--dht-bootstrap", "none"] };
        let out = node
            .cmd("kaana-offer")
            .args(["init", "--listen", "127.0.0.1:0", "--no-port-mapping"])
            .args(rate)
            .args(dht)
            .args(extra)
            .output()
            .unwrap();
        assert_success(&out);
        node
    }

    /// A command for `tool` on this node.
    pub fn cmd(&self, tool_name: &str) -> Command {
        let mut cmd = tool(tool_name);
        cmd.arg("--home").arg(&self.home);
        cmd
    }

    /// Runs `tool` on this node with `args`.
    pub fn run(&self, tool_name: &str, args: &[&str]) -> Output {
        self.cmd(tool_name).args(args).output().expect("run tool")
    }

    /// Runs `tool`, asserts exit 0, and decodes its one JSON line.
    pub fn json<T: DeserializeOwned>(&self, tool_name: &str, args: &[&str]) -> T {
        let out = self.run(tool_name, args);
        assert_success(&out);
        one_json(&out)
    }

    /// This node's key, read from its key file (for a test that speaks the wire itself).
    pub fn identity(&self) -> kaana_proto::protocol::identity::Identity {
        let key = std::fs::read_to_string(self.home.join("identity.key")).expect("the key file");
        kaana_proto::protocol::identity::Identity::from_key_file(&key).expect("a key")
    }

    /// This node's id, from `kaana-offer id`.
    pub fn id(&self) -> String {
        let v: serde_json::Value = self.json("kaana-offer", &["id"]);
        v["node"].as_str().expect("node field").to_owned()
    }
}

/// Asserts that a tool exited 0, showing its stderr otherwise.
pub fn assert_success(out: &Output) {
    assert!(
        out.status.success(),
        "tool failed with {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Asserts an exit code, showing the output otherwise.
pub fn assert_exit(out: &Output, code: i32) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "stdout: {}\nstderr: {}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Decodes stdout as exactly one JSON line.
pub fn one_json<T: DeserializeOwned>(out: &Output) -> T {
    let lines = json_lines::<T>(out);
    assert_eq!(lines.len(), 1, "expected one JSON line, got: {}", String::from_utf8_lossy(&out.stdout));
    lines.into_iter().next().expect("one line")
}

/// Decodes stdout as JSON lines.
pub fn json_lines<T: DeserializeOwned>(out: &Output) -> Vec<T> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect()
}

/// stderr as text.
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A node rebuilt from `phrase` with `kaana-offer init --recover` and `extra` arguments (a
/// server on a free port of 127.0.0.1).
pub fn recovered(phrase: &str, extra: &[&str]) -> TestNode {
    let node = TestNode::new();
    let mut child = node
        .cmd("kaana-offer")
        .args(["init", "--recover", "--listen", "127.0.0.1:0"])
        .args(extra)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut child.stdin.take().unwrap(), phrase.as_bytes()).unwrap();
    assert_success(&child.wait_with_output().unwrap());
    node
}

/// A running `kaana-sync serve`, killed when dropped.
pub struct ServerProc {
    pub child: std::process::Child,
    pub node: String,
    pub addr: String,
}

impl ServerProc {
    /// Starts `kaana-sync serve` for `node` on 127.0.0.1 (a free port) with `extra` arguments,
    /// and waits for its first line.
    pub fn start(node: &TestNode, extra: &[&str]) -> Self {
        Self::spawn(node.cmd("kaana-sync"), extra)
    }

    /// As [`ServerProc::start`], from `cmd` (a node's `kaana-sync`, or a wrapper that runs it).
    pub fn start_cmd(cmd: Command) -> Self {
        Self::spawn(cmd, &[])
    }

    /// As [`ServerProc::start`], with the server's clock set to `t` (`KAANA_NOW`).
    pub fn start_at(node: &TestNode, extra: &[&str], t: u64) -> Self {
        let mut cmd = node.cmd("kaana-sync");
        cmd.env("KAANA_NOW", at(t));
        Self::spawn(cmd, extra)
    }

    fn spawn(mut cmd: Command, extra: &[&str]) -> Self {
        use std::io::BufRead as _;
        let mut child = cmd
            .arg("serve")
            .args(if extra.contains(&"--listen") { &[][..] } else { &["--listen", "127.0.0.1:0"][..] })
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start kaana-sync serve");
        let stdout = child.stdout.take().expect("stdout");
        let mut line = String::new();
        std::io::BufReader::new(stdout).read_line(&mut line).expect("read serve line");
        let v: serde_json::Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("serve printed {line:?}: {e}"));
        ServerProc {
            child,
            node: v["node"].as_str().expect("node").to_owned(),
            addr: v["listen"].as_str().expect("listen").to_owned(),
        }
    }

    /// `ID@HOST:PORT` of this server.
    pub fn peer(&self) -> String {
        format!("{}@{}", self.node, self.addr)
    }

    /// Sends a signal (by name, e.g. "TERM") to the server.
    pub fn signal(&self, name: &str) {
        let status =
            Command::new("kill").arg(format!("-{name}")).arg(self.child.id().to_string()).status().expect("run kill");
        assert!(status.success());
    }

    /// Waits for the server to exit, at most `secs` seconds; its exit code.
    pub fn wait(&mut self, secs: u64) -> Option<i32> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status.code();
            }
            assert!(std::time::Instant::now() < deadline, "server did not exit within {secs}s");
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Asserts that every JSON file in a state directory parses and `events.jsonl` parses line by
/// line, and that no temp file of an interrupted write is left; returns how many files were
/// checked.
pub fn assert_state_consistent(home: &Path) -> usize {
    check_state(home, false)
}

/// Like [`assert_state_consistent`], after a SIGKILL: a temp file of a write the kill cut short
/// may remain (readers never look at it; `kaana-prune` removes it), but nothing else is damaged.
pub fn assert_state_consistent_after_kill(home: &Path) -> usize {
    check_state(home, true)
}

fn check_state(home: &Path, temps_allowed: bool) -> usize {
    let mut checked = 0;
    let mut stack = vec![home.to_owned()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).expect("read state dir") {
            let path = entry.expect("entry").path();
            let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            if name.ends_with(".tmp") {
                assert!(temps_allowed, "leftover temp file {}", path.display());
                continue;
            }
            if path.is_dir() {
                stack.push(path);
            } else if name.ends_with(".json") {
                let text = std::fs::read_to_string(&path).expect("read");
                let v: serde_json::Value =
                    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{} is damaged: {e}", path.display()));
                assert_eq!(v["schema"], 1, "{}", path.display());
                checked += 1;
            } else if name.ends_with(".jsonl") {
                for line in std::fs::read_to_string(&path).expect("read").lines() {
                    serde_json::from_str::<serde_json::Value>(line)
                        .unwrap_or_else(|e| panic!("{} has a damaged line ({e}): {line}", path.display()));
                }
                checked += 1;
            }
        }
    }
    checked
}

/// The passphrase of the test LUKS volumes.
pub const LUKS_PASS: &str = "correct horse battery staple";

fn run_ok(cmd: &mut Command) {
    let out = cmd.output().unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

/// Makes an ext4 file system of `size_mib` holding `files`, encrypted as a LUKS image; returns
/// the image's path.
pub fn make_luks(dir: &Path, name: &str, files: &[(&str, &[u8])], size_mib: u32) -> PathBuf {
    let tree = dir.join(format!("{name}.files"));
    std::fs::create_dir_all(&tree).unwrap();
    for (file, data) in files {
        std::fs::write(tree.join(file), data).unwrap();
    }
    let plain = dir.join(format!("{name}.ext4"));
    run_ok(Command::new("mke2fs").args(["-q", "-t", "ext4", "-d"]).arg(&tree).arg(&plain).arg(format!("{size_mib}M")));
    let luks = dir.join(format!("{name}.luks"));
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "luks", "--object"])
            .arg(format!("secret,id=s,data={LUKS_PASS}"))
            .args(["-o", "key-secret=s,iter-time=10"])
            .arg(&plain)
            .arg(&luks),
    );
    std::fs::remove_file(&plain).unwrap();
    luks
}

fn luks_opts(img: &Path) -> String {
    format!("driver=luks,key-secret=s,file.filename={}", img.display())
}

/// Decrypts a LUKS image to a raw file system image.
pub fn decrypt_luks(img: &Path, out: &Path) {
    run_ok(
        Command::new("qemu-img")
            .args(["convert", "--object"])
            .arg(format!("secret,id=s,data={LUKS_PASS}"))
            .args(["--image-opts", &luks_opts(img), "-O", "raw"])
            .arg(out),
    );
}

/// Writes `len` bytes of `pattern` at `offset` inside the LUKS image, in place.
pub fn write_in_luks(img: &Path, offset: u64, len: u64, pattern: u8) {
    run_ok(
        Command::new("qemu-io")
            .args(["--object", &format!("secret,id=s,data={LUKS_PASS}"), "--image-opts", &luks_opts(img), "-c"])
            .arg(format!("write -P {pattern} {offset} {len}")),
    );
}

/// Reads a file out of a raw ext4 image.
pub fn debugfs_cat(fs_img: &Path, file: &str) -> Vec<u8> {
    let out = Command::new("debugfs").args(["-R", &format!("cat /{file}")]).arg(fs_img).output().unwrap();
    assert!(out.status.success());
    out.stdout
}

/// Deterministic pseudo-random bytes (xorshift), for test data that does not compress.
pub fn pseudo_random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
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

/// Two nodes with running servers and a contract between them (bind every field: a server
/// left out of a destructuring pattern is dropped, and so stopped, at once): A (with `volume`) made the
/// offer, B took it. Capacities of 1 GiB; the contract is `size`.
pub struct Pair {
    pub a: TestNode,
    pub b: TestNode,
    pub sa: ServerProc,
    pub sb: ServerProc,
    pub contract: String,
}

/// Makes a [`Pair`]: `a` is initialised with `--volume volume`.
pub fn contracted_pair(volume: &Path, size: &str) -> Pair {
    contracted_pair_with(volume, &["--size", size])
}

/// [`contracted_pair`], the offer made with `create`'s arguments `offer`.
pub fn contracted_pair_with(volume: &Path, offer: &[&str]) -> Pair {
    let a = TestNode::init_with(&["--capacity", "1GiB", "--volume", volume.to_str().unwrap()]);
    let b = TestNode::init_with(&["--capacity", "1GiB"]);
    let (sa, sb) = (ServerProc::start(&a, &[]), ServerProc::start(&b, &[]));
    let contract = make_contract_with(&a, &sa, &b, offer);
    Pair { a, b, sa, sb, contract }
}

/// `offerer` makes an offer of `size` on its board; `taker` accepts it. Returns the contract id.
pub fn make_contract_sized(offerer: &TestNode, offerer_server: &ServerProc, taker: &TestNode, size: &str) -> String {
    make_contract_with(offerer, offerer_server, taker, &["--size", size])
}

/// `offerer` makes an offer with `create`'s arguments `offer` on its board; `taker` accepts it.
/// Returns the contract id.
pub fn make_contract_with(offerer: &TestNode, offerer_server: &ServerProc, taker: &TestNode, offer: &[&str]) -> String {
    let mut args = vec!["create"];
    args.extend_from_slice(offer);
    let offer: serde_json::Value = offerer.json("kaana-offer", &args);
    let id = offer["id"].as_str().unwrap().to_owned();
    assert_success(&offerer.run("kaana-offer", &["publish", &id]));
    assert_success(&taker.run("kaana-offer", &["list", "--board", &offerer_server.peer()]));
    let contract: serde_json::Value = taker.json("kaana-offer", &["accept", &id]);
    contract["id"].as_str().unwrap().to_owned()
}

/// Seconds since the Unix epoch, now.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).expect("clock").as_secs()
}

/// `secs` as the RFC 3339 text `KAANA_NOW` takes.
pub fn at(secs: u64) -> String {
    kaana_proto::protocol::time::Timestamp::from_unix(secs).to_string()
}

/// How many files there are under `dir`.
pub fn walk_files(dir: &Path) -> usize {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| if e.file_type().map(|t| t.is_dir()).unwrap_or(false) { walk_files(&e.path()) } else { 1 })
        .sum()
}
