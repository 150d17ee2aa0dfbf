//! Ka'ana like's protocol crate: what every tool shares, in four layers. Each folder is a layer
//! and imports only from the layers below it (`tests/layers.rs` checks it, with no module
//! importing another around a loop):
//!
//! - [`protocol`]: the pure rules and records. Node ids and signed records, offers and
//!   contracts, manifests and their geometry, proofs, challenges and verdicts, the fairness
//!   rules (standing, judging, deliberate failures, evidence), the board, sizes and times. No
//!   files, sockets, clock or OS randomness: `now` and random draws are parameters.
//! - [`store`]: the disk. The state directory (atomic writes, the lock), the configuration, the
//!   node opened from it, the typed files (contracts' states, offers, peers), the holder's
//!   extent store and the owner's record of its copies, the board's files, the volume reader
//!   and buffers.
//! - [`net`]: the wire. Frames and messages, TLS with node keys, QUIC transport. It knows
//!   nothing of the disk, and nothing of contracts but their messages.
//! - [`node`]: what ties them together. The server and its request handlers, the push and
//!   restore runs, challenges and audits, answers, and what the tools share on the command
//!   line (exit codes, output, progress, the clock).

pub mod net;
pub mod node;
pub mod protocol;
pub mod store;
