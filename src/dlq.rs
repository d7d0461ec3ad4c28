//! The dead-letter store: records that cannot become rows, kept whole with
//! the reason, as Parquet under `<prefix>/_dead_letters/<event>/…`.
//!
//! Dead letters are committed by the same manifest as the good rows of their
//! range, so "every consumed record ends in exactly one committed row or one
//! dead-letter row" is checked against one place. They are not announced:
//! loaders of the event's table must not load them. This module buffers and
//! encodes; it does no I/O.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use arrow::array::{
    ArrayRef, BinaryBuilder, Int32Builder, Int64Builder, ListBuilder, RecordBatch, StringBuilder,
    StructBuilder, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Fields, Schema, SchemaRef, TimeUnit};
use parquet::file::properties::WriterProperties;

use crate::buffer::{Body, FileKind, FinishedFile};
use crate::layout;
use crate::schema::UTC;
use crate::writer::{FileWriter, WriteError};

/// Why a record did not become a row: the `stage` column of its dead
/// letter and the `reason` label of its metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The CloudEvents headers were unreadable.
    Envelope,
    /// The payload did not decode against the schema.
    Decode,
    /// The record's schema version conflicts with the one in use.
    IncompatibleSchema,
    /// The record is larger than the memory budget allows for one record.
    TooLarge,
    /// The record's value is null: a compaction tombstone, not an event.
    Tombstone,
}

impl Stage {
    pub const ALL: [Stage; 5] = [
        Stage::Envelope,
        Stage::Decode,
        Stage::IncompatibleSchema,
        Stage::TooLarge,
        Stage::Tombstone,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Stage::Envelope => "envelope",
            Stage::Decode => "decode",
            Stage::IncompatibleSchema => "incompatible_schema",
            Stage::TooLarge => "too_large",
            Stage::Tombstone => "tombstone",
        }
    }
}

/// A record that could not become a row, borrowed from the consumer.
#[derive(Debug, Clone, Copy)]
pub struct DeadLetter<'a> {
    pub partition: i32,
    pub offset: i64,
    pub kafka_timestamp_ms: Option<i64>,
    pub key: Option<&'a [u8]>,
    pub value: Option<&'a [u8]>,
    pub headers: &'a [(&'a str, Option<&'a [u8]>)],
    /// `envelope` or `decode`.
    pub stage: &'a str,
    pub reason: &'a str,
}

/// Dead letters per partition, until the next checkpoint.
#[derive(Debug)]
pub struct DeadLetters {
    schema: SchemaRef,
    properties: WriterProperties,
    metadata: Vec<(&'static str, String)>,
    open: BTreeMap<i32, Open>,
    buffered_bytes: usize,
}

#[derive(Debug)]
struct Open {
    columns: Columns,
    first_offset: i64,
    last_offset: i64,
    first_time_micros: i64,
    min_time_micros: i64,
    max_time_micros: i64,
    rows: u64,
    /// Estimated bytes held.
    bytes: usize,
}

#[derive(Debug)]
struct Columns {
    partition: Int32Builder,
    offset: Int64Builder,
    timestamp: TimestampMicrosecondBuilder,
    key: BinaryBuilder,
    value: BinaryBuilder,
    headers: ListBuilder<StructBuilder>,
    stage: StringBuilder,
    reason: StringBuilder,
}

fn header_fields() -> Fields {
    Fields::from(vec![
        Field::new("key", DataType::Utf8, false),
        Field::new("value", DataType::Binary, true),
    ])
}

/// The columns of every dead-letter file.
pub fn schema() -> SchemaRef {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()));
    let header = Field::new("item", DataType::Struct(header_fields()), true);
    Arc::new(Schema::new(vec![
        Field::new("_kafka_partition", DataType::Int32, false),
        Field::new("_kafka_offset", DataType::Int64, false),
        Field::new("_kafka_timestamp", ts, true),
        Field::new("key", DataType::Binary, true),
        Field::new("value", DataType::Binary, true),
        Field::new("headers", DataType::List(Arc::new(header)), true),
        Field::new("stage", DataType::Utf8, false),
        Field::new("reason", DataType::Utf8, false),
    ]))
}

impl Columns {
    fn new() -> Columns {
        let header = StructBuilder::from_fields(header_fields(), 0);
        Columns {
            partition: Int32Builder::new(),
            offset: Int64Builder::new(),
            timestamp: TimestampMicrosecondBuilder::new().with_timezone(UTC),
            key: BinaryBuilder::new(),
            value: BinaryBuilder::new(),
            headers: ListBuilder::new(header).with_field(Arc::new(Field::new(
                "item",
                DataType::Struct(header_fields()),
                true,
            ))),
            stage: StringBuilder::new(),
            reason: StringBuilder::new(),
        }
    }

    fn append(&mut self, letter: &DeadLetter<'_>) {
        self.partition.append_value(letter.partition);
        self.offset.append_value(letter.offset);
        self.timestamp
            .append_option(letter.kafka_timestamp_ms.map(|ms| ms.saturating_mul(1000)));
        self.key.append_option(letter.key);
        self.value.append_option(letter.value);
        let entries = self.headers.values();
        for (key, value) in letter.headers {
            if let Some(b) = entries.field_builder::<StringBuilder>(0) {
                b.append_value(key);
            }
            if let Some(b) = entries.field_builder::<BinaryBuilder>(1) {
                b.append_option(*value);
            }
            entries.append(true);
        }
        self.headers.append(true);
        self.stage.append_value(letter.stage);
        self.reason.append_value(letter.reason);
    }

