//! A worker thread: reads the queues of the partitions it owns, decodes
//! and buffers their records, seals checkpoints and hands them to the
//! partitions' commit chains, and reacts to assignments and to the chains'
//! reports.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Message};
use tokio::runtime::Handle;
use tracing::{error, info, warn};

use super::{Queues, RunError, Shared};
use crate::buffer::{BufferError, Buffers, Record};
use crate::chain::{Chains, Report};
use crate::checkpoint::{Checkpoint, Range};
use crate::commit::{Committer, PartitionOutcome, Sealed};
use crate::config::{ErrorPolicy, ErrorsConfig};
use crate::dlq::{DeadLetter, DeadLetters, Stage};
use crate::envelope::{Encoding, Envelope};
use crate::failpoint;
use crate::framing::Framing;
use crate::source::{self, Assignment, KafkaConsumer};
use crate::telemetry::Telemetry;
use crate::tenancy::{Route, Tenancy};

/// What became of one record.
#[derive(Debug)]
enum Outcome {
    Row,
    /// Its tenant is configured to be dropped.
    Dropped,
    Failed(Stage, String),
}

/// How often a worker publishes gauges and counts.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Records taken between two looks at the clock and the chains' reports.
const TIMERS_EVERY: u32 = 64;

/// What a worker knows of one partition it owns.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Progress {
    /// The last offset handed to the partition's chain (committed or on
    /// its way): the next checkpoint's range starts after it.
    sealed_to: Option<i64>,
    /// Since the last seal.
    first_read: Option<i64>,
    last_read: Option<i64>,
    skipped: u64,
    /// Bumped by a fence: reports of checkpoints sealed before it are stale.
    epoch: u64,
}

/// A worker: everything it owns besides its partitions' queues, whose
/// messages borrow them.
#[derive(Debug)]
pub(super) struct Worker {
    pub(super) index: usize,
    pub(super) shared: Arc<Shared>,
    pub(super) topic: String,
    pub(super) framing: Framing,
    pub(super) buffers: Buffers,
    pub(super) dead_letters: DeadLetters,
    pub(super) errors: ErrorsConfig,
    pub(super) tenancy: Tenancy,
    pub(super) chains: Chains,
    pub(super) runtime: Handle,
    pub(super) telemetry: Telemetry,
    pub(super) checkpoint_interval: Duration,
    /// The files' share of the budget, all workers.
    pub(super) max_buffer_bytes: usize,
    /// This worker's part of it, for its open files.
    pub(super) share: usize,
    /// Committed progress of the partitions this worker owns.
    pub(super) checkpoint: Checkpoint,
    /// Owned partitions and what was read from them since their last seal.
    pub(super) owned: BTreeMap<i32, Progress>,
    /// The next epoch to give a partition (assignment or fence).
    pub(super) next_epoch: u64,
    /// Next offsets last committed to the Kafka group, per partition.
    pub(super) advised: BTreeMap<i32, i64>,
    /// Records taken since the count was last published: those of owned
    /// partitions past their committed offset, each once.
    pub(super) consumed: u64,
    /// A bounded run (replay): per partition, the first offset not to
    /// read. The worker stops when each of its partitions reached its end,
    /// and commits nothing to the Kafka group.
    pub(super) ends: Option<BTreeMap<i32, i64>>,
    /// Partitions of a bounded run whose fetch position passed their end
    /// without a record at `end - 1` (a transaction marker sits there).
    pub(super) passed_end: BTreeSet<i32>,
}

