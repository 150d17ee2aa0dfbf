//! The door: what the server does with a new connection's first packet, before any handshake
//! work. Past a few handshakes under way, a newcomer first shows that it receives at its address
//! (a QUIC retry); of those, one host or network holds only a few places at once; and past many in all,
//! newcomers are refused until some end.

use std::sync::Arc;
use std::time::Duration;

use super::ctx::Ctx;

/// Handshakes under way at once before a newcomer must first show that it receives at its
/// address (a QUIC retry: one packet, no state kept), so that packets from made-up addresses
/// cannot make the server keep a half-done handshake each, for the whole handshake time-out.
pub(super) const HANDSHAKES_BEFORE_RETRY: usize = 64;
/// Of the handshakes let in past [`HANDSHAKES_BEFORE_RETRY`] (each from an address shown by a
/// retry), those from one host at once: an IPv4 address, or an IPv6 /64. One host that answers
/// retries and never finishes its handshakes cannot hold every place; a burst of honest ones
/// from one address (nodes behind one NAT, a node's many tools) is far smaller.
pub(super) const HANDSHAKES_PER_HOST: usize = 256;
/// The same from one network: an IPv4 /24, or an IPv6 /48 (65 536 /64s, which one server may
/// be given whole).
pub(super) const HANDSHAKES_PER_NETWORK: usize = 1024;
/// Handshakes under way at once, at most (some 35 KiB each): beyond, newcomers are refused
/// until some end. Four networks' worth.
pub(super) const MAX_HANDSHAKES: usize = 4096;
/// How long a handshake may take at most (less if `--read-timeout` is shorter): ample for a
/// slow path, short enough that a half-done one soon gives its place back.
pub(super) const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// What to do with a new connection's first packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Door {
    /// Start the handshake.
    Open,
    /// Ask the sender to show it receives at its address first.
    Retry,
    /// Refuse it.
    Shut,
}

/// The rule for a new connection, with `under_way` handshakes under way, the sender's address
/// `validated` (it came back with a retry's token) or not, and `[host, network]` handshakes under
/// way from its host and its network that were let in past the retry level.
pub(super) fn door(under_way: usize, validated: bool, [host, network]: [usize; 2]) -> Door {
    if under_way < HANDSHAKES_BEFORE_RETRY {
        Door::Open
    } else if !validated {
        Door::Retry
    } else if under_way >= MAX_HANDSHAKES || host >= HANDSHAKES_PER_HOST || network >= HANDSHAKES_PER_NETWORK {
        Door::Shut
    } else {
        Door::Open
    }
}

/// A host or a network a handshake is counted under: a prefix length and the address cut to it.
pub(super) type Source = (u8, std::net::IpAddr);

/// The host and the network of `ip` ([`HANDSHAKES_PER_HOST`], [`HANDSHAKES_PER_NETWORK`]);
/// an IPv4-mapped IPv6 address counts as IPv4.
pub(super) fn sources_of(ip: std::net::IpAddr) -> [Source; 2] {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    let v4 = |a: Ipv4Addr, bits: u8| (bits, IpAddr::V4(Ipv4Addr::from(u32::from(a) & (u32::MAX << (32 - bits)))));
    let v6 = |a: Ipv6Addr, bits: u8| (bits, IpAddr::V6(Ipv6Addr::from(u128::from(a) & (u128::MAX << (128 - bits)))));
    match ip {
        IpAddr::V4(a) => [v4(a, 32), v4(a, 24)],
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(a) => [v4(a, 32), v4(a, 24)],
            None => [v6(a, 64), v6(a, 48)],
        },
    }
}

/// Counts a handshake under way until dropped (and under its host and network, if it was let
/// in past the retry level).
pub(super) struct Handshake {
    ctx: Arc<Ctx>,
    sources: Option<[Source; 2]>,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.ctx.handshakes.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(sources) = self.sources
            && let Ok(mut by_source) = self.ctx.handshakes_by_source.lock()
        {
            for source in sources {
                if let Some(n) = by_source.get_mut(&source) {
                    *n -= 1;
                    if *n == 0 {
                        by_source.remove(&source);
                    }
                }
            }
        }
    }
}

