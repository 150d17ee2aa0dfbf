//! The newcomer's path: the demo, the README's examples and command list, the cron pipeline,
//! completions and man pages.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{Pair, as_root, assert_exit, assert_success, bin_dir, contracted_pair, pseudo_random, stderr};

pub(crate) fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

pub(crate) fn readme() -> String {
    fs::read_to_string(repo().join("README.md")).unwrap()
}

#[test]
fn the_demo_tells_the_whole_story_and_passes() {
    let out = Command::new("bash")
        .arg(repo().join("scripts/demo.sh"))
        .env("KAANA_BIN", bin_dir())
        .env_remove("KAANA_HOME")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{}", stderr(&out));
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("demo: PASSED"), "{last}");
    // Each command is shown as a person would type it, the nodes named A, B and C.
    for shown in ["$ kaana-offer --home A create --size 64MiB", "$ kaana-sync --home B push --all", "\"peer\":\"<A>\""]
    {
        assert!(stdout.contains(shown), "the demo did not show {shown}");
    }
    for story in ["audit", "breach\":true", "\"valid\":true", "\"action\":\"delete\"", "identical to the originals"] {
        assert!(stdout.contains(story), "the demo did not show {story}");
    }
    // Every field the tools printed is documented.
    let lines: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert!(lines.len() > 20, "{stdout}");
    assert_documented(&lines);
}

#[test]
fn the_demo_with_dht_finds_the_nodes_by_id_on_a_local_dht() {
    let out = Command::new("bash")
        .arg(repo().join("scripts/demo.sh"))
        .arg("--dht")
        .env("KAANA_BIN", bin_dir())
        .env_remove("KAANA_HOME")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "demo --dht failed:\n{stdout}\n{}", stderr(&out));
    let last = stdout.lines().last().unwrap_or_default();
    assert!(last.starts_with("demo: PASSED (the nodes found each other by id on a local DHT)"), "{last}");
    for shown in ["$ kaana-offer --home B peer add <A>\n", "$ kaana-offer --home B list --dht", "board(s) answered"] {
        assert!(stdout.contains(shown), "the demo did not show {shown:?}:\n{stdout}");
    }
    assert!(!stdout.contains("$ kaana-offer --home B list --board"), "no board is named by address");
    let lines: Vec<serde_json::Value> = stdout.lines().filter_map(|l| serde_json::from_str(l).ok()).collect();
    assert_documented(&lines);
}

/// Asserts that every key of `values` (at any depth) is named in docs/json.md.
fn assert_documented(values: &[serde_json::Value]) {
    fn keys(v: &serde_json::Value, out: &mut std::collections::BTreeSet<String>) {
        match v {
            serde_json::Value::Object(m) => {
                for (k, v) in m {
                    out.insert(k.clone());
                    keys(v, out);
                }
            }
            serde_json::Value::Array(a) => a.iter().for_each(|v| keys(v, out)),
            _ => {}
        }
    }
    let doc = fs::read_to_string(repo().join("docs/json.md")).unwrap();
    let mut all = std::collections::BTreeSet::new();
    values.iter().for_each(|v| keys(v, &mut all));
    let missing: Vec<&String> = all.iter().filter(|k| !doc.contains(&format!("`{k}`"))).collect();
    assert!(missing.is_empty(), "fields not in docs/json.md: {missing:?}");
}

/// The blocks of the README marked as examples, in order.
fn examples(text: &str) -> String {
    let mut script = String::new();
    let mut rest = text;
    while let Some(start) = rest.find("<!-- example -->") {
        let block = &rest[start..];
        let end = block.find("<!-- /example -->").expect("example end marker");
        let body = &block[..end];
        let code = body.split("```sh\n").nth(1).and_then(|c| c.split("```").next()).expect("a sh block");
        script.push_str(code);
        rest = &block[end..];
    }
    script
}

