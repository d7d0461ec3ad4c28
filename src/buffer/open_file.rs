//! One open file: its Arrow columns, the Parquet writer its batches are
//! encoded into, the offsets and times it covers, and what it holds in
//! memory.

use arrow::array::RecordBatch;
use arrow::datatypes::SchemaRef;
use parquet::file::properties::WriterProperties;

use super::{Body, FileKind, FinishedFile, Part, Record};
use crate::layout;
use crate::schema::Column;
use crate::writer::{CompressorMemory, FileWriter, PAGE_ROWS, WriteError};

/// Rows not yet encoded are counted this many times over: Arrow builders
/// grow by doubling, so they hold up to twice what the rows need (measured
/// with `tests/allocations.rs`: 642 KiB held for 281 KiB counted once,
/// three files of 333 rows). A file whose last batch was full keeps room
/// for the next one, counted as [`OpenFile::reserved`] until its rows
/// count more.
const UNENCODED_FACTOR: usize = 2;

/// Bytes an open file holds per leaf column whatever its rows: its
/// builders' first room and its writer's state (column writers, encoders,
/// their buffers). Measured with `tests/allocations.rs`: 37 KiB per file of
/// one row, 40 KiB per file of 30, on the reference event's 30 columns.
/// Without it, thousands of open files of a few rows each (many partitions
/// × folders) hold far more than the budget counts.
const FILE_STATE_PER_COLUMN: usize = 1280;

/// Bytes an open file keeps per leaf column for each row group it closed,
/// until its footer is written: the column chunk's metadata (statistics,
/// encodings) and its offset index. Measured with `tests/allocations.rs`:
/// 24 KiB per row group on the reference event's 30 columns.
const ROW_GROUP_METADATA_PER_COLUMN: usize = 832;

/// An open file: rows pending as Arrow columns, the rest encoded by its
/// writer; the offsets and event times of the rows it holds.
#[derive(Debug)]
pub(super) struct OpenFile {
    pub(super) columns: Vec<Column>,
    pub(super) pending_rows: usize,
    pub(super) pending_bytes: usize,
    /// Bytes of room the builders kept after a full batch (the batch's
    /// Arrow size), held whether or not rows fill it.
    reserved: usize,
    /// Arrow bytes per column encoded into the open row group: a column
    /// past `data_page_bytes` has closed a page.
    group_bytes: Vec<usize>,
    /// What the compressors of the columns that closed a page in the open
    /// row group hold ([`CompressorMemory`]).
    pub(super) compressor_bytes: usize,
    pub(super) writer: FileWriter,
    /// Memory the writer holds.
    pub(super) encoded_bytes: usize,
    /// Leaf columns, for what the file holds whatever its rows
    /// ([`FILE_STATE_PER_COLUMN`]) and per closed row group
    /// ([`ROW_GROUP_METADATA_PER_COLUMN`]).
    leaves: usize,
    /// The file reached `max_bytes`.
    pub(super) full: bool,
    first_offset: i64,
    last_offset: i64,
    pub(super) rows: u64,
    min_time_micros: i64,
    max_time_micros: i64,
    /// Streamed: its stream, the parts and bytes handed out so far.
    pub(super) stream: Option<u64>,
    parts: i32,
    streamed: u64,
}

impl OpenFile {
    pub(super) fn new(
        schema: &SchemaRef,
        properties: WriterProperties,
        first: &Record<'_>,
        leaves: usize,
    ) -> Result<OpenFile, WriteError> {
        Ok(OpenFile {
            columns: schema
                .fields()
                .iter()
                .filter_map(|f| Column::for_type(f.data_type()))
                .collect(),
            pending_rows: 0,
            pending_bytes: 0,
            reserved: 0,
            group_bytes: vec![0; schema.fields().len()],
            compressor_bytes: 0,
            writer: FileWriter::new(schema.clone(), properties)?,
            encoded_bytes: 0,
            leaves,
            full: false,
            first_offset: first.offset,
            last_offset: first.offset,
            rows: 0,
            min_time_micros: first.envelope.time_micros,
            max_time_micros: first.envelope.time_micros,
            stream: None,
            parts: 0,
            streamed: 0,
        })
    }

