//! Streamed uploads: a large file goes to the store in parts while its row
//! groups are still being encoded, so no file is ever whole in memory.
//!
//! A file's final key carries its last offset, unknown until it closes, so
//! each stream goes to a key of its own under
//! `<prefix>/_sluice/streams/<event>/<writer>/`; at the checkpoint the
//! upload is completed there and the manifest lists that key as the file's
//! staged key, from which [`crate::commit`] copies it to its final key
//! after the commit point.
//!
//! Parts of all streams in flight are bounded by a count of permits; the
//! run loop waits for a permit before handing over a part, which pauses
//! consumption while the store is slow. A part is retried like any store
//! call; one that still fails aborts its upload, and the checkpoint that
//! needs the file fails (its bytes are gone, so the process restarts from
//! the last manifest, as after a crash).

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::{StreamExt as _, TryStreamExt as _, stream};
use tokio::runtime::Handle;
use tokio::sync::{OwnedSemaphorePermit, Semaphore, mpsc};
use tokio::task::JoinHandle;

use crate::buffer::Part;
use crate::store::{ObjectStore, StoreError, Upload, e_tag_of, retry};
use crate::telemetry::Telemetry;

/// Parts of one stream uploading at once.
const PARTS_PER_STREAM: usize = 4;

/// Open streams, keyed by the number [`crate::buffer::Buffers`] gave them.
pub struct Streams {
    store: Arc<dyn ObjectStore>,
    runtime: Handle,
    /// Key prefix of the streams' objects, ending in `/`.
    root: String,
    permits: Arc<Semaphore>,
    /// Bytes of parts handed over and not yet uploaded.
    held: Arc<AtomicUsize>,
    open: Mutex<HashMap<u64, Open>>,
    telemetry: Telemetry,
}

impl std::fmt::Debug for Streams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Streams")
            .field("root", &self.root)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

struct Open {
    key: String,
    parts: mpsc::UnboundedSender<Queued>,
    task: JoinHandle<Result<Uploaded, StoreError>>,
}

/// A part on its way: its permit and its count in `held` are given back
/// when it is dropped, uploaded or not.
struct Queued {
    number: i32,
    bytes: Bytes,
    _permit: Option<OwnedSemaphorePermit>,
    _held: Held,
}

struct Held {
    bytes: usize,
    total: Arc<AtomicUsize>,
}

impl Held {
    fn new(bytes: usize, total: &Arc<AtomicUsize>) -> Held {
        total.fetch_add(bytes, Ordering::Relaxed);
        Held {
            bytes,
            total: total.clone(),
        }
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.total.fetch_sub(self.bytes, Ordering::Relaxed);
    }
}

/// An upload whose parts are all in the store.
struct Uploaded {
    upload: Upload,
    parts: Vec<(i32, String)>,
}

impl Streams {
    /// `root`: where the streams' objects go (ends in `/`); at most
    /// `parts_in_flight` parts of all streams are held at once.
    pub fn new(
        store: Arc<dyn ObjectStore>,
        runtime: Handle,
        root: String,
        parts_in_flight: usize,
        telemetry: Telemetry,
    ) -> Streams {
        Streams {
            store,
            runtime,
            root,
            permits: Arc::new(Semaphore::new(parts_in_flight.max(1))),
            held: Arc::new(AtomicUsize::new(0)),
            open: Mutex::new(HashMap::new()),
            telemetry,
        }
    }

    /// Bytes of parts handed over and not yet uploaded.
    pub fn held_bytes(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    /// A permit to hand over one more part, if one is free now.
    pub fn try_permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().try_acquire_owned().ok()
    }

