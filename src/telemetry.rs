//! Logs and metrics. One function per thing that happens, emitting the log
//! line and the metric together, so call sites never spell metric names.
//! Metric handles are created once; incrementing one is an atomic add.

use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, counter, gauge, histogram};
use tracing::{debug, info, warn};

use crate::dlq::Stage;

/// The metrics of one sink, labelled with its event.
#[derive(Debug, Clone)]
pub struct Telemetry {
    event: String,
    consumed: Counter,
    committed: Counter,
    files: Counter,
    bytes: Counter,
    notified: Counter,
    notify_failures: Counter,
    offset_commit_failures: Counter,
    fenced: Counter,
    buffered: Gauge,
    buffered_rows: Gauge,
    in_flight: Gauge,
    budget: Gauge,
    schema_id: Gauge,
    early_checkpoints: Counter,
    early_row_groups: Counter,
    checkpoint_seconds: Histogram,
    upload_seconds: Histogram,
    commit_latency: Histogram,
}

impl Telemetry {
    pub fn new(event: &str) -> Telemetry {
        let label = [("event", event.to_owned())];
        Telemetry {
            event: event.to_owned(),
            consumed: counter!("sluice_records_consumed_total", &label),
            committed: counter!("sluice_records_committed_total", &label),
            files: counter!("sluice_files_committed_total", &label),
            bytes: counter!("sluice_bytes_committed_total", &label),
            notified: counter!("sluice_notifications_sent_total", &label),
            notify_failures: counter!("sluice_notification_failures_total", &label),
            offset_commit_failures: counter!("sluice_kafka_commit_failures_total", &label),
            fenced: counter!("sluice_fencing_rejections_total", &label),
            buffered: gauge!("sluice_buffered_bytes", &label),
            buffered_rows: gauge!("sluice_buffered_rows", &label),
            in_flight: gauge!("sluice_checkpoints_in_flight", &label),
            budget: gauge!("sluice_memory_budget_bytes", &label),
            schema_id: gauge!("sluice_schema_id", &label),
            early_checkpoints: counter!("sluice_memory_checkpoints_total", &label),
            early_row_groups: counter!("sluice_memory_row_groups_total", &label),
            checkpoint_seconds: histogram!("sluice_checkpoint_duration_seconds", &label),
            upload_seconds: histogram!("sluice_upload_duration_seconds", &label),
            commit_latency: histogram!("sluice_commit_latency_seconds", &label),
        }
    }

    /// Creates the series of every failure reason at 0, so rates and
    /// sums over them exist before the first failure.
    pub fn register_reasons(&self) {
        for reason in Stage::ALL {
            for name in [
                "sluice_records_dead_lettered_total",
                "sluice_records_skipped_total",
            ] {
                counter!(name, "event" => self.event.clone(), "reason" => reason.label())
                    .increment(0);
            }
        }
    }

    #[inline]
    pub fn consumed(&self, records: u64) {
        self.consumed.increment(records);
    }

    pub fn record_dead_lettered(&self, partition: i32, offset: i64, reason: Stage, error: &str) {
        warn!(
            partition,
            offset,
            reason = reason.label(),
            error,
            "record dead-lettered"
        );
        counter!("sluice_records_dead_lettered_total", "event" => self.event.clone(), "reason" => reason.label())
            .increment(1);
    }

    /// A record of a tenant configured to be dropped.
    pub fn record_dropped(&self, tenant: &str) {
        counter!("sluice_records_dropped_total", "event" => self.event.clone(), "tenant" => tenant.to_owned())
            .increment(1);
    }

    pub fn record_skipped(&self, partition: i32, offset: i64, reason: Stage, error: &str) {
        warn!(
            partition,
            offset,
            reason = reason.label(),
            error,
            "record skipped"
        );
        counter!("sluice_records_skipped_total", "event" => self.event.clone(), "reason" => reason.label())
            .increment(1);
    }

    /// The registry's id of the schema version rows are decoded with.
    pub fn schema_in_use(&self, id: u32, rolled: bool) {
        if rolled {
            info!(
                schema_id = id,
                "newer schema version: open files closed, decoding with it from here on"
            );
        }
        self.schema_id.set(f64::from(id));
    }