    pub(super) fn append_envelope(&mut self, first_column: usize, record: &Record<'_>) {
        let time = record.envelope.time_micros;
        let [
            id,
            event_time,
            source,
            partition,
            offset,
            kafka_ts,
            extensions,
        ] = &mut self.columns[first_column..]
        else {
            return;
        };
        if let Column::Str(b) = id {
            b.append_option(record.envelope.id);
        }
        if let Column::Ts(b) = event_time {
            b.append_value(time);
        }
        if let Column::Str(b) = source {
            b.append_option(record.envelope.source);
        }
        if let Column::I32(b) = partition {
            b.append_value(record.partition);
        }
        if let Column::I64(b) = offset {
            b.append_value(record.offset);
        }
        if let Column::Ts(b) = kafka_ts {
            b.append_option(record.kafka_timestamp_ms.map(|ms| ms.saturating_mul(1000)));
        }
        if let Column::Str(b) = extensions {
            let attributes = &record.envelope.extensions;
            if attributes.is_empty() {
                b.append_null();
            } else {
                // Strings serialize infallibly; the builder is in memory.
                let _ = serde_json::to_writer(&mut *b, &Extensions(attributes));
                b.append_value([]);
            }
        }
        if self.rows == 0 {
            // The record that opened the file may have failed to decode.
            (self.first_offset, self.last_offset) = (record.offset, record.offset);
            (self.min_time_micros, self.max_time_micros) = (time, time);
        }
        self.pending_rows += 1;
        self.rows += 1;
        self.first_offset = self.first_offset.min(record.offset);
        self.last_offset = self.last_offset.max(record.offset);
        self.min_time_micros = self.min_time_micros.min(time);
        self.max_time_micros = self.max_time_micros.max(time);
    }

    pub(super) fn held_bytes(&self) -> usize {
        self.unencoded_bytes()
            + self.encoded_bytes
            + self.compressor_bytes
            + self.leaves
                * (FILE_STATE_PER_COLUMN
                    + self.writer.closed_row_groups() * ROW_GROUP_METADATA_PER_COLUMN)
    }

    /// What [`super::Buffers::compact`] can shrink: rows not yet encoded (and the
    /// builders' room), the open row group and its compressors.
    pub(super) fn uncompressed_bytes(&self) -> usize {
        self.unencoded_bytes() + self.writer.open_row_group_bytes() + self.compressor_bytes
    }

    /// Rows not yet encoded, or the room the builders kept if more.
    fn unencoded_bytes(&self) -> usize {
        (self.pending_bytes * UNENCODED_FACTOR).max(self.reserved)
    }

    /// A streamed file's encoded bytes as its next [`Part`], once there are
    /// `min` of them; its stream is numbered from `streams` (next, step) on
    /// its first part.
    pub(super) fn take_part(
        &mut self,
        partition: i32,
        min: Option<usize>,
        streams: (&mut u64, u64),
        parts: &mut Vec<Part>,
    ) {
        let Some(bytes) = min.and_then(|min| self.writer.take_encoded(min)) else {
            return;
        };
        let (next, step) = streams;
        let stream = *self.stream.get_or_insert_with(|| {
            let stream = *next;
            *next += step;
            stream
        });
        self.parts += 1;
        self.streamed += bytes.len() as u64;
        self.encoded_bytes = self.writer.memory_size();
        parts.push(Part {
            stream,
            partition,
            number: self.parts,
            bytes,
        });
    }

