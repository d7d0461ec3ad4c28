//! Crash points between the steps of the commit protocol, for crash tests.
//!
//! Built only with the `failpoints` feature. `SLUICE_FAILPOINT=<name>:<n>`
//! aborts the process (no unwinding, no final checkpoint, like SIGKILL) the
//! `n`-th time the crash point named `<name>` is reached, or makes the
//! error point `<name>` fail that time; `<name>:<n>+` makes an error point
//! fail every time from the `n`-th on. Without the feature every point is
//! an empty inline function.

/// After the checkpoint's files are uploaded, before any manifest.
pub const AFTER_UPLOAD: &str = "after_upload";
/// After a partition's manifest is written, before notifications.
pub const AFTER_MANIFEST: &str = "after_manifest";
/// After notifications were accepted, before the `.notified` markers.
pub const AFTER_NOTIFY: &str = "after_notify";
/// After the markers, before Kafka offsets are committed.
pub const AFTER_MARKERS: &str = "after_markers";
/// After Kafka offsets are committed.
pub const AFTER_KAFKA_COMMIT: &str = "after_kafka_commit";
/// After one part of a multipart upload.
pub const AFTER_PART: &str = "after_part";
/// An error instead of a part upload (see [`fail`]).
pub const PART_UPLOAD: &str = "part_upload";

#[cfg(feature = "failpoints")]
mod active {
    use std::sync::OnceLock;
    use std::sync::atomic::{AtomicU64, Ordering};

    /// The point, the hit it fires at, and whether it fires on every hit
    /// after that too.
    static ARMED: OnceLock<Option<(String, u64, bool)>> = OnceLock::new();
    static HITS: AtomicU64 = AtomicU64::new(0);

    /// Whether this is the n-th time `name` is reached (or a later one,
    /// when armed with `+`).
    pub(super) fn reached(name: &str) -> bool {
        let armed = ARMED.get_or_init(|| {
            let spec = std::env::var("SLUICE_FAILPOINT").ok()?;
            let (point, n) = spec.split_once(':').unwrap_or((&spec, "1"));
            let (n, on) = n.strip_suffix('+').map_or((n, false), |n| (n, true));
            Some((point.to_owned(), n.parse().unwrap_or(1), on))
        });
        let Some((point, n, on)) = armed else {
            return false;
        };
        if point != name {
            return false;
        }
        let hit = HITS.fetch_add(1, Ordering::SeqCst) + 1;
        hit == *n || (*on && hit > *n)
    }

    pub(super) fn hit(name: &str) {
        if reached(name) {
            eprintln!("failpoint {name} reached: aborting");
            std::process::abort();
        }
    }
}

/// Marks a crash point.
#[inline]
pub fn hit(_name: &str) {
    #[cfg(feature = "failpoints")]
    active::hit(_name);
}

/// Marks a point where an error can be injected: true the n-th time it is
/// reached with `SLUICE_FAILPOINT=<name>:<n>` (never without the feature).
#[inline]
pub fn fail(_name: &str) -> bool {
    #[cfg(feature = "failpoints")]
    return active::reached(_name);
    #[cfg(not(feature = "failpoints"))]
    false
}
