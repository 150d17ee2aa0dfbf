//! A port the router opens, tested against a real UPnP IGD: Debian's `miniupnpd` (nftables)
//! runs in a network namespace that plays a home router, with NAT between a LAN namespace (node
//! A) and a WAN namespace (node B and a private Mainline DHT). The WAN side uses 11.77.0.0/24:
//! miniupnpd refuses to map ports on a private or documentation address, and nothing leaves
//! these namespaces.

use std::io::BufRead as _;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use crate::common::{TestNode, assert_exit, assert_success, bin_dir, one_json, sh, stderr};

fn sh_out(cmd: &str) -> String {
    let out = Command::new("bash").args(["-c", cmd]).output().expect("bash");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Three namespaces: `lan` (192.168.77.2, default route through the router), `rtr` (the
/// router: NAT to the WAN, miniupnpd on the LAN side) and `wan` (11.77.0.2).
struct Home {
    tag: String,
    miniupnpd: std::cell::RefCell<Child>,
    dir: tempfile::TempDir,
}

const ROUTER_WAN: &str = "11.77.0.1";
const PEER_WAN: &str = "11.77.0.2";

impl Home {
    fn ns(&self, which: &str) -> String {
        format!("ku-{which}-{}", self.tag)
    }

    fn new() -> Option<Home> {
        let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
        let tag = format!("{:x}", (std::process::id() ^ nanos) % 0xffff);
        let ns = |w: &str| format!("ku-{w}-{tag}");
        let (lan, rtr, wan) = (ns("lan"), ns("rtr"), ns("wan"));
        let (l, rl, w, rw) = (format!("kul{tag}"), format!("kurl{tag}"), format!("kuw{tag}"), format!("kurw{tag}"));
        let setup = [
            format!("ip netns add {lan}"),
            format!("ip netns add {rtr}"),
            format!("ip netns add {wan}"),
            format!("ip link add {l} type veth peer name {rl}"),
            format!("ip link add {w} type veth peer name {rw}"),
        ];
        for cmd in setup {
            if !sh(&cmd) {
                for n in [&lan, &rtr, &wan] {
                    sh(&format!("ip netns del {n}"));
                }
                return None;
            }
        }
        let must = [
            format!("ip link set {l} netns {lan} && ip link set {rl} netns {rtr}"),
            format!("ip link set {w} netns {wan} && ip link set {rw} netns {rtr}"),
            format!("ip -n {lan} addr add 192.168.77.2/24 dev {l} && ip -n {lan} link set {l} up"),
            format!("ip -n {rtr} addr add 192.168.77.1/24 dev {rl} && ip -n {rtr} link set {rl} up"),
            format!("ip -n {rtr} addr add {ROUTER_WAN}/24 dev {rw} && ip -n {rtr} link set {rw} up"),
            format!("ip -n {wan} addr add {PEER_WAN}/24 dev {w} && ip -n {wan} link set {w} up"),
            format!("for n in {lan} {rtr} {wan}; do ip -n $n link set lo up; done"),
            format!("ip -n {lan} route add default via 192.168.77.1"),
            format!("ip netns exec {rtr} sysctl -qw net.ipv4.ip_forward=1"),
        ];
        for cmd in must {
            assert!(sh(&cmd), "{cmd}");
        }
        // The router's firewall: LAN out with NAT, nothing in but replies and what miniupnpd maps.
        let rules = format!(
            "table inet filter {{
  chain forward {{ type filter hook forward priority 0; policy drop; ct state established,related accept; iifname \"{rl}\" accept; jump miniupnpd; }}
  chain miniupnpd {{ }}
  chain prerouting {{ type nat hook prerouting priority -100; policy accept; jump prerouting_miniupnpd; }}
  chain postrouting {{ type nat hook postrouting priority 100; policy accept; jump postrouting_miniupnpd; oifname \"{rw}\" masquerade; }}
  chain prerouting_miniupnpd {{ }}
  chain postrouting_miniupnpd {{ }}
}}"
        );
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("rules.nft"), rules).unwrap();
        assert!(sh(&format!("ip netns exec {rtr} nft -f {}", dir.path().join("rules.nft").display())), "nft rules");
        let conf = format!(
            "ext_ifname={rw}\nlistening_ip={rl}\nhttp_port=0\nenable_natpmp=yes\nenable_upnp=yes\nsecure_mode=yes\n\
             system_uptime=yes\nuuid=3d3cec3a-8cf0-11e0-98ee-001a6bd2d070\n\
             allow 1024-65535 192.168.77.0/24 1024-65535\ndeny 0-65535 0.0.0.0/0 0-65535\n"
        );
        std::fs::write(dir.path().join("miniupnpd.conf"), &conf).unwrap();
        std::fs::write(dir.path().join("natpmp-only.conf"), conf.replace("enable_upnp=yes", "enable_upnp=no")).unwrap();
        let miniupnpd =
            Home::router(&rtr, &dir.path().join("miniupnpd.conf"), &dir.path().join("miniupnpd.pid"), ":1900");
        Some(Home { tag, miniupnpd: std::cell::RefCell::new(miniupnpd), dir })
    }

    /// Starts miniupnpd in `rtr` with `conf`; ready once it listens on `port` (UDP).
    fn router(rtr: &str, conf: &std::path::Path, pid: &std::path::Path, port: &str) -> Child {
        let child = Command::new("ip")
            .args(["netns", "exec", rtr, "miniupnpd", "-d", "-f"])
            .arg(conf)
            .arg("-P")
            .arg(pid)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("miniupnpd is installed (scripts/install-deps.sh)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while !sh_out(&format!("ip netns exec {rtr} ss -lun")).contains(port) {
            assert!(Instant::now() < deadline, "miniupnpd did not start");
            std::thread::sleep(Duration::from_millis(50));
        }
        child
    }

    /// The router again, speaking NAT-PMP only (no UPnP).
    fn natpmp_only(&self) {
        let mut child = self.miniupnpd.borrow_mut();
        let _ = child.kill();
        let _ = child.wait();
        let rtr = self.ns("rtr");
        let (conf, pid) = (self.dir.path().join("natpmp-only.conf"), self.dir.path().join("miniupnpd.pid"));
        *child = Home::router(&rtr, &conf, &pid, ":5351");
    }

    /// `tool` on `node` inside namespace `which`.
    fn tool(&self, which: &str, node: &TestNode, tool: &str, args: &[&str]) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.ns(which)]).arg(bin_dir().join(tool)).arg("--home").arg(&node.home).args(args);
        cmd.env_remove("KAANA_HOME").env_remove("KAANA_NOW").env("KAANA_CONNECT_TIMEOUT", "2s").stdin(Stdio::null());
        cmd
    }

    fn mappings(&self) -> String {
        sh_out(&format!("ip netns exec {} nft list chain inet filter prerouting_miniupnpd", self.ns("rtr")))
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = self.miniupnpd.get_mut().kill();
        let _ = self.miniupnpd.get_mut().wait();
        for w in ["lan", "rtr", "wan"] {
            let ns = self.ns(w);
            sh(&format!("ip netns pids {ns} | xargs -r kill -9"));
            sh(&format!("ip netns del {ns}"));
        }
        let _ = &self.dir;
    }
}

