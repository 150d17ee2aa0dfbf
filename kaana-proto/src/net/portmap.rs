//! A UDP port the home router opens for the server: asked for over UPnP IGD (the `igd-next`
//! crate), else over NAT-PMP (RFC 6886, a dozen bytes over UDP to the default gateway, written
//! here). Blocking calls: run them off the async runtime.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::time::Duration;

use igd_next::{PortMappingProtocol, SearchOptions};
use thiserror::Error;

/// How long a mapping is leased for; it is renewed at half that.
pub const LEASE_SECS: u32 = 3600;
/// How long to look for a UPnP router before saying there is none.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);
/// The NAT-PMP port on the gateway.
const NATPMP_PORT: u16 = 5351;

/// Why no port could be mapped.
#[derive(Debug, Error)]
pub enum MapError {
    /// No router answered, in any protocol.
    #[error("no router answered: UPnP: {upnp}; NAT-PMP: {natpmp}")]
    NoRouter {
        /// What the UPnP search found.
        upnp: String,
        /// What NAT-PMP found.
        natpmp: String,
    },
    /// The router answered but refused.
    #[error("the router {router} refused: {reason}")]
    Refused {
        /// The router's address.
        router: SocketAddr,
        /// What it said.
        reason: String,
    },
}

/// How a mapping was made, to renew and remove it the same way.
#[derive(Debug, Clone)]
enum Via {
    Upnp(igd_next::Gateway),
    NatPmp { gateway: Ipv4Addr, bind: Option<IpAddr> },
}

/// A port mapping that holds: UDP `external` on the router goes to `local` on this machine.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The router's public address and the mapped port.
    pub external: SocketAddr,
    /// Where the router sends it.
    pub local: SocketAddr,
    /// How long the router keeps it, in seconds (a NAT-PMP router may grant less than asked).
    pub lease_secs: u32,
    via: Via,
}

impl Mapping {
    /// The router's address (its control endpoint).
    pub fn router(&self) -> SocketAddr {
        match &self.via {
            Via::Upnp(g) => g.addr,
            Via::NatPmp { gateway, .. } => SocketAddr::new(IpAddr::V4(*gateway), NATPMP_PORT),
        }
    }

    /// The protocol it was asked for in: `UPnP` or `NAT-PMP`.
    pub fn protocol(&self) -> &'static str {
        match self.via {
            Via::Upnp(_) => "UPnP",
            Via::NatPmp { .. } => "NAT-PMP",
        }
    }
}

/// Asks the router to forward UDP to `port` on this machine (at `bind`, when the server is bound
/// to one address): over UPnP IGD (the same external port if it is free, else any), else over
/// NAT-PMP to the default gateway. `previous` is a mapping to renew, the way it was made.
pub fn map_udp(bind: Option<IpAddr>, port: u16, previous: Option<&Mapping>) -> Result<Mapping, MapError> {
    match previous.map(|m| &m.via) {
        Some(Via::Upnp(gateway)) => upnp(gateway.clone(), bind, port, previous),
        Some(Via::NatPmp { gateway, bind }) => natpmp(*gateway, *bind, port, previous.map(|m| m.external.port())),
        None => {
            let upnp_error = match search(bind) {
                Ok(gateway) => return upnp(gateway, bind, port, None),
                Err(e) => e,
            };
            let gateway = default_gateway().map_err(|e| MapError::NoRouter {
                upnp: upnp_error.clone(),
                natpmp: format!("no default gateway: {e}"),
            })?;
            natpmp(gateway, bind, port, None).map_err(|e| match e {
                MapError::NoRouter { natpmp, .. } => MapError::NoRouter { upnp: upnp_error, natpmp },
                refused => refused,
            })
        }
    }
}

fn search(bind: Option<IpAddr>) -> Result<igd_next::Gateway, String> {
    let mut options = SearchOptions::default();
    options.timeout = Some(SEARCH_TIMEOUT);
    options.single_search_timeout = Some(SEARCH_TIMEOUT);
    options.gateway_ip_version = igd_next::GatewayIpVersion::V4;
    if let Some(ip) = bind.filter(|ip| ip.is_ipv4() && !ip.is_unspecified()) {
        options.bind_addr = SocketAddr::new(ip, 0);
    }
    igd_next::search_gateway(options).map_err(|e| e.to_string())
}

