//! Rows between consume and upload: one open Parquet file per
//! (Kafka partition, folder from `files.path`, tenant route).
//!
//! A record is decoded straight into its file's Arrow columns; every
//! [`BATCH_ROWS`] rows the columns become a record batch that the file's
//! writer encodes right away, so memory holds compressed pages, not rows.
//! This module tracks offsets and sizes; it never does I/O.
//!
//! Here: the router ([`Buffers`]) and its memory accounting, and the types
//! handed to upload and commit. `open_file`: one open file. `columns`: the
//! envelope columns and the table schema.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::datatypes::SchemaRef;
use parquet::file::properties::WriterProperties;
use prost_reflect::MessageDescriptor;

use crate::config::ParquetConfig;
use crate::envelope::{Encoding, Envelope};
use crate::partitioning::Partitioning;
use crate::schema::{DecodeError, Decoder, MessagePlan};
use crate::writer::{CompressorMemory, WriteError};

mod columns;
mod open_file;

use columns::leaf_counts;
pub use columns::{UNIQUE_COLUMNS, table_schema};
use open_file::OpenFile;

/// Rows per record batch handed to the Parquet writer.
pub const BATCH_ROWS: usize = 8192;
/// Payload bytes after which a file's pending rows are encoded even if
/// fewer than [`BATCH_ROWS`] (large records).
const BATCH_BYTES: usize = 1024 * 1024;

/// Bytes counted per row on top of its payload, for the memory estimate.
const ROW_OVERHEAD: usize = 64;

/// The path field's values, interned: open files are keyed by index, so a
/// record looks its value up without allocating.
#[derive(Debug, Default)]
struct FieldValues {
    values: Vec<String>,
    index: HashMap<String, u32>,
    /// Reused for each record's value.
    scratch: String,
}

impl FieldValues {
    /// The index of the path field's value in `payload`.
    fn intern(&mut self, partitioning: &Partitioning, payload: &[u8]) -> u32 {
        partitioning.field_value(payload, &mut self.scratch);
        if let Some(&i) = self.index.get(self.scratch.as_str()) {
            return i;
        }
        let i = u32::try_from(self.values.len()).unwrap_or(u32::MAX);
        self.values.push(self.scratch.clone());
        self.index.insert(self.scratch.clone(), i);
        i
    }

    /// The value at `index`; "" when the path names no field (every key
    /// then holds 0 and nothing is interned).
    fn get(&self, index: u32) -> &str {
        self.values.get(index as usize).map_or("", String::as_str)
    }
}

/// An open file: Kafka partition, time bucket, field value (interned),
/// route.
type FileKey = (i32, i64, u32, u8);

/// When an open file is full, and how much of it stays in memory.
#[derive(Debug, Clone, Copy)]
pub struct FileLimits {
    pub max_rows: Option<u64>,
    /// Encoded bytes: the file's size, checked each time pending rows are
    /// encoded (every [`BATCH_ROWS`] rows or 1 MiB of payload), so a file
    /// may pass it by up to one batch.
    pub max_bytes: usize,
    /// A row group closes when its pages reach this (before compression),
    /// if `row_group_rows` did not close it first.
    pub row_group_bytes: usize,
    /// Streamed files: once this many encoded bytes are held, they are
    /// handed out as the file's next [`Part`]. `None`: files are kept whole
    /// until closed.
    pub part_bytes: Option<usize>,
}

impl Default for FileLimits {
    fn default() -> Self {
        Self {
            max_rows: None,
            max_bytes: usize::MAX,
            row_group_bytes: usize::MAX,
            part_bytes: None,
        }
    }
}

/// A stretch of a file still being written, to upload as part `number`
/// (from 1) of the file's stream.
#[derive(Debug)]
pub struct Part {
    pub stream: u64,
    pub partition: i32,
    pub number: i32,
    pub bytes: Vec<u8>,
}

/// A finished file's bytes.
#[derive(Debug)]
pub enum Body {
    /// All of them.
    Whole(Vec<u8>),
    /// The rest after the `parts` already handed out for `stream`; `size`
    /// is the whole file's.
    Streamed {
        stream: u64,
        parts: i32,
        tail: Vec<u8>,
        size: u64,
    },
}

impl Body {
    /// Bytes held in memory (the buffer's capacity: it grew by doubling).
    pub fn held(&self) -> usize {
        match self {
            Body::Whole(bytes) | Body::Streamed { tail: bytes, .. } => bytes.capacity(),
        }
    }

