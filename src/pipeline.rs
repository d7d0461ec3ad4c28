//! The run loop: consume → decode → buffer → seal (write) → hand over to
//! the partition's commit chain (upload → manifest → notify, on the Tokio
//! runtime) → advise Kafka when it reports. DESIGN.md has it as pseudo-code;
//! the protocol's invariants are in [`crate::commit`] and [`crate::chain`].
//!
//! Each assigned partition's records arrive on a queue of its own, split
//! off the consumer's before its fetch starts; worker threads own groups
//! of partitions and read, decode and write theirs. The calling thread
//! serves the consumer's own queue (rebalances, statistics, offset commit
//! results) and hands partitions to workers, so group membership never
//! waits on a worker. CPU work never runs on the async runtime.
//!
//! A worker never waits for a checkpoint to commit: checkpoint N commits
//! while N+1 is read. It only stops reading — and then the client's bounded
//! queue of its partitions fills and fetching stops — when the memory
//! budget is full of sealed files still uploading, and at the end, when it
//! waits for its chains to drain.
//!
//! Here: [`Pipeline`] (the calling thread), the routing of partitions to
//! workers and their queues. `worker`: a worker thread's loop.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::mpsc;
use std::thread::Thread;
use std::time::Duration;

use rdkafka::Offset;
use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaResult;
use rdkafka::message::{BorrowedMessage, Message};
use tokio::runtime::Handle;
use tracing::{info, warn};

use crate::buffer::Buffers;
use crate::chain::Chains;
use crate::checkpoint::Checkpoint;
use crate::commit::{CommitError, Committer};
use crate::config::ErrorsConfig;
use crate::dlq::DeadLetters;
use crate::framing::Framing;
use crate::manifest::ManifestError;
use crate::source::{self, Assignment, KafkaConsumer, Queue};
use crate::telemetry::Telemetry;

mod worker;

use worker::Worker;

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
    #[error("the Kafka client gave partition {partition} no queue of its own")]
    Unsplit { partition: i32 },
    #[error("Kafka refused sluice for {}: {failure}", humantime::format_duration(*.after))]
    Refused {
        failure: crate::diagnose::Failure,
        after: Duration,
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

/// Records a worker takes from one partition's queue before it turns to
/// the next (when the queue has that many): about a fetch's worth of
/// reference events, so one partition's open files stay in cache (measured:
/// 2.53 µs per record on the worker at 256, 2.40 at 4096).
const RUN_LENGTH: u32 = 4096;

/// What one worker decodes and writes with: its own, for the partitions
/// it owns.
#[derive(Debug)]
pub struct WorkerParts {
    pub framing: Framing,
    pub buffers: Buffers,
    pub dead_letters: DeadLetters,
}

pub struct Pipeline {
    consumer: Arc<KafkaConsumer>,
    workers: Vec<Worker>,
    shared: Arc<Shared>,
    committer: Arc<Committer>,
    runtime: Handle,
    telemetry: Telemetry,
}

/// What the workers and the calling thread share.
#[derive(Debug)]
struct Shared {
    /// Set when any of them failed: the rest stop at once, without
    /// checkpointing (the process exits with the error).
    failed: AtomicBool,
    /// Per worker, what it holds: the gauges show the sums.
    gauges: Vec<Gauges>,
}

#[derive(Debug, Default)]
struct Gauges {
    /// Bytes of open files, as the budget counts them.
    bytes: AtomicUsize,
    rows: AtomicU64,
    /// Checkpoints sealed and not reported.
    in_flight: AtomicUsize,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline")
            .field("workers", &self.workers)
            .finish_non_exhaustive()
    }
}

