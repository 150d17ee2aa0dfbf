//! What a run takes from the machine, read here and in no layer below: the time now
//! (`KAANA_NOW` when set, else the clock), and fresh keys and nonces from the operating system's
//! randomness. The rules below take these as parameters.

use std::time::SystemTime;

use crate::protocol::encoding;
use crate::protocol::identity::Identity;
use crate::protocol::time::{NOW_ENV, TimeError, Timestamp, parse_time_loose};

/// Now: `KAANA_NOW` when set, else the system clock.
pub fn now_from_env() -> Result<Timestamp, TimeError> {
    match std::env::var(NOW_ENV) {
        Ok(text) if !text.is_empty() => parse_time_loose(&text).map_err(|_| TimeError::Env { text }),
        _ => Timestamp::from_system(SystemTime::now()),
    }
}

impl Identity {
    /// A new random identity from the operating system's random source.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed)?;
        Ok(Identity::from_seed(seed))
    }
}

/// A fresh random nonce for an offer.
pub fn new_nonce() -> Result<String, getrandom::Error> {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n)?;
    Ok(encoding::hex_encode(&n))
}