    /// All the bytes, if none were streamed.
    pub fn whole(self) -> Option<Vec<u8>> {
        match self {
            Body::Whole(bytes) => Some(bytes),
            Body::Streamed { .. } => None,
        }
    }

    /// The file's size.
    pub fn size(&self) -> u64 {
        match self {
            Body::Whole(bytes) => bytes.len() as u64,
            Body::Streamed { size, .. } => *size,
        }
    }
}

/// One consumed record, borrowed from the consumer.
#[derive(Debug, Clone)]
pub struct Record<'a> {
    pub partition: i32,
    pub offset: i64,
    pub kafka_timestamp_ms: Option<i64>,
    pub envelope: Envelope<'a>,
    pub payload: &'a [u8],
    /// 0: the sink's prefix; n: the prefix of the n-th routed tenant.
    pub route: u8,
}

/// What a file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FileKind {
    /// Rows of the event: announced to loaders.
    #[default]
    Data,
    /// Records that could not become rows: kept, never announced.
    DeadLetters,
}

impl FileKind {
    pub fn is_data(&self) -> bool {
        *self == FileKind::Data
    }
}

/// A file whose rows are all encoded, ready to upload.
#[derive(Debug)]
pub struct FinishedFile {
    pub kind: FileKind,
    /// As [`Record::route`].
    pub route: u8,
    pub partition: i32,
    /// The hour of the earliest event (dead letters' folder).
    pub hour: i64,
    /// Data files: the folder below the prefix, from `files.path`.
    pub folder: String,
    pub first_offset: i64,
    pub last_offset: i64,
    pub rows: u64,
    pub min_time_micros: i64,
    pub max_time_micros: i64,
    /// The registry's id of the schema the rows were decoded with.
    pub schema_id: Option<u32>,
    pub body: Body,
}

