//! The run loop: consume → decode → buffer → seal (write) → hand over to
//! the partition's commit chain (upload → manifest → notify, on the Tokio
//! runtime) → advise Kafka when it reports. DESIGN.md has it as pseudo-code;
//! the protocol's invariants are in [`crate::commit`] and [`crate::chain`].
//!
//! The loop runs on one dedicated thread: polling and decoding are CPU work
//! and stay off the async reactor. It never waits for a checkpoint to
//! commit: checkpoint N commits while N+1 is read. It only stops reading
//! when the memory budget is full of sealed files still uploading, and at
//! the end, when it waits for every chain to drain.

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::Offset;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::runtime::Handle;
use tracing::{error, info, warn};

use crate::buffer::{BufferError, Buffers, Record};
use crate::chain::{Chains, Report};
use crate::checkpoint::{Checkpoint, Range};
use crate::commit::{CommitError, Committer, PartitionOutcome, Sealed};
use crate::config::{ErrorPolicy, ErrorsConfig};
use crate::dlq::{DeadLetter, DeadLetters, Stage};
use crate::envelope::{Encoding, Envelope};
use crate::failpoint;
use crate::framing::Framing;
use crate::manifest::ManifestError;
use crate::source::{self, Assignment, KafkaConsumer};
use crate::telemetry::Telemetry;
use crate::tenancy::{Route, Tenancy};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error("cannot write Parquet: {0}")]
    Write(#[from] crate::writer::WriteError),
    #[error("cannot read the progress of partition {partition} from the store: {source}")]
    Recovery {
        partition: i32,
        source: ManifestError,
    },
    #[error(
        "record at partition {partition} offset {offset} cannot become a row ({error}); {key} is `fail`"
    )]
    Rejected {
        partition: i32,
        offset: i64,
        error: String,
        /// The setting that said to stop.
        key: &'static str,
    },
}

/// What became of one record.
#[derive(Debug)]
enum Outcome {
    Row,
    /// Its tenant is configured to be dropped.
    Dropped,
    Failed(Stage, String),
}

/// How often the loop publishes gauges and counts.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Records taken between two looks at the clock and the chains' reports.
const TIMERS_EVERY: u32 = 64;

pub struct Pipeline {
    consumer: KafkaConsumer,
    state: State,
}

/// What the loop knows of one assigned partition.
#[derive(Debug, Clone, Copy, Default)]
struct Progress {
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

/// Everything the loop owns besides the consumer, whose messages borrow it.
#[derive(Debug)]
struct State {
    topic: String,
    framing: Framing,
    buffers: Buffers,
    dead_letters: DeadLetters,
    errors: ErrorsConfig,
    tenancy: Tenancy,
    chains: Chains,
    runtime: Handle,
    telemetry: Telemetry,
    checkpoint_interval: Duration,
    max_buffer_bytes: usize,
    /// Committed progress of the partitions this process owns.
    checkpoint: Checkpoint,
    /// Owned partitions and what was read from them since their last seal.
    owned: BTreeMap<i32, Progress>,
    /// The next epoch to give a partition (assignment or fence).
    next_epoch: u64,
    /// Next offsets last committed to the Kafka group, per partition.
    advised: BTreeMap<i32, i64>,
    /// Records taken since the count was last published: those of owned
    /// partitions past their committed offset, each once.
    consumed: u64,
    /// A bounded run (replay): per partition, the first offset not to
    /// read. The loop stops when every partition reached its end, and
    /// commits nothing to the Kafka group.
    ends: Option<BTreeMap<i32, i64>>,
    /// Partitions of a bounded run whose fetch position passed their end
    /// without a record at `end - 1` (a transaction marker sits there).
    passed_end: BTreeSet<i32>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("state", &self.state)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        consumer: KafkaConsumer,
        framing: Framing,
        buffers: Buffers,
        dead_letters: DeadLetters,
        errors: ErrorsConfig,
        committer: Committer,
        runtime: Handle,
        telemetry: Telemetry,
        checkpoint_interval: Duration,
        max_buffer_bytes: usize,
    ) -> Pipeline {
        Pipeline {
            consumer,
            state: State {
                topic: committer.topic.clone(),
                framing,
                buffers,
                dead_letters,
                errors,
                tenancy: committer.tenancy.clone(),
                chains: Chains::new(Arc::new(committer), runtime.clone()),
                runtime,
                telemetry,
                checkpoint_interval,
                max_buffer_bytes,
                checkpoint: Checkpoint::new(),
                owned: BTreeMap::new(),
                next_epoch: 1,
                advised: BTreeMap::new(),
                consumed: 0,
                ends: None,
                passed_end: BTreeSet::new(),
            },
        }
    }

    /// Reads each partition only up to its end offset (exclusive), then
    /// checkpoints and returns; commits no offsets to the group.
    pub fn bounded(mut self, ends: BTreeMap<i32, i64>) -> Pipeline {
        self.state.ends = Some(ends);
        self
    }

