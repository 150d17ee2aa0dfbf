//! Node set-up and identity: `kaana-offer init`, `id`, `recovery-phrase`, `peer add`, and the
//! state directory's guarantees as a user sees them.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::PermissionsExt as _;
use std::process::Stdio;

use serde::Deserialize;

use crate::common::{TestNode, assert_exit, assert_success, json_lines, one_json, stderr};

#[derive(Debug, Deserialize)]
struct InitLine {
    node: String,
    listen: String,
    recovered: bool,
}

#[derive(Debug, Deserialize)]
struct PhraseLine {
    node: String,
    recovery_phrase: String,
}

#[derive(Debug, Deserialize)]
struct PeerLine {
    node: String,
    addrs: Vec<String>,
}

#[test]
fn init_then_id_print_the_same_node() {
    let node = TestNode::new();
    let out = node.run("kaana-offer", &["init", "--listen", "127.0.0.1:0"]);
    assert_success(&out);
    let init: InitLine = one_json(&out);
    assert_eq!(init.node.len(), 52);
    assert_eq!(init.listen, "127.0.0.1:0");
    assert!(!init.recovered);
    assert_eq!(node.id(), init.node);
    // The same through $KAANA_HOME instead of --home.
    let out = crate::common::tool("kaana-offer").arg("id").env("KAANA_HOME", &node.home).output().unwrap();
    assert_success(&out);
    let v: serde_json::Value = one_json(&out);
    assert_eq!(v["node"], init.node.as_str());
}

#[test]
fn every_file_is_private_and_the_secret_stays_in_the_key_file() {
    let node = TestNode::new();
    let out = node.run("kaana-offer", &["init", "--listen", "127.0.0.1:0"]);
    assert_success(&out);
    let phrase: PhraseLine = node.json("kaana-offer", &["recovery-phrase"]);
    let secret = fs::read_to_string(node.home.join("identity.key")).unwrap().trim().to_owned();
    assert_eq!(secret.len(), 64);
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    assert!(!said.contains(&secret) && !said.contains(&phrase.recovery_phrase));
    for entry in fs::read_dir(&node.home).unwrap() {
        let entry = entry.unwrap();
        let mode = entry.metadata().unwrap().permissions().mode() & 0o777;
        assert_eq!(mode & 0o077, 0, "{} has mode {mode:o}", entry.path().display());
        if entry.file_name() != "identity.key" {
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            assert!(!text.contains(&secret), "{} holds the secret", entry.path().display());
        }
        if entry.path().extension().is_some_and(|e| e == "json") {
            let v: serde_json::Value = serde_json::from_str(&fs::read_to_string(entry.path()).unwrap()).unwrap();
            assert_eq!(v["schema"], 1, "{}", entry.path().display());
        }
    }
    assert_eq!(fs::metadata(&node.home).unwrap().permissions().mode() & 0o777, 0o700);
}

