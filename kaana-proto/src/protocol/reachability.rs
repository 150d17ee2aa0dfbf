//! Where a node can be reached, as pure rules: the addresses it announces (configured, mapped by
//! the router, its listen address, or the public address the DHT sees), and whether peers can
//! reach it, judged from what its server last saw.

use core::net::{IpAddr, SocketAddr};

use crate::protocol::discovery::MAX_ADDRS;
use crate::protocol::identity::NodeId;
use crate::protocol::time::Timestamp;

/// How long, without any peer reaching it, a node with contracts counts itself unreachable:
/// twice the four hours between cron's challenges.
pub const SILENCE_SECS: u64 = 8 * 3600;

/// What a node knows of where it can be reached, to build the addresses it announces.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Whereabouts {
    /// The addresses the person configured (`advertise`).
    pub advertise: Vec<String>,
    /// The address the server is bound to.
    pub listen: Option<SocketAddr>,
    /// The address the router forwards to it (a port mapping), if one holds.
    pub mapped: Option<SocketAddr>,
    /// The public IP address the DHT's nodes see this node at.
    pub public_ip: Option<IpAddr>,
    /// Whether the DHT is the public one (then loopback and private addresses are of no use to
    /// anyone reading the record, and are left out).
    pub public_dht: bool,
}

/// The addresses a node announces, most preferred first, without repeats: those configured, the
/// router's mapped address, the listen address when it is a definite one, and when it listens on
/// every interface, the public IP the DHT sees with the listen port. On the public DHT, loopback,
/// private and link-local addresses are left out.
pub fn announced(w: &Whereabouts) -> Vec<String> {
    let mut out: Vec<String> = w.advertise.clone();
    out.extend(w.mapped.map(|m| m.to_string()));
    if let Some(listen) = w.listen {
        if !listen.ip().is_unspecified() {
            out.push(listen.to_string());
        } else if let Some(ip) = w.public_ip {
            out.push(SocketAddr::new(ip, listen.port()).to_string());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    // Port 0 is no address (a listen address that asks for any port, before a server bound one).
    out.retain(|a| seen.insert(a.clone()) && !a.ends_with(":0"));
    if w.public_dht {
        out.retain(|a| a.parse::<SocketAddr>().map_or(true, |s| is_global(s.ip())));
    }
    out.truncate(MAX_ADDRS);
    out
}

/// Whether `ip` can be reached from the Internet at large (not loopback, private, link-local,
/// unspecified, shared address space, "this network", multicast or reserved; an IPv4 address
/// written as IPv6 is judged as the IPv4 address it is, since a dual-stack socket reaches it).
pub fn is_global(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.is_documentation()
                || v4.is_multicast()
                || o[0] == 0
                || o[0] >= 240
                || (o[0] == 100 && (o[1] & 0xc0) == 64))
        }
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_global(IpAddr::V4(v4));
            }
            let s = v6.segments();
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00
                || (s[0] & 0xffc0) == 0xfe80
                || (s[0] == 0x2001 && s[1] == 0x0db8))
        }
    }
}

/// What the server last learned of its own reachability.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Sightings {
    /// Whether the server is running.
    pub serving: bool,
    /// When the server started.
    pub since: Option<Timestamp>,
    /// The addresses it last announced.
    pub announced: Vec<String>,
    /// The router's mapping, if one holds (`external` address).
    pub mapped: Option<String>,
    /// Why there is no mapping, if it was asked for and refused.
    pub mapping_error: Option<String>,
    /// When a peer with a contract last reached the server, and which.
    pub last_reached: Option<(Timestamp, NodeId)>,
    /// Whether this node has contracts whose peers should be reaching it.
    pub has_contracts: bool,
}

