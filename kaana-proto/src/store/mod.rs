//! The disk: the state directory ([`home`]), its configuration ([`config`]) and the node opened
//! from it ([`node`]), its typed files ([`files`]), the holder's store of peers' extents
//! ([`inbound`]), the owner's record of its copies at peers ([`outbound`]), the board on disk ([`board`]), what the server learned of its own reachability
//! ([`reach`]), the volume reader
//! ([`volume`]) and I/O buffers ([`buffer`]).

pub mod board;
pub mod buffer;
pub mod config;
pub mod files;
pub mod home;
pub mod inbound;
pub mod node;
pub mod outbound;
pub mod reach;
pub mod volume;