impl Worker {
    /// Reads its partitions' queues until `stop` (or a bounded run's ends);
    /// then seals what is buffered and waits for every chain. Returns at
    /// once, without checkpointing, when another worker failed.
    pub(super) fn run(
        &mut self,
        consumer: &KafkaConsumer,
        events: &mpsc::Receiver<Assignment>,
        stop: &AtomicBool,
    ) -> Result<(), RunError> {
        let mut queues = Queues::new();
        self.apply_assignments(&mut queues, events);
        let mut next_checkpoint = Instant::now() + self.checkpoint_interval;
        let mut next_publish = Instant::now() + PUBLISH_EVERY;
        let mut since_timers = 0;
        while !stop.load(Ordering::Relaxed) && !self.reached_ends() {
            if self.shared.failed.load(Ordering::Relaxed) {
                return Ok(());
            }
            let idle = match queues.poll() {
                None => true,
                Some(Err(e)) => {
                    warn!(error = %e, "kafka poll error");
                    true
                }
                Some(Ok(message)) => {
                    self.ingest(&message)?;
                    false
                }
            };
            if self.buffers.has_parts() {
                self.stream_parts(consumer);
            }
            // Reports, assignments and timers every few records (no clock
            // read per record), at once when the queues are empty.
            since_timers += 1;
            let mut sealed_all = false;
            if idle || since_timers >= TIMERS_EVERY {
                since_timers = 0;
                self.apply_assignments(&mut queues, events);
                self.take_reports(consumer, CommitMode::Async)?;
                let now = Instant::now();
                if now >= next_publish {
                    self.publish(consumer);
                    self.note_positions(consumer);
                    next_publish = now + PUBLISH_EVERY;
                }
                if now >= next_checkpoint {
                    self.seal(consumer, None)?;
                    // Every owned partition, once per interval: also progress
                    // recovered on assignment, and advice the group refused
                    // (an asynchronous commit fails after the call returned,
                    // during a rebalance say).
                    self.advised.clear();
                    self.advise_kafka(consumer, CommitMode::Async);
                    next_checkpoint = Instant::now() + self.checkpoint_interval;
                    sealed_all = true;
                }
            }
            if !sealed_all && let Some(partitions) = self.due_early()? {
                self.seal(consumer, Some(&partitions))?;
            }
            self.hold_while_full(consumer)?;
            if idle {
                // Woken by a queue receiving records or by the router.
                std::thread::park_timeout(source::POLL_TIMEOUT);
            }
        }
        if self.shared.failed.load(Ordering::Relaxed) {
            return Ok(());
        }
        self.publish(consumer);
        if !self.owned.is_empty() {
            info!(worker = self.index, "stopping: committing what is buffered");
        }
        self.seal(consumer, None)?;
        self.drain(consumer)
    }

    /// Counts and gauges: records taken, what is buffered, each owned
    /// partition's lag (high watermark − next offset to commit).
    fn publish(&mut self, consumer: &KafkaConsumer) {
        self.telemetry.consumed(std::mem::take(&mut self.consumed));
        self.publish_buffered();
        let marks = consumer.context().high_watermarks();
        for (&partition, progress) in &self.owned {
            let next = match self.checkpoint.position(partition) {
                Some(to) => to + 1,
                None => match progress.first_read {
                    Some(first) => first,
                    None => continue,
                },
            };
            if let Some(&mark) = marks.get(&partition) {
                self.telemetry.lag(partition, (mark - next).max(0));
            }
        }
    }

    /// This worker's buffers into the gauges, which show all workers'.
    fn publish_buffered(&self) {
        let mine = &self.shared.gauges[self.index];
        mine.bytes.store(self.open_bytes(), Ordering::Relaxed);
        mine.rows.store(
            self.buffers.buffered_rows() + self.dead_letters.buffered_rows(),
            Ordering::Relaxed,
        );
        mine.in_flight
            .store(self.chains.pending(), Ordering::Relaxed);
        let (mut bytes, mut rows, mut in_flight) = (self.sealed_bytes(), 0, 0);
        for gauges in &self.shared.gauges {
            bytes += gauges.bytes.load(Ordering::Relaxed);
            rows += gauges.rows.load(Ordering::Relaxed);
            in_flight += gauges.in_flight.load(Ordering::Relaxed);
        }
        self.telemetry.buffered(bytes, rows);
        self.telemetry.in_flight(in_flight);
    }

    /// What this worker's open files hold, as the budget counts it.
    fn open_bytes(&self) -> usize {
        self.buffers.buffered_bytes() + self.dead_letters.buffered_bytes()
    }

    /// Bytes sealed and still on their way to the store, all workers': tails
    /// of files and parts of streamed files.
    fn sealed_bytes(&self) -> usize {
        self.chains.held_bytes() + self.committer().streams.held_bytes()
    }

    fn committer(&self) -> &Committer {
        self.chains.committer()
    }

    /// Hands the parts of streamed files to their uploads. When as many
    /// parts as allowed are in flight, reading waits until one is done.
    fn stream_parts(&mut self, consumer: &KafkaConsumer) {
        for part in self.buffers.take_parts() {
            let streams = &self.chains.committer().streams;
            let permit = match streams.try_permit() {
                Some(permit) => Some(permit),
                None => {
                    // The counts say where reading stands while it waits.
                    self.publish(consumer);
                    let streams = &self.chains.committer().streams;
                    self.runtime.block_on(streams.permit())
                }
            };
            self.chains.committer().streams.send(part, permit);
        }
    }

