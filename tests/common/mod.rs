//! Shared helpers for the cross-tool tests: find the built binaries, make temporary nodes, run
//! tools and decode their JSON.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use serde::de::DeserializeOwned;

/// The directory holding the workspace's binaries (`target/debug`), found from this test
/// binary's own path (`target/debug/deps/integration-…`).
pub fn bin_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary path");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target dir")
        .to_owned();
    assert!(
        dir.join("kaana-offer").exists(),
        "the tools are not built in {}: run `cargo build --workspace` before the tests",
        dir.display()
    );
    dir
}

/// A command for one of the tools, with a clean environment for the variables they read.
pub fn tool(name: &str) -> Command {
    let mut cmd = Command::new(bin_dir().join(name));
    cmd.env_remove("KAANA_HOME")
        .env_remove("KAANA_NOW")
        .stdin(Stdio::null());
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
        let node = TestNode::new();
        let out = node.run("kaana-offer", &["init", "--listen", "127.0.0.1:0"]);
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
    assert_eq!(
        lines.len(),
        1,
        "expected one JSON line, got: {}",
        String::from_utf8_lossy(&out.stdout)
    );
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
