//! The README's "A real set-up between two machines" and "Restore after losing everything", run
//! as written: the commands are read from the README itself, so that what it tells a person to
//! type is what this test runs.
//!
//! Two nodes, alice and bob, live on this machine. What a container cannot do is set aside, each
//! by name below (creating users, the LUKS device and its udev rule, systemd, the real crontab:
//! `the_installed_crontab_runs_under_crons_environment` runs its lines); everything else runs,
//! with the machine's paths, hosts, ids and sizes replaced by the test's.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use crate::common::{OFFLINE_ENV, ServerProc, assert_success, bin_dir, decrypt_luks, json_lines, make_luks, one_json};
use crate::scripts::{readme, repo};

/// The text of the README between the heading `from` and the next heading of its level.
fn section(text: &str, from: &str) -> String {
    let start = text.find(from).unwrap_or_else(|| panic!("the README has no {from:?}"));
    let body = &text[start + from.len()..];
    let end = body.find("\n## ").unwrap_or(body.len());
    body[..end].to_owned()
}

/// The commands of a README section, in order: each line of its `sh` blocks (continuation lines
/// joined), and each code span of its prose that is a command a person runs on the node
/// (`sudo -u kaana …`, `systemctl …`, `crontab …`).
fn commands(section: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, part) in section.split("```").enumerate() {
        if i % 2 == 1 {
            let block = part.strip_prefix("sh\n").expect("code blocks of a set-up are sh blocks");
            let joined = block.replace("\\\n", " ");
            out.extend(
                joined.lines().map(|l| l.split_whitespace().collect::<Vec<_>>().join(" ")).filter(|l| !l.is_empty()),
            );
        } else {
            let prose = part.split_whitespace().collect::<Vec<_>>().join(" ");
            for (j, span) in prose.split('`').enumerate() {
                if j % 2 == 1 && ["sudo -u kaana ", "systemctl ", "crontab "].iter().any(|p| span.starts_with(p)) {
                    out.push(span.to_owned());
                }
            }
        }
    }
    out
}

/// One node of the set-up: where its paths and host point on this machine.
struct Machine {
    name: &'static str,
    home: PathBuf,
    volume: PathBuf,
    prefix: PathBuf,
    addr: String,
    server: Option<ServerProc>,
}

impl Machine {
    fn new(work: &Path, name: &'static str) -> Self {
        let contents = format!("{name}'s photos");
        let volume = make_luks(work, name, &[("photos.txt", contents.as_bytes())], 8);
        // A free loopback port for its server: the README's 7447 on 0.0.0.0 is for a real host.
        let port = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        Machine {
            name,
            home: work.join(name).join("var/lib/kaana"),
            volume,
            prefix: work.join(name).join("usr/local"),
            addr: format!("127.0.0.1:{port}"),
            server: None,
        }
    }

    /// Runs `command` as the README writes it, in cron's kind of environment (nothing but a
    /// PATH, the installed tools first), from the repository's root.
    fn run(&self, command: &str) -> Output {
        Command::new("sh")
            .args(["-c", command])
            .current_dir(repo())
            .env_clear()
            .envs(OFFLINE_ENV)
            .env("PATH", format!("{}/bin:/usr/bin:/bin:/usr/sbin:/sbin", self.prefix.display()))
            .output()
            .unwrap()
    }

    fn tool(&self, args: &str) -> Output {
        self.run(&format!("kaana-offer --home {} {args}", self.home.display()))
    }

    /// `systemctl enable --now kaana-sync`: the unit's `Environment` and `ExecStart`, localised
    /// the way `install.sh` localises them.
    fn start_service(&mut self) {
        use std::io::BufRead as _;
        let unit = fs::read_to_string(repo().join("scripts/kaana-sync.service")).unwrap();
        let localise = |s: &str| {
            s.replace("/usr/local", self.prefix.to_str().unwrap())
                .replace("/var/lib/kaana", self.home.to_str().unwrap())
        };
        let value = |key: &str| unit.lines().find_map(|l| l.strip_prefix(key)).map(localise).expect(key);
        let (env, exec) = (value("Environment="), value("ExecStart="));
        let (name, env_value) = env.split_once('=').unwrap();
        let mut words = exec.split_whitespace();
        let mut child = Command::new(words.next().unwrap())
            .args(words)
            .env_clear()
            .envs(OFFLINE_ENV)
            .env("PATH", "/usr/bin:/bin")
            .env(name, env_value)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("serve said {line:?}: {e}"));
        assert_eq!(v["listen"], self.addr.as_str(), "the service listens where the node is configured to");
        let node = v["node"].as_str().unwrap().to_owned();
        self.server = Some(ServerProc { child, node, addr: self.addr.clone() });
    }
}