    /// Aborts the uploads of streamed files that were dropped.
    fn abort_abandoned(&mut self) {
        for stream in self.buffers.take_abandoned() {
            self.chains.committer().streams.abort(stream);
        }
    }

    /// Partitions to seal before the interval is up: those with a full
    /// file, and — when open files pass half the files' share and closing
    /// the open row groups of the largest ([`Buffers::compact`]) did not
    /// bring them under it — the partitions holding the most, until a
    /// quarter of it would be left.
    /// Closing a file needs about as much again as it holds (its columns
    /// are encoded next to the pages), hence half. What is sealed counts
    /// until it is uploaded ([`Worker::hold_while_full`]).
    fn due_early(&mut self) -> Result<Option<BTreeSet<i32>>, RunError> {
        let mut due = self.buffers.take_due();
        // Only what is still open: sealed bytes are on their way out, and
        // sealing again would only cut smaller files.
        let mut held = self.open_bytes();
        if held >= self.share / 2 {
            // First the open row groups of the largest files close: their
            // pages shrink to their compressed size and their compressors
            // go, and the files stay open. An eighth of the half at a time:
            // the files that gathered the most since their last close go
            // first and the rest grow on, so row groups are larger than
            // closing every file at once leaves them (a third fewer in
            // `scripts/bench-e2e`).
            let closed = self.buffers.compact(self.share / 2 - self.share / 16)?;
            self.telemetry.row_groups_closed_early(closed);
            held = self.open_bytes();
        }
        if held >= self.share / 2 {
            let mut by_partition = self.buffers.bytes_by_partition();
            for (partition, bytes) in self.dead_letters.bytes_by_partition() {
                *by_partition.entry(partition).or_default() += bytes;
            }
            let mut largest: Vec<(usize, i32)> =
                by_partition.into_iter().map(|(p, b)| (b, p)).collect();
            largest.sort_unstable_by(|a, b| b.cmp(a));
            let mut left = held;
            for (bytes, partition) in largest {
                if left <= self.share / 4 {
                    break;
                }
                if due.insert(partition) {
                    left -= bytes;
                }
            }
            if held >= self.share / 4 * 3 {
                // Whatever the estimate per partition says: everything open
                // is sealed, and `hold_while_full` waits for it to upload.
                due.extend(self.owned.keys());
            }
            self.telemetry.memory_pressure(held, due.len());
        }
        Ok((!due.is_empty()).then_some(due))
    }

    /// Acts on partitions the router gave or took since the last look.
    fn apply_assignments(&mut self, queues: &mut Queues, events: &mpsc::Receiver<Assignment>) {
        let mut changed = false;
        while let Ok(event) = events.try_recv() {
            changed = true;
            match event {
                Assignment::Assigned {
                    partition,
                    recovered,
                    queue,
                } => {
                    queues.add(partition, queue);
                    let committed = recovered.last.as_ref().map(|m| m.range.to);
                    let epoch = self.new_epoch();
                    self.owned.insert(
                        partition,
                        Progress {
                            sealed_to: committed,
                            epoch,
                            ..Progress::default()
                        },
                    );
                    self.advised.remove(&partition);
                    self.checkpoint.reset(partition, committed);
                    if !recovered.unmarked.is_empty() {
                        info!(
                            partition,
                            manifests = recovered.unmarked.len(),
                            "publishing and announcing the files of unannounced commits"
                        );
                    }
                    self.chains.finish_recovered(partition, recovered.unmarked);
                }
                Assignment::Revoked { partition } => {
                    queues.remove(partition);
                    self.owned.remove(&partition);
                    self.telemetry.lag(partition, 0);
                    self.checkpoint.forget(partition);
                    self.buffers.drop_partition(partition);
                    self.abort_abandoned();
                    self.dead_letters.drop_partition(partition);
                }
                Assignment::Failed { .. } | Assignment::Unsplit { .. } => {
                    debug_assert!(false, "the router keeps failures: {event:?}");
                }
            }
        }
        debug_assert!(
            !changed || queues.partitions().eq(self.owned.keys().copied()),
            "a worker reads exactly the partitions it owns"
        );
    }

    fn new_epoch(&mut self) -> u64 {
        self.next_epoch += 1;
        self.next_epoch
    }

    /// Whether a bounded run has read every partition up to its end.
    fn reached_ends(&self) -> bool {
        let Some(ends) = &self.ends else {
            return false;
        };
        ends.iter().all(|(partition, &end)| {
            let read = self
                .owned
                .get(partition)
                .and_then(|p| p.last_read.max(p.sealed_to));
            self.owned.contains_key(partition)
                && (self.passed_end.contains(partition) || read.is_some_and(|at| at >= end - 1))
        })
    }

