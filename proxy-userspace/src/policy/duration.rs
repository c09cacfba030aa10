//! Durations as Istio accepts them: Go-style `250ms`, `2s`, `1m30s`, `1.5h` (fractions allowed, as
//! in protobuf's Duration), at millisecond precision.

use std::{fmt, time::Duration};

/// The longest duration protobuf can hold (10,000 years).
const MAX_SECS: u64 = 315_576_000_000;

/// Parses a duration. Units: `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`; a bare `0` is zero.
/// Errors are complete sentences for operators.
pub fn parse(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "invalid duration {}: expected a number and a unit (ns, us, ms, s, m, h), e.g. 250ms, 2s, 1.5h",
            super::node::quote(text)
        )
    };
    if text == "0" {
        return Ok(Duration::ZERO);
    }
    if text.starts_with('-') {
        return Err(format!(
            "invalid duration {}: must not be negative",
            super::node::quote(text)
        ));
    }
    let mut rest = text.strip_prefix('+').unwrap_or(text);
    if rest.is_empty() {
        return Err(bad());
    }
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(bad)?;
        let (num, tail) = rest.split_at(num_len);
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale: u128 = match unit {
            "ns" => 1,
            "us" | "µs" | "μs" => 1_000,
            "ms" => 1_000_000,
            "s" => 1_000_000_000,
            "m" => 60_000_000_000,
            "h" => 3_600_000_000_000,
            _ => return Err(bad()),
        };
        nanos = nanos
            .checked_add(scaled(num, scale).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        rest = tail;
    }
    let secs = u64::try_from(nanos / 1_000_000_000).map_err(|_| bad())?;
    if secs > MAX_SECS {
        return Err(format!(
            "duration {} is longer than protobuf's limit of {MAX_SECS}s",
            super::node::quote(text)
        ));
    }
    Ok(Duration::new(secs, (nanos % 1_000_000_000) as u32))
}

/// `1.5` × `scale` in integer nanoseconds, exactly (fraction digits beyond 1ns are dropped).
fn scaled(num: &str, scale: u128) -> Option<u128> {
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if (int.is_empty() && frac.is_empty()) || frac.contains('.') {
        return None;
    }
    let int: u128 = if int.is_empty() { 0 } else { int.parse().ok()? };
    let mut total = int.checked_mul(scale)?;
    let mut div = 1u128;
    for d in frac.bytes().take(20) {
        div *= 10;
        total = total.checked_add(u128::from(d - b'0') * scale / div)?;
    }
    Some(total)
}

/// How a field constrains its duration.
#[derive(Clone, Copy, Debug)]
pub struct Rule {
    /// Whether `0s` is meaningful (for example "no timeout").
    pub zero_ok: bool,
    /// The smallest non-zero value, in milliseconds.
    pub min_ms: u64,
}

impl Rule {
    pub const AT_LEAST_1MS: Rule = Rule {
        zero_ok: false,
        min_ms: 1,
    };
    pub const ZERO_OK: Rule = Rule {
        zero_ok: true,
        min_ms: 1,
    };

    pub fn check(&self, text: &str) -> Result<Duration, String> {
        let d = parse(text)?;
        if d.is_zero() {
            return if self.zero_ok {
                Ok(d)
            } else {
                Err("must be greater than zero".into())
            };
        }
        if d.subsec_nanos() % 1_000_000 != 0 {
            return Err(format!(
                "{} is finer than 1ms, the precision meshd and Istio support",
                super::node::quote(text)
            ));
        }
        if d.as_millis() < u128::from(self.min_ms) {
            return Err(format!("must be at least {}ms, got {text}", self.min_ms));
        }
        Ok(d)
    }
}

/// A duration field of a resource, kept with its parsed value.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct PolicyDuration(pub Duration);

impl fmt::Display for PolicyDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms.is_multiple_of(1000) {
            write!(f, "{}s", ms / 1000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl serde::Serialize for PolicyDuration {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PolicyDuration {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        parse(&text)
            .map(PolicyDuration)
            .map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(text: &str) -> u128 {
        parse(text).unwrap().as_millis()
    }

    #[test]
    fn accepts_go_style_durations() {
        assert_eq!(ms("250ms"), 250);
        assert_eq!(ms("2s"), 2000);
        assert_eq!(ms("1m"), 60_000);
        assert_eq!(ms("1h"), 3_600_000);
        assert_eq!(ms("1m30s"), 90_000);
        assert_eq!(ms("0.5s"), 500);
        assert_eq!(ms("1.5h"), 5_400_000);
        assert_eq!(ms(".25s"), 250);
        assert_eq!(ms("0"), 0);
        assert_eq!(parse("1500us").unwrap(), Duration::from_micros(1500));
    }

    #[test]
    fn rejects_what_is_not_a_duration() {
        for bad in [
            "2 seconds",
            "2",
            "s",
            "",
            "1d",
            "2S",
            "1..5s",
            "-1s",
            "1e3s",
            "99999999999999999999999999999h",
        ] {
            assert!(parse(bad).is_err(), "{bad} should be rejected");
        }
        assert!(parse("2 seconds").unwrap_err().contains("e.g. 250ms, 2s"));
        assert!(parse("-1s").unwrap_err().contains("negative"));
    }

    #[test]
    fn rules_enforce_precision_and_zero() {
        assert!(Rule::AT_LEAST_1MS.check("0s").is_err());
        assert!(Rule::ZERO_OK.check("0s").is_ok());
        assert!(
            Rule::AT_LEAST_1MS
                .check("1500us")
                .unwrap_err()
                .contains("1ms")
        );
        let fill = Rule {
            zero_ok: false,
            min_ms: 50,
        };
        assert!(fill.check("10ms").unwrap_err().contains("at least 50ms"));
        assert!(fill.check("0.1s").is_ok());
    }

    #[test]
    fn displays_compactly() {
        assert_eq!(
            PolicyDuration(Duration::from_millis(2000)).to_string(),
            "2s"
        );
        assert_eq!(
            PolicyDuration(Duration::from_millis(250)).to_string(),
            "250ms"
        );
    }
}