/// Replaces what names the README's machines by what names the test's, and refuses a command
/// that still holds a placeholder.
fn localise(command: &str, on: &Machine, names: &BTreeMap<&str, String>) -> String {
    let mut c = command.strip_prefix("sudo -u kaana ").unwrap_or(command).to_owned();
    for (from, to) in names {
        c = c.replace(from, to);
    }
    c = c.replace("/var/lib/kaana", on.home.to_str().unwrap()).replace("/dev/sdb1", on.volume.to_str().unwrap());
    // The sizes of real disks; this machine's temporary space is smaller.
    c = c.replace("--capacity 250GiB", "--capacity 1GiB").replace("--size 120GiB", "--size 256MiB");
    let placeholder = c.split(|ch: char| !ch.is_ascii_alphanumeric() && ch != '_').find(|w| w.ends_with("_ID"));
    assert!(placeholder.is_none(), "{c}: {placeholder:?} is not known yet (the README's order changed?)");
    c
}

#[test]
fn the_real_set_up_runs_as_written() {
    let text = readme();
    let setup = commands(&section(&text, "## A real set-up between two machines"));
    let work = tempfile::tempdir().unwrap();
    let mut alice = Machine::new(work.path(), "alice");
    let mut bob = Machine::new(work.path(), "bob");
    let mut names: BTreeMap<&str, String> = BTreeMap::new();
    names.insert("alice.example.org:7447", alice.addr.clone());
    names.insert("bob.example.org:7447", bob.addr.clone());

    let (mut ran, mut aside) = (Vec::new(), Vec::new());
    for command in &setup {
        let c = command.strip_prefix("sudo -u kaana ").unwrap_or(command);
        let subcommand =
            c.split_whitespace().find(|w| !w.starts_with('-') && !w.starts_with('/') && !w.starts_with("kaana-"));
        // Which machine a command runs on: steps 1-3 and 5 on each, step 4's offer on alice and
        // its acceptance on bob.
        let on: &[&str] = match (c.split_whitespace().next().unwrap(), subcommand) {
            ("cryptsetup" | "apt-get" | "useradd" | "sed" | "crontab", _) => {
                aside.push(command.clone());
                continue;
            }
            ("systemctl", _) => {
                alice.start_service();
                bob.start_service();
                ran.push(command.clone());
                continue;
            }
            ("scripts/install.sh", _) | ("kaana-offer", Some("init" | "recovery-phrase")) => &["alice", "bob"],
            ("kaana-sync", Some("push")) => &["alice", "bob"],
            ("kaana-offer", Some("create" | "publish")) => &["alice"],
            ("kaana-offer", Some("list" | "accept")) => &["bob"],
            other => panic!("the set-up has a command this test does not know, {other:?}: {command}"),
        };
        for machine in [&alice, &bob].into_iter().filter(|m| on.contains(&m.name)) {
            // What alice's steps name of alice, bob's name of bob.
            let own = if on.len() == 2 {
                command.replace("alice.example.org", &format!("{}.example.org", machine.name))
            } else {
                command.clone()
            };
            let mut c = localise(&own, machine, &names);
            if c.starts_with("scripts/install.sh") {
                // Into the test's prefix, nothing for the system (no user, unit or crontab here).
                c = format!(
                    "{c} --no-system --prefix {} --bin-dir {} --home {}",
                    machine.prefix.display(),
                    bin_dir().display(),
                    machine.home.display()
                );
                fs::create_dir_all(machine.home.parent().unwrap()).unwrap();
            }
            let out = machine.run(&c);
            assert_success(&out);
            let lines: Vec<serde_json::Value> =
                if c.contains(" list ") || c.contains(" push ") { json_lines(&out) } else { Vec::new() };
            if c.contains(" init ") {
                // The service binds the loopback here, not the README's 0.0.0.0.
                assert_success(&machine.tool(&format!("config set listen {}", machine.addr)));
                let id: serde_json::Value = one_json(&machine.tool("id"));
                names.insert(
                    if machine.name == "alice" { "ALICE_ID" } else { "BOB_ID" },
                    id["node"].as_str().unwrap().to_owned(),
                );
            } else if c.contains(" recovery-phrase") {
                let phrase: serde_json::Value = one_json(&out);
                fs::write(
                    work.path().join(format!("{}.phrase", machine.name)),
                    phrase["recovery_phrase"].as_str().unwrap(),
                )
                .unwrap();
            } else if c.contains(" list ") {
                assert_eq!(lines.len(), 1, "bob sees alice's offer: {lines:?}");
                assert_eq!(lines[0]["node"], names["ALICE_ID"].as_str());
                names.insert("OFFER_ID", lines[0]["id"].as_str().unwrap().to_owned());
            } else if c.contains(" push ") {
                assert!(lines.iter().any(|l| l["generation"] == 1), "{} pushed: {lines:?}", machine.name);
            }
            ran.push(c);
        }
    }
    let kinds: Vec<&str> = aside.iter().map(|c| c.split_whitespace().next().unwrap()).collect();
    assert_eq!(kinds, ["cryptsetup", "cryptsetup", "apt-get", "useradd", "sed", "crontab"], "set aside: {aside:?}");
    assert_eq!(
        ran.len(),
        13,
        "each machine: install, init, recovery-phrase, push; the service; the offer and its acceptance: {ran:?}"
    );

    // Both hold the same contract, and each side's copy is at the other.
    let contracts = |m: &Machine| -> Vec<serde_json::Value> { json_lines(&m.tool("contracts")) };
    let (ca, cb) = (contracts(&alice), contracts(&bob));
    assert_eq!((ca.len(), cb.len()), (1, 1), "{ca:?} {cb:?}");
    assert_eq!(ca[0]["id"], cb[0]["id"]);
    let contract = ca[0]["id"].as_str().unwrap().to_owned();
    for m in [&alice, &bob] {
        let status: Vec<serde_json::Value> =
            json_lines(&m.run(&format!("kaana-sync --home {} status", m.home.display())));
        assert_eq!(status[0]["ours"]["generation"], 1, "{}: {status:?}", m.name);
        assert_eq!(status[0]["theirs"]["generation"], 1, "{}: {status:?}", m.name);
    }

    // Alice loses everything: her machine and its server are gone; a new one has her phrase.
    alice.server.take();
    let lost_volume = fs::read(&alice.volume).unwrap();
    let new_home = work.path().join("alice-again");
    let restored = work.path().join("restored.luks");
    names.insert("CONTRACT_ID", contract);
    let again = Machine {
        name: "alice",
        home: new_home.clone(),
        volume: restored.clone(),
        prefix: alice.prefix.clone(),
        addr: alice.addr.clone(),
        server: None,
    };
    let mut restore_ran = 0;
    for command in commands(&section(&text, "## Restore after losing everything")) {
        if command.starts_with("cryptsetup ") {
            continue; // opening the LUKS device: below, the image is compared and decrypted instead
        }
        let c = localise(&command, &again, &names)
            .replace("phrase.txt", &work.path().join("alice.phrase").display().to_string());
        let out = Command::new("sh")
            .args(["-c", &c])
            .current_dir(repo())
            .env_clear()
            .envs(OFFLINE_ENV)
            .env("PATH", format!("{}/bin:/usr/bin:/bin", again.prefix.display()))
            .env("KAANA_HOME", &new_home)
            .output()
            .unwrap();
        assert_success(&out);
        restore_ran += 1;
    }
    assert_eq!(restore_ran, 4, "init --recover, peer add, contracts --fetch, restore");
    assert_eq!(fs::read(&restored).unwrap(), lost_volume, "the restored image is the lost volume, byte for byte");
    let plain = work.path().join("restored.ext4");
    decrypt_luks(&restored, &plain);
    assert_eq!(crate::common::debugfs_cat(&plain, "photos.txt"), b"alice's photos");
}
