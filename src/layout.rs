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

/// The key of a data file.
pub fn data_key(
    prefix: &str,
    event: &str,
    hour: i64,
    topic: &str,
    partition: i32,
    first_offset: i64,
    last_offset: i64,
) -> String {
    let mut key = data_root(prefix, event);
    let _ = write!(
        key,
        "{}/{}-{partition}-{first_offset:020}-{last_offset:020}.parquet",
        hour_folder(hour),
        sanitize(topic)
    );
    key
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
    fn times_before_the_epoch_round_down() {
        assert_eq!(hour_of(-1), -1);
        assert_eq!(hour_folder(-1), "dt=1969-12-31/hr=23");
    }
}
