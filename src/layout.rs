//! Where things live in the bucket. Every key sluice writes is built here,
//! so the layout in DESIGN.md has one place to be checked against.
//!
//! ```text
//! <prefix>/<event>/dt=YYYY-MM-DD/hr=HH/<topic>-<partition>-<first offset>-<last offset>.parquet
//! <prefix>/_dead_letters/<event>/dt=YYYY-MM-DD/hr=HH/<topic>-<partition>-<first>-<last>.parquet
//! <prefix>/_sluice/manifests/<event>/<topic>/p=<partition>/<first offset of range>.json
//! <prefix>/_sluice/manifests/<event>/<topic>/p=<partition>/<first offset of range>.notified
//! ```
//! Offsets are zero-padded to 20 digits and partitions to 5 so keys sort in
//! offset order.

use std::fmt::Write as _;

pub const MICROS_PER_HOUR: i64 = 3_600_000_000;

/// The hour (since the Unix epoch, UTC) that an event time falls in.
#[inline]
pub fn hour_of(time_micros: i64) -> i64 {
    time_micros.div_euclid(MICROS_PER_HOUR)
}

/// `dt=YYYY-MM-DD/hr=HH` for an hour since the epoch.
pub fn hour_folder(hour: i64) -> String {
    let micros = hour.saturating_mul(MICROS_PER_HOUR);
    match chrono::DateTime::from_timestamp_micros(micros) {
        Some(t) => t.format("dt=%Y-%m-%d/hr=%H").to_string(),
        None => format!("dt=out-of-range/hr={hour}"),
    }
}

/// `rest` under `prefix` (which may be empty: the bucket's root).
pub fn under(prefix: &str, rest: &str) -> String {
    if prefix.is_empty() {
        rest.to_owned()
    } else {
        format!("{prefix}/{rest}")
    }
}

/// Where the data files of an event live: `<prefix>/<event>/`.
pub fn data_root(prefix: &str, event: &str) -> String {
    under(prefix, &format!("{event}/"))
}

/// Where the dead letters of an event live: `<prefix>/_dead_letters/<event>/`.
pub fn dead_letters_root(prefix: &str, event: &str) -> String {
    under(prefix, &format!("_dead_letters/{event}/"))
}

/// Where files streamed while written wait for their checkpoint:
/// `<prefix>/_sluice/streams/<event>/`.
pub fn streams_root(prefix: &str, event: &str) -> String {
    under(prefix, &format!("_sluice/streams/{event}/"))
}

/// The key of a data file in the default folder layout.
pub fn data_key(
    prefix: &str,
    event: &str,
    hour: i64,
    topic: &str,
    partition: i32,
    first_offset: i64,
    last_offset: i64,
) -> String {
    let folder = format!("{event}/{}", hour_folder(hour));
    file_key(prefix, &folder, topic, partition, first_offset, last_offset)
}

/// The key of a file in `folder` (relative to the prefix).
pub fn file_key(
    prefix: &str,
    folder: &str,
    topic: &str,
    partition: i32,
    first_offset: i64,
    last_offset: i64,
) -> String {
    let mut key = under(prefix, folder);
    let _ = write!(
        key,
        "/{}-{partition}-{first_offset:020}-{last_offset:020}.parquet",
        sanitize(topic)
    );
    key
}

/// The default `files.path`.
pub const DEFAULT_PATH: &str = "{event}/dt={date}/hr={hour}";

/// A `files.path` template: the folder of a data file below the prefix.
/// Placeholders: `{event}`, `{date}` (YYYY-MM-DD), `{hour}` (HH),
/// `{minute}` (MM), all UTC of the record's time, and `{field:<name>}`, a
/// top-level payload field's value made safe for keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathTemplate {
    parts: Vec<Part>,
    /// Microseconds per time bucket: the finest time placeholder used.
    bucket_micros: i64,
    field: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Part {
    Text(String),
    Event,
    Date,
    Hour,
    Minute,
    Field,
}

/// What a key gets for a field that is absent or empty (Hive's name).
pub const NO_VALUE: &str = "__HIVE_DEFAULT_PARTITION__";