fn upnp(
    gateway: igd_next::Gateway,
    bind: Option<IpAddr>,
    port: u16,
    previous: Option<&Mapping>,
) -> Result<Mapping, MapError> {
    let router = gateway.addr;
    let refused = |reason: String| MapError::Refused { router, reason };
    let local_ip = match bind.filter(|ip| !ip.is_unspecified()) {
        Some(ip) => ip,
        None => local_ip_towards(router).map_err(|e| refused(format!("no local address towards it: {e}")))?,
    };
    let local = SocketAddr::new(local_ip, port);
    let description = "kaana-sync";
    let external_port = match previous {
        Some(m) => {
            gateway
                .add_port(PortMappingProtocol::UDP, m.external.port(), local, LEASE_SECS, description)
                .map_err(|e| refused(e.to_string()))?;
            m.external.port()
        }
        None => match gateway.add_port(PortMappingProtocol::UDP, port, local, LEASE_SECS, description) {
            Ok(()) => port,
            Err(_) => gateway
                .add_any_port(PortMappingProtocol::UDP, local, LEASE_SECS, description)
                .map_err(|e| refused(e.to_string()))?,
        },
    };
    let ip = gateway.get_external_ip().map_err(|e| refused(format!("no external address: {e}")))?;
    Ok(Mapping { external: SocketAddr::new(ip, external_port), local, lease_secs: LEASE_SECS, via: Via::Upnp(gateway) })
}

/// Removes `mapping` from the router.
pub fn unmap(mapping: &Mapping) -> Result<(), MapError> {
    match &mapping.via {
        Via::Upnp(gateway) => gateway
            .remove_port(PortMappingProtocol::UDP, mapping.external.port())
            .map_err(|e| MapError::Refused { router: gateway.addr, reason: e.to_string() }),
        Via::NatPmp { gateway, bind } => {
            // RFC 6886 3.4: a lifetime of 0 (and a suggested external port of 0) deletes it.
            let request = map_request(mapping.local.port(), 0, 0);
            natpmp_exchange(*gateway, *bind, &request, 129, 16).map(|_| ())
        }
    }
}

/// The local address this machine would use to reach `router` (no packet is sent).
fn local_ip_towards(router: SocketAddr) -> std::io::Result<IpAddr> {
    let socket = UdpSocket::bind(("0.0.0.0", 0))?;
    socket.connect(router)?;
    Ok(socket.local_addr()?.ip())
}

/// The IPv4 default gateway, from the kernel's routing table.
fn default_gateway() -> Result<Ipv4Addr, String> {
    let table = std::fs::read_to_string("/proc/net/route").map_err(|e| format!("/proc/net/route: {e}"))?;
    gateway_of(&table).ok_or_else(|| "no default route".to_owned())
}

/// The default route's gateway in `/proc/net/route` text (hex fields of the address's bytes in
/// memory order, read as a number in the host's byte order).
fn gateway_of(table: &str) -> Option<Ipv4Addr> {
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.get(1) != Some(&"00000000") {
            return None;
        }
        let raw = u32::from_str_radix(f.get(2)?, 16).ok()?;
        (raw != 0).then(|| Ipv4Addr::from(raw.to_ne_bytes()))
    })
}

/// A NAT-PMP mapping request for UDP: internal port, suggested external port, lifetime.
fn map_request(internal: u16, external: u16, lifetime: u32) -> [u8; 12] {
    let mut r = [0u8; 12];
    r[1] = 1; // opcode 1: map UDP
    r[4..6].copy_from_slice(&internal.to_be_bytes());
    r[6..8].copy_from_slice(&external.to_be_bytes());
    r[8..12].copy_from_slice(&lifetime.to_be_bytes());
    r
}