    /// The buffers passed three quarters of their budget.
    pub fn memory_pressure(&self, held: usize, partitions: usize) {
        debug!(
            held,
            partitions, "memory budget nearly reached: checkpointing the largest partitions early"
        );
        self.early_checkpoints.increment(1);
    }

    /// Row groups closed because open files passed half their memory
    /// share ([`crate::buffer::Buffers::compact`]); the files stay open.
    pub fn row_groups_closed_early(&self, row_groups: usize) {
        self.early_row_groups.increment(row_groups as u64);
    }

    /// What the buffers hold: bytes (as the budget counts them) and rows
    /// not yet committed.
    pub fn buffered(&self, bytes: usize, rows: u64) {
        self.buffered.set(bytes as f64);
        self.buffered_rows.set(rows as f64);
    }

    /// Checkpoints sealed and not yet committed and announced (or dropped).
    pub fn in_flight(&self, checkpoints: usize) {
        self.in_flight.set(checkpoints as f64);
    }

    /// `memory.max_buffer_bytes`, for dashboards to set the buffers against.
    pub fn memory_budget(&self, bytes: u64) {
        self.budget.set(bytes as f64);
    }

    /// Partitions assigned to or revoked from this process in one
    /// rebalance.
    pub fn rebalanced(&self, assigned: usize, revoked: usize) {
        for (kind, count) in [("assign", assigned), ("revoke", revoked)] {
            if count > 0 {
                counter!("sluice_rebalances_total", "event" => self.event.clone(), "kind" => kind)
                    .increment(1);
            }
        }
    }

    /// Records of `partition` in Kafka not yet committed by this process
    /// (0 once the partition is revoked).
    pub fn lag(&self, partition: i32, records: i64) {
        gauge!("sluice_partition_lag", "event" => self.event.clone(), "partition" => partition.to_string())
            .set(records as f64);
    }

    /// A data file committed `seconds` after its oldest event happened.
    pub fn commit_latency(&self, seconds: f64) {
        self.commit_latency.record(seconds);
    }

    pub fn file_uploaded(&self, key: &str, rows: u64, size: u64, took: Duration) {
        debug!(
            key,
            rows,
            size,
            took_ms = took.as_millis() as u64,
            "file uploaded"
        );
        self.upload_seconds.record(took.as_secs_f64());
    }

    pub fn store_retry(&self, what: &str, attempt: u32, error: &dyn std::fmt::Display) {
        warn!(what, attempt, error = %error, "store call failed, retrying");
    }

    pub fn revoked_before_commit(&self, partition: i32) {
        info!(
            partition,
            "partition revoked during the checkpoint; its range is left to the new owner"
        );
    }

    /// Another writer committed this partition's next range first.
    pub fn fenced(&self, partition: i32, other_writer: &str, other_to: i64) {
        warn!(
            partition,
            other_writer,
            other_to,
            "commit lost to another writer; dropping this partition's checkpoint and resuming after its range"
        );
        self.fenced.increment(1);
    }

    pub fn offsets_commit_failed(&self, error: &dyn std::fmt::Display) {
        warn!(error = %error, "committing offsets to the group failed (advice only: progress is in the store); advised again");
        self.offset_commit_failures.increment(1);
    }

    pub fn notifications_sent(&self, count: usize) {
        self.notified.increment(count as u64);
    }

    pub fn notification_failed(&self, keys: usize, attempt: u32, error: &dyn std::fmt::Display) {
        warn!(files = keys, attempt, error = %error, "notification failed, retrying");
        self.notify_failures.increment(keys as u64);
    }

    pub fn checkpoint_done(&self, files: usize, rows: u64, bytes: u64, took: Duration) {
        if files > 0 {
            info!(
                files,
                rows,
                bytes,
                took_ms = took.as_millis() as u64,
                "checkpoint committed"
            );
        }
        self.files.increment(files as u64);
        self.committed.increment(rows);
        self.bytes.increment(bytes);
        self.checkpoint_seconds.record(took.as_secs_f64());
    }
}
