//! Commit chains: the sealed checkpoints of each partition, committed one
//! after the other while the run loop reads on.
//!
//! The run loop seals a partition's checkpoint (closes its files, fixes its
//! range) and hands it over with [`Chains::submit`]; its uploads start at
//! once. The partition's chain — one task per partition, first in, first
//! out — awaits those uploads and runs the commit sequence of
//! [`crate::commit`]: outbox, manifest (the commit point), publish,
//! announce, marker. So checkpoint N+1 is read, sealed and uploaded while N
//! commits, yet a partition's manifests are still created strictly in range
//! order, each only after the one before is announced and marked. Chains of
//! different partitions run side by side.
//!
//! What a chain never does: commit after a failure (a failed step stops the
//! chain, so no later range can leave a gap behind it); commit for a
//! partition whose lease was lost (revoked: the loss is noticed just before
//! the commit point); commit a checkpoint sealed before a fence (the worker
//! learns of the fence and starts a new epoch; the chain drops the old
//! epoch's checkpoints, whose uploads become orphans for `sluice gc`).
//!
//! Reports ([`Report`]) go back to the worker that owns the partition over
//! an unbounded channel, drained every few records; nothing a chain does
//! waits on the worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::runtime::Handle;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::buffer::FinishedFile;
use crate::commit::{CommitError, Committer, Outbox, PartitionOutcome, Sealed};
use crate::failpoint;
use crate::manifest::{Manifest, ManifestFile};

/// Whether this process still owns a partition: cleared the moment the
/// partition is revoked (in the rebalance callback).
pub type Lease = Arc<AtomicBool>;

/// What became of one submitted checkpoint.
#[derive(Debug)]
pub struct Report {
    pub partition: i32,
    /// The epoch the checkpoint was sealed in.
    pub epoch: u64,
    pub outcome: Result<PartitionOutcome, CommitError>,
    /// From the seal to the marker.
    pub took: Duration,
}

enum Job {
    /// Manifests found without their marker on assignment: finished before
    /// anything else of the partition.
    Finish(Vec<Manifest>),
    Commit {
        sealed: Sealed,
        epoch: u64,
        uploads: JoinHandle<Result<Vec<ManifestFile>, CommitError>>,
        lease: Lease,
        sealed_at: Instant,
    },
}

/// The chains of every partition this process has sealed checkpoints for.
pub struct Chains {
    committer: Arc<Committer>,
    runtime: Handle,
    chains: HashMap<i32, mpsc::UnboundedSender<Job>>,
    reports: mpsc::UnboundedSender<Report>,
    received: mpsc::UnboundedReceiver<Report>,
    /// Bytes of sealed files not uploaded yet.
    held: Arc<AtomicUsize>,
    /// Checkpoints submitted and not reported yet.
    pending: Arc<AtomicUsize>,
}

impl std::fmt::Debug for Chains {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Chains")
            .field("partitions", &self.chains.len())
            .field("held", &self.held)
            .field("pending", &self.pending)
            .finish_non_exhaustive()
    }
}

impl Chains {
    pub fn new(committer: Arc<Committer>, runtime: Handle) -> Chains {
        Chains::counting_into(committer, runtime, Arc::new(AtomicUsize::new(0)))
    }

    /// Chains of other partitions (another worker's), whose sealed bytes
    /// count with these: the memory bound is one for all.
    pub fn beside(&self) -> Chains {
        Chains::counting_into(
            self.committer.clone(),
            self.runtime.clone(),
            self.held.clone(),
        )
    }

    /// Chains whose sealed bytes are counted in `held`.
    fn counting_into(committer: Arc<Committer>, runtime: Handle, held: Arc<AtomicUsize>) -> Chains {
        let (reports, received) = mpsc::unbounded_channel();
        Chains {
            committer,
            runtime,
            chains: HashMap::new(),
            reports,
            received,
            held,
            pending: Arc::new(AtomicUsize::new(0)),
        }
    }

    pub fn committer(&self) -> &Committer {
        &self.committer
    }

    /// Bytes of sealed files whose upload has not finished, of these chains
    /// and those [`Chains::beside`] them.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// Checkpoints submitted and not yet reported.
    pub fn pending(&self) -> usize {
        self.pending.load(Ordering::SeqCst)
    }

    /// Queues `manifests` (a partition's unmarked manifests, oldest first)
    /// to be published, announced and marked before anything else of the
    /// partition is committed.
    pub fn finish_recovered(&mut self, partition: i32, manifests: Vec<Manifest>) {
        if manifests.is_empty() {
            return;
        }
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.send(partition, Job::Finish(manifests));
    }

    /// Hands over a sealed checkpoint and its files: the uploads start now,
    /// the commit follows the partition's earlier checkpoints.
    pub fn submit(&mut self, sealed: Sealed, files: Vec<FinishedFile>, epoch: u64, lease: Lease) {
        debug_assert!(
            files.iter().all(|f| f.partition == sealed.partition),
            "files of another partition in a sealed checkpoint"
        );
        let bytes: usize = files.iter().map(|f| f.body.held()).sum();
        self.held.fetch_add(bytes, Ordering::Relaxed);
        let (committer, held) = (self.committer.clone(), self.held.clone());
        let uploads = self.runtime.spawn(async move {
            let uploaded = committer.upload(files).await;
            held.fetch_sub(bytes, Ordering::Relaxed);
            uploaded
        });
        self.pending.fetch_add(1, Ordering::SeqCst);
        self.send(
            sealed.partition,
            Job::Commit {
                sealed,
                epoch,
                uploads,
                lease,
                sealed_at: Instant::now(),
            },
        );
    }