impl Pipeline {
    /// One worker per element of `parts`; `max_buffer_bytes` is the files'
    /// share of the budget, split evenly between them.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        consumer: Arc<KafkaConsumer>,
        parts: Vec<WorkerParts>,
        errors: ErrorsConfig,
        committer: Committer,
        runtime: Handle,
        telemetry: Telemetry,
        checkpoint_interval: Duration,
        max_buffer_bytes: usize,
    ) -> Pipeline {
        assert!(!parts.is_empty(), "a pipeline needs a worker");
        let committer = Arc::new(committer);
        let shared = Arc::new(Shared {
            failed: AtomicBool::new(false),
            gauges: parts.iter().map(|_| Gauges::default()).collect(),
        });
        let chains = Chains::new(committer.clone(), runtime.clone());
        let share = max_buffer_bytes / parts.len();
        let workers = parts
            .into_iter()
            .enumerate()
            .map(|(index, parts)| Worker {
                index,
                shared: shared.clone(),
                topic: committer.topic.clone(),
                framing: parts.framing,
                buffers: parts.buffers,
                dead_letters: parts.dead_letters,
                errors: errors.clone(),
                tenancy: committer.tenancy.clone(),
                chains: chains.beside(),
                runtime: runtime.clone(),
                telemetry: telemetry.clone(),
                checkpoint_interval,
                max_buffer_bytes,
                share,
                checkpoint: Checkpoint::new(),
                owned: BTreeMap::new(),
                next_epoch: 1,
                advised: BTreeMap::new(),
                consumed: 0,
                ends: None,
                passed_end: BTreeSet::new(),
            })
            .collect();
        Pipeline {
            consumer,
            workers,
            shared,
            committer,
            runtime,
            telemetry,
        }
    }

    /// Reads each partition only up to its end offset (exclusive), then
    /// checkpoints and returns; commits no offsets to the group.
    pub fn bounded(mut self, ends: BTreeMap<i32, i64>) -> Pipeline {
        for worker in &mut self.workers {
            worker.ends = Some(ends.clone());
        }
        self
    }

    /// Runs until `stop` is set (or a bounded run reached its ends), then
    /// checkpoints what it holds and returns.
    pub fn run(self, stop: &AtomicBool) -> Result<(), RunError> {
        let Pipeline {
            consumer,
            mut workers,
            shared,
            committer,
            runtime,
            telemetry,
        } = self;
        let mut router = Router::new(workers.len());
        let (senders, receivers): (Vec<_>, Vec<_>) =
            workers.iter().map(|_| mpsc::channel()).unzip();
        // Partitions assigned before the first poll (a bounded run's): each
        // worker's run ends with the partitions it was given.
        let mut failure = router.route(consumer.context().take_events(), &senders, &telemetry);
        for (worker, partitions) in workers.iter_mut().zip(router.partitions()) {
            if let Some(ends) = &mut worker.ends {
                ends.retain(|p, _| partitions.contains(p));
            }
        }
        let result = std::thread::scope(|scope| {
            let mut handles = Vec::with_capacity(workers.len());
            for (mut worker, events) in workers.into_iter().zip(receivers) {
                let consumer = &consumer;
                let handle = std::thread::Builder::new()
                    .name(format!("sluice-worker-{}", worker.index))
                    .spawn_scoped(scope, move || {
                        let result = worker.run(consumer, &events, stop);
                        if result.is_err() {
                            worker.shared.failed.store(true, Ordering::SeqCst);
                        }
                        result
                    })
                    .expect("cannot start a worker thread");
                handles.push(handle);
            }
            let threads: Vec<Thread> = handles.iter().map(|h| h.thread().clone()).collect();
            if failure.is_some() {
                shared.failed.store(true, Ordering::SeqCst);
            }
            // The consumer's own queue: rebalances (which split off the
            // partitions' queues), statistics, offset commit results.
            while failure.is_none() && !handles.iter().all(|h| h.is_finished()) {
                match consumer.poll(source::POLL_TIMEOUT) {
                    None => {}
                    Some(Err(e)) => consumer.context().report_poll(&e),
                    Some(Ok(message)) => hand_back(&consumer, message),
                }
                if let Some(refused) = consumer.context().refused() {
                    failure = Some(RunError::Refused {
                        failure: refused,
                        after: consumer.context().refused_timeout(),
                    });
                    shared.failed.store(true, Ordering::SeqCst);
                    break;
                }
                let events = consumer.context().take_events();
                if !events.is_empty() {
                    failure = router.route(events, &senders, &telemetry);
                    threads.iter().for_each(Thread::unpark);
                    if failure.is_some() {
                        shared.failed.store(true, Ordering::SeqCst);
                    }
                }
            }
            drop(senders);
            let mut result = failure.map_or(Ok(()), Err);
            for handle in handles {
                let joined = match handle.join() {
                    Ok(joined) => joined,
                    Err(panic) => std::panic::resume_unwind(panic),
                };
                if result.is_ok() {
                    result = joined;
                }
            }
            result
        });
        // Queues of partitions assigned after the workers stopped.
        drop(consumer.context().take_events());
        if result.is_err() {
            // Files still open will never be committed: their multipart
            // uploads are aborted rather than left for `sluice gc`. The
            // timer is made inside the runtime: this thread is not one of
            // its workers.
            let streams = &committer.streams;
            let _ = runtime
                .block_on(async { tokio::time::timeout(ABORT_WITHIN, streams.abort_all()).await });
        } else {
            consumer.unsubscribe();
        }
        result
    }
}

/// Which worker owns which partition. A partition keeps its worker for the
/// life of the process; a new one goes to the worker owning fewest.
#[derive(Debug)]
struct Router {
    owner: HashMap<i32, usize>,
    owned: Vec<BTreeSet<i32>>,
}

