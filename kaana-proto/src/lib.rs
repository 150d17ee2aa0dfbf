//! Ka'ana like's protocol crate: what every tool shares.
//!
//! Pure modules (no I/O, no clock): [`encoding`], [`identity`], [`record`], [`time`] (apart
//! from [`time::now_from_env`]), [`size`], [`config`]. I/O modules: [`state`] (the state
//! directory), [`node`] (a node opened from it), [`cli`] (exit codes and output).

pub mod answer;
pub mod audit;
pub mod backup;
pub mod board;
pub mod board_file;
pub mod buffer;
pub mod challenge;
pub mod cli;
pub mod config;
pub mod encoding;
pub mod fairness;
pub mod identity;
pub mod inbound;
pub mod manifest;
pub mod market;
pub mod net;
pub mod node;
pub mod proof;
pub mod record;
pub mod size;
pub mod state;
pub mod store;
pub mod time;
pub mod volume;
