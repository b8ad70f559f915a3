//! Human-readable quantities in manifests: durations (`250ms`, `2s`, `1m 30s`, parsed by
//! `humantime`) and byte sizes (`64Mi`, `512Ki`, `1G`, parsed by `bytesize`, which reads
//! Kubernetes' binary and decimal suffixes).

use std::time::Duration;

/// Parses a duration such as `250ms`, `2s` or `1m 30s`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim()).map_err(|e| {
        format!(
            "`{text}` is not a duration ({e}); write a number and a unit, e.g. `250ms`, `2s`, `1m`"
        )
    })
}

/// Parses a byte size such as `64Mi`, `512Ki`, `1Gi` or `1048576`.
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    text.trim()
        .parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|e| format!("`{text}` is not a size ({e}); write e.g. `64Mi`, `512Ki` or `1Gi`"))
}

/// Formats a duration compactly for status output (`1.5s`, `20ms`).
pub fn format_duration(d: Duration) -> String {
    if d >= Duration::from_secs(1) {
        let secs = d.as_secs_f64();
        if secs >= 120.0 {
            humantime::format_duration(Duration::from_secs(d.as_secs())).to_string()
        } else {
            format!("{secs:.1}s")
        }
    } else if d >= Duration::from_millis(1) {
        format!("{}ms", d.as_millis())
    } else {
        format!("{}µs", d.as_micros())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1m 30s").unwrap(), Duration::from_secs(90));
        assert!(parse_duration("10").unwrap_err().contains("not a duration"));
    }

    #[test]
    fn sizes_parse_kubernetes_suffixes() {
        assert_eq!(parse_bytes("64Mi").unwrap(), 64 * 1024 * 1024);
        assert_eq!(parse_bytes("512Ki").unwrap(), 512 * 1024);
        assert_eq!(parse_bytes("1G").unwrap(), 1_000_000_000);
        assert!(parse_bytes("lots").is_err());
    }

    #[test]
    fn durations_format_compactly() {
        assert_eq!(format_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1.5s");
    }
}