/// A child's first stdout line, as JSON.
fn first_line(child: &mut Child) -> serde_json::Value {
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
    serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
}

/// Waits until `home`'s `reach.json` satisfies `ok`.
fn wait_reach(node: &TestNode, what: &str, ok: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    // The server tries the DHT again every 30 s if its first try fails.
    let deadline = Instant::now() + Duration::from_secs(75);
    loop {
        let reach: serde_json::Value = std::fs::read(node.home.join("reach.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        if ok(&reach) {
            return reach;
        }
        assert!(Instant::now() < deadline, "{what}: {reach}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn kill_term(child: &mut Child) {
    assert!(sh(&format!("kill -TERM {}", child.id())));
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "serve did not stop");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn a_node_behind_a_home_router_is_mapped_announced_found_by_id_and_unmapped_on_shutdown() {
    let Some(net) = Home::new() else {
        eprintln!(
            "SKIP: network namespaces are not available here (needs root and iproute2); the UPnP test did not run"
        );
        return;
    };
    // A private DHT on the WAN side.
    let mut dht = net
        .tool("wan", &TestNode::new(), "kaana-offer", &["dht-nodes", "--count", "20", "--ip", PEER_WAN])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let boot: Vec<String> = serde_json::from_value(first_line(&mut dht)["bootstrap"].clone()).unwrap();
    let boot = boot.join(",");
    let a = TestNode::init_with(&["--dht-bootstrap", &boot]);
    assert_success(&a.run("kaana-offer", &["config", "set", "listen", "0.0.0.0:7447"]));
    let b = TestNode::init_with(&["--dht-bootstrap", &boot]);
    let a_id = a.id();
    let at_router = format!("{a_id}@{ROUTER_WAN}:7447");
    let run = |which: &str, node: &TestNode, tool: &str, args: &[&str]| -> Output {
        net.tool(which, node, tool, args).env("KAANA_DHT_BOOTSTRAP", &boot).output().unwrap()
    };

    // Without a mapping, nothing from outside reaches A, and A says so.
    let mut serve = net
        .tool("lan", &a, "kaana-sync", &["serve", "--no-port-mapping"])
        .env("KAANA_DHT_BOOTSTRAP", &boot)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    first_line(&mut serve);
    assert_exit(&run("wan", &b, "kaana-offer", &["peer", "add", &at_router]), 2);
    let status = run("lan", &a, "kaana-offer", &["status"]);
    let line: serde_json::Value = one_json(&status);
    assert_eq!(line["reachable"], false, "{line}");
    assert!(line["reachable_why"].as_str().unwrap().contains("no address peers can reach"), "{line}");
    kill_term(&mut serve);

    // With one (KAANA_PORT_MAPPING=on: the tests' environment turns it off elsewhere), the
    // router forwards UDP 7447 to A, A announces the router's address on the DHT, and B finds
    // A by its id alone.
    let mut serve = net
        .tool("lan", &a, "kaana-sync", &["serve"])
        .env("KAANA_DHT_BOOTSTRAP", &boot)
        .env("KAANA_PORT_MAPPING", "on")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    first_line(&mut serve);
    let mapped = format!("{ROUTER_WAN}:7447");
    wait_reach(&a, "the mapping is announced", |r| {
        r["mapped"] == mapped.as_str()
            && r["announced"].as_array().is_some_and(|a| a.iter().any(|x| x == mapped.as_str()))
    });
    assert!(net.mappings().contains("dnat ip to 192.168.77.2:7447"), "{}", net.mappings());
    let added = run("wan", &b, "kaana-offer", &["peer", "add", &a_id]);
    assert_success(&added);
    let added: serde_json::Value = one_json(&added);
    assert_eq!(added["addrs"][0], mapped.as_str(), "{added}");
    let status = run("lan", &a, "kaana-offer", &["status"]);
    let line: serde_json::Value = one_json(&status);
    assert_eq!(line["reachable"], true, "{line}");
    assert!(line["reachable_why"].as_str().unwrap().contains(&mapped), "{line}");

    // On shutdown A removes the mapping: the router forwards nothing any more.
    kill_term(&mut serve);
    assert!(!net.mappings().contains("dnat"), "{}", net.mappings());
    let out = run("wan", &b, "kaana-offer", &["peer", "add", &at_router]);
    assert_exit(&out, 2);
    assert!(stderr(&out).contains("no answer"), "{}", stderr(&out));

    // A router that speaks NAT-PMP only: the server finds no UPnP router, asks the default
    // gateway over NAT-PMP, and the same holds.
    net.natpmp_only();
    let _ = std::fs::remove_file(a.home.join("reach.json"));
    let mut serve = net
        .tool("lan", &a, "kaana-sync", &["serve"])
        .env("KAANA_DHT_BOOTSTRAP", "none")
        .env("KAANA_PORT_MAPPING", "on")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    first_line(&mut serve);
    wait_reach(&a, "the NAT-PMP mapping", |r| r["mapped"] == mapped.as_str());
    assert!(net.mappings().contains("dnat ip to 192.168.77.2:7447"), "{}", net.mappings());
    assert_success(&run("wan", &b, "kaana-offer", &["peer", "add", &at_router]));
    kill_term(&mut serve);
    let mut log = String::new();
    std::io::Read::read_to_string(&mut serve.stderr.take().unwrap(), &mut log).unwrap();
    assert!(log.contains("(NAT-PMP)") && log.contains("port mapping removed"), "{log}");
    assert!(!net.mappings().contains("dnat"), "{}", net.mappings());
    let _ = dht.kill();
    let _ = dht.wait();
}
