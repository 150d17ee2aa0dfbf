//! What a run takes from the machine, read here and in no layer below: the settings in its
//! environment (read once, at the tool's edge, into [`Settings`]), the time now (`KAANA_NOW`
//! when set, else the clock), and fresh keys and nonces from the operating system's randomness.
//! The layers below take these as parameters.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use crate::net::transport::{Client, Timeouts, Traffic};
use crate::node::discover::Discovery;
use crate::protocol::encoding;
use crate::protocol::identity::Identity;
use crate::protocol::time::{NOW_ENV, TimeError, Timestamp, parse_time_loose};
use crate::store::node::Node;

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

/// Whether process `pid` is alive on this machine (on Linux, by `/proc`; elsewhere assumed).
pub fn process_alive(pid: u32) -> bool {
    if cfg!(target_os = "linux") { std::path::Path::new(&format!("/proc/{pid}")).exists() } else { true }
}

/// A fresh random nonce for an offer.
pub fn new_nonce() -> Result<String, getrandom::Error> {
    let mut n = [0u8; 16];
    getrandom::fill(&mut n)?;
    Ok(encoding::hex_encode(&n))
}

/// The environment variable that overrides [`crate::net::transport::READ_TIMEOUT`] for clients (a duration
/// such as `5s`).
pub const READ_TIMEOUT_ENV: &str = "KAANA_READ_TIMEOUT";
/// The environment variable that overrides [`crate::net::transport::CONNECT_TIMEOUT`] (a duration such as `3s`).
pub const CONNECT_TIMEOUT_ENV: &str = "KAANA_CONNECT_TIMEOUT";

/// The DHT's bootstrap nodes for this run, overriding the config's `dht_bootstrap`: `public`,
/// `none`, or `HOST:PORT` nodes separated by commas.
pub const DHT_BOOTSTRAP_ENV: &str = "KAANA_DHT_BOOTSTRAP";
/// Whether the server asks the router for a port mapping, overriding the config's `port_mapping`
/// (`on` or `off`).
pub const PORT_MAPPING_ENV: &str = "KAANA_PORT_MAPPING";

/// The state directory, when `--home` does not say: this variable, else
/// `$XDG_STATE_HOME/kaana`, else `~/.local/state/kaana`.
pub const HOME_ENV: &str = "KAANA_HOME";

/// What a tool takes from its environment, read once when it starts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Settings {
    /// `KAANA_CONNECT_TIMEOUT` and `KAANA_READ_TIMEOUT`, else the defaults.
    pub timeouts: Timeouts,
    /// The state directory when `--home` is not given ([`HOME_ENV`]); `None` if the environment
    /// names none (no `$HOME` either).
    pub home: Option<PathBuf>,
    /// `KAANA_DHT_BOOTSTRAP`, when set: `Some(None)` for the public DHT, `Some(Some([]))` for none.
    pub dht_bootstrap: Option<Option<Vec<String>>>,
    /// `KAANA_PORT_MAPPING`, when set.
    pub port_mapping: Option<bool>,
}

impl Settings {
    /// Reads the environment; a time-out that is not one (`KAANA_CONNECT_TIMEOUT=forever`) is
    /// refused rather than silently replaced by its default.
    pub fn from_env() -> Result<Self, String> {
        let mut timeouts = Timeouts::default();
        for (var, slot) in [(CONNECT_TIMEOUT_ENV, &mut timeouts.connect), (READ_TIMEOUT_ENV, &mut timeouts.read)] {
            if let Ok(text) = std::env::var(var) {
                match humantime::parse_duration(&text) {
                    Ok(d) if !d.is_zero() => *slot = d,
                    _ => return Err(format!("{var}={text:?} is not a time-out such as 10s, 2m or 1h")),
                }
            }
        }
        let var = |name| std::env::var_os(name).filter(|v| !v.is_empty()).map(PathBuf::from);
        let home = var(HOME_ENV)
            .or_else(|| var("XDG_STATE_HOME").map(|p| p.join("kaana")))
            .or_else(|| var("HOME").map(|h| h.join(".local/state/kaana")));
        let dht_bootstrap = match std::env::var(DHT_BOOTSTRAP_ENV) {
            Ok(text) => Some(
                crate::protocol::discovery::parse_bootstrap(&text).map_err(|e| format!("{DHT_BOOTSTRAP_ENV}: {e}"))?,
            ),
            Err(_) => None,
        };
        let port_mapping = match std::env::var(PORT_MAPPING_ENV).as_deref() {
            Ok("on" | "true" | "yes") => Some(true),
            Ok("off" | "false" | "no") => Some(false),
            Ok(other) => return Err(format!("{PORT_MAPPING_ENV}={other:?} is neither on nor off")),
            Err(_) => None,
        };
        Ok(Settings { timeouts, home, dht_bootstrap, port_mapping })
    }

    /// A client for one run of a tool ([`Client::for_one_run`]), presenting `node`'s key for
    /// `traffic`, waiting as these settings say, and looking a peer up on the DHT when its known
    /// addresses do not answer (unless the DHT is off).
    pub fn client(&self, node: &Node, traffic: Traffic) -> Client {
        let client = Client::with_traffic(node.identity.clone(), traffic).with_timeouts(self.timeouts).for_one_run();
        // Volumes move at most at the configured rate; a tool's `--limit-rate` overrides it.
        let client = match traffic {
            Traffic::Bulk => client.with_rate_limit(node.config.limit_rate),
            Traffic::Short => client,
        };
        let discovery = self.discovery(node);
        match now_from_env() {
            Ok(now) if discovery.enabled() => {
                let resolver = crate::node::discover::BookResolver::new(node.clone(), Arc::new(discovery), now);
                client.with_resolver(Arc::new(resolver))
            }
            _ => client,
        }
    }

    /// The DHT `node`'s configuration names, unless the environment names another.
    pub fn discovery(&self, node: &Node) -> Discovery {
        Discovery::new(&node.config, self.dht_bootstrap.clone())
    }
}
