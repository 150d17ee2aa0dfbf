//! Networking: the wire format (pure), TLS with node keys, QUIC transport, and the node server.

pub mod server;
pub mod tls;
pub mod transport;
pub mod wire;
