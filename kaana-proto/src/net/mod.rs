//! Networking: the wire format (pure), TLS with node keys, QUIC transport, and the node server.

mod audits;
mod market;
pub mod server;
mod sync;
pub mod tls;
pub mod transport;
pub mod wire;