#[derive(Debug, thiserror::Error)]
pub enum BufferError {
    #[error("payload: {0}")]
    Decode(#[from] DecodeError),
    #[error(transparent)]
    Write(#[from] WriteError),
}

/// Every open file of this process.
#[derive(Debug)]
pub struct Buffers {
    plan: Arc<MessagePlan>,
    schema: SchemaRef,
    /// Writer settings for files of `schema`, from `parquet`.
    properties: WriterProperties,
    parquet: ParquetConfig,
    /// Parquet leaf columns under each of `schema`'s columns.
    leaves: Vec<usize>,
    /// What each leaf column's compressor holds once it closed a page.
    compressors: CompressorMemory,
    decoder: Decoder,
    /// The payload message, for JSON payloads (converted to Protobuf first).
    descriptor: MessageDescriptor,
    /// Reused buffer for JSON payloads converted to Protobuf.
    json_scratch: Vec<u8>,
    /// Looked up for every record: a fast hash of four integers (SipHash
    /// was ~1 % of a worker's time), keys being this process's own.
    files: HashMap<FileKey, OpenFile, foldhash::fast::RandomState>,
    /// Files closed early because the schema changed, uploaded at the next
    /// checkpoint.
    rolled: Vec<FinishedFile>,
    metadata: Vec<(&'static str, String)>,
    /// The registry's id of the schema in use, if it came from a registry.
    schema_id: Option<u32>,
    limits: FileLimits,
    /// Partitions with a file at a limit: to be checkpointed now.
    due: BTreeSet<i32>,
    partitioning: Partitioning,
    /// Values of the path field in open files' folders.
    field_values: FieldValues,
    /// Estimated bytes held by all open files.
    buffered_bytes: usize,
    /// Stretches of streamed files, to upload.
    parts: Vec<Part>,
    /// Streams of files dropped before they were finished.
    abandoned: Vec<u64>,
    /// The stream number given out next, and the step to the one after:
    /// buffers side by side number their streams apart.
    next_stream: u64,
    stream_step: u64,
}

impl Buffers {
    /// `metadata` goes into every file's footer (event, topic, version).
    /// Files of `plan`'s rows written with `parquet`'s settings.
    pub fn new(
        descriptor: MessageDescriptor,
        plan: Arc<MessagePlan>,
        parquet: &ParquetConfig,
        metadata: Vec<(&'static str, String)>,
    ) -> Buffers {
        let schema = table_schema(&plan);
        Buffers {
            properties: crate::writer::properties(parquet, &schema, &UNIQUE_COLUMNS),
            parquet: parquet.clone(),
            leaves: leaf_counts(&schema),
            compressors: CompressorMemory::measure(parquet),
            schema,
            plan,
            decoder: Decoder::new(),
            descriptor,
            json_scratch: Vec::new(),
            files: HashMap::default(),
            rolled: Vec::new(),
            metadata,
            schema_id: None,
            limits: FileLimits::default(),
            due: BTreeSet::new(),
            partitioning: Partitioning::hourly(""),
            field_values: FieldValues::default(),
            buffered_bytes: 0,
            parts: Vec::new(),
            abandoned: Vec::new(),
            next_stream: 1,
            stream_step: 1,
        }
    }

    /// Which folder each row goes to.
    pub fn with_partitioning(mut self, partitioning: Partitioning) -> Buffers {
        self.partitioning = partitioning;
        self
    }

    /// When a file is full: its partition becomes due for a checkpoint.
    pub fn with_limits(mut self, limits: FileLimits) -> Buffers {
        self.limits = limits;
        self
    }

    /// Partitions with a file at `max_rows` or `max_bytes` since the last
    /// call.
    pub fn take_due(&mut self) -> BTreeSet<i32> {
        std::mem::take(&mut self.due)
    }

    /// Bytes held per partition (open and rolled files).
    pub fn bytes_by_partition(&self) -> BTreeMap<i32, usize> {
        let mut bytes = BTreeMap::new();
        for ((partition, _, _, _), file) in &self.files {
            *bytes.entry(*partition).or_default() += file.held_bytes();
        }
        for file in &self.rolled {
            *bytes.entry(file.partition).or_default() += file.body.held();
        }
        bytes
    }

    /// Numbers streams `index + 1`, `index + 1 + of`, …: the `index`th of
    /// `of` buffers uploading through the same streams.
    pub fn with_streams_numbered(mut self, index: usize, of: usize) -> Buffers {
        debug_assert!(index < of);
        self.next_stream = index as u64 + 1;
        self.stream_step = of as u64;
        self
    }

    /// The registry's id of the schema the buffers decode with.
    pub fn with_schema_id(mut self, id: Option<u32>) -> Buffers {
        self.schema_id = id;
        self
    }

    /// Switches to a newer version of the payload schema: the open files
    /// are closed (they are uploaded at the next checkpoint) and the next
    /// rows go to new files with the new columns.
    pub fn evolve(
        &mut self,
        schema_id: u32,
        descriptor: MessageDescriptor,
        plan: Arc<MessagePlan>,
    ) -> Result<(), WriteError> {
        let closed = self.close_open(None)?;
        self.rolled.extend(closed);
        self.buffered_bytes = self.rolled.iter().map(|f| f.body.held()).sum();
        self.schema = table_schema(&plan);
        self.leaves = leaf_counts(&self.schema);
        // New columns get their own dictionary settings.
        self.properties = crate::writer::properties(&self.parquet, &self.schema, &UNIQUE_COLUMNS);
        self.plan = plan;
        self.descriptor = descriptor;
        self.schema_id = Some(schema_id);
        Ok(())
    }

    /// The Arrow schema of every file.
    pub fn schema(&self) -> &SchemaRef {
        &self.schema
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Rows in open and rolled files.
    pub fn buffered_rows(&self) -> u64 {
        self.files.values().map(|f| f.rows).sum::<u64>()
            + self.rolled.iter().map(|f| f.rows).sum::<u64>()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty() && self.rolled.is_empty()
    }

    /// Decodes `record` into the file of its partition and folder. On error
    /// the record is not added anywhere.
    pub fn push(&mut self, record: &Record<'_>) -> Result<(), BufferError> {
        let payload = match record.envelope.encoding {
            Encoding::Protobuf => record.payload,
            Encoding::Json => {
                crate::schema::json_to_protobuf(
                    &self.descriptor,
                    record.payload,
                    &mut self.json_scratch,
                )?;
                &self.json_scratch
            }
        };
        let bucket = self.partitioning.bucket(
            record.envelope.time_micros,
            record.kafka_timestamp_ms,
            payload,
        );
        let value = if self.partitioning.has_field() {
            self.field_values.intern(&self.partitioning, payload)
        } else {
            0
        };
        let key = (record.partition, bucket, value, record.route);
        let mut file = match self.files.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let file = e.insert(OpenFile::new(
                    &self.schema,
                    self.properties.clone(),
                    record,
                    self.leaves.iter().sum(),
                )?);
                self.buffered_bytes += file.held_bytes();
                file
            }
        };
        let payload_columns = self.plan.fields.len();
        self.decoder
            .decode(&self.plan, payload, &mut file.columns[..payload_columns])?;
        let before = file.held_bytes();
        file.append_envelope(payload_columns, record);
        file.pending_bytes += record.payload.len() + ROW_OVERHEAD;
        if file.pending_rows >= BATCH_ROWS || file.pending_bytes >= BATCH_BYTES {
            // A busy file: its builders keep their room for the next batch.
            file.encode_pending(&self.schema, true)?;
            file.writer.bound_row_group(self.limits.row_group_bytes)?;
            file.full = file.writer.reached(self.limits.max_bytes)?;
            self.after_encoding(key);
            file = self.files.get_mut(&key).expect("the file just written");
        }
        self.buffered_bytes = self.buffered_bytes - before + file.held_bytes();
        if self.limits.max_rows.is_some_and(|max| file.rows >= max) || file.full {
            self.due.insert(record.partition);
        }
        Ok(())
    }

    /// Compresses what the files holding the most keep uncompressed — their
    /// rows not yet encoded and their open row groups — by closing their
    /// row groups, until open files hold `target` bytes or less: pages are
    /// compressed, compressors and builders' room freed, and the files
    /// stay open, so memory pressure need not end them. Only files with a
    /// row group's worth: 1 MiB, or half of each file's even share of `target`
    /// when many files share it (64 KiB at least), so that files of a few
    /// rows are left to sealing rather than cut into tiny row groups.
    /// Returns how many row groups it closed.
    pub fn compact(&mut self, target: usize) -> Result<usize, WriteError> {
        const MIN_ROW_GROUP: usize = 1 << 20;
        const MIN_SHARED_ROW_GROUP: usize = 64 << 10;
        let floor =
            (target / 2 / self.files.len().max(1)).clamp(MIN_SHARED_ROW_GROUP, MIN_ROW_GROUP);
        let mut largest: Vec<(usize, FileKey)> = self
            .files
            .iter()
            .map(|(key, file)| (file.uncompressed_bytes(), *key))
            .filter(|&(bytes, _)| bytes >= floor)
            .collect();
        largest.sort_unstable_by(|a, b| b.cmp(a));
        let mut closed = 0;
        for (_, key) in largest {
            if self.buffered_bytes <= target {
                break;
            }
            let file = self.files.get_mut(&key).expect("a file listed above");
            let before = file.held_bytes();
            file.encode_pending(&self.schema, false)?;
            file.writer.close_row_group()?;
            closed += 1;
            file.encoded_bytes = file.writer.memory_size();
            if file.writer.reached(self.limits.max_bytes)? {
                file.full = true;
                self.due.insert(key.0);
            }
            self.after_encoding(key);
            self.buffered_bytes = self.buffered_bytes - before + self.files[&key].held_bytes();
        }
        debug_assert_eq!(
            self.buffered_bytes,
            self.bytes_by_partition().values().sum::<usize>(),
            "the running count is what the files hold"
        );
        Ok(closed)
    }

    /// After rows were encoded into file `key` or its row group closed:
    /// hands out its next part if streamed, and counts its compressors
    /// again.
    fn after_encoding(&mut self, key: FileKey) {
        let Buffers {
            files,
            limits,
            next_stream,
            stream_step,
            parts,
            leaves,
            compressors,
            parquet,
            ..
        } = self;
        let Some(file) = files.get_mut(&key) else {
            return;
        };
        file.take_part(key.0, limits.part_bytes, (next_stream, *stream_step), parts);
        file.count_compressors(leaves, compressors, parquet.data_page_bytes);
    }

    /// Stretches of streamed files handed out since the last call, in the
    /// order they were written.
    pub fn take_parts(&mut self) -> Vec<Part> {
        std::mem::take(&mut self.parts)
    }

    pub fn has_parts(&self) -> bool {
        !self.parts.is_empty()
    }

    /// Streams whose files were dropped since the last call: their uploads
    /// are to be aborted.
    pub fn take_abandoned(&mut self) -> Vec<u64> {
        std::mem::take(&mut self.abandoned)
    }

    /// Drops everything buffered for `partition` (it was revoked).
    pub fn drop_partition(&mut self, partition: i32) {
        let mut dropped = 0;
        let abandoned = &mut self.abandoned;
        self.files.retain(|(p, _, _, _), file| {
            let keep = *p != partition;
            if !keep {
                dropped += file.held_bytes();
                abandoned.extend(file.stream);
            }
            keep
        });
        self.due.remove(&partition);
        self.rolled.retain(|file| {
            let keep = file.partition != partition;
            if !keep {
                dropped += file.body.held();
                if let Body::Streamed { stream, .. } = file.body {
                    abandoned.push(stream);
                }
            }
            keep
        });
        self.parts.retain(|part| part.partition != partition);
        self.buffered_bytes = self.buffered_bytes.saturating_sub(dropped);
    }

    /// Closes every open file and hands them over with the files rolled
    /// since the last call, leaving the buffers empty.
    pub fn finish_all(&mut self) -> Result<Vec<FinishedFile>, WriteError> {
        self.finish(None)
    }

    /// Closes the files of `only` these partitions (all when `None`) and
    /// hands them over with their rolled files.
    pub fn finish(
        &mut self,
        only: Option<&BTreeSet<i32>>,
    ) -> Result<Vec<FinishedFile>, WriteError> {
        let chosen = |partition: i32| only.is_none_or(|set| set.contains(&partition));
        let (mut finished, kept) = std::mem::take(&mut self.rolled)
            .into_iter()
            .partition(|f| chosen(f.partition));
        self.rolled = kept;
        finished.extend(self.close_open(only)?);
        if self.files.is_empty() {
            self.field_values = FieldValues::default();
        }
        self.buffered_bytes = self.bytes_by_partition().values().sum();
        self.due.retain(|p| !chosen(*p));
        finished.sort_by(|a, b| {
            (a.partition, &a.folder, a.route, a.first_offset).cmp(&(
                b.partition,
                &b.folder,
                b.route,
                b.first_offset,
            ))
        });
        Ok(finished)
    }

    fn close_open(
        &mut self,
        only: Option<&BTreeSet<i32>>,
    ) -> Result<Vec<FinishedFile>, WriteError> {
        let mut metadata = self.metadata.clone();
        if let Some(id) = self.schema_id {
            metadata.push(("sluice.schema_id", id.to_string()));
        }
        let keys: Vec<FileKey> = self
            .files
            .keys()
            .filter(|(p, _, _, _)| only.is_none_or(|set| set.contains(p)))
            .copied()
            .collect();
        let mut closed = Vec::with_capacity(keys.len());
        for key in keys {
            let Some(file) = self.files.remove(&key) else {
                continue;
            };
            if file.rows == 0 {
                // Only records that failed to decode came to it.
                continue;
            }
            let (partition, bucket, value, route) = key;
            let field = self.field_values.get(value);
            let folder = self.partitioning.folder(bucket, field);
            let mut done = file.finish(&self.schema, partition, route, &metadata)?;
            done.schema_id = self.schema_id;
            done.folder = folder;
            closed.push(done);
        }
        Ok(closed)
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::envelope::Envelope;
    use crate::sample::OrderSample;
    use crate::schema::LocalRegistry;
    use crate::writer::PAGE_ROWS;

    fn buffers() -> (Buffers, OrderSample) {
        let registry =
            LocalRegistry::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap();
        let descriptor = registry.message("sluice.examples.OrderPlaced").unwrap();
        let sample = OrderSample::new(&descriptor).unwrap();
        let plan = Arc::new(MessagePlan::new(&descriptor, 3).unwrap());
        let buffers = Buffers::new(descriptor, plan, &ParquetConfig::default(), vec![]);
        (buffers, sample)
    }

    fn record(partition: i32, offset: i64, payload: &[u8]) -> Record<'_> {
        Record {
            partition,
            offset,
            kafka_timestamp_ms: None,
            envelope: Envelope {
                id: None,
                source: None,
                time_micros: 1_767_225_600_000_000,
                encoding: Encoding::Protobuf,
                extensions: vec![],
                tenant_header: None,
                dataschema: None,
            },
            payload,
            route: 0,
        }
    }

    #[test]
    fn files_hold_only_rows_that_decoded() {
        let (mut buffers, sample) = buffers();
        let good = sample.encode(1);
        let good = good.as_slice();
        // The first record opens the file and fails; later ones land.
        assert!(buffers.push(&record(0, 7, b"\xff\xff")).is_err());
        buffers.push(&record(0, 8, good)).unwrap();
        buffers.push(&record(0, 9, good)).unwrap();
        // Another folder that only ever saw a failure: no file at all.
        let mut other = record(0, 10, b"\xff\xff");
        other.envelope.time_micros += 3_600_000_000;
        assert!(buffers.push(&other).is_err());
        let files = buffers.finish_all().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            (files[0].first_offset, files[0].last_offset, files[0].rows),
            (8, 9, 2)
        );
    }

    #[test]
    fn compressors_count_from_the_first_page_until_the_row_group_closes() {
        let (buffers, sample) = buffers();
        // Row groups of 25,000 rows: they close within a batch.
        let parquet = ParquetConfig {
            row_group_rows: 25_000,
            ..ParquetConfig::default()
        };
        let mut buffers = Buffers::new(buffers.descriptor, buffers.plan, &parquet, vec![]);
        let payloads: Vec<Vec<u8>> = (0..60_000).map(|i| sample.encode(i)).collect();
        let mut seen = Vec::new();
        for (offset, payload) in payloads.iter().enumerate() {
            buffers.push(&record(0, offset as i64, payload)).unwrap();
            let file = buffers.files.values().next().unwrap();
            if seen
                .last()
                .is_none_or(|&(_, last)| last != file.compressor_bytes)
            {
                seen.push((file.writer.in_progress_rows(), file.compressor_bytes));
            }
        }
        let leaves: usize = buffers.leaves.iter().sum();
        let most = leaves * buffers.compressors.after_page(usize::MAX);
        // None before the first page; more as columns close pages (at
        // `data_page_bytes`, all at PAGE_ROWS); none once the row group
        // closes, then again.
        assert_eq!(seen[0], (0, 0), "{seen:?}");
        assert!(seen.iter().all(|&(_, bytes)| bytes <= most), "{seen:?}");
        assert!(
            seen.iter()
                .any(|&(rows, bytes)| rows >= PAGE_ROWS && bytes > 0),
            "{seen:?}"
        );
        for pair in seen.windows(2) {
            let ((rows, bytes), (next_rows, next_bytes)) = (pair[0], pair[1]);
            if next_rows > rows {
                assert!(next_bytes > bytes, "{seen:?}");
            } else {
                assert_eq!(next_bytes, 0, "a closed row group counts nothing: {seen:?}");
            }
        }
        // Two row groups closed (at 25,000 and 50,000 rows).
        let closed = seen.iter().skip(1).filter(|&&(_, bytes)| bytes == 0);
        assert_eq!(closed.count(), 2, "{seen:?}");
    }

    #[test]
    fn compacting_closes_row_groups_and_keeps_files_open() {
        let (mut buffers, sample) = buffers();
        let payloads: Vec<Vec<u8>> = (0..30_000).map(|i| sample.encode(i)).collect();
        // Three partitions; the third's file stays under 64 KiB.
        for (offset, payload) in payloads.iter().enumerate() {
            buffers.push(&record(0, offset as i64, payload)).unwrap();
            buffers.push(&record(1, offset as i64, payload)).unwrap();
            if offset < 50 {
                buffers.push(&record(2, offset as i64, payload)).unwrap();
            }
        }
        let held = buffers.buffered_bytes();
        let before = buffers.bytes_by_partition();
        assert_eq!(
            buffers.compact(0).unwrap(),
            2,
            "the two large files' row groups"
        );
        let after = buffers.bytes_by_partition();
        // The two large files shrank to their compressed pages (and their
        // compressors went); the small one was left as it was.
        assert!(buffers.buffered_bytes() < held / 2, "{before:?} {after:?}");
        assert!(after[&0] < before[&0] / 2, "{before:?} {after:?}");
        assert_eq!(after[&2], before[&2]);
        assert_eq!(buffers.buffered_bytes(), after.values().sum::<usize>());
        assert!(buffers.files.values().all(|f| f.compressor_bytes == 0));
        // More rows go on into the same files.
        for (offset, payload) in payloads.iter().enumerate().take(10_000) {
            buffers
                .push(&record(0, (30_000 + offset) as i64, payload))
                .unwrap();
        }
        let files = buffers.finish_all().unwrap();
        assert_eq!(files.len(), 3);
        let Body::Whole(bytes) = &files[0].body else {
            panic!("not whole");
        };
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(bytes.clone()),
        )
        .unwrap();
        assert!(reader.metadata().num_row_groups() >= 2);
        let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, 40_000);
        assert_eq!((files[0].first_offset, files[0].last_offset), (0, 39_999));
    }