/// Decides on a new connection's first packet ([`door`]): a handshake to go on with, counted
/// until dropped, or `None` once the packet was answered with a retry or refused.
pub(super) fn admit(ctx: &Arc<Ctx>, incoming: quinn::Incoming) -> Option<(quinn::Incoming, Handshake)> {
    use std::sync::atomic::Ordering;
    let under_way = ctx.handshakes.load(Ordering::Relaxed);
    let validated = incoming.remote_address_validated();
    let sources = sources_of(incoming.remote_address().ip());
    let Ok(mut by_source) = ctx.handshakes_by_source.lock() else {
        incoming.refuse();
        return None;
    };
    let from = sources.map(|s| by_source.get(&s).copied().unwrap_or(0));
    match door(under_way, validated, from) {
        Door::Open => {
            ctx.handshakes.fetch_add(1, Ordering::Relaxed);
            let counted = under_way >= HANDSHAKES_BEFORE_RETRY;
            if counted {
                sources.iter().for_each(|s| *by_source.entry(*s).or_default() += 1);
            }
            Some((incoming, Handshake { ctx: ctx.clone(), sources: counted.then_some(sources) }))
        }
        Door::Retry if incoming.may_retry() => {
            // Cannot fail: the address was not validated.
            let _ = incoming.retry();
            None
        }
        Door::Retry | Door::Shut => {
            incoming.refuse();
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn past_a_few_handshakes_under_way_a_newcomer_shows_its_address_and_one_source_holds_few() {
        let (host, network) = (HANDSHAKES_PER_HOST, HANDSHAKES_PER_NETWORK);
        for n in [0, 1, HANDSHAKES_BEFORE_RETRY - 1] {
            assert_eq!((door(n, false, [0, 0]), door(n, true, [100, 100])), (Door::Open, Door::Open), "{n} under way");
        }
        for n in [HANDSHAKES_BEFORE_RETRY, MAX_HANDSHAKES - 1] {
            assert_eq!(door(n, false, [0, 0]), Door::Retry, "{n} under way");
            assert_eq!(door(n, true, [host - 1, network - 1]), Door::Open, "{n} under way");
            assert_eq!(door(n, true, [host, host]), Door::Shut, "{n} under way, the host's all taken");
            assert_eq!(door(n, true, [0, network]), Door::Shut, "{n} under way, the network's all taken");
        }
        for n in [MAX_HANDSHAKES, 100_000] {
            assert_eq!((door(n, false, [0, 0]), door(n, true, [0, 0])), (Door::Retry, Door::Shut), "{n} under way");
        }
    }

    #[test]
    fn a_host_is_an_ipv4_address_or_an_ipv6_slash_64_and_a_network_a_slash_24_or_a_slash_48() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(sources_of(ip("203.0.113.7")), [(32, ip("203.0.113.7")), (24, ip("203.0.113.0"))]);
        assert_eq!(sources_of(ip("::ffff:203.0.113.7")), sources_of(ip("203.0.113.7")));
        assert_eq!(
            sources_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            [(64, ip("2001:db8:1:2::")), (48, ip("2001:db8:1::"))]
        );
        assert_eq!(sources_of(ip("2001:db8:1:2::1")), sources_of(ip("2001:db8:1:2:ffff::9")));
        let [host, network] = sources_of(ip("2001:db8:1:3::1"));
        assert_ne!(host, sources_of(ip("2001:db8:1:2::1"))[0]);
        assert_eq!(network, sources_of(ip("2001:db8:1:2::1"))[1]);
        // A /64 whose next 16 bits are zero is not taken for its /48.
        assert_ne!(sources_of(ip("2001:db8:1::1"))[0], sources_of(ip("2001:db8:1::1"))[1]);
    }
}