    /// Bounded runs: notes the partitions the consumer fetched past their
    /// end. Offsets of transaction markers are never delivered, so the
    /// record at `end - 1` may not exist.
    fn note_positions(&mut self, consumer: &KafkaConsumer) {
        let Some(ends) = &self.ends else {
            return;
        };
        let Ok(positions) = consumer.position() else {
            return;
        };
        for element in positions.elements() {
            if let (Offset::Offset(next), Some(&end)) =
                (element.offset(), ends.get(&element.partition()))
                && next >= end
            {
                self.passed_end.insert(element.partition());
            }
        }
    }

    fn ingest(&mut self, message: &BorrowedMessage<'_>) -> Result<(), RunError> {
        let (partition, offset) = (message.partition(), message.offset());
        if let Some(ends) = &self.ends
            && ends.get(&partition).is_none_or(|&end| offset >= end)
        {
            // Past the end of a bounded run.
            return Ok(());
        }
        let Some(progress) = self.owned.get_mut(&partition) else {
            // Fetched before a revocation: the new owner reads it again.
            return Ok(());
        };
        if progress.sealed_to.is_some_and(|to| offset <= to) {
            // Already sealed or committed (by us or by a writer that fenced
            // us).
            return Ok(());
        }
        if progress.last_read.is_some_and(|last| offset <= last) {
            // Delivered twice (the client re-fetched after a seek): the first
            // delivery is already buffered.
            return Ok(());
        }
        progress.first_read.get_or_insert(offset);
        progress.last_read = Some(offset);
        self.consumed += 1;
        match self.buffer_row(message)? {
            Outcome::Row => Ok(()),
            Outcome::Dropped => {
                self.count_skipped(partition);
                Ok(())
            }
            Outcome::Failed(reason, error) => self.on_failure(message, reason, error),
        }
    }

    /// Envelope → tenant route → framing → decode into the buffers.
    fn buffer_row(&mut self, message: &BorrowedMessage<'_>) -> Result<Outcome, RunError> {
        let Some(value) = message.payload() else {
            // Checked first: a tombstone often carries no CloudEvents headers.
            return Ok(Outcome::Failed(
                Stage::Tombstone,
                "the record's value is null (a tombstone), not an event".to_owned(),
            ));
        };
        let kafka_timestamp_ms = message.timestamp().to_millis();
        let tenant_header = self.tenancy.header();
        let parsed = source::with_headers(message, |headers| {
            Envelope::parse(headers, kafka_timestamp_ms, tenant_header)
        });
        let envelope = match parsed {
            Ok(envelope) => envelope,
            Err(e) => return Ok(Outcome::Failed(Stage::Envelope, e.to_string())),
        };
        let route = match self.tenancy.route(envelope.tenant_header) {
            (Route::Main, _) => 0,
            (Route::Prefix(i), _) => i + 1,
            (Route::Drop, tenant) => {
                self.telemetry.record_dropped(tenant.unwrap_or_default());
                return Ok(Outcome::Dropped);
            }
        };
        let size = value.len() + message.key().map_or(0, <[u8]>::len);
        if size > self.max_record_bytes() {
            return Ok(Outcome::Failed(
                Stage::TooLarge,
                format!(
                    "record of {size} bytes is over the limit of {} bytes per record (an eighth of the files' share of memory.max_buffer_bytes)",
                    self.max_record_bytes()
                ),
            ));
        }
        let payload = match envelope.encoding {
            Encoding::Protobuf => match self.framing.payload(value, envelope.dataschema) {
                Ok(framed) => {
                    if let Some(upgrade) = framed.upgrade {
                        self.buffers
                            .evolve(upgrade.id, upgrade.descriptor, upgrade.plan)?;
                        self.telemetry.schema_in_use(upgrade.id, true);
                    }
                    framed.payload
                }
                Err(e) if e.is_incompatible() => {
                    return Ok(Outcome::Failed(Stage::IncompatibleSchema, e.to_string()));
                }
                Err(e) => return Ok(Outcome::Failed(Stage::Decode, e.to_string())),
            },
            Encoding::Json => value,
        };
        let record = Record {
            partition: message.partition(),
            offset: message.offset(),
            kafka_timestamp_ms,
            envelope,
            payload,
            route,
        };
        match self.buffers.push(&record) {
            Ok(()) => Ok(Outcome::Row),
            Err(BufferError::Decode(e)) => Ok(Outcome::Failed(Stage::Decode, e.to_string())),
            Err(BufferError::Write(e)) => Err(e.into()),
        }
    }

