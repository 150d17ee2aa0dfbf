//! Cross-tool tests: the real binaries, in temporary homes, with real servers on 127.0.0.1.

#![allow(clippy::unwrap_used)]

mod backup;
mod challenge;
mod common;
mod discovery;
mod fairness;
mod faults;
mod history;
mod identity;
mod market;
mod portmap;
mod prune;
mod replicas;
mod scripts;
mod server;
mod setup;
mod simulation;
