//! The pure layer: records, rules and their checks. Nothing here reads a file, a socket, the
//! clock or the OS's randomness; callers pass `now` and random draws in.

pub mod board;
pub mod challenge;
pub mod discovery;
pub mod encoding;
pub mod fairness;
pub mod history;
pub mod identity;
pub mod locator;
pub mod manifest;
pub mod market;
pub mod proof;
pub mod prune;
pub mod push;
pub mod reachability;
pub mod record;
pub mod size;
pub mod time;
