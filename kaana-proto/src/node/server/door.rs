//! The door: what the server does with a new connection's first packet, before any handshake
//! work. Past a few handshakes under way, a newcomer first shows that it receives at its address
//! (a QUIC retry); of those, one source holds only a few places at once; and past many in all,
//! newcomers are refused until some end.

use std::sync::Arc;
use std::time::Duration;

use super::ctx::Ctx;

/// Handshakes under way at once before a newcomer must first show that it receives at its
/// address (a QUIC retry: one packet, no state kept), so that packets from made-up addresses
/// cannot make the server keep a half-done handshake each, for the whole handshake time-out.
pub(super) const HANDSHAKES_BEFORE_RETRY: usize = 64;
/// Of the handshakes let in past [`HANDSHAKES_BEFORE_RETRY`] (each from an address shown by a
/// retry), those from one source at once: an IPv4 address, or an IPv6 /64. One host that
/// answers retries and never finishes its handshakes cannot hold every place.
pub(super) const HANDSHAKES_PER_SOURCE: usize = 8;
/// Handshakes under way at once, at most: beyond, newcomers are refused until some end.
pub(super) const MAX_HANDSHAKES: usize = 1024;
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
/// `validated` (it came back with a retry's token) or not, and `from_source` handshakes under
/// way from its source that were let in past the retry level.
pub(super) fn door(under_way: usize, validated: bool, from_source: usize) -> Door {
    if under_way < HANDSHAKES_BEFORE_RETRY {
        Door::Open
    } else if !validated {
        Door::Retry
    } else if under_way >= MAX_HANDSHAKES || from_source >= HANDSHAKES_PER_SOURCE {
        Door::Shut
    } else {
        Door::Open
    }
}

/// The source a handshake is counted under: an IPv4 address (IPv4-mapped ones too), or an
/// IPv6 address's /64, which one host commonly has whole.
pub(super) fn source_of(ip: std::net::IpAddr) -> std::net::IpAddr {
    use std::net::{IpAddr, Ipv6Addr};
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// Counts a handshake under way until dropped (and under its source, if it was let in past
/// the retry level).
pub(super) struct Handshake {
    ctx: Arc<Ctx>,
    source: Option<std::net::IpAddr>,
}

impl Drop for Handshake {
    fn drop(&mut self) {
        self.ctx.handshakes.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
        if let Some(source) = self.source
            && let Ok(mut by_source) = self.ctx.handshakes_by_source.lock()
            && let Some(n) = by_source.get_mut(&source)
        {
            *n -= 1;
            if *n == 0 {
                by_source.remove(&source);
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
    let source = source_of(incoming.remote_address().ip());
    let Ok(mut by_source) = ctx.handshakes_by_source.lock() else {
        incoming.refuse();
        return None;
    };
    let from_source = by_source.get(&source).copied().unwrap_or(0);
    match door(under_way, validated, from_source) {
        Door::Open => {
            ctx.handshakes.fetch_add(1, Ordering::Relaxed);
            let counted = under_way >= HANDSHAKES_BEFORE_RETRY;
            if counted {
                *by_source.entry(source).or_default() += 1;
            }
            Some((incoming, Handshake { ctx: ctx.clone(), source: counted.then_some(source) }))
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
        for n in [0, 1, HANDSHAKES_BEFORE_RETRY - 1] {
            assert_eq!((door(n, false, 0), door(n, true, 100)), (Door::Open, Door::Open), "{n} under way");
        }
        for n in [HANDSHAKES_BEFORE_RETRY, MAX_HANDSHAKES - 1] {
            assert_eq!(door(n, false, 0), Door::Retry, "{n} under way");
            assert_eq!(door(n, true, HANDSHAKES_PER_SOURCE - 1), Door::Open, "{n} under way");
            assert_eq!(door(n, true, HANDSHAKES_PER_SOURCE), Door::Shut, "{n} under way, the source's all taken");
        }
        for n in [MAX_HANDSHAKES, 100_000] {
            assert_eq!((door(n, false, 0), door(n, true, 0)), (Door::Retry, Door::Shut), "{n} under way");
        }
    }

    #[test]
    fn a_source_is_an_ipv4_address_or_an_ipv6_slash_64() {
        let ip = |s: &str| s.parse::<std::net::IpAddr>().unwrap();
        assert_eq!(source_of(ip("203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(source_of(ip("::ffff:203.0.113.7")), ip("203.0.113.7"));
        assert_eq!(source_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")), ip("2001:db8:1:2::"));
        assert_eq!(source_of(ip("2001:db8:1:2::1")), source_of(ip("2001:db8:1:2:ffff::9")));
        assert_ne!(source_of(ip("2001:db8:1:2::1")), source_of(ip("2001:db8:1:3::1")));
    }
}