    /// Records larger than this are dead letters: one record must not take
    /// a large share of the memory budget.
    fn max_record_bytes(&self) -> usize {
        self.max_buffer_bytes / 8
    }

    fn count_skipped(&mut self, partition: i32) {
        if let Some(progress) = self.owned.get_mut(&partition) {
            progress.skipped += 1;
        }
    }

    /// A record that cannot become a row, handled per `errors.policy` (or
    /// `errors.tombstones`).
    fn on_failure(
        &mut self,
        message: &BorrowedMessage<'_>,
        reason: Stage,
        error: String,
    ) -> Result<(), RunError> {
        let (partition, offset) = (message.partition(), message.offset());
        let (policy, key) = self.errors.policy_for(reason);
        match policy {
            ErrorPolicy::DeadLetter => {
                let headers: Vec<(&str, Option<&[u8]>)> = source::headers(message).collect();
                self.dead_letters.push(&DeadLetter {
                    partition,
                    offset,
                    kafka_timestamp_ms: message.timestamp().to_millis(),
                    key: message.key(),
                    value: message.payload(),
                    headers: &headers,
                    stage: reason.label(),
                    reason: &error,
                });
                self.telemetry
                    .record_dead_lettered(partition, offset, reason, &error);
                Ok(())
            }
            ErrorPolicy::Skip => {
                self.count_skipped(partition);
                self.telemetry
                    .record_skipped(partition, offset, reason, &error);
                Ok(())
            }
            ErrorPolicy::Fail => Err(RunError::Rejected {
                partition,
                offset,
                error,
                key,
            }),
        }
    }

    /// What each owned partition (of `only`, if given) would commit now.
    fn sealed(&self, only: Option<&BTreeSet<i32>>) -> Vec<Sealed> {
        self.owned
            .iter()
            .filter(|(p, _)| only.is_none_or(|set| set.contains(p)))
            .filter_map(|(&partition, p)| {
                let to = p.last_read?;
                let from = p.sealed_to.unwrap_or(p.first_read? - 1);
                (to > from).then_some(Sealed {
                    partition,
                    range: Range { from, to },
                    skipped: p.skipped,
                })
            })
            .collect()
    }

    /// Seals what the partitions (of `only`, or all) read since their last
    /// seal — closes their files, fixes their ranges — and hands each to
    /// its commit chain. Reading goes on at once.
    fn seal(
        &mut self,
        consumer: &KafkaConsumer,
        only: Option<&BTreeSet<i32>>,
    ) -> Result<(), RunError> {
        let mut files = self.buffers.finish(only)?;
        files.extend(self.dead_letters.finish(only)?);
        for sealed in self.sealed(only) {
            let partition = sealed.partition;
            let (mine, rest): (Vec<_>, Vec<_>) =
                files.into_iter().partition(|f| f.partition == partition);
            files = rest;
            let Some(progress) = self.owned.get_mut(&partition) else {
                continue;
            };
            let epoch = progress.epoch;
            *progress = Progress {
                sealed_to: Some(sealed.range.to),
                epoch,
                ..Progress::default()
            };
            match consumer.context().lease(partition) {
                Some(lease) => self.chains.submit(sealed, mine, epoch, lease),
                // Revoked in the last poll: the revocation drops the rest.
                None => self.telemetry.revoked_before_commit(partition),
            }
        }
        debug_assert!(
            files.is_empty(),
            "sealed files of partitions that read nothing"
        );
        self.publish_buffered();
        Ok(())
    }

    /// Acts on what the commit chains reported: committed progress (then
    /// advice to the group, `mode`), fences, failures.
    fn take_reports(&mut self, consumer: &KafkaConsumer, mode: CommitMode) -> Result<(), RunError> {
        let reports = self.chains.reports();
        if reports.is_empty() {
            return Ok(());
        }
        self.apply_reports(consumer, reports)?;
        self.advise_kafka(consumer, mode);
        Ok(())
    }