impl Router {
    fn new(workers: usize) -> Router {
        Router {
            owner: HashMap::new(),
            owned: vec![BTreeSet::new(); workers],
        }
    }

    fn partitions(&self) -> impl Iterator<Item = &BTreeSet<i32>> {
        self.owned.iter()
    }

    /// Hands each event to the worker of its partition; returns the
    /// failure that stops the process, if one came.
    fn route(
        &mut self,
        events: Vec<Assignment>,
        workers: &[mpsc::Sender<Assignment>],
        telemetry: &Telemetry,
    ) -> Option<RunError> {
        let assigned = events
            .iter()
            .filter(|e| matches!(e, Assignment::Assigned { .. }))
            .count();
        let revoked = events
            .iter()
            .filter(|e| matches!(e, Assignment::Revoked { .. }))
            .count();
        telemetry.rebalanced(assigned, revoked);
        let mut failure = None;
        for event in events {
            let worker = match event {
                Assignment::Assigned { partition, .. } => {
                    let least = (0..self.owned.len())
                        .min_by_key(|&w| self.owned[w].len())
                        .unwrap_or(0);
                    let worker = *self.owner.entry(partition).or_insert(least);
                    self.owned[worker].insert(partition);
                    worker
                }
                Assignment::Revoked { partition } => {
                    let Some(&worker) = self.owner.get(&partition) else {
                        continue;
                    };
                    self.owned[worker].remove(&partition);
                    worker
                }
                // The first failure is the one reported.
                Assignment::Failed { partition, error } => {
                    failure.get_or_insert(RunError::Recovery {
                        partition,
                        source: error,
                    });
                    continue;
                }
                Assignment::Unsplit { partition } => {
                    failure.get_or_insert(RunError::Unsplit { partition });
                    continue;
                }
            };
            // A worker that stopped takes nothing more: the partition is
            // left to the next owner.
            let _ = workers[worker].send(event);
        }
        failure
    }
}

/// A record on the consumer's own queue: its partition's queue was split
/// off too late. It is fetched again, onto that queue.
fn hand_back(consumer: &KafkaConsumer, message: BorrowedMessage<'_>) {
    let at = Offset::Offset(message.offset());
    let (topic, partition) = (message.topic().to_owned(), message.partition());
    drop(message);
    warn!(
        partition,
        "a record arrived on the consumer's own queue; fetching it again on the partition's"
    );
    if let Err(e) = consumer.seek(&topic, partition, at, Duration::from_secs(10)) {
        warn!(partition, error = %e, "handing a record back failed");
    }
}

/// The queues of a worker's partitions, read in turn.
struct Queues {
    queues: Vec<(i32, Queue)>,
    /// The queue read next, and how many records were taken from it in a
    /// row.
    next: usize,
    run: u32,
    /// The worker's thread, woken when an empty queue receives records.
    waker: Thread,
}

impl Queues {
    fn new() -> Queues {
        Queues {
            queues: Vec::new(),
            next: 0,
            run: 0,
            waker: std::thread::current(),
        }
    }

    fn add(&mut self, partition: i32, mut queue: Queue) {
        // An earlier handle of the same queue goes first: dropping it
        // clears the queue's callback.
        self.remove(partition);
        let waker = self.waker.clone();
        queue.set_nonempty_callback(move || waker.unpark());
        self.queues.push((partition, queue));
    }

    fn remove(&mut self, partition: i32) {
        self.queues.retain(|(p, _)| *p != partition);
    }

    /// The partitions read, in order.
    fn partitions(&self) -> impl Iterator<Item = i32> {
        let mut partitions: Vec<i32> = self.queues.iter().map(|(p, _)| *p).collect();
        partitions.sort_unstable();
        partitions.into_iter()
    }

    /// The next record of any queue, without waiting: from the queue of
    /// the last one, unless [`RUN_LENGTH`] came from it in a row.
    fn poll(&mut self) -> Option<KafkaResult<BorrowedMessage<'_>>> {
        let count = self.queues.len();
        if self.run >= RUN_LENGTH {
            self.next += 1;
            self.run = 0;
        }
        for _ in 0..count {
            let at = self.next % count;
            if let Some(polled) = self.queues[at].1.poll(Duration::ZERO) {
                self.next = at;
                self.run += 1;
                return Some(polled);
            }
            self.next = at + 1;
            self.run = 0;
        }
        None
    }
}

/// How long a process stopping on an error spends aborting the uploads of
/// its open files.
const ABORT_WITHIN: Duration = Duration::from_secs(30);

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