#[test]
fn the_readme_examples_run_as_written() {
    let script = examples(&readme());
    assert!(script.contains("kaana-sync --home a push"), "the examples were found");
    // From the repository's root, as a reader pastes them; twice; leaving nothing there.
    let dir = tempfile::tempdir().unwrap();
    let untracked = || {
        let out =
            Command::new("git").args(["status", "--porcelain", "--untracked-files=all"]).current_dir(repo()).output();
        out.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default()
    };
    let before = untracked();
    let path = format!("{}:{}:/usr/sbin:/sbin", bin_dir().display(), std::env::var("PATH").unwrap_or_default());
    let wrapped = format!("set -euo pipefail\ntrap 'kill $(jobs -p) 2>/dev/null || true' EXIT\n{script}");
    for run in 1..=2 {
        let out = Command::new("bash")
            .arg("-c")
            .arg(&wrapped)
            .current_dir(repo())
            .env("PATH", &path)
            .env("TMPDIR", dir.path())
            .env_remove("KAANA_HOME")
            .env_remove("KAANA_NOW")
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "README examples failed (run {run}):\n{stdout}\n{}", stderr(&out));
        assert!(stdout.contains("identical"), "{stdout}");
    }
    assert_eq!(untracked(), before, "the examples left files in the repository");
}

/// Every command the README describes exists, with every flag it shows.
#[test]
fn every_command_in_the_readme_exists_with_its_flags() {
    let text = readme();
    let mut checked = 0;
    for heading in text.lines().filter(|l| l.starts_with("### `kaana-")) {
        for synopsis in heading.trim_start_matches("### ").split(", ") {
            let synopsis = synopsis.trim_matches('`');
            let words: Vec<&str> = synopsis.split_whitespace().collect();
            let command: Vec<&str> = words
                .iter()
                .take_while(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '-') && !w.starts_with("--"))
                .copied()
                .collect();
            let out = Command::new(bin_dir().join(command[0])).args(&command[1..]).arg("--help").output().unwrap();
            assert_success(&out);
            let help = String::from_utf8_lossy(&out.stdout);
            for flag in words.iter().flat_map(|w| w.split(['[', ']', '(', ')', '|'])).filter(|w| w.starts_with("--")) {
                assert!(help.contains(flag), "`{}` has no {flag}", command.join(" "));
            }
            checked += 1;
        }
    }
    assert!(checked >= 20, "only {checked} commands found in the README");
}

/// A time-out in the environment that cannot be read is refused, not silently replaced.
#[test]
fn an_unreadable_time_out_is_refused() {
    for (var, value) in [("KAANA_CONNECT_TIMEOUT", "forever"), ("KAANA_READ_TIMEOUT", "0s")] {
        let out = Command::new(bin_dir().join("kaana-offer")).args(["id"]).env(var, value).output().unwrap();
        assert_exit(&out, 2);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(var) && err.contains(value), "{err}");
    }
}

#[test]
fn every_tool_prints_completions_and_a_man_page() {
    for tool in ["kaana-offer", "kaana-sync", "kaana-challenge", "kaana-prune"] {
        let out = Command::new(bin_dir().join(tool)).args(["completions", "bash"]).output().unwrap();
        assert_success(&out);
        assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("_{}", tool.replace('-', "__"))));
        let out = Command::new(bin_dir().join(tool)).arg("man").output().unwrap();
        assert_success(&out);
        let page = String::from_utf8_lossy(&out.stdout);
        assert!(page.contains(".TH"), "{tool}");
        // One page: its commands in it, no references to per-command pages never installed.
        assert!(page.contains(&format!(".SS \"{tool} man\"")), "{tool}: {page}");
        assert!(!page.contains("(1)"), "{tool} refers to another page: {page}");
    }
}

fn backup_at(home: &Path, hook: Option<&str>, now: Option<u64>) -> std::process::Output {
    backup_cmd(home, hook, now).output().unwrap()
}