/// Whether this node can be reached from outside, and why it is thought so: `Some(true)` on
/// evidence (a peer reached it lately, or the router maps a port to it), `Some(false)` when it
/// cannot be (no server, nothing to announce, or peers with contracts silent for
/// [`SILENCE_SECS`]), `None` when nothing tells yet.
pub fn reachable(s: &Sightings, now: Timestamp) -> (Option<bool>, String) {
    if !s.serving {
        return (Some(false), "the server is not running (start `kaana-sync serve`)".into());
    }
    let recent = |t: Timestamp| now.unix() < t.unix().saturating_add(SILENCE_SECS);
    if let Some((at, peer)) = s.last_reached.filter(|(at, _)| recent(*at)) {
        return (Some(true), format!("peer {} reached this node at {at}", peer.short()));
    }
    let up_long = s.since.is_some_and(|since| !recent(since));
    if s.has_contracts && up_long {
        let last = s.last_reached.map_or("never".to_owned(), |(at, _)| format!("last at {at}"));
        let mapping = s.mapping_error.as_ref().map(|e| format!("; the router refused a port mapping: {e}"));
        return (
            Some(false),
            format!(
                "no peer has reached this node for {}h ({last}) though it has contracts{}: forward UDP to the \
                 listen port on the router, or set `advertise`",
                SILENCE_SECS / 3600,
                mapping.unwrap_or_default()
            ),
        );
    }
    if let Some(m) = &s.mapped {
        return (Some(true), format!("the router forwards {m} to this node"));
    }
    if s.announced.is_empty() {
        let why = s.mapping_error.as_ref().map(|e| format!(" (port mapping: {e})")).unwrap_or_default();
        return (
            Some(false),
            format!(
                "no address peers can reach: the server listens on no definite address, no `advertise` is set and no port is mapped{why}"
            ),
        );
    }
    (None, format!("announced at {}; no peer has reached it yet", s.announced.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::identity::Identity;

    fn t(s: u64) -> Timestamp {
        Timestamp::from_unix(1_800_000_000 + s)
    }

    #[test]
    fn announced_addresses() {
        let w = Whereabouts {
            advertise: vec!["backup.example.org:7447".into()],
            listen: Some("0.0.0.0:7447".parse().unwrap()),
            mapped: Some("203.0.113.9:40000".parse().unwrap()),
            public_ip: Some("198.51.100.7".parse().unwrap()),
            public_dht: false,
        };
        assert_eq!(announced(&w), ["backup.example.org:7447", "203.0.113.9:40000", "198.51.100.7:7447"]);
        let lan = Whereabouts { listen: Some("192.168.1.5:7447".parse().unwrap()), ..Whereabouts::default() };
        assert_eq!(announced(&lan), ["192.168.1.5:7447"]);
        assert!(announced(&Whereabouts { public_dht: true, ..lan }).is_empty());
        let lo = Whereabouts { listen: Some("127.0.0.1:9".parse().unwrap()), ..Whereabouts::default() };
        assert_eq!(announced(&lo), ["127.0.0.1:9"]);
        let unbound = Whereabouts { listen: Some("127.0.0.1:0".parse().unwrap()), ..Whereabouts::default() };
        assert!(announced(&unbound).is_empty(), "port 0 is no address");
        assert!(is_global("8.8.8.8".parse().unwrap()) && !is_global("100.64.0.1".parse().unwrap()));
        for local in ["::ffff:127.0.0.1", "::ffff:10.1.2.3", "224.0.0.251", "ff02::1", "0.1.2.3", "240.0.0.1"] {
            assert!(!is_global(local.parse().unwrap()), "{local}");
        }
        assert!(is_global("::ffff:8.8.8.8".parse().unwrap()) && is_global("2a00:1450::1".parse().unwrap()));
        let mapped = Whereabouts {
            advertise: vec!["[::ffff:127.0.0.1]:7447".into(), "[2a00:1450::1]:7447".into()],
            public_dht: true,
            ..Whereabouts::default()
        };
        assert_eq!(announced(&mapped), ["[2a00:1450::1]:7447"], "loopback written as IPv6 is loopback");
    }

    #[test]
    fn reachability() {
        let a = Identity::from_seed([1; 32]).node_id();
        let off = Sightings::default();
        assert_eq!(reachable(&off, t(0)).0, Some(false));
        let on = Sightings { serving: true, since: Some(t(0)), announced: vec!["1.2.3.4:5".into()], ..off };
        assert_eq!(reachable(&on, t(10)).0, None);
        let reached = Sightings { last_reached: Some((t(5), a)), has_contracts: true, ..on.clone() };
        assert_eq!(reachable(&reached, t(10)).0, Some(true));
        assert_eq!(reachable(&reached, t(5 + SILENCE_SECS)).0, Some(false), "silent peers for 8h");
        let young = Sightings { has_contracts: true, ..on.clone() };
        assert_eq!(reachable(&young, t(SILENCE_SECS - 1)).0, None, "a server just started is not judged");
        let nothing = Sightings { announced: vec![], mapping_error: Some("no router".into()), ..on };
        let (r, why) = reachable(&nothing, t(10));
        assert_eq!(r, Some(false));
        assert!(why.contains("no router"), "{why}");
    }
}