/// Maps UDP `port` over NAT-PMP at `gateway` (suggesting `external`, else the same port).
fn natpmp(gateway: Ipv4Addr, bind: Option<IpAddr>, port: u16, external: Option<u16>) -> Result<Mapping, MapError> {
    let router = SocketAddr::new(IpAddr::V4(gateway), NATPMP_PORT);
    let reply = natpmp_exchange(gateway, bind, &map_request(port, external.unwrap_or(port), LEASE_SECS), 129, 16)?;
    let mapped = u16::from_be_bytes([reply[10], reply[11]]);
    let lease_secs = u32::from_be_bytes([reply[12], reply[13], reply[14], reply[15]]);
    let ip_reply = natpmp_exchange(gateway, bind, &[0, 0], 128, 12)?;
    let ip = Ipv4Addr::new(ip_reply[8], ip_reply[9], ip_reply[10], ip_reply[11]);
    let local_ip = match bind.filter(|ip| !ip.is_unspecified()) {
        Some(ip) => ip,
        None => local_ip_towards(router).map_err(|e| MapError::Refused { router, reason: e.to_string() })?,
    };
    Ok(Mapping {
        external: SocketAddr::new(IpAddr::V4(ip), mapped),
        local: SocketAddr::new(local_ip, port),
        lease_secs,
        via: Via::NatPmp { gateway, bind },
    })
}

/// Sends a NAT-PMP `request` to `gateway` and waits for the reply with opcode `op` (at least
/// `len` bytes), retrying as RFC 6886 says (250 ms, doubling; four tries here, under 4 s).
fn natpmp_exchange(
    gateway: Ipv4Addr,
    bind: Option<IpAddr>,
    request: &[u8],
    op: u8,
    len: usize,
) -> Result<Vec<u8>, MapError> {
    let router = SocketAddr::new(IpAddr::V4(gateway), NATPMP_PORT);
    let no_router = |why: String| MapError::NoRouter { upnp: String::new(), natpmp: why };
    let local = bind.filter(|ip| ip.is_ipv4()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let socket = UdpSocket::bind(SocketAddr::new(local, 0)).map_err(|e| no_router(e.to_string()))?;
    socket.connect(router).map_err(|e| no_router(e.to_string()))?;
    let mut wait = Duration::from_millis(250);
    let mut buf = [0u8; 64];
    for _ in 0..4 {
        socket.send(request).map_err(|e| no_router(e.to_string()))?;
        socket.set_read_timeout(Some(wait)).map_err(|e| no_router(e.to_string()))?;
        match socket.recv(&mut buf) {
            Ok(n) if n >= len && buf[0] == 0 && buf[1] == op => {
                let code = u16::from_be_bytes([buf[2], buf[3]]);
                if code != 0 {
                    return Err(MapError::Refused { router, reason: natpmp_result(code).to_owned() });
                }
                return Ok(buf[..n].to_vec());
            }
            Ok(_) => {}
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(no_router(format!("{router}: {e}"))),
        }
        wait *= 2;
    }
    Err(no_router(format!("{router} did not answer")))
}

/// What a NAT-PMP result code means (RFC 6886 3.5).
fn natpmp_result(code: u16) -> &'static str {
    match code {
        1 => "unsupported version",
        2 => "not authorized (mapping turned off on the router)",
        3 => "network failure (the router has no external address)",
        4 => "out of resources",
        5 => "unsupported opcode",
        _ => "an unknown result",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_gateway_is_read_from_the_routing_table() {
        let table = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\n\
                     eth0\t004DA8C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\n\
                     eth0\t00000000\t014DA8C0\t0003\t0\t0\t0\t00000000\n";
        assert_eq!(gateway_of(table), Some(Ipv4Addr::new(192, 168, 77, 1)));
        assert_eq!(gateway_of("Iface\tDestination\n"), None);
    }

    #[test]
    fn a_mapping_request_is_as_rfc_6886_writes_it() {
        assert_eq!(map_request(7447, 7447, 3600), [0, 1, 0, 0, 0x1d, 0x17, 0x1d, 0x17, 0, 0, 0x0e, 0x10]);
    }
}