impl PathTemplate {
    pub fn parse(text: &str) -> Result<PathTemplate, String> {
        if !text.starts_with("{event}/") {
            return Err(format!(
                "expected a path starting with `{{event}}/`, such as `{DEFAULT_PATH}`, got {text:?}"
            ));
        }
        if text.ends_with('/') || text.contains("//") || text.split('/').any(|s| s == "..") {
            return Err(format!(
                "expected `/`-separated folder names without empty or `..` parts, got {text:?}"
            ));
        }
        let (mut parts, mut field, mut bucket_micros) = (Vec::new(), None, 0i64);
        let mut rest = text;
        while !rest.is_empty() {
            let Some(open) = rest.find('{') else {
                parts.push(Part::Text(rest.to_owned()));
                break;
            };
            if open > 0 {
                parts.push(Part::Text(rest[..open].to_owned()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("unclosed `{{` in {text:?}"))?
                + open;
            let name = &rest[open + 1..close];
            let (part, micros) = match name {
                "event" => (Part::Event, 0),
                "date" => (Part::Date, 24 * MICROS_PER_HOUR),
                "hour" => (Part::Hour, MICROS_PER_HOUR),
                "minute" => (Part::Minute, 60_000_000),
                _ => match name.strip_prefix("field:") {
                    Some(f) if !f.is_empty() && field.is_none() => {
                        field = Some(f.to_owned());
                        (Part::Field, 0)
                    }
                    Some(_) if field.is_some() => {
                        return Err(format!("only one {{field:…}} is supported, in {text:?}"));
                    }
                    _ => {
                        return Err(format!(
                            "unknown placeholder {{{name}}} in {text:?} (expected {{event}}, {{date}}, {{hour}}, {{minute}} or {{field:<name>}})"
                        ));
                    }
                },
            };
            if micros > 0 && (bucket_micros == 0 || micros < bucket_micros) {
                bucket_micros = micros;
            }
            parts.push(part);
            rest = &rest[close + 1..];
        }
        for part in &parts {
            if let Part::Text(t) = part
                && let Some(c) = t
                    .chars()
                    .find(|&c| !(c.is_ascii_alphanumeric() || "-_.=/".contains(c)))
            {
                return Err(format!(
                    "character {c:?} is not allowed in key paths, in {text:?}"
                ));
            }
        }
        Ok(PathTemplate {
            parts,
            bucket_micros,
            field,
        })
    }

    /// The payload field the path names, if any.
    pub fn field(&self) -> Option<&str> {
        self.field.as_deref()
    }

    /// The time bucket of `time_micros`: records of one bucket share a
    /// folder (0 when the path names no time).
    #[inline]
    pub fn bucket(&self, time_micros: i64) -> i64 {
        if self.bucket_micros == 0 {
            0
        } else {
            time_micros.div_euclid(self.bucket_micros)
        }
    }

    /// The folder for `event`, a time bucket and the field's (already
    /// safe) value.
    pub fn render(&self, event: &str, bucket: i64, field: &str) -> String {
        let time =
            chrono::DateTime::from_timestamp_micros(bucket.saturating_mul(self.bucket_micros));
        let mut out = String::new();
        for part in &self.parts {
            let _ = match (part, time) {
                (Part::Text(t), _) => write!(out, "{t}"),
                (Part::Event, _) => write!(out, "{event}"),
                (Part::Field, _) => write!(out, "{field}"),
                (Part::Date, Some(t)) => write!(out, "{}", t.format("%Y-%m-%d")),
                (Part::Hour, Some(t)) => write!(out, "{}", t.format("%H")),
                (Part::Minute, Some(t)) => write!(out, "{}", t.format("%M")),
                (_, None) => write!(out, "out-of-range"),
            };
        }
        out
    }
}

/// A field value as a key part: `[A-Za-z0-9._-]` kept, anything else `_`,
/// at most 128 characters; absent or empty values become [`NO_VALUE`].
pub fn key_part(value: &str, out: &mut String) {
    out.clear();
    out.extend(value.chars().take(128).map(|c| {
        if c.is_ascii_alphanumeric() || "-_.".contains(c) {
            c
        } else {
            '_'
        }
    }));
    if out.is_empty() {
        out.push_str(NO_VALUE);
    }
}

/// The key of a dead-letter file: like a data file's, under
/// `<prefix>/_dead_letters/`.
pub fn dead_letter_key(
    prefix: &str,
    event: &str,
    hour: i64,
    topic: &str,
    partition: i32,
    first_offset: i64,
    last_offset: i64,
) -> String {
    let prefix = under(prefix, "_dead_letters");
    data_key(
        &prefix,
        event,
        hour,
        topic,
        partition,
        first_offset,
        last_offset,
    )
}

/// Where all manifests of a sink live.
pub fn manifests_root(prefix: &str, event: &str, topic: &str) -> String {
    under(
        prefix,
        &format!("_sluice/manifests/{event}/{}/", sanitize(topic)),
    )
}

/// Where one partition's manifests live.
pub fn manifest_dir(prefix: &str, event: &str, topic: &str, partition: i32) -> String {
    format!("{}p={partition:05}/", manifests_root(prefix, event, topic))
}

/// The manifest whose range starts at offset `start`.
pub fn manifest_key(prefix: &str, event: &str, topic: &str, partition: i32, start: i64) -> String {
    format!(
        "{}{start:020}.json",
        manifest_dir(prefix, event, topic, partition)
    )
}

/// The marker written once a manifest's files are announced.
pub fn notified_key(manifest_key: &str) -> String {
    let stem = manifest_key.strip_suffix(".json").unwrap_or(manifest_key);
    format!("{stem}.notified")
}

/// Keeps characters that are safe in S3 keys and URLs; replaces the rest.
fn sanitize(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_the_layout() {
        let hour = hour_of(1_767_323_045_123_456); // 2026-01-02T03:04:05Z
        assert_eq!(
            data_key("raw", "order_placed", hour, "orders.v1", 3, 10, 99),
            "raw/order_placed/dt=2026-01-02/hr=03/orders.v1-3-00000000000000000010-00000000000000000099.parquet"
        );
        assert_eq!(
            data_key("", "e", 0, "t/x", 0, 0, 0),
            "e/dt=1970-01-01/hr=00/t_x-0-00000000000000000000-00000000000000000000.parquet"
        );
    }

    #[test]
    fn manifest_keys_sort_by_partition_and_offset() {
        let key = manifest_key("raw", "ev", "orders", 3, 120);
        assert_eq!(
            key,
            "raw/_sluice/manifests/ev/orders/p=00003/00000000000000000120.json"
        );
        assert!(key.starts_with(&manifest_dir("raw", "ev", "orders", 3)));
        assert!(manifest_key("raw", "ev", "orders", 3, 99) < key);
        assert_eq!(
            notified_key(&key),
            "raw/_sluice/manifests/ev/orders/p=00003/00000000000000000120.notified"
        );
    }

    #[test]
    fn path_templates() {
        let t = PathTemplate::parse(DEFAULT_PATH).unwrap();
        let time = 1_767_323_045_123_456; // 2026-01-02T03:04:05Z
        assert_eq!(t.render("ev", t.bucket(time), ""), "ev/dt=2026-01-02/hr=03");
        assert_eq!(t.bucket(time), hour_of(time));
        let t = PathTemplate::parse("{event}/country={field:country_code}/{date}/{hour}{minute}")
            .unwrap();
        assert_eq!(t.field(), Some("country_code"));
        assert_eq!(
            t.render("ev", t.bucket(time), "DE"),
            "ev/country=DE/2026-01-02/0304"
        );
        let t = PathTemplate::parse("{event}/all").unwrap();
        assert_eq!(
            (t.bucket(time), t.render("ev", 0, "")),
            (0, "ev/all".to_owned())
        );
        let t = PathTemplate::parse("{event}/d={date}").unwrap();
        assert_eq!(t.render("ev", t.bucket(-1), ""), "ev/d=1969-12-31");
        for (bad, says) in [
            ("dt={date}", "starting with `{event}/`"),
            ("{event}/{year}", "unknown placeholder {year}"),
            ("{event}/{date", "unclosed"),
            ("{event}//x", "empty"),
            ("{event}/../x", "`..`"),
            ("{event}/a b", "not allowed"),
            ("{event}/{field:a}/{field:b}", "only one"),
        ] {
            let e = PathTemplate::parse(bad).unwrap_err();
            assert!(e.contains(says), "{bad}: {e}");
        }
        let mut out = String::new();
        key_part("São Paulo/1", &mut out);
        assert_eq!(out, "S_o_Paulo_1");
        key_part("", &mut out);
        assert_eq!(out, NO_VALUE);
    }

    #[test]
    fn times_before_the_epoch_round_down() {
        assert_eq!(hour_of(-1), -1);
        assert_eq!(hour_folder(-1), "dt=1969-12-31/hr=23");
    }
}