    /// Counts the compressors of the columns that have closed a page in
    /// the open row group: all of them once it holds [`PAGE_ROWS`] rows,
    /// else those past `page_bytes` (Arrow bytes, at least the page's).
    pub(super) fn count_compressors(
        &mut self,
        leaves: &[usize],
        memory: &CompressorMemory,
        page_bytes: u64,
    ) {
        let rows = self.writer.in_progress_rows();
        if rows == 0 {
            self.group_bytes.fill(0);
        }
        let page_bytes = usize::try_from(page_bytes).unwrap_or(usize::MAX);
        let paged = rows >= PAGE_ROWS;
        // A page's share of the group's bytes: PAGE_ROWS of its rows.
        let page_share = |bytes: usize| match rows {
            0 => bytes,
            rows => bytes / rows * rows.min(PAGE_ROWS),
        };
        self.compressor_bytes = self
            .group_bytes
            .iter()
            .zip(leaves)
            .filter(|&(&bytes, _)| paged || bytes >= page_bytes)
            .map(|(&bytes, &leaves)| leaves * memory.after_page(page_share(bytes).min(page_bytes)))
            .sum();
    }

    /// Encodes the pending rows into the writer's pages. With `keep`, the
    /// builders keep room for as many rows (the file is busy); otherwise
    /// they start over empty.
    pub(super) fn encode_pending(
        &mut self,
        schema: &SchemaRef,
        keep: bool,
    ) -> Result<(), WriteError> {
        if self.pending_rows == 0 {
            return Ok(());
        }
        let mut batch_bytes = 0;
        for (column, group) in self.columns.iter().zip(&mut self.group_bytes) {
            let bytes = column.buffered_bytes();
            *group += bytes;
            batch_bytes += bytes;
        }
        let arrays = if keep {
            self.reserved = batch_bytes;
            self.columns
                .iter_mut()
                .map(Column::finish_keeping_capacity)
                .collect()
        } else {
            self.reserved = 0;
            self.columns.iter_mut().map(Column::finish).collect()
        };
        let batch = RecordBatch::try_new(schema.clone(), arrays)
            .map_err(|e| WriteError::from(parquet::errors::ParquetError::from(e)))?;
        let rows_before = self.writer.in_progress_rows();
        self.writer.write(&batch)?;
        if self.writer.in_progress_rows() < rows_before + self.pending_rows {
            // A row group closed within the batch (at `row_group_rows`):
            // the new one holds part of the batch at most, counted from the
            // next batch on.
            self.group_bytes.fill(0);
        }
        self.pending_rows = 0;
        self.pending_bytes = 0;
        self.encoded_bytes = self.writer.memory_size();
        Ok(())
    }

    pub(super) fn finish(
        mut self,
        schema: &SchemaRef,
        partition: i32,
        route: u8,
        metadata: &[(&'static str, String)],
    ) -> Result<FinishedFile, WriteError> {
        self.encode_pending(schema, false)?;
        let mut footer = metadata.to_vec();
        footer.push(("sluice.partition", partition.to_string()));
        footer.push(("sluice.first_offset", self.first_offset.to_string()));
        footer.push(("sluice.last_offset", self.last_offset.to_string()));
        let rest = self.writer.close(&footer)?;
        let body = match self.stream {
            None => Body::Whole(rest),
            Some(stream) => Body::Streamed {
                stream,
                parts: self.parts,
                size: self.streamed + rest.len() as u64,
                tail: rest,
            },
        };
        Ok(FinishedFile {
            kind: FileKind::Data,
            route,
            partition,
            hour: layout::hour_of(self.min_time_micros),
            folder: String::new(),
            first_offset: self.first_offset,
            last_offset: self.last_offset,
            rows: self.rows,
            min_time_micros: self.min_time_micros,
            max_time_micros: self.max_time_micros,
            schema_id: None,
            body,
        })
    }
}

/// CloudEvents extension attributes as one JSON object.
struct Extensions<'a>(&'a [(&'a str, &'a str)]);

impl serde::Serialize for Extensions<'_> {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_map(self.0.iter().map(|(k, v)| (k, v)))
    }
}