#[test]
fn recover_from_the_phrase_gives_the_same_node() {
    let original = TestNode::init();
    let phrase: PhraseLine = original.json("kaana-offer", &["recovery-phrase"]);
    assert_eq!(phrase.node, original.id());

    let rebuilt = TestNode::new();
    let mut child = rebuilt
        .cmd("kaana-offer")
        .args(["init", "--recover", "--listen", "127.0.0.1:0"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Written as a person might: spaces instead of dashes, upper case.
    let typed = phrase.recovery_phrase.replace('-', " ").to_uppercase();
    child.stdin.take().unwrap().write_all(typed.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_success(&out);
    let init: InitLine = one_json(&out);
    assert!(init.recovered);
    assert_eq!(init.node, phrase.node);
    assert_eq!(rebuilt.id(), phrase.node);
}

#[test]
fn a_mistyped_phrase_creates_nothing() {
    let node = TestNode::new();
    let mut child = node
        .cmd("kaana-offer")
        .args(["init", "--recover"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"yyyy-yyyy-yyyy-yyyy-yyyy-yyyy-yyyy-yyyy-yyyy-yyyy-yyyy-yyyy-yyyy-yyyb\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("checksum"), "{}", stderr(&out));
    assert!(!node.home.join("identity.json").exists() && !node.home.join("identity.key").exists());
}

#[test]
fn a_second_init_never_replaces_the_identity() {
    let node = TestNode::init();
    let id_before = fs::read(node.home.join("identity.json")).unwrap();
    let key_before = fs::read(node.home.join("identity.key")).unwrap();
    let out = node.run("kaana-offer", &["init", "--listen", "127.0.0.1:0"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("already holds node"), "{}", stderr(&out));
    assert!(out.stdout.is_empty());
    assert_eq!(fs::read(node.home.join("identity.json")).unwrap(), id_before);
    assert_eq!(fs::read(node.home.join("identity.key")).unwrap(), key_before);
}

#[test]
fn a_damaged_config_is_an_error_naming_the_file() {
    let node = TestNode::init();
    let config = node.home.join("config.json");
    let text = fs::read_to_string(&config).unwrap();
    fs::write(&config, &text[..text.len() / 2]).unwrap();
    let out = node.run("kaana-offer", &["id"]);
    assert_exit(&out, 2);
    let err = stderr(&out);
    assert!(err.starts_with("kaana-offer: error:"), "{err}");
    assert!(err.contains(&config.display().to_string()) && err.contains("damaged"), "{err}");
    // Never silently reset.
    assert_eq!(fs::read_to_string(&config).unwrap(), text[..text.len() / 2]);
}

#[test]
fn a_readable_key_stops_every_tool() {
    let node = TestNode::init();
    let key = node.home.join("identity.key");
    fs::set_permissions(&key, fs::Permissions::from_mode(0o644)).unwrap();
    for tool_name in ["kaana-offer", "kaana-sync", "kaana-challenge", "kaana-prune"] {
        let mut cmd = node.cmd(tool_name);
        match tool_name {
            "kaana-offer" => cmd.arg("id"),
            "kaana-sync" => cmd.args(["serve", "--listen", "127.0.0.1:0"]),
            _ => &mut cmd,
        };
        let out = cmd.output().unwrap();
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(err.contains(&format!("chmod 600 {}", key.display())), "{tool_name}: {err}");
        assert!(out.stdout.is_empty(), "{tool_name} printed data");
    }
    fs::set_permissions(&key, fs::Permissions::from_mode(0o600)).unwrap();
    assert_success(&node.run("kaana-offer", &["id"]));
}

#[test]
fn twenty_concurrent_peer_adds_are_all_kept() {
    let node = TestNode::init();
    let peers: Vec<String> = (0..20)
        .map(|i| {
            let other = TestNode::init();
            format!("{}@127.0.0.1:{}", other.id(), 7000 + i)
        })
        .collect();
    let children: Vec<_> = peers
        .iter()
        .map(|p| node.cmd("kaana-offer").args(["peer", "add", "--no-check", p]).stdout(Stdio::piped()).spawn().unwrap())
        .collect();
    for child in children {
        assert_success(&child.wait_with_output().unwrap());
    }
    let listed: Vec<PeerLine> = json_lines(&node.run("kaana-offer", &["peer", "list"]));
    assert_eq!(listed.len(), 20);
    for p in &peers {
        let (id, addr) = p.split_once('@').unwrap();
        let entry = listed.iter().find(|l| l.node == id).unwrap_or_else(|| panic!("{id} lost"));
        assert_eq!(entry.addrs, [addr]);
    }
}

#[test]
fn bad_peers_are_refused_clearly() {
    let node = TestNode::init();
    let own = node.id();
    for (arg, says) in [
        ("nonsense".to_owned(), "ID@HOST:PORT"),
        (format!("{own}@127.0.0.1:1"), "own id"),
        (format!("{}@127.0.0.1", TestNode::init().id()), "HOST:PORT"),
    ] {
        let out = node.run("kaana-offer", &["peer", "add", &arg]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(says), "{arg}: {}", stderr(&out));
    }
    assert!(json_lines::<PeerLine>(&node.run("kaana-offer", &["peer", "list"])).is_empty());
}

#[test]
fn a_missing_node_says_how_to_make_one() {
    let node = TestNode::new();
    let out = node.run("kaana-offer", &["id"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("kaana-offer init"), "{}", stderr(&out));
}

#[test]
fn a_closed_stdout_ends_a_tool_quietly() {
    let node = TestNode::init();
    for i in 0..50 {
        let peer = format!("{}@127.0.0.1:{}", TestNode::init().id(), 7000 + i);
        assert_success(&node.run("kaana-offer", &["peer", "add", "--no-check", &peer]));
    }
    let mut child =
        node.cmd("kaana-offer").args(["peer", "list"]).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    drop(child.stdout.take()); // like `| head -0`
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(out.stderr.is_empty(), "{}", stderr(&out));
}

/// `kaana-offer config`: print, get and set each setting, checked as `init` checks it; what is
/// refused leaves config.json as it was.
#[test]
fn the_configuration_is_read_and_changed_as_init_checks_it() {
    let node = TestNode::init_with(&["--capacity", "1GiB", "--audit-rate", "0"]);
    let all: serde_json::Value = one_json(&node.run("kaana-offer", &["config"]));
    assert_eq!((all["capacity"].as_u64(), all["replicas"].as_u64()), (Some(1 << 30), Some(2)), "{all}");
    let got: serde_json::Value = one_json(&node.run("kaana-offer", &["config", "get", "capacity"]));
    assert_eq!(got, serde_json::json!({"capacity": 1u64 << 30}));

    let set = |key: &str, value: &str| -> serde_json::Value {
        one_json(&node.run("kaana-offer", &["config", "set", key, value]))
    };
    assert_eq!(set("capacity", "512MiB"), serde_json::json!({"capacity": 512u64 << 20}));
    assert_eq!(set("grace_secs", "3d"), serde_json::json!({"grace_secs": 3 * 86_400}));
    assert_eq!(set("replicas", "3"), serde_json::json!({"replicas": 3}));
    assert_eq!(set("audit_rate", "0.05"), serde_json::json!({"audit_rate": 0.05}));
    assert_eq!(
        set("advertise", "192.0.2.7:7447,[2001:db8::1]:7447"),
        serde_json::json!({"advertise": ["192.0.2.7:7447", "[2001:db8::1]:7447"]})
    );
    assert_eq!(set("advertise", ""), serde_json::json!({"advertise": []}));
    assert_eq!(set("listen", "127.0.0.1:7999"), serde_json::json!({"listen": "127.0.0.1:7999"}));
    let volume = node.home.parent().unwrap().join("vol.img");
    fs::write(&volume, vec![7u8; 1 << 20]).unwrap();
    let canonical = fs::canonicalize(&volume).unwrap();
    assert_eq!(set("volume", volume.to_str().unwrap()), serde_json::json!({"volume": canonical}));

    let before = fs::read(node.home.join("config.json")).unwrap();
    for (key, value, says) in [
        ("capacity", "100PiB", "free"),
        ("capacity", "lots", "capacity"),
        ("replicas", "0", "at least 1"),
        ("audit_rate", "2", "between 0 and 1"),
        ("grace_secs", "soon", "grace_secs"),
        ("advertise", "nowhere", "HOST:PORT"),
        ("listen", "here", "address"),
        ("volume", "/no/such/volume", "/no/such/volume"),
        ("storage", "/elsewhere", "cannot be changed"),
        ("colour", "blue", "the settings are listen, advertise"),
    ] {
        let out = node.run("kaana-offer", &["config", "set", key, value]);
        assert_exit(&out, 2);
        assert!(stderr(&out).contains(says), "{key} {value}: {}", stderr(&out));
    }
    assert_eq!(fs::read(node.home.join("config.json")).unwrap(), before, "nothing refused was written");
    let out = node.run("kaana-offer", &["config", "get", "colour"]);
    assert_exit(&out, 2);
    // The node reads what was set.
    let status: serde_json::Value = one_json(&node.run("kaana-offer", &["status"]));
    assert_eq!((status["capacity"].as_u64(), status["replicas"].as_u64()), (Some(512 << 20), Some(3)), "{status}");
}

/// A tool run as another user than the state directory's owner (root on the service's home)
/// refuses before it writes anything, naming both users and the `sudo -u` line to use.
#[test]
fn a_tool_run_by_another_user_than_the_homes_owner_refuses_before_writing() {
    if !crate::common::as_root("only root can give a directory to another user here") {
        return;
    }
    let node = TestNode::init_with(&["--audit-rate", "0"]);
    let chown = std::process::Command::new("chown").args(["-R", "65534"]).arg(&node.home).status().unwrap();
    assert!(chown.success());
    let files = |dir: &std::path::Path| -> Vec<(String, u64)> {
        let mut v: Vec<(String, u64)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name().to_string_lossy().into_owned(), e.metadata().unwrap().len()))
            .collect();
        v.sort();
        v
    };
    let before = files(&node.home);
    let owner = fs::read_to_string("/etc/passwd")
        .unwrap()
        .lines()
        .find(|l| l.split(':').nth(2) == Some("65534"))
        .map_or("65534".to_owned(), |l| l.split(':').next().unwrap().to_owned());
    for (tool, args) in [("kaana-offer", &["contracts"][..]), ("kaana-challenge", &["--all"]), ("kaana-prune", &[])] {
        let out = node.run(tool, args);
        assert_exit(&out, 2);
        let err = stderr(&out);
        assert!(err.contains(&format!("belongs to user {owner}")) && err.contains("runs as user root"), "{err}");
        assert!(err.contains(&format!("sudo -u {owner} {tool} --home {}", node.home.display())), "{err}");
    }
    assert_eq!(files(&node.home), before, "nothing was written");
    // `init` too, on a directory made for another user (`useradd --create-home`).
    let fresh = tempfile::tempdir().unwrap();
    let home = fresh.path().join("kaana");
    fs::create_dir(&home).unwrap();
    assert!(std::process::Command::new("chown").arg("65534").arg(&home).status().unwrap().success());
    let out = std::process::Command::new(crate::common::bin_dir().join("kaana-offer"))
        .args(["--home", home.to_str().unwrap(), "init"])
        .output()
        .unwrap();
    assert_exit(&out, 2);
    assert!(stderr(&out).contains(&format!("sudo -u {owner} kaana-offer --home")), "{}", stderr(&out));
    assert_eq!(fs::read_dir(&home).unwrap().count(), 0, "nothing was written");
}