    /// The reports that arrived since the last call.
    pub fn reports(&mut self) -> Vec<Report> {
        let mut out = Vec::new();
        while let Ok(report) = self.received.try_recv() {
            out.push(report);
        }
        out
    }

    /// Waits until every submitted checkpoint is reported (or a chain
    /// failed) and returns the reports.
    pub async fn drain(&mut self) -> Vec<Report> {
        let mut out = Vec::new();
        while self.pending() > 0 {
            match self.received.recv().await {
                Some(report) => {
                    let failed = report.outcome.is_err();
                    out.push(report);
                    if failed {
                        break;
                    }
                }
                None => break,
            }
        }
        out.extend(self.reports());
        out
    }

    fn send(&mut self, partition: i32, job: Job) {
        let chain = self.chains.entry(partition).or_insert_with(|| {
            let (jobs, queue) = mpsc::unbounded_channel();
            self.runtime.spawn(run(
                self.committer.clone(),
                partition,
                queue,
                self.reports.clone(),
                self.pending.clone(),
            ));
            jobs
        });
        // A chain only stops after a failure it has reported, which stops
        // the process; a job sent to it then is never needed.
        let _ = chain.send(job);
    }
}

/// One partition's chain: its jobs in order, until one fails.
async fn run(
    committer: Arc<Committer>,
    partition: i32,
    mut queue: mpsc::UnboundedReceiver<Job>,
    reports: mpsc::UnboundedSender<Report>,
    pending: Arc<AtomicUsize>,
) {
    let mut outbox = Outbox::default();
    // Checkpoints sealed in this epoch or before lost to a fence.
    let mut fenced: Option<u64> = None;
    while let Some(job) = queue.recv().await {
        let report = match job {
            Job::Finish(manifests) => {
                let started = Instant::now();
                manifests.into_iter().for_each(|m| outbox.push(m));
                match committer.finish(&mut outbox).await {
                    Ok(()) => {
                        pending.fetch_sub(1, Ordering::SeqCst);
                        continue;
                    }
                    Err(e) => Report {
                        partition,
                        epoch: 0,
                        outcome: Err(e),
                        took: started.elapsed(),
                    },
                }
            }
            Job::Commit {
                sealed,
                epoch,
                uploads,
                lease,
                sealed_at,
            } => {
                let outcome = if fenced.is_some_and(|f| epoch <= f) {
                    // Sealed before the fence was known: dropped, like the
                    // rest of that epoch's work.
                    let _ = uploads.await;
                    Ok(PartitionOutcome::Dropped)
                } else {
                    commit(&committer, sealed, uploads, &mut outbox, &lease).await
                };
                if let Ok(PartitionOutcome::Fenced { .. }) = outcome {
                    fenced = Some(epoch);
                }
                Report {
                    partition,
                    epoch,
                    outcome,
                    took: sealed_at.elapsed(),
                }
            }
        };
        let failed = report.outcome.is_err();
        pending.fetch_sub(1, Ordering::SeqCst);
        let _ = reports.send(report);
        if failed {
            // Nothing after a failed step may be committed: its range would
            // start where an uncommitted one ends.
            break;
        }
    }
}