    fn apply_reports(
        &mut self,
        consumer: &KafkaConsumer,
        reports: Vec<Report>,
    ) -> Result<(), RunError> {
        let now_micros = chrono::Utc::now().timestamp_micros();
        for Report {
            partition,
            epoch,
            outcome,
            took,
        } in reports
        {
            let current = self.owned.get(&partition).is_some_and(|p| p.epoch == epoch);
            match outcome? {
                PartitionOutcome::Committed(manifest) => {
                    let (mut rows, mut bytes, mut count) = (0, 0, 0);
                    for file in manifest.files.iter().filter(|f| f.kind.is_data()) {
                        rows += file.rows;
                        bytes += file.size;
                        count += 1;
                        let age = now_micros - file.min_event_time_micros;
                        self.telemetry.commit_latency(age.max(0) as f64 / 1e6);
                    }
                    self.telemetry.checkpoint_done(count, rows, bytes, took);
                    if current
                        && let Err(e) = self.checkpoint.try_apply(&[(partition, manifest.range)])
                    {
                        // The manifest is committed; the in-memory view was stale.
                        error!(partition, error = %e, "progress out of step with the store");
                        self.checkpoint.reset(partition, Some(manifest.range.to));
                    }
                }
                PartitionOutcome::Fenced {
                    other_writer,
                    other_to,
                } => {
                    self.telemetry.fenced(partition, &other_writer, other_to);
                    if current {
                        self.resume_after_fence(consumer, partition, other_to);
                    }
                }
                PartitionOutcome::Revoked => self.telemetry.revoked_before_commit(partition),
                PartitionOutcome::Dropped => {}
            }
        }
        self.publish_buffered();
        Ok(())
    }

    /// Another writer committed from where this process's checkpoint
    /// started: drop what the partition holds and read on after the
    /// winner's range, in a new epoch (the chain drops what was sealed in
    /// the old one).
    fn resume_after_fence(&mut self, consumer: &KafkaConsumer, partition: i32, other_to: i64) {
        let epoch = self.new_epoch();
        self.owned.insert(
            partition,
            Progress {
                sealed_to: Some(other_to),
                epoch,
                ..Progress::default()
            },
        );
        self.checkpoint.reset(partition, Some(other_to));
        self.buffers.drop_partition(partition);
        self.abort_abandoned();
        self.dead_letters.drop_partition(partition);
        let next = Offset::Offset(other_to + 1);
        if let Err(e) = consumer.seek(&self.topic, partition, next, Duration::from_secs(10)) {
            warn!(partition, error = %e, "seek after losing a commit failed");
        }
    }

    /// The memory bound: when sealed files still uploading (all workers')
    /// fill three quarters of the files' share, this worker stops reading
    /// until they are down to half. Its partitions' queues in the client
    /// fill to their bound and their fetching stops; the calling thread
    /// keeps the group served.
    fn hold_while_full(&mut self, consumer: &KafkaConsumer) -> Result<(), RunError> {
        let limit = self.max_buffer_bytes / 4 * 3;
        if self.sealed_bytes() < limit {
            return Ok(());
        }
        self.telemetry
            .memory_pressure(self.open_bytes() + self.sealed_bytes(), self.owned.len());
        self.publish(consumer);
        let low = self.max_buffer_bytes / 2;
        let held = || self.sealed_bytes();
        let failed = &self.shared.failed;
        self.runtime.block_on(async {
            while held() >= low && !failed.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        self.take_reports(consumer, CommitMode::Async)
    }

    /// Waits until every checkpoint this worker sealed is reported, then
    /// advises the group synchronously.
    fn drain(&mut self, consumer: &KafkaConsumer) -> Result<(), RunError> {
        let reports = self.runtime.block_on(self.chains.drain());
        self.apply_reports(consumer, reports)?;
        self.advise_kafka(consumer, CommitMode::Sync);
        Ok(())
    }

    /// Commits the next offset of every owned partition whose progress moved
    /// to the group: for lag dashboards and the first start of a partition
    /// without manifests.
    fn advise_kafka(&mut self, consumer: &KafkaConsumer, mode: CommitMode) {
        if self.ends.is_some() {
            return;
        }
        let next: Vec<(i32, i64)> = self
            .owned
            .keys()
            .filter_map(|&p| self.checkpoint.position(p).map(|to| (p, to + 1)))
            .filter(|(p, next)| self.advised.get(p) != Some(next))
            .collect();
        if next.is_empty() {
            return;
        }
        match source::commit_offsets(consumer, &self.topic, next.iter().copied(), mode) {
            Ok(()) => {
                self.advised.extend(next);
                failpoint::hit(failpoint::AFTER_KAFKA_COMMIT);
            }
            Err(e) => self.telemetry.offsets_commit_failed(&e),
        }
    }
}
