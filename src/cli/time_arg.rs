//! Time arguments of the subcommands: RFC 3339 (`2026-01-02T03:00:00Z`) or
//! relative to now (`-2h`, `-90m`, `now`).

use chrono::{DateTime, Utc};

/// Parses a time argument; `now` is passed in for tests.
pub(super) fn parse_at(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    let text = text.trim();
    if text == "now" {
        return Ok(now);
    }
    if let Some(ago) = text.strip_prefix('-') {
        let ago = humantime::parse_duration(ago)
            .map_err(|e| format!("{text:?}: {e} (expected e.g. -2h, -30m)"))?;
        let ago = chrono::Duration::from_std(ago).map_err(|e| format!("{text:?}: {e}"))?;
        return Ok(now - ago);
    }
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| {
            format!("{text:?}: {e} (expected RFC 3339 like 2026-01-02T03:00:00Z, or -2h, or now)")
        })
}

/// For clap: a time argument relative to the current time.
pub(super) fn parse(text: &str) -> Result<DateTime<Utc>, String> {
    parse_at(text, Utc::now())
}

/// Checks `from` is before `to`.
pub(super) fn window(from: DateTime<Utc>, to: DateTime<Utc>) -> anyhow::Result<(i64, i64)> {
    if from >= to {
        anyhow::bail!("--from ({from}) must be before --to ({to})");
    }
    Ok((from.timestamp_micros(), to.timestamp_micros()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_relative_and_bad_times() {
        let now = DateTime::parse_from_rfc3339("2026-01-02T03:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(parse_at("now", now).unwrap(), now);
        assert_eq!(
            parse_at("-2h", now).unwrap().to_rfc3339(),
            "2026-01-02T01:00:00+00:00"
        );
        assert_eq!(
            parse_at("2026-01-01T23:30:00+01:00", now)
                .unwrap()
                .to_rfc3339(),
            "2026-01-01T22:30:00+00:00"
        );
        assert!(parse_at("yesterday", now).unwrap_err().contains("RFC 3339"));
        assert!(parse_at("-2 parsecs", now).unwrap_err().contains("-2h"));
        assert!(window(now, now).is_err());
    }
}