async fn commit(
    committer: &Committer,
    sealed: Sealed,
    uploads: JoinHandle<Result<Vec<ManifestFile>, CommitError>>,
    outbox: &mut Outbox,
    lease: &AtomicBool,
) -> Result<PartitionOutcome, CommitError> {
    let uploaded = uploads.await.map_err(CommitError::Task)??;
    failpoint::hit(failpoint::AFTER_UPLOAD);
    committer
        .commit_sealed(sealed, uploaded, outbox, lease)
        .await
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::buffer::{Body, FileKind};
    use crate::checkpoint::Range;
    use crate::commit::tests::{Recording, committer, manifest};
    use crate::notify::MemoryNotifier;

    fn file(partition: i32, first: i64, last: i64) -> FinishedFile {
        FinishedFile {
            kind: FileKind::Data,
            route: 0,
            partition,
            hour: 0,
            folder: "e/all".into(),
            first_offset: first,
            last_offset: last,
            rows: (last - first + 1) as u64,
            min_time_micros: 0,
            max_time_micros: 0,
            schema_id: None,
            body: Body::Whole(vec![7; 64]),
        }
    }

    fn sealed(from: i64, to: i64) -> Sealed {
        Sealed {
            partition: 0,
            range: Range { from, to },
            skipped: 0,
        }
    }

    fn lease(owned: bool) -> Lease {
        Arc::new(AtomicBool::new(owned))
    }

    fn chains(store: &Arc<Recording>) -> Chains {
        let committer = committer(store.clone(), Arc::new(MemoryNotifier::default()));
        Chains::new(Arc::new(committer), Handle::current())
    }

    /// Where in the recorded puts the first key ending in `suffix` is.
    fn position(store: &Recording, suffix: &str) -> Option<usize> {
        store
            .puts
            .lock()
            .unwrap()
            .iter()
            .position(|k| k.ends_with(suffix))
    }

    async fn until(what: &str, mut check: impl FnMut() -> bool) {
        for _ in 0..500 {
            if check() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("timed out waiting for {what}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn manifests_follow_range_order_when_uploads_finish_in_reverse() {
        let store = Arc::new(Recording::default());
        store.gate("00000000000000000009.parquet");
        let mut chains = chains(&store);
        chains.submit(sealed(-1, 9), vec![file(0, 0, 9)], 1, lease(true));
        chains.submit(sealed(9, 19), vec![file(0, 10, 19)], 1, lease(true));
        // The second checkpoint's upload lands first; nothing is committed
        // while the first one's upload is held, and its bytes stay counted.
        until("the second upload", || {
            position(&store, "00000000000000000019.parquet").is_some()
        })
        .await;
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            position(&store, ".json"),
            None,
            "no manifest before the first upload"
        );
        assert_eq!(chains.pending(), 2);
        assert_eq!(
            chains.held_bytes(),
            64,
            "the held upload's bytes are counted"
        );
        store.open("00000000000000000009.parquet");
        let reports = chains.drain().await;
        assert_eq!(reports.len(), 2);
        for (report, to) in reports.iter().zip([9, 19]) {
            assert!(
                matches!(&report.outcome, Ok(PartitionOutcome::Committed(m)) if m.range.to == to),
                "{report:?}"
            );
        }
        let first = position(&store, "00000000000000000000.json").unwrap();
        let first_marker = position(&store, "00000000000000000000.notified").unwrap();
        let second = position(&store, "00000000000000000010.json").unwrap();
        assert!(first < first_marker && first_marker < second);
        assert_eq!((chains.pending(), chains.held_bytes()), (0, 0));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_fence_drops_what_was_sealed_after_it_and_a_new_epoch_commits() {
        let store = Arc::new(Recording::default());
        let mut chains = chains(&store);
        // Another writer committed (-1, 14] first.
        let winner = manifest(-1, 14, "p/e/all/other.parquet");
        chains.committer().manifests.commit(&winner).await.unwrap();
        chains.submit(sealed(-1, 9), vec![file(0, 0, 9)], 1, lease(true));
        chains.submit(sealed(9, 19), vec![file(0, 10, 19)], 1, lease(true));
        let reports = chains.drain().await;
        assert!(matches!(
            reports[0].outcome,
            Ok(PartitionOutcome::Fenced { other_to: 14, .. })
        ));
        assert!(matches!(reports[1].outcome, Ok(PartitionOutcome::Dropped)));
        assert_eq!(position(&store, "00000000000000000010.json"), None);
        // The loop resumes after the winner in a new epoch.
        chains.submit(sealed(14, 25), vec![file(0, 15, 25)], 2, lease(true));
        let reports = chains.drain().await;
        assert!(matches!(
            reports[0].outcome,
            Ok(PartitionOutcome::Committed(_))
        ));
        let recovered = chains.committer().manifests.recover(0).await.unwrap();
        assert_eq!(recovered.last.map(|m| m.range.to), Some(25));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lost_lease_commits_nothing_and_a_failure_stops_the_chain() {
        let store = Arc::new(Recording::default());
        let mut chains = chains(&store);
        chains.submit(sealed(-1, 9), vec![file(0, 0, 9)], 1, lease(false));
        let reports = chains.drain().await;
        assert!(matches!(reports[0].outcome, Ok(PartitionOutcome::Revoked)));
        assert_eq!(position(&store, ".json"), None);

        store
            .failing
            .lock()
            .unwrap()
            .push("00000000000000000009.parquet".into());
        chains.submit(sealed(-1, 9), vec![file(0, 0, 9)], 2, lease(true));
        chains.submit(sealed(9, 19), vec![file(0, 10, 19)], 2, lease(true));
        let reports = chains.drain().await;
        assert!(reports[0].outcome.is_err(), "{reports:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(
            position(&store, ".json"),
            None,
            "nothing after a failed checkpoint is committed"
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn recovered_manifests_are_finished_before_the_next_commit() {
        let store = Arc::new(Recording::default());
        let mut chains = chains(&store);
        let recovered = manifest(-1, 9, "p/e/all/crashed.parquet");
        chains
            .committer()
            .manifests
            .commit(&recovered)
            .await
            .unwrap();
        chains.finish_recovered(0, vec![recovered]);
        chains.submit(sealed(9, 19), vec![file(0, 10, 19)], 1, lease(true));
        let reports = chains.drain().await;
        assert!(matches!(
            reports[0].outcome,
            Ok(PartitionOutcome::Committed(_))
        ));
        let marker = position(&store, "00000000000000000000.notified").unwrap();
        let next = position(&store, "00000000000000000010.json").unwrap();
        assert!(marker < next);
    }
}