fn backup_cmd(home: &Path, hook: Option<&str>, now: Option<u64>) -> Command {
    let mut cmd = Command::new("bash");
    cmd.arg(repo().join("scripts/backup.sh")).args(["--home", home.to_str().unwrap()]);
    cmd.env("KAANA_BIN", bin_dir()).env("KAANA_CONNECT_TIMEOUT", "1s").env_remove("KAANA_NOW");
    if let Some(h) = hook {
        cmd.env("KAANA_SNAPSHOT_HOOK", h);
    }
    if let Some(t) = now {
        cmd.env("KAANA_NOW", crate::common::at(t));
    }
    cmd
}

fn backup(home: &Path, hook: Option<&str>) -> std::process::Output {
    backup_at(home, hook, None)
}

/// `scripts/install.sh` into a prefix, then the crontab it installed, run line by line as cron
/// runs it (`env -i PATH=/usr/bin:/bin`, then the crontab's own variables) against a real node
/// and its peer: each line does its job and exits 0. `--uninstall` removes what it installed.
#[test]
fn the_installed_crontab_runs_under_crons_environment() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(1 << 20, 9)).unwrap();
    let Pair { a, b: _b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "16MiB");
    // One copy wanted, one held: `ensure`, in backup.sh, has nothing to do.
    assert_success(&a.run("kaana-offer", &["config", "set", "replicas", "1"]));
    let (prefix, logs) = (work.path().join("usr"), work.path().join("log"));
    fs::create_dir(&logs).unwrap();
    let install = |extra: &[&str]| {
        Command::new("bash")
            .arg(repo().join("scripts/install.sh"))
            .args(["--no-system", "--prefix", prefix.to_str().unwrap(), "--bin-dir", bin_dir().to_str().unwrap()])
            .args(["--home", a.home.to_str().unwrap(), "--log-dir", logs.to_str().unwrap()])
            .args(extra)
            .output()
            .unwrap()
    };
    assert_success(&install(&[]));
    for file in ["bin/kaana-prune", "share/man/man1/kaana-sync.1", "share/bash-completion/completions/kaana-offer"] {
        assert!(prefix.join(file).exists(), "{file}");
    }
    let crontab = fs::read_to_string(prefix.join("share/kaana/crontab")).unwrap();
    let (mut vars, mut commands) = (Vec::new(), Vec::new());
    for line in crontab.lines().map(str::trim).filter(|l| !l.is_empty() && !l.starts_with('#')) {
        match line.split_once('=') {
            Some((name, _)) if !name.contains(char::is_whitespace) => vars.push(line.to_owned()),
            _ => commands.push(line.split_whitespace().skip(5).collect::<Vec<_>>().join(" ")),
        }
    }
    assert_eq!(commands.len(), 3, "{crontab}");
    assert!(vars.iter().any(|v| v.starts_with(&format!("PATH={}/bin:", prefix.display()))), "{vars:?}");
    for command in &commands {
        let out = Command::new("env")
            .args(["-i", "PATH=/usr/bin:/bin"])
            .args(crate::common::OFFLINE_ENV.iter().map(|(k, v)| format!("{k}={v}")))
            .args(vars.iter().filter(|v| !v.starts_with("MAILTO=")))
            .args(["sh", "-c", command])
            .output()
            .unwrap();
        assert!(out.status.success(), "{command}: {:?}\n{}", out.status.code(), stderr(&out));
    }
    let log = |name: &str| -> Vec<serde_json::Value> {
        let text = fs::read_to_string(logs.join(name)).unwrap_or_default();
        text.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
    };
    assert!(log("backup.jsonl").iter().any(|l| l["contract"] == contract.as_str() && l["generation"] == 1));
    assert!(log("challenge.jsonl").iter().any(|l| l["contract"] == contract.as_str() && l["result"] == "pass"));
    assert!(log("verify.jsonl").iter().any(|l| l["contract"] == contract.as_str() && l["ok"] == true));
    // Every field of what cron logged, and of the node's events, is documented.
    let events: Vec<serde_json::Value> = fs::read_to_string(a.home.join("events.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(events.len() > 3);
    for logged in [log("backup.jsonl"), log("challenge.jsonl"), log("verify.jsonl"), events] {
        assert_documented(&logged);
    }

    assert_success(&install(&["--uninstall"]));
    assert!(!prefix.join("bin/kaana-offer").exists() && !prefix.join("share/kaana").exists());
}

/// `install.sh` as root, for the system: the unit (with the user and the paths given), the log
/// directory, and the user's crontab — its own lines and MAILTO kept, ours between markers —
/// and `--uninstall` takes back exactly what it added. (`crontab` here is a stand-in that keeps
/// the table in a file, so that no real user's crontab is touched.)
#[test]
fn install_sh_for_the_system_keeps_the_users_crontab_and_takes_back_only_its_own() {
    use std::os::unix::fs::MetadataExt as _;
    if !as_root("installing for the system needs root") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let (shims, table) = crontab_shim(work.path());
    let mine = "MAILTO=me@example.org\n0 1 * * * echo mine\n";
    fs::write(&table, mine).unwrap();
    let (prefix, system, logs, storage) =
        (work.path().join("usr"), work.path().join("systemd"), work.path().join("log"), work.path().join("data"));
    let install = |extra: &[&str]| {
        Command::new("bash")
            .arg(repo().join("scripts/install.sh"))
            .args(["--prefix", prefix.to_str().unwrap(), "--bin-dir", bin_dir().to_str().unwrap(), "--user", "nobody"])
            .args(["--home", "/var/lib/kaana-test", "--storage", storage.to_str().unwrap()])
            .args(["--log-dir", logs.to_str().unwrap(), "--system-dir", system.to_str().unwrap()])
            .args(["--logrotate-dir", work.path().join("logrotate.d").to_str().unwrap()])
            .args(extra)
            .env("PATH", format!("{}:{}", shims.display(), std::env::var("PATH").unwrap_or_default()))
            .output()
            .unwrap()
    };
    let out = install(&[]);
    assert_success(&out);
    let rotation = fs::read_to_string(work.path().join("logrotate.d/kaana")).unwrap();
    let paths = format!("{}/*.jsonl /var/lib/kaana-test/events.jsonl {{", logs.display());
    assert!(rotation.contains(&paths) && rotation.contains("\tsu nobody 65534\n"), "{rotation}");
    let unit = fs::read_to_string(system.join("kaana-sync.service")).unwrap();
    assert!(
        unit.contains("User=nobody") && unit.contains(&format!("ExecStart={}/bin/kaana-sync serve", prefix.display()))
    );
    assert!(unit.contains(&format!("ReadWritePaths=/var/lib/kaana-test {}", storage.display())), "{unit}");
    assert_eq!(fs::metadata(&logs).unwrap().uid(), 65534, "the log directory is the user's");
    let crontab = fs::read_to_string(&table).unwrap();
    assert!(crontab.starts_with(mine), "{crontab}");
    assert!(crontab.contains("# >>> kaana") && crontab.contains("kaana-challenge --home /var/lib/kaana-test --all"));
    assert_eq!(crontab.matches("MAILTO=me@example.org").count(), 2, "its MAILTO applies to our lines too: {crontab}");
    // Again (an upgrade): the same table, not our lines twice.
    assert_success(&install(&[]));
    assert_eq!(fs::read_to_string(&table).unwrap(), crontab);
    assert_success(&install(&["--uninstall"]));
    assert_eq!(fs::read_to_string(&table).unwrap(), mine);
    assert!(!system.join("kaana-sync.service").exists() && !prefix.join("bin/kaana-sync").exists());
    assert!(!work.path().join("logrotate.d/kaana").exists());
    // A path that would break the unit or the crontab is refused, before anything is installed.
    let out = install(&["--prefix", "/opt/my kaana"]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("no spaces"), "{}", stderr(&out));
    // So is a log directory that is the state directory (its *.jsonl would be events.jsonl too).
    assert_exit(&install(&["--log-dir", "/var/lib/kaana-test/"]), 2);
    assert!(!prefix.exists() || !prefix.join("bin/kaana-sync").exists());
}

/// A stand-in for `crontab` in `dir/shims` that keeps the table in `dir/table` (so that no real
/// user's crontab is touched): the shims folder to put first in `PATH`, and the table.
fn crontab_shim(dir: &Path) -> (PathBuf, PathBuf) {
    use std::os::unix::fs::PermissionsExt as _;
    let (shims, table) = (dir.join("shims"), dir.join("table"));
    fs::create_dir(&shims).unwrap();
    let shim = format!(
        "#!/bin/sh\n# crontab -u USER (-l | - | -r)\ncase \"$3\" in\n  -l) cat {t} 2>/dev/null || exit 1 ;;\n  -) cat > {t} ;;\n  -r) rm -f {t} ;;\nesac\n",
        t = table.display()
    );
    fs::write(shims.join("crontab"), shim).unwrap();
    fs::set_permissions(shims.join("crontab"), fs::Permissions::from_mode(0o755)).unwrap();
    (shims, table)
}

/// The rotation `install.sh` installs, run by the real `logrotate` (forced, as its daily run does
/// once a month): cron's logs and the node's `events.jsonl` are renamed, the older ones
/// compressed; the node goes on, each tool writing a fresh `events.jsonl`, and no line is lost.
#[test]
fn the_installed_rotation_renames_the_logs_and_the_node_writes_on() {
    if !as_root("installing for the system needs root") {
        return;
    }
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(1 << 20, 11)).unwrap();
    let Pair { a, b: _b, sa: _sa, sb: _sb, contract } = contracted_pair(&volume, "16MiB");
    // The user has no crontab yet, and no --mailto is given (install.sh once stopped there,
    // silently, with exit 1).
    let (shims, table) = crontab_shim(work.path());
    let (logs, rotation) = (work.path().join("log"), work.path().join("logrotate.d/kaana"));
    let user = String::from_utf8(Command::new("id").arg("-un").output().unwrap().stdout).unwrap();
    let out = Command::new("bash")
        .arg(repo().join("scripts/install.sh"))
        .args(["--prefix", work.path().join("usr").to_str().unwrap(), "--bin-dir", bin_dir().to_str().unwrap()])
        .args(["--user", user.trim(), "--home", a.home.to_str().unwrap(), "--log-dir", logs.to_str().unwrap()])
        .args(["--system-dir", work.path().join("systemd").to_str().unwrap()])
        .args(["--logrotate-dir", work.path().join("logrotate.d").to_str().unwrap()])
        .env("PATH", format!("{}:{}", shims.display(), std::env::var("PATH").unwrap_or_default()))
        .output()
        .unwrap();
    assert_success(&out);
    assert!(fs::read_to_string(&table).unwrap().contains("# >>> kaana"), "{}", stderr(&out));
    let (events, log) = (a.home.join("events.jsonl"), logs.join("backup.jsonl"));
    let push = |n: u64| {
        let out = a.run("kaana-sync", &["push", &contract]);
        assert_success(&out);
        let mut file = fs::OpenOptions::new().create(true).append(true).open(&log).unwrap();
        std::io::Write::write_all(&mut file, &out.stdout).unwrap();
        let line: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(line["generation"], n, "{line}");
    };
    let rotate = || {
        let out = Command::new("logrotate")
            .args(["--force", "--state", work.path().join("logrotate.state").to_str().unwrap()])
            .arg(&rotation)
            .output()
            .expect("logrotate (scripts/install-deps.sh installs it)");
        assert_success(&out);
    };
    let read = |path: &Path| fs::read_to_string(path).unwrap();
    push(1);
    let (first_events, first_log) = (read(&events), read(&log));
    assert!(first_events.contains("\"event\":\"push\""), "{first_events}");
    rotate();
    assert!(!events.exists() && !log.exists(), "renamed, no empty file made in their place");
    assert_eq!(read(&a.home.join("events.jsonl.1")), first_events);
    assert_eq!(read(&logs.join("backup.jsonl.1")), first_log);
    // The node goes on: a push writes a fresh events.jsonl, and the next rotation compresses
    // the first.
    fs::write(&volume, pseudo_random(1 << 20, 12)).unwrap();
    push(2);
    let second_events = read(&events);
    assert!(second_events.contains("\"event\":\"push\"") && !second_events.contains(first_events.trim()));
    rotate();
    assert_eq!(read(&a.home.join("events.jsonl.1")), second_events);
    let unzipped = Command::new("gzip").arg("-dc").arg(a.home.join("events.jsonl.2.gz")).output().unwrap();
    assert_success(&unzipped);
    assert_eq!(String::from_utf8(unzipped.stdout).unwrap(), first_events);
    assert!(logs.join("backup.jsonl.2.gz").exists());
    assert_success(&a.run("kaana-offer", &["contracts"]));
}

