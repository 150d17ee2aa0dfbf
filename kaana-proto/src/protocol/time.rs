//! Time as the protocol sees it: whole seconds since the Unix epoch, written as RFC 3339 UTC.
//!
//! Decisions never read the clock; they take `now` as a parameter. Only `node::machine::now_from_env` reads
//! it, and it honours `KAANA_NOW` so tests and demos can move a node days ahead.

use std::fmt;
use std::str::FromStr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use thiserror::Error;

/// The environment variable that overrides the clock.
pub const NOW_ENV: &str = "KAANA_NOW";

/// Why a time or duration was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum TimeError {
    /// Not an RFC 3339 UTC time such as `2026-11-28T09:30:00Z`.
    #[error("{text:?} is not an RFC 3339 UTC time such as 2026-11-28T09:30:00Z")]
    Rfc3339 {
        /// What was given.
        text: String,
    },
    /// An RFC 3339 time, but not in its one canonical form (whole seconds, `Z`).
    #[error("{text:?} is not in canonical form (expected {canonical})")]
    NotCanonical {
        /// What was given.
        text: String,
        /// How it should be written.
        canonical: String,
    },
    /// `KAANA_NOW` is set but not a time.
    #[error("{NOW_ENV}={text:?} is not an RFC 3339 UTC time such as 2026-11-28T09:30:00Z")]
    Env {
        /// The variable's value.
        text: String,
    },
    /// Not a duration such as `7d`, `36h` or `90s`.
    #[error("{text:?} is not a duration such as 7d, 36h or 90s")]
    Duration {
        /// What was given.
        text: String,
    },
    /// Before 1970 or too far ahead.
    #[error("time out of range")]
    Range,
}

/// A point in time, in whole seconds since the Unix epoch.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub struct Timestamp(u64);

impl Timestamp {
    /// The time `secs` seconds after the Unix epoch.
    pub const fn from_unix(secs: u64) -> Self {
        Timestamp(secs)
    }

    /// Seconds since the Unix epoch.
    pub const fn unix(self) -> u64 {
        self.0
    }

    /// This time plus `secs` seconds (saturating).
    pub const fn plus_secs(self, secs: u64) -> Self {
        Timestamp(self.0.saturating_add(secs))
    }

    pub fn from_system(t: SystemTime) -> Result<Self, TimeError> {
        t.duration_since(UNIX_EPOCH).map(|d| Timestamp(d.as_secs())).map_err(|_| TimeError::Range)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let t = UNIX_EPOCH + Duration::from_secs(self.0);
        write!(f, "{}", humantime::format_rfc3339_seconds(t))
    }
}

impl FromStr for Timestamp {
    type Err = TimeError;
    /// Strict: exactly the text `Display` writes.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let t = humantime::parse_rfc3339(s).map_err(|_| TimeError::Rfc3339 { text: s.to_owned() })?;
        let ts = Timestamp::from_system(t)?;
        let canonical = ts.to_string();
        if canonical != s {
            return Err(TimeError::NotCanonical { text: s.to_owned(), canonical });
        }
        Ok(ts)
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// Reads a time a person typed: RFC 3339 in UTC, with `T` or a space, seconds optional.
pub fn parse_time_loose(text: &str) -> Result<Timestamp, TimeError> {
    let t = text.trim();
    let t = humantime::parse_rfc3339_weak(t)
        .or_else(|_| humantime::parse_rfc3339_weak(&format!("{t}:00")))
        .map_err(|_| TimeError::Rfc3339 { text: text.to_owned() })?;
    Timestamp::from_system(t)
}

/// Reads a duration such as `7d`, `36h`, `1h 30m` or `90s`, in whole seconds.
pub fn parse_duration(text: &str) -> Result<u64, TimeError> {
    let d = humantime::parse_duration(text.trim()).map_err(|_| TimeError::Duration { text: text.to_owned() })?;
    Ok(d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_time() {
        let t: Timestamp = "2026-11-28T09:30:00Z".parse().unwrap();
        assert_eq!(t.unix(), 1_795_858_200);
        assert_eq!(parse_time_loose("2026-11-28 09:30"), Ok(t));
        assert!(matches!("2026-11-28T09:30:00.5Z".parse::<Timestamp>(), Err(TimeError::NotCanonical { .. })));
        assert!("yesterday".parse::<Timestamp>().is_err());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("7d"), Ok(7 * 86_400));
        assert_eq!(parse_duration("36h"), Ok(36 * 3_600));
        assert!(parse_duration("soon").is_err());
    }

    proptest! {
        #[test]
        fn text_round_trips(secs in 0u64..253_402_300_799) {
            let t = Timestamp::from_unix(secs);
            prop_assert_eq!(t.to_string().parse::<Timestamp>(), Ok(t));
        }
    }
}
