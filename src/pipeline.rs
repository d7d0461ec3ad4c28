//! The run loop: consume → decode → buffer → (checkpoint: write → upload →
//! advise Kafka → notify). DESIGN.md has it as pseudo-code.
//!
//! The loop runs on one dedicated thread: polling and decoding are CPU work
//! and stay off the async reactor. Uploads and notifications run on the
//! Tokio runtime and the loop waits for them at each checkpoint.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::message::{BorrowedMessage, Headers, Message};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::buffer::{BufferError, Buffers, Record};
use crate::commit::{CommitError, Committer};
use crate::envelope::Envelope;
use crate::source::{self, KafkaConsumer};
use crate::telemetry::{FailReason, Telemetry};

#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Commit(#[from] CommitError),
    #[error("cannot write Parquet: {0}")]
    Write(#[from] crate::writer::WriteError),
}

/// How often the loop publishes gauges and counts.
const PUBLISH_EVERY: Duration = Duration::from_secs(1);

pub struct Pipeline {
    consumer: KafkaConsumer,
    state: State,
}

/// Everything the loop owns besides the consumer, whose messages borrow it.
#[derive(Debug)]
struct State {
    topic: String,
    buffers: Buffers,
    committer: Committer,
    runtime: Handle,
    telemetry: Telemetry,
    checkpoint_interval: Duration,
    max_buffer_bytes: usize,
    /// Per partition, the offset after the last record read (-1: none).
    positions: Vec<i64>,
    /// Per partition, the offset last committed to Kafka.
    committed: Vec<i64>,
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
        topic: String,
        buffers: Buffers,
        committer: Committer,
        runtime: Handle,
        telemetry: Telemetry,
        checkpoint_interval: Duration,
        max_buffer_bytes: usize,
    ) -> Pipeline {
        Pipeline {
            consumer,
            state: State {
                topic,
                buffers,
                committer,
                runtime,
                telemetry,
                checkpoint_interval,
                max_buffer_bytes,
                positions: Vec::new(),
                committed: Vec::new(),
            },
        }
    }

    /// Runs until `stop` is set, then checkpoints what it holds and returns.
    pub fn run(self, stop: &AtomicBool) -> Result<(), RunError> {
        let Pipeline {
            consumer,
            mut state,
        } = self;
        let mut next_checkpoint = Instant::now() + state.checkpoint_interval;
        let mut next_publish = Instant::now() + PUBLISH_EVERY;
        let mut consumed = 0u64;
        while !stop.load(Ordering::Relaxed) {
            match consumer.poll(source::POLL_TIMEOUT) {
                None => {}
                Some(Err(e)) => warn!(error = %e, "kafka poll error"),
                Some(Ok(message)) => {
                    state.ingest(&message)?;
                    consumed += 1;
                }
            }
            let now = Instant::now();
            if now >= next_publish {
                state.telemetry.consumed(std::mem::take(&mut consumed));
                state.telemetry.buffered(state.buffers.buffered_bytes());
                next_publish = now + PUBLISH_EVERY;
            }
            if now >= next_checkpoint || state.buffers.buffered_bytes() >= state.max_buffer_bytes {
                state.checkpoint(&consumer)?;
                next_checkpoint = Instant::now() + state.checkpoint_interval;
            }
        }
        state.telemetry.consumed(consumed);
        info!("stopping: committing what is buffered");
        state.checkpoint(&consumer)?;
        consumer.unsubscribe();
        Ok(())
    }
}

impl State {
    fn ingest(&mut self, message: &BorrowedMessage<'_>) -> Result<(), RunError> {
        let (partition, offset) = (message.partition(), message.offset());
        let kafka_timestamp_ms = message.timestamp().to_millis();
        let headers = message
            .headers()
            .into_iter()
            .flat_map(|h| h.iter())
            .map(|h| (h.key, h.value));
        let outcome = match Envelope::parse(headers, kafka_timestamp_ms) {
            Err(e) => Err((FailReason::Envelope, e.to_string())),
            Ok(envelope) => {
                let record = Record {
                    partition,
                    offset,
                    kafka_timestamp_ms,
                    envelope,
                    payload: message.payload().unwrap_or(&[]),
                };
                match self.buffers.push(&record) {
                    Ok(()) => Ok(()),
                    Err(BufferError::Decode(e)) => Err((FailReason::Decode, e.to_string())),
                    Err(BufferError::Write(e)) => return Err(e.into()),
                }
            }
        };
        if let Err((reason, error)) = outcome {
            self.telemetry
                .record_failed(partition, offset, reason, &error);
        }
        self.advance(partition, offset + 1);
        Ok(())
    }

    fn advance(&mut self, partition: i32, next: i64) {
        let Ok(index) = usize::try_from(partition) else {
            return;
        };
        if index >= self.positions.len() {
            self.positions.resize(index + 1, -1);
            self.committed.resize(index + 1, -1);
        }
        self.positions[index] = next;
    }

    /// Writes, uploads and announces everything buffered, and commits the
    /// offsets it covers to Kafka.
    fn checkpoint(&mut self, consumer: &KafkaConsumer) -> Result<(), RunError> {
        let started = Instant::now();
        let files = self.buffers.finish_all()?;
        let rows: u64 = files.iter().map(|f| f.rows).sum();
        let uploaded = self.runtime.block_on(self.committer.upload(files))?;
        let bytes = uploaded.iter().map(|f| f.size).sum();
        self.commit_offsets(consumer);
        self.runtime.block_on(self.committer.announce(&uploaded))?;
        self.telemetry
            .checkpoint_done(uploaded.len(), rows, bytes, started.elapsed());
        self.telemetry.buffered(self.buffers.buffered_bytes());
        Ok(())
    }

    fn commit_offsets(&mut self, consumer: &KafkaConsumer) {
        let changed: Vec<(i32, i64)> = self
            .positions
            .iter()
            .zip(&self.committed)
            .enumerate()
            .filter(|(_, (next, done))| **next >= 0 && next != done)
            .map(|(p, (next, _))| (p as i32, *next))
            .collect();
        match source::commit_offsets(consumer, &self.topic, changed.iter().copied()) {
            Ok(()) => {
                for (p, next) in changed {
                    self.committed[p as usize] = next;
                }
            }
            Err(e) => self.telemetry.offsets_commit_failed(&e),
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