    /// Waits until a part may be handed over.
    pub async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        // The semaphore is never closed.
        self.permits.clone().acquire_owned().await.ok()
    }

    /// Queues `part` for upload, beginning its stream with its first part.
    pub fn send(&self, part: Part, permit: Option<OwnedSemaphorePermit>) {
        let queued = Queued {
            number: part.number,
            _held: Held::new(part.bytes.capacity(), &self.held),
            bytes: Bytes::from(part.bytes),
            _permit: permit,
        };
        let mut open = self.lock();
        let stream = open
            .entry(part.stream)
            .or_insert_with(|| self.begin(part.stream));
        // A stream whose upload failed has stopped listening; the failure
        // surfaces when the file is finished.
        let _ = stream.parts.send(queued);
    }

    /// Uploads `tail` as the last part, after the `parts` handed over, and
    /// completes the stream's upload. Returns the key it was completed at
    /// and its ETag.
    pub async fn finish(
        &self,
        stream: u64,
        parts: i32,
        tail: Vec<u8>,
    ) -> Result<(String, String), StoreError> {
        let Some(open) = self.lock().remove(&stream) else {
            return Err(StoreError::Other {
                op: "put",
                key: format!("{}{stream}.parquet", self.root),
                message: "no such stream".to_owned(),
                retryable: false,
            });
        };
        let last = Queued {
            number: parts + 1,
            _held: Held::new(tail.len(), &self.held),
            bytes: Bytes::from(tail),
            _permit: None,
        };
        let Open {
            key,
            parts: sender,
            task,
        } = open;
        let _ = sender.send(last);
        drop(sender);
        let uploaded = task.await.map_err(|e| StoreError::Other {
            op: "put",
            key: key.clone(),
            message: format!("upload task ended: {e}"),
            retryable: false,
        })??;
        let numbers: Vec<i32> = uploaded.parts.iter().map(|(n, _)| *n).collect();
        if numbers != (1..=parts + 1).collect::<Vec<_>>() {
            let _ = self.store.abort_upload(&uploaded.upload).await;
            return Err(StoreError::Other {
                op: "put",
                key,
                message: format!("expected parts 1 to {}, have {numbers:?}", parts + 1),
                retryable: false,
            });
        }
        let completed = retry(&key, &self.telemetry, StoreError::is_retryable, || {
            self.store
                .complete_upload(&uploaded.upload, &uploaded.parts)
        })
        .await;
        let completed = match completed {
            // An earlier attempt completed it and its answer was lost: only
            // this stream ever writes at its key.
            Err(StoreError::NotFound(missing)) => match e_tag_of(&*self.store, &key).await? {
                Some(e_tag) => Ok(e_tag),
                None => Err(StoreError::NotFound(missing)),
            },
            other => other,
        };
        match completed {
            Ok(e_tag) => Ok((key, e_tag)),
            Err(e) => {
                let _ = self.store.abort_upload(&uploaded.upload).await;
                Err(e)
            }
        }
    }

    /// Abandons `stream`'s upload: its parts are discarded once those in
    /// flight are done.
    pub fn abort(&self, stream: u64) {
        let Some(Open { parts, task, .. }) = self.lock().remove(&stream) else {
            return;
        };
        drop(parts);
        let store = self.store.clone();
        self.runtime.spawn(async move {
            if let Ok(Ok(uploaded)) = task.await {
                // Best effort: `sluice gc` aborts what is left.
                let _ = store.abort_upload(&uploaded.upload).await;
            }
        });
    }

    /// Aborts the upload of every stream still open and waits for the
    /// aborts (best effort: `sluice gc` aborts what is left). For a process
    /// stopping on an error, whose open files will never be committed.
    pub async fn abort_all(&self) {
        let open: Vec<Open> = self.lock().drain().map(|(_, open)| open).collect();
        for Open { parts, task, .. } in open {
            drop(parts);
            if let Ok(Ok(uploaded)) = task.await {
                let _ = self.store.abort_upload(&uploaded.upload).await;
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Open>> {
        // A panic while holding the lock cannot leave the map inconsistent.
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn begin(&self, stream: u64) -> Open {
        let key = format!("{}{stream}.parquet", self.root);
        let (sender, receiver) = mpsc::unbounded_channel();
        let task = self.runtime.spawn(upload(
            self.store.clone(),
            key.clone(),
            receiver,
            self.telemetry.clone(),
        ));
        Open {
            key,
            parts: sender,
            task,
        }
    }
}

/// One stream: creates the upload, then uploads parts as they come, a few
/// at a time, until the sender is dropped. Any part that fails for good
/// aborts the upload.
async fn upload(
    store: Arc<dyn ObjectStore>,
    key: String,
    receiver: mpsc::UnboundedReceiver<Queued>,
    telemetry: Telemetry,
) -> Result<Uploaded, StoreError> {
    let upload = retry(&key, &telemetry, StoreError::is_retryable, || {
        store.create_upload(&key)
    })
    .await?;
    let queue = stream::unfold(receiver, |mut receiver| async move {
        let queued = receiver.recv().await?;
        Some((queued, receiver))
    });
    let (store_ref, upload_ref, telemetry_ref) = (&store, &upload, &telemetry);
    let parts = queue
        .map(|queued| async move {
            let e_tag = retry(
                &upload_ref.key,
                telemetry_ref,
                StoreError::is_retryable,
                || store_ref.upload_part(upload_ref, queued.number, queued.bytes.clone()),
            )
            .await?;
            Ok::<_, StoreError>((queued.number, e_tag))
        })
        .buffer_unordered(PARTS_PER_STREAM)
        .try_collect::<Vec<_>>()
        .await;
    match parts {
        Ok(mut parts) => {
            parts.sort_unstable();
            Ok(Uploaded { upload, parts })
        }
        Err(e) => {
            let _ = store.abort_upload(&upload).await;
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MIN_PART_BYTES, MemoryStore};

    fn part(stream: u64, number: i32, fill: u8, len: usize) -> Part {
        Part {
            stream,
            partition: 0,
            number,
            bytes: vec![fill; len],
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn parts_and_tail_join_in_order_and_aborted_streams_leave_nothing() {
        let store = Arc::new(MemoryStore::new());
        let streams = Streams::new(
            store.clone(),
            Handle::current(),
            "raw/_sluice/streams/ev/w/".to_owned(),
            2,
            Telemetry::new("ev"),
        );
        for number in 1..=3 {
            let permit = streams.permit().await;
            streams.send(part(1, number, number as u8, MIN_PART_BYTES), permit);
        }
        streams.send(part(2, 1, 9, MIN_PART_BYTES), streams.try_permit());
        let (key, _) = streams.finish(1, 3, b"tail".to_vec()).await.unwrap();
        assert_eq!(key, "raw/_sluice/streams/ev/w/1.parquet");
        let body = store.get(&key).await.unwrap();
        assert_eq!(body.len(), 3 * MIN_PART_BYTES + 4);
        for (i, chunk) in body.chunks(MIN_PART_BYTES).take(3).enumerate() {
            assert!(
                chunk.iter().all(|&b| b == i as u8 + 1),
                "part {} in place",
                i + 1
            );
        }
        assert_eq!(&body[3 * MIN_PART_BYTES..], b"tail");

        streams.abort(2);
        for _ in 0..100 {
            if store.uploads("raw/").await.unwrap().is_empty() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert!(store.uploads("raw/").await.unwrap().is_empty());
        assert!(
            store
                .get("raw/_sluice/streams/ev/w/2.parquet")
                .await
                .is_err()
        );
        assert_eq!(streams.held_bytes(), 0);
        assert_eq!(streams.permits.available_permits(), 2);
        assert!(
            streams.finish(2, 1, Vec::new()).await.is_err(),
            "an aborted stream is gone"
        );

        // A tail whose parts did not all arrive is refused, not joined.
        streams.send(part(3, 2, 1, MIN_PART_BYTES), streams.try_permit());
        let missing = streams.finish(3, 2, b"tail".to_vec()).await.unwrap_err();
        assert!(
            missing.to_string().contains("expected parts 1 to 3"),
            "{missing}"
        );
        assert!(store.uploads("raw/").await.unwrap().is_empty());
    }
}