    /// Runs until `stop` is set (or a bounded run reached its ends), then
    /// checkpoints what it holds and returns.
    pub fn run(self, stop: &AtomicBool) -> Result<(), RunError> {
        let Pipeline {
            consumer,
            mut state,
        } = self;
        let result = state.read(&consumer, stop);
        if result.is_err() {
            // Files still open will never be committed: their multipart
            // uploads are aborted rather than left for `sluice gc`.
            let streams = &state.committer().streams;
            // The timer is made inside the runtime: this thread is not one
            // of its workers.
            let _ = state
                .runtime
                .block_on(async { tokio::time::timeout(ABORT_WITHIN, streams.abort_all()).await });
        }
        result
    }
}

/// How long a process stopping on an error spends aborting the uploads of
/// its open files.
const ABORT_WITHIN: Duration = Duration::from_secs(30);

impl State {
    /// The run loop (DESIGN.md); then, on a stop, seals what is buffered
    /// and waits for every chain.
    fn read(&mut self, consumer: &KafkaConsumer, stop: &AtomicBool) -> Result<(), RunError> {
        let mut next_checkpoint = Instant::now() + self.checkpoint_interval;
        let mut next_publish = Instant::now() + PUBLISH_EVERY;
        let mut since_timers = 0;
        while !stop.load(Ordering::Relaxed) && !self.reached_ends() {
            let polled = consumer.poll(source::POLL_TIMEOUT);
            self.apply_assignments(consumer)?;
            let idle = match polled {
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
            // Reports and timers every few records (no clock read per
            // record), at once when the poll found nothing.
            since_timers += 1;
            let mut sealed_all = false;
            if idle || since_timers >= TIMERS_EVERY {
                since_timers = 0;
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
            if !sealed_all && let Some(partitions) = self.due_early() {
                self.seal(consumer, Some(&partitions))?;
            }
            self.hold_while_full(consumer)?;
        }
        self.publish(consumer);
        info!("stopping: committing what is buffered");
        self.seal(consumer, None)?;
        self.drain(consumer)?;
        consumer.unsubscribe();
        Ok(())
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

    fn publish_buffered(&self) {
        self.telemetry.buffered(
            self.buffered_bytes(),
            self.buffers.buffered_rows() + self.dead_letters.buffered_rows(),
        );
        self.telemetry.in_flight(self.chains.pending());
    }

    fn buffered_bytes(&self) -> usize {
        self.buffers.buffered_bytes() + self.dead_letters.buffered_bytes() + self.sealed_bytes()
    }

    /// Bytes sealed and still on their way to the store: tails of files and
    /// parts of streamed files.
    fn sealed_bytes(&self) -> usize {
        self.chains.held_bytes() + self.committer().streams.held_bytes()
    }

    fn committer(&self) -> &Committer {
        self.chains.committer()
    }

    /// Hands the parts of streamed files to their uploads. When as many
    /// parts as allowed are in flight, consumption pauses until one is
    /// done.
    fn stream_parts(&mut self, consumer: &KafkaConsumer) {
        let streams = &self.chains.committer().streams;
        for part in self.buffers.take_parts() {
            let permit = match streams.try_permit() {
                Some(permit) => Some(permit),
                None => {
                    consumer.context().pause_all(consumer);
                    let permit = wait_polling(&self.runtime, consumer, streams.permit());
                    consumer.context().resume_all(consumer);
                    permit
                }
            };
            streams.send(part, permit);
        }
    }

    /// Aborts the uploads of streamed files that were dropped.
    fn abort_abandoned(&mut self) {
        for stream in self.buffers.take_abandoned() {
            self.chains.committer().streams.abort(stream);
        }
    }

    /// Partitions to seal before the interval is up: those with a full
    /// file, and — when open files pass half the files' share — the
    /// partitions holding the most, until a quarter of it would be left.
    /// Closing a file needs about as much again as it holds (its columns
    /// are encoded next to the pages), hence half. What is sealed counts
    /// until it is uploaded ([`State::hold_while_full`]).
    fn due_early(&mut self) -> Option<BTreeSet<i32>> {
        let mut due = self.buffers.take_due();
        // Only what is still open: sealed bytes are on their way out, and
        // sealing again would only cut smaller files.
        let held = self.buffers.buffered_bytes() + self.dead_letters.buffered_bytes();
        if held >= self.max_buffer_bytes / 2 {
            let mut by_partition = self.buffers.bytes_by_partition();
            for (partition, bytes) in self.dead_letters.bytes_by_partition() {
                *by_partition.entry(partition).or_default() += bytes;
            }
            let mut largest: Vec<(usize, i32)> =
                by_partition.into_iter().map(|(p, b)| (b, p)).collect();
            largest.sort_unstable_by(|a, b| b.cmp(a));
            let mut left = held;
            for (bytes, partition) in largest {
                if left <= self.max_buffer_bytes / 4 {
                    break;
                }
                if due.insert(partition) {
                    left -= bytes;
                }
            }
            if held >= self.max_buffer_bytes / 4 * 3 {
                // Whatever the estimate per partition says: everything open
                // is sealed, and `hold_while_full` waits for it to upload.
                due.extend(self.owned.keys());
            }
            self.telemetry.memory_pressure(held, due.len());
        }
        (!due.is_empty()).then_some(due)
    }

    /// Acts on partitions assigned or revoked during the last poll.
    fn apply_assignments(&mut self, consumer: &KafkaConsumer) -> Result<(), RunError> {
        let events = consumer.context().take_events();
        let assigned = events
            .iter()
            .filter(|e| matches!(e, Assignment::Assigned { .. }))
            .count();
        let revoked = events
            .iter()
            .filter(|e| matches!(e, Assignment::Revoked { .. }))
            .count();
        self.telemetry.rebalanced(assigned, revoked);
        for event in events {
            match event {
                Assignment::Assigned {
                    partition,
                    recovered,
                } => {
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
                    self.owned.remove(&partition);
                    self.telemetry.lag(partition, 0);
                    self.checkpoint.forget(partition);
                    self.buffers.drop_partition(partition);
                    self.abort_abandoned();
                    self.dead_letters.drop_partition(partition);
                }
                Assignment::Failed { partition, error } => {
                    return Err(RunError::Recovery {
                        partition,
                        source: error,
                    });
                }
            }
        }
        Ok(())
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
        let headers = message
            .headers()
            .into_iter()
            .flat_map(|h| h.iter())
            .map(|h| (h.key, h.value));
        let envelope = match Envelope::parse(headers, kafka_timestamp_ms, self.tenancy.header()) {
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
                let headers: Vec<(&str, Option<&[u8]>)> = message
                    .headers()
                    .into_iter()
                    .flat_map(|h| h.iter())
                    .map(|h| (h.key, h.value))
                    .collect();
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

    /// The memory bound: when sealed files still uploading fill three
    /// quarters of the files' share, reading stops (partitions paused, the
    /// consumer polled for the group) until they are down to half.
    fn hold_while_full(&mut self, consumer: &KafkaConsumer) -> Result<(), RunError> {
        let limit = self.max_buffer_bytes / 4 * 3;
        if self.sealed_bytes() < limit {
            return Ok(());
        }
        self.telemetry
            .memory_pressure(self.buffered_bytes(), self.owned.len());
        consumer.context().pause_all(consumer);
        let low = self.max_buffer_bytes / 2;
        let held = || self.sealed_bytes();
        wait_polling(&self.runtime, consumer, async {
            while held() >= low {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        });
        consumer.context().resume_all(consumer);
        self.take_reports(consumer, CommitMode::Async)
    }

    /// Waits (polling) until every sealed checkpoint is reported, then
    /// advises the group synchronously.
    fn drain(&mut self, consumer: &KafkaConsumer) -> Result<(), RunError> {
        consumer.context().pause_all(consumer);
        let reports = wait_polling(&self.runtime, consumer, self.chains.drain());
        consumer.context().resume_all(consumer);
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

/// Runs `future` to completion on the runtime, polling the consumer (whose
/// partitions are paused) every [`source::POLL_TIMEOUT`] so heartbeats and
/// rebalances are served.
fn wait_polling<T>(
    runtime: &Handle,
    consumer: &KafkaConsumer,
    future: impl Future<Output = T>,
) -> T {
    let mut future = std::pin::pin!(future);
    loop {
        let step = runtime
            .block_on(async { tokio::time::timeout(source::POLL_TIMEOUT, &mut future).await });
        match step {
            Ok(out) => return out,
            Err(_) => {
                if let Some(Ok(message)) = consumer.poll(Duration::ZERO) {
                    // Not expected while paused; hand the record back.
                    let at = Offset::Offset(message.offset());
                    let (topic, partition) = (message.topic().to_owned(), message.partition());
                    drop(message);
                    let mut tpl = rdkafka::TopicPartitionList::new();
                    tpl.add_partition(&topic, partition);
                    let paused = consumer.pause(&tpl);
                    let sought = consumer.seek(&topic, partition, at, Duration::from_secs(10));
                    if let Err(e) = paused.and(sought) {
                        warn!(partition, error = %e, "handing a record back during a checkpoint failed");
                    }
                }
            }
        }
    }
}

/// A stop flag set by SIGTERM or SIGINT.
pub fn stop_on_signals(runtime: &Handle) -> Arc<AtomicBool> {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    runtime.spawn(async move {
        wait_for_signal().await;
        info!("signal received, shutting down");
        flag.store(true, Ordering::Relaxed);
    });
    stop
}

async fn wait_for_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
