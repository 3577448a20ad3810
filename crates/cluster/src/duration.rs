use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// A duration written the way Go writes it ("5s", "1m30s", "300ms"), so that a Stolon spec
/// file loads unchanged and what we write back reads the same.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct GoDuration(pub Duration);

impl GoDuration {
    pub fn from_secs(secs: u64) -> Self {
        GoDuration(Duration::from_secs(secs))
    }

    pub fn from_millis(ms: u64) -> Self {
        GoDuration(Duration::from_millis(ms))
    }

    /// Accepts Go-style durations; a bare number without unit is rejected, as Go does
    /// (except "0").
    pub fn parse(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text == "0" {
            return Ok(GoDuration(Duration::ZERO));
        }
        if text.starts_with('-') {
            return Err(format!("negative duration {text:?}"));
        }
        humantime::parse_duration(text)
            .map(GoDuration)
            .map_err(|e| format!("invalid duration {text:?}: {e}"))
    }
}

impl fmt::Display for GoDuration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let d = self.0;
        if d.is_zero() {
            return f.write_str("0s");
        }
        let total_ms = d.as_millis();
        if total_ms < 1000 {
            if d.subsec_nanos().is_multiple_of(1_000_000) {
                return write!(f, "{total_ms}ms");
            }
            return write!(f, "{}us", d.as_micros());
        }
        let secs = d.as_secs();
        let (h, m, s) = (secs / 3600, (secs / 60) % 60, secs % 60);
        if h > 0 {
            write!(f, "{h}h")?;
        }
        if h > 0 || m > 0 {
            write!(f, "{m}m")?;
        }
        let frac_ms = d.subsec_millis();
        if frac_ms == 0 {
            write!(f, "{s}s")
        } else {
            let frac = format!("{:03}", frac_ms);
            write!(f, "{s}.{}s", frac.trim_end_matches('0'))
        }
    }
}

impl Serialize for GoDuration {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for GoDuration {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        GoDuration::parse(&text).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_prints_go_style() {
        for (text, ms, printed) in [
            ("5s", 5_000, "5s"),
            ("1m30s", 90_000, "1m30s"),
            ("300ms", 300, "300ms"),
            ("1.5s", 1_500, "1.5s"),
            ("48h", 172_800_000, "48h0m0s"),
            ("0", 0, "0s"),
        ] {
            let d = GoDuration::parse(text).unwrap();
            assert_eq!(d.0.as_millis(), ms, "{text}");
            assert_eq!(d.to_string(), printed, "{text}");
            assert_eq!(GoDuration::parse(printed).unwrap(), d, "{printed}");
        }
    }

    #[test]
    fn rejects_unitless_and_negative() {
        assert!(GoDuration::parse("20").is_err());
        assert!(GoDuration::parse("-5s").is_err());
        assert!(GoDuration::parse("soon").is_err());
    }
}
