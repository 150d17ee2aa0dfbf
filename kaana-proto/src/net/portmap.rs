//! A UDP port the home router opens for the server, asked for over UPnP IGD (the `igd-next`
//! crate). Blocking calls: run them off the async runtime.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::time::Duration;

use igd_next::{PortMappingProtocol, SearchOptions};
use thiserror::Error;

/// How long a mapping is leased for; it is renewed at half that.
pub const LEASE_SECS: u32 = 3600;
/// How long to look for a router before saying there is none.
const SEARCH_TIMEOUT: Duration = Duration::from_secs(3);

/// Why no port could be mapped.
#[derive(Debug, Error)]
pub enum MapError {
    /// No router answered the UPnP search.
    #[error("no UPnP router answered on this network ({0})")]
    NoRouter(String),
    /// The router answered but refused.
    #[error("the router {router} refused: {reason}")]
    Refused {
        /// The router's address.
        router: SocketAddr,
        /// What it said.
        reason: String,
    },
}

/// A port mapping that holds: UDP `external` on the router goes to `local` on this machine.
#[derive(Debug, Clone)]
pub struct Mapping {
    /// The router's public address and the mapped port.
    pub external: SocketAddr,
    /// Where the router sends it.
    pub local: SocketAddr,
    gateway: igd_next::Gateway,
}

impl Mapping {
    /// The router's address (its control endpoint).
    pub fn router(&self) -> SocketAddr {
        self.gateway.addr
    }
}

/// Finds the router and asks it to forward UDP to `port` on this machine, at the address on
/// which this machine reaches the router (or `bind`, when the server is bound to one): the same
/// external port if it is free, else any. `previous` is a mapping to renew.
pub fn map_udp(bind: Option<IpAddr>, port: u16, previous: Option<&Mapping>) -> Result<Mapping, MapError> {
    let gateway = match previous {
        Some(m) => m.gateway.clone(),
        None => {
            let mut options = SearchOptions::default();
            options.timeout = Some(SEARCH_TIMEOUT);
            options.single_search_timeout = Some(SEARCH_TIMEOUT);
            options.gateway_ip_version = igd_next::GatewayIpVersion::V4;
            if let Some(ip) = bind.filter(|ip| ip.is_ipv4() && !ip.is_unspecified()) {
                options.bind_addr = SocketAddr::new(ip, 0);
            }
            igd_next::search_gateway(options).map_err(|e| MapError::NoRouter(e.to_string()))?
        }
    };
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
    Ok(Mapping { external: SocketAddr::new(ip, external_port), local, gateway })
}

/// Removes `mapping` from the router.
pub fn unmap(mapping: &Mapping) -> Result<(), MapError> {
    mapping
        .gateway
        .remove_port(PortMappingProtocol::UDP, mapping.external.port())
        .map_err(|e| MapError::Refused { router: mapping.gateway.addr, reason: e.to_string() })
}

/// The local address this machine would use to reach `router` (no packet is sent).
fn local_ip_towards(router: SocketAddr) -> std::io::Result<IpAddr> {
    let socket = UdpSocket::bind(("0.0.0.0", 0))?;
    socket.connect(router)?;
    Ok(socket.local_addr()?.ip())
}