#[test]
fn the_cron_pipeline_pushes_checks_and_says_what_needs_a_person() {
    let work = tempfile::tempdir().unwrap();
    let volume = work.path().join("vol.img");
    fs::write(&volume, pseudo_random(1 << 20, 5)).unwrap();
    let Pair { a, b: _b, sa: _sa, sb, contract } = contracted_pair(&volume, "16MiB");
    // One copy wanted, one held: `ensure` has nothing to do (a test below wants two).
    assert_success(&a.run("kaana-offer", &["config", "set", "replicas", "1"]));
    let marker = work.path().join("snapshot-taken");
    let out = backup(&a.home, Some(&format!("touch {}", marker.display())));
    assert_success(&out);
    assert!(marker.exists(), "the snapshot hook ran first");
    // A night with nothing wrong writes nothing on stderr: cron mails whatever it finds there.
    assert_eq!(stderr(&out), "", "a healthy night mails nobody");
    let lines: Vec<serde_json::Value> =
        String::from_utf8_lossy(&out.stdout).lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert!(lines.iter().any(|l| l["contract"] == contract.as_str() && l["generation"] == 1), "a push");
    assert!(lines.iter().any(|l| l["kind"] == "routine" && l["result"] == "pass"), "a challenge");

    // The peer goes away: its push fails, and the pipeline says so in one line, and exits 1.
    // (That it cannot be challenged is no news yet: peers reboot.)
    drop(sb);
    let out = backup(&a.home, None);
    assert_exit(&out, 1);
    let last = stderr(&out).lines().last().unwrap_or_default().to_owned();
    assert!(last.starts_with("backup.sh: needs attention:") && last.contains("push to"), "{last}");
    assert!(last.contains("failed") && !last.contains("unreachable"), "{last}");
    // A day later this node still reaches nobody: the challenges say so too.
    let out = backup_at(&a.home, None, Some(crate::common::now_unix() + 2 * 86_400));
    assert_exit(&out, 1);
    let last = stderr(&out).lines().last().unwrap_or_default().to_owned();
    assert!(last.contains("failed") && last.contains("unreachable"), "{last}");
    assert!(stderr(&out).contains("reached too few of its peers"), "{}", stderr(&out));

    // A failing snapshot hook stops everything.
    let out = backup(&a.home, Some("exit 3"));
    assert_exit(&out, 2);
    assert!(out.stdout.is_empty());

    // Two copies wanted, nothing on offer: the pipeline's `ensure` offers, and says so.
    assert_success(&a.run("kaana-offer", &["config", "set", "replicas", "2"]));
    let out = backup(&a.home, None);
    assert_exit(&out, 1);
    let last = stderr(&out).lines().last().unwrap_or_default().to_owned();
    assert!(last.contains("replicas missing: no acceptable offer, this node offers"), "{last}");

    // A run still going (its snapshot hook takes a while): the next does nothing, says so and
    // exits 1; the first goes on.
    let started = work.path().join("started");
    let hook = format!("touch {}; sleep 3", started.display());
    let first = backup_cmd(&a.home, Some(&hook), None).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    while !started.exists() {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let out = backup(&a.home, None);
    assert_exit(&out, 1);
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
    assert!(stderr(&out).contains("the last run") && stderr(&out).contains("still going"), "{}", stderr(&out));
    let first = first.wait_with_output().unwrap();
    assert!(!first.stdout.is_empty(), "the first run went on");
}