    /// Many open files, each holding less than a batch: compacting encodes
    /// their rows and closes row groups of about each file's share, and the
    /// files go on (those compacted end with two row groups).
    #[test]
    fn compacting_many_files_encodes_their_rows() {
        const FILES: i32 = 40;
        let (mut buffers, sample) = buffers();
        let payloads: Vec<Vec<u8>> = (0..1500).map(|i| sample.encode(i)).collect();
        for (offset, payload) in payloads.iter().enumerate().take(1000) {
            for partition in 0..FILES {
                buffers
                    .push(&record(partition, offset as i64, payload))
                    .unwrap();
            }
        }
        let held = buffers.buffered_bytes();
        assert!(
            buffers
                .files
                .values()
                .all(|f| f.writer.in_progress_rows() == 0)
        );
        let target = held / 4;
        let closed = buffers.compact(target).unwrap();
        assert!(
            buffers.buffered_bytes() <= target,
            "{held} → {}",
            buffers.buffered_bytes()
        );
        assert!(closed >= FILES as usize / 2, "{closed} row groups closed");
        assert_eq!(buffers.files.len(), FILES as usize, "files stay open");
        for (offset, payload) in payloads.iter().enumerate().skip(1000) {
            for partition in 0..FILES {
                buffers
                    .push(&record(partition, offset as i64, payload))
                    .unwrap();
            }
        }
        let files = buffers.finish_all().unwrap();
        assert_eq!(files.len(), FILES as usize);
        let mut groups = Vec::new();
        for file in &files {
            let Body::Whole(bytes) = &file.body else {
                panic!("not whole");
            };
            let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
                bytes::Bytes::from(bytes.clone()),
            )
            .unwrap();
            groups.push(reader.metadata().num_row_groups());
            let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
            assert_eq!(rows, 1500, "partition {}", file.partition);
        }
        assert_eq!(
            groups.iter().filter(|&&n| n == 2).count(),
            closed,
            "{groups:?}"
        );
    }

    /// Streamed files hand out numbered parts while written; parts and
    /// tail make the whole file; a dropped partition's streams are
    /// abandoned.
    #[test]
    fn streamed_files_hand_out_parts_that_make_the_file() {
        let (buffers, sample) = buffers();
        let mut buffers = buffers.with_limits(FileLimits {
            row_group_bytes: 64 * 1024,
            part_bytes: Some(32 * 1024),
            ..FileLimits::default()
        });
        let payloads: Vec<Vec<u8>> = (0..40_000).map(|i| sample.encode(i)).collect();
        let mut file = Vec::new();
        let mut numbers = Vec::new();
        for (offset, payload) in payloads.iter().enumerate() {
            buffers.push(&record(0, offset as i64, payload)).unwrap();
            buffers.push(&record(1, offset as i64, payload)).unwrap();
            for part in buffers.take_parts() {
                if part.partition == 0 {
                    numbers.push(part.number);
                    file.extend(part.bytes);
                }
            }
        }
        assert!(numbers.len() > 2, "{numbers:?}");
        assert_eq!(numbers, (1..=numbers.len() as i32).collect::<Vec<_>>());
        buffers.drop_partition(1);
        assert_eq!(buffers.take_abandoned().len(), 1);
        let mut files = buffers.finish_all().unwrap();
        assert_eq!(files.len(), 1);
        let Body::Streamed {
            parts, tail, size, ..
        } = std::mem::replace(&mut files[0].body, Body::Whole(Vec::new()))
        else {
            panic!("not streamed");
        };
        assert_eq!(parts as usize, numbers.len());
        file.extend(tail);
        assert_eq!(size, file.len() as u64);
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(
            bytes::Bytes::from(file),
        )
        .unwrap();
        let rows: usize = reader.build().unwrap().map(|b| b.unwrap().num_rows()).sum();
        assert_eq!(rows, payloads.len());
    }
}