    fn finish(&mut self) -> Vec<ArrayRef> {
        vec![
            Arc::new(self.partition.finish()),
            Arc::new(self.offset.finish()),
            Arc::new(self.timestamp.finish()),
            Arc::new(self.key.finish()),
            Arc::new(self.value.finish()),
            Arc::new(self.headers.finish()),
            Arc::new(self.stage.finish()),
            Arc::new(self.reason.finish()),
        ]
    }
}

impl DeadLetters {
    pub fn new(properties: WriterProperties, metadata: Vec<(&'static str, String)>) -> DeadLetters {
        DeadLetters {
            schema: schema(),
            properties,
            metadata,
            open: BTreeMap::new(),
            buffered_bytes: 0,
        }
    }

    pub fn buffered_bytes(&self) -> usize {
        self.buffered_bytes
    }

    /// Dead letters not yet handed over.
    pub fn buffered_rows(&self) -> u64 {
        self.open.values().map(|o| o.rows).sum()
    }

    pub fn push(&mut self, letter: &DeadLetter<'_>) {
        let time = letter
            .kafka_timestamp_ms
            .map_or_else(now_micros, |ms| ms.saturating_mul(1000));
        let open = self.open.entry(letter.partition).or_insert_with(|| Open {
            columns: Columns::new(),
            first_offset: letter.offset,
            last_offset: letter.offset,
            first_time_micros: time,
            min_time_micros: time,
            max_time_micros: time,
            rows: 0,
            bytes: 0,
        });
        open.columns.append(letter);
        open.rows += 1;
        open.first_offset = open.first_offset.min(letter.offset);
        open.last_offset = open.last_offset.max(letter.offset);
        open.min_time_micros = open.min_time_micros.min(time);
        open.max_time_micros = open.max_time_micros.max(time);
        let header_bytes: usize = letter
            .headers
            .iter()
            .map(|(k, v)| k.len() + v.map_or(0, <[u8]>::len))
            .sum();
        let bytes = letter.key.map_or(0, <[u8]>::len)
            + letter.value.map_or(0, <[u8]>::len)
            + header_bytes
            + letter.reason.len()
            + 64;
        open.bytes += bytes;
        self.buffered_bytes += bytes;
    }

    /// Bytes held per partition.
    pub fn bytes_by_partition(&self) -> BTreeMap<i32, usize> {
        self.open.iter().map(|(p, open)| (*p, open.bytes)).collect()
    }

    /// Drops what is held for `partition` (it was revoked).
    pub fn drop_partition(&mut self, partition: i32) {
        if let Some(open) = self.open.remove(&partition) {
            self.buffered_bytes = self.buffered_bytes.saturating_sub(open.bytes);
        }
    }

    /// Encodes one file per partition and empties the store.
    pub fn finish_all(&mut self) -> Result<Vec<FinishedFile>, WriteError> {
        self.finish(None)
    }

    /// Encodes the files of `only` these partitions (all when `None`).
    pub fn finish(
        &mut self,
        only: Option<&BTreeSet<i32>>,
    ) -> Result<Vec<FinishedFile>, WriteError> {
        let chosen: Vec<i32> = self
            .open
            .keys()
            .filter(|p| only.is_none_or(|set| set.contains(p)))
            .copied()
            .collect();
        let mut out = Vec::with_capacity(chosen.len());
        for partition in chosen {
            let Some(mut open) = self.open.remove(&partition) else {
                continue;
            };
            self.buffered_bytes = self.buffered_bytes.saturating_sub(open.bytes);
            let batch = RecordBatch::try_new(self.schema.clone(), open.columns.finish())
                .map_err(|e| WriteError::from(parquet::errors::ParquetError::from(e)))?;
            let mut writer = FileWriter::new(self.schema.clone(), self.properties.clone())?;
            writer.write(&batch)?;
            let mut footer = self.metadata.clone();
            footer.push(("sluice.partition", partition.to_string()));
            footer.push(("sluice.first_offset", open.first_offset.to_string()));
            footer.push(("sluice.last_offset", open.last_offset.to_string()));
            out.push(FinishedFile {
                kind: FileKind::DeadLetters,
                route: 0,
                partition,
                hour: layout::hour_of(open.first_time_micros),
                folder: String::new(),
                first_offset: open.first_offset,
                last_offset: open.last_offset,
                rows: open.rows,
                min_time_micros: open.min_time_micros,
                max_time_micros: open.max_time_micros,
                schema_id: None,
                body: Body::Whole(writer.close(&footer)?),
            });
        }
        Ok(out)
    }
}

fn now_micros() -> i64 {
    chrono::Utc::now().timestamp_micros()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    #[test]
    fn dead_letters_keep_the_whole_record() {
        let properties = crate::writer::properties(&Default::default(), &schema(), &[]);
        let mut dlq = DeadLetters::new(properties, vec![]);
        let headers: [(&str, Option<&[u8]>); 2] = [("ce_id", Some(b"x")), ("content-type", None)];
        dlq.push(&DeadLetter {
            partition: 3,
            offset: 17,
            kafka_timestamp_ms: Some(1_700_000_000_000),
            key: Some(b"k"),
            value: Some(&[0xff, 0x00]),
            headers: &headers,
            stage: "decode",
            reason: "payload is truncated",
        });
        assert!(dlq.buffered_bytes() > 0);
        let mut files = dlq.finish_all().unwrap();
        assert_eq!(files.len(), 1);
        assert_eq!(
            (files[0].partition, files[0].first_offset, files[0].rows),
            (3, 17, 1)
        );
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(
            files.remove(0).body.whole().unwrap(),
        ))
        .unwrap()
        .build()
        .unwrap();
        let batches: Vec<_> = reader.collect::<Result<_, _>>().unwrap();
        assert_eq!(batches[0].num_rows(), 1);
        assert_eq!(batches[0].schema(), schema());
        assert_eq!(dlq.buffered_bytes(), 0);
    }
}
