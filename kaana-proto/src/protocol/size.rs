//! Sizes a person types (`1TiB`, `500MB`, `4096`) and writes back.

use thiserror::Error;

/// Why a size was refused.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum SizeError {
    /// Not a number followed by an optional unit.
    #[error("{0:?} is not a size such as 500MB, 1TiB or 4096")]
    Syntax(String),
    /// A unit this parser does not know.
    #[error("{0:?} has an unknown unit (use B, kB, KiB, MB, MiB, GB, GiB, TB, TiB, PB or PiB)")]
    Unit(String),
    /// More than 2^64 - 1 bytes, or a fraction of a byte.
    #[error("{0:?} is not a whole number of bytes that fits in 64 bits")]
    Range(String),
    /// A rate limit below [`MIN_RATE`].
    #[error("{0:?} is below the lowest rate limit, 64KiB/s (512kbit)")]
    TooSlow(String),
}

/// The lowest rate limit a tool takes, in bytes per second: a holder allows a run of raw bytes
/// (an extent) no slower than 16 KiB/s over the whole run, and under a limit one extent of each
/// of two contracts may be moving at once, each at half the rate; twice that again for room.
pub const MIN_RATE: u64 = 64 << 10;

/// Reads a size: a number (decimals allowed) and an optional unit, SI (`kB`, `MB`, …, powers of
/// 1000) or binary (`KiB`, `MiB`, …, powers of 1024). Units are case-insensitive.
pub fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let split = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() || number.matches('.').count() > 1 {
        return Err(SizeError::Syntax(text.to_owned()));
    }
    let multiplier: u128 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" => 1_000,
        "m" | "mb" => 1_000_000,
        "g" | "gb" => 1_000_000_000,
        "t" | "tb" => 1_000_000_000_000,
        "p" | "pb" => 1_000_000_000_000_000,
        "kib" => 1 << 10,
        "mib" => 1 << 20,
        "gib" => 1 << 30,
        "tib" => 1 << 40,
        "pib" => 1 << 50,
        _ => return Err(SizeError::Unit(text.to_owned())),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let range = || SizeError::Range(text.to_owned());
    let whole: u128 = if whole.is_empty() { 0 } else { whole.parse().map_err(|_| range())? };
    let frac_digits = u32::try_from(frac.len()).map_err(|_| range())?;
    let frac_value: u128 = if frac.is_empty() { 0 } else { frac.parse().map_err(|_| range())? };
    let scale = 10u128.checked_pow(frac_digits).ok_or_else(range)?;
    let frac_bytes = frac_value.checked_mul(multiplier).ok_or_else(range)?;
    if frac_bytes % scale != 0 {
        return Err(range());
    }
    let total = whole.checked_mul(multiplier).and_then(|w| w.checked_add(frac_bytes / scale)).ok_or_else(range)?;
    u64::try_from(total).map_err(|_| range())
}

/// Reads a rate a person types for `--limit-rate` and `limit_rate`: a size per second
/// (`10MiB`, `500kB/s`, `2.5MBps`), or bits per second (`20Mbit`, `1Gbit/s`, `8Mbps`: SI, 8 bits
/// a byte; `bps` with a small b is bits, `Bps` bytes). `0`, `none`, `off` and `unlimited` mean no
/// limit (`None`). A limit below [`MIN_RATE`] is refused.
pub fn parse_rate(text: &str) -> Result<Option<u64>, SizeError> {
    let t = text.trim();
    let t = t.strip_suffix("/s").or_else(|| t.strip_suffix("/S")).unwrap_or(t).trim();
    if ["0", "none", "off", "unlimited"].contains(&t.to_ascii_lowercase().as_str()) {
        return Ok(None);
    }
    // Errors name what was typed, not what it was read as.
    let typed = |e: SizeError| match e {
        SizeError::Syntax(_) => SizeError::Syntax(text.to_owned()),
        SizeError::Unit(_) => SizeError::Unit(text.to_owned()),
        _ => SizeError::Range(text.to_owned()),
    };
    let bits =
        t.get(t.len().saturating_sub(3)..).is_some_and(|end| end.eq_ignore_ascii_case("bit")) || t.ends_with("bps");
    let bytes = if bits {
        parse_size(&format!("{}B", &t[..t.len() - 3])).map_err(typed)? / 8
    } else if let Some(bytes) = t.strip_suffix("Bps") {
        parse_size(&format!("{bytes}B")).map_err(typed)?
    } else {
        parse_size(t).map_err(typed)?
    };
    match bytes {
        0 => Ok(None),
        b if b < MIN_RATE => Err(SizeError::TooSlow(text.to_owned())),
        b => Ok(Some(b)),
    }
}

/// Writes a size for people, in binary units with up to one decimal (`1.5 GiB`).
pub fn format_size(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 { format!("{bytes} B") } else { format!("{value:.1} {}", UNITS[unit]) }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("500MB"), Ok(500_000_000));
        assert_eq!(parse_size("1TiB"), Ok(1 << 40));
        assert_eq!(parse_size("1.5 GiB"), Ok(3 << 29));
        assert_eq!(parse_size("64kib"), Ok(65_536));
        assert!(matches!(parse_size("12 parsecs"), Err(SizeError::Unit(_))));
        assert!(matches!(parse_size("MB"), Err(SizeError::Syntax(_))));
        assert!(matches!(parse_size("0.1B"), Err(SizeError::Range(_))));
        assert!(matches!(parse_size("99999PiB"), Err(SizeError::Range(_))));
        assert_eq!(format_size(3 << 29), "1.5 GiB");
    }

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10MiB"), Ok(Some(10 << 20)));
        assert_eq!(parse_rate("10MiB/s"), Ok(Some(10 << 20)));
        assert_eq!(parse_rate("500kB/s"), Ok(Some(500_000)));
        assert_eq!(parse_rate("20Mbit"), Ok(Some(2_500_000)));
        assert_eq!(parse_rate("20Mbps"), Ok(Some(2_500_000)));
        assert_eq!(parse_rate("20MBps"), Ok(Some(20_000_000)));
        assert_eq!(parse_rate("1 Gbit/s"), Ok(Some(125_000_000)));
        assert_eq!(parse_rate("64KiB"), Ok(Some(MIN_RATE)));
        for none in ["0", "none", "off", "Unlimited", "0/s"] {
            assert_eq!(parse_rate(none), Ok(None), "{none}");
        }
        assert_eq!(parse_rate("500kbit"), Err(SizeError::TooSlow("500kbit".into())));
        assert_eq!(parse_rate("100"), Err(SizeError::TooSlow("100".into())));
        assert_eq!(parse_rate("fast"), Err(SizeError::Syntax("fast".into())));
        assert_eq!(parse_rate("10 parsecs/s"), Err(SizeError::Unit("10 parsecs/s".into())));
        assert_eq!(parse_rate("20xbit"), Err(SizeError::Unit("20xbit".into())));
        assert!(parse_rate("10€").is_err() && parse_rate("€bit").is_err() && parse_rate("bit").is_err());
    }
}
