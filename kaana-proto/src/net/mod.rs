//! The wire: frames and messages ([`wire`], pure), TLS with node keys as identities ([`tls`]),
//! and QUIC connections and streams ([`transport`]).

pub mod dht;
pub mod portmap;
pub mod rate;
pub mod tls;
pub mod transport;
pub mod wire;
