//! Parquet encoding of buffered rows.
//!
//! One [`FileWriter`] per output file. Record batches are encoded into
//! compressed pages as they arrive, so what a file holds in memory is close
//! to its size on S3, not its size as Arrow arrays. This module owns the
//! writer settings; it never uploads.

use arrow::array::RecordBatch;
use arrow::datatypes::{Schema, SchemaRef};
use parquet::arrow::{ArrowSchemaConverter, ArrowWriter};
use parquet::basic::{Compression, GzipLevel, Type as PhysicalType, ZstdLevel};
use parquet::errors::ParquetError;
use parquet::file::metadata::KeyValue;
use parquet::file::properties::{EnabledStatistics, WriterProperties, WriterVersion};
use parquet::schema::types::ColumnPath;

use crate::config::{Codec, Dictionary, ParquetConfig, ParquetVersion, Statistics};

/// zstd 1 writes files as small as level 3 for this kind of data with the
/// dictionary policy below, in less time (`cargo bench --bench encode`).
const ZSTD_LEVEL: u64 = 1;
const GZIP_LEVEL: u64 = 6;

/// A dictionary that grows past this falls back to plain encoding: values
/// that rarely repeat stop being hashed early, values that do repeat stay
/// far below it.
const DICTIONARY_PAGE_BYTES: usize = 128 * 1024;

/// A data page closes at this many rows (parquet-rs's default, set here so
/// the memory estimate below can rely on it), or at `data_page_bytes`.
pub const PAGE_ROWS: usize = 20_000;

#[derive(Debug, thiserror::Error)]
#[error("cannot encode Parquet: {0}")]
pub struct WriteError(#[from] ParquetError);

/// Writer settings from the sink's `[parquet]` section (validated there)
/// for files of `schema`. Dictionary encoding is always off for
/// `unique_columns`, whose values (ids, offsets, times) rarely repeat: a
/// dictionary there costs a hash per value and falls back to plain
/// encoding anyway. With [`Dictionary::Auto`] it is on for byte-array
/// columns only: repeated strings (cities, currencies, enum names) shrink
/// to small indexes, while numbers and times compress as well or better
/// plain and skip the hashing.
pub fn properties(
    config: &ParquetConfig,
    schema: &Schema,
    unique_columns: &[&str],
) -> WriterProperties {
    let level = |default| u32::try_from(config.compression_level.unwrap_or(default)).unwrap_or(0);
    let compression = match config.compression {
        Codec::Zstd => Compression::ZSTD(
            ZstdLevel::try_new(i32::try_from(level(ZSTD_LEVEL)).unwrap_or(3)).unwrap_or_default(),
        ),
        Codec::Gzip => Compression::GZIP(GzipLevel::try_new(level(GZIP_LEVEL)).unwrap_or_default()),
        Codec::Snappy => Compression::SNAPPY,
        Codec::Lz4 => Compression::LZ4_RAW,
        Codec::None => Compression::UNCOMPRESSED,
    };
    let mut builder = WriterProperties::builder()
        .set_writer_version(match config.writer_version {
            ParquetVersion::V1 => WriterVersion::PARQUET_1_0,
            ParquetVersion::V2 => WriterVersion::PARQUET_2_0,
        })
        .set_compression(compression)
        .set_max_row_group_row_count(Some(config.row_group_rows))
        .set_data_page_size_limit(usize::try_from(config.data_page_bytes).unwrap_or(usize::MAX))
        .set_dictionary_enabled(config.dictionary == Dictionary::All)
        .set_statistics_enabled(match config.statistics {
            Statistics::None => EnabledStatistics::None,
            Statistics::Chunk => EnabledStatistics::Chunk,
            Statistics::Page => EnabledStatistics::Page,
        })
        .set_dictionary_page_size_limit(DICTIONARY_PAGE_BYTES)
        .set_data_page_row_count_limit(PAGE_ROWS)
        .set_created_by(format!("sluice version {}", env!("CARGO_PKG_VERSION")));
    if config.dictionary == Dictionary::Auto
        && let Ok(leaves) = ArrowSchemaConverter::new().convert(schema)
    {
        for leaf in leaves.columns() {
            let byte_array = matches!(
                leaf.physical_type(),
                PhysicalType::BYTE_ARRAY | PhysicalType::FIXED_LEN_BYTE_ARRAY
            );
            builder = builder.set_column_dictionary_enabled(leaf.path().clone(), byte_array);
        }
    }
    for column in unique_columns {
        builder = builder.set_column_dictionary_enabled(ColumnPath::from(*column), false);
    }
    for column in &config.bloom_filters {
        builder = builder.set_column_bloom_filter_enabled(ColumnPath::from(column.as_str()), true);
    }
    builder.build()
}

/// What a column's compressor holds, outside the writer's own accounting,
/// from the column's first compressed page until its row group closes.
/// parquet-rs gives each column writer its own zstd context, whose
/// workspace (allocated in C) follows the level and the page's size: at
/// level 1, ~120 KiB after an 8 KiB page, ~570 KiB after 160 KiB or more;
/// at level 9, ~10 MiB; at level 19, ~17 MiB after a 1 MiB page. The other
/// codecs keep nothing between pages worth counting.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressorMemory {
    /// (page bytes up to, context bytes), by increasing page size.
    steps: Vec<(usize, usize)>,
}

impl CompressorMemory {
    /// Measured once with this build's zstd for the configured level and
    /// pages of up to `data_page_bytes` (pages past 16 MiB are counted as
    /// 16 MiB ones; at level 19 a context is ~17 MiB after a 1 MiB page,
    /// ~80 MiB after 8 MiB). Zeros compress in milliseconds at any level.
    pub fn measure(config: &ParquetConfig) -> CompressorMemory {
        let Codec::Zstd = config.compression else {
            return CompressorMemory { steps: Vec::new() };
        };
        let level = i32::try_from(config.compression_level.unwrap_or(ZSTD_LEVEL)).unwrap_or(1);
        let largest = usize::try_from(config.data_page_bytes)
            .unwrap_or(usize::MAX)
            .min(16 << 20);
        // Powers of two from 8 KiB, then the largest page.
        let mut sizes: Vec<usize> = (13..24)
            .map(|shift| 1 << shift)
            .filter(|&size| size < largest)
            .collect();
        sizes.push(largest);
        CompressorMemory {
            steps: sizes
                .into_iter()
                .map(|size| (size, zstd_context_bytes(level, size)))
                .collect(),
        }
    }

    /// Bytes held by the compressor of a column whose page held `bytes`
    /// before compression (a page closes at `data_page_bytes` at most).
    pub fn after_page(&self, bytes: usize) -> usize {
        self.steps
            .iter()
            .find(|&&(size, _)| bytes <= size)
            .or(self.steps.last())
            .map_or(0, |&(_, context)| context)
    }
}

/// The size of a zstd compression context after compressing `input` bytes
/// at `level`: its parameters, and so its workspace, follow both.
fn zstd_context_bytes(level: i32, input: usize) -> usize {
    use zstd::zstd_safe::{CCtx, CParameter, compress_bound};
    let mut context = CCtx::create();
    if context
        .set_parameter(CParameter::CompressionLevel(level))
        .is_err()
    {
        return 0;
    }
    let source = vec![0u8; input];
    let mut compressed = vec![0u8; compress_bound(input)];
    // Zeros compress fast at every level; the workspace depends on the
    // parameters, not on the bytes.
    let _ = context.compress2(&mut compressed[..], &source);
    context.sizeof()
}

/// One Parquet file being written into memory.
#[derive(Debug)]
pub struct FileWriter {
    inner: ArrowWriter<Vec<u8>>,
}

impl FileWriter {
    pub fn new(schema: SchemaRef, properties: WriterProperties) -> Result<FileWriter, WriteError> {
        Ok(FileWriter {
            inner: ArrowWriter::try_new(Vec::new(), schema, Some(properties))?,
        })
    }

    pub fn write(&mut self, batch: &RecordBatch) -> Result<(), WriteError> {
        Ok(self.inner.write(batch)?)
    }

    /// Closes the open row group: its pages are compressed into the file
    /// and its column writers, compressors included, dropped.
    pub fn close_row_group(&mut self) -> Result<(), WriteError> {
        Ok(self.inner.flush()?)
    }

    /// Bytes the open row group holds (pages, encoders, dictionaries).
    pub fn open_row_group_bytes(&self) -> usize {
        self.inner.memory_size()
    }

    /// Row groups closed so far: their metadata is held until the footer.
    pub fn closed_row_groups(&self) -> usize {
        self.inner.flushed_row_groups().len()
    }

    /// Rows in the open row group (0 once it closed).
    pub fn in_progress_rows(&self) -> usize {
        self.inner.in_progress_rows()
    }

    /// Bytes held: the buffer of encoded row groups not yet taken (its
    /// capacity: it grows by doubling) plus the open row group's pages.
    pub fn memory_size(&self) -> usize {
        self.inner.inner().capacity() + self.inner.memory_size()
    }

    /// Whether the file has reached `limit` bytes. The open row group's
    /// size is only an estimate before compression (about twice the real
    /// size here), so when the estimate says yes the row group is closed
    /// and its real size decides.
    pub fn reached(&mut self, limit: usize) -> Result<bool, WriteError> {
        if self.inner.bytes_written() + self.inner.in_progress_size() < limit {
            return Ok(false);
        }
        self.inner.flush()?;
        Ok(self.inner.bytes_written() >= limit)
    }

    /// Closes the open row group once its pages hold `max` bytes or more
    /// (before compression), so one file's unflushed pages stay bounded
    /// whatever `row_group_rows` says.
    pub fn bound_row_group(&mut self, max: usize) -> Result<(), WriteError> {
        if self.inner.in_progress_size() >= max {
            self.close_row_group()?;
        }
        Ok(())
    }

    /// The encoded bytes not yet handed out, once there are at least `min`
    /// of them: the next stretch of the file, for a streamed upload. The
    /// writer counts offsets itself, so the rest of the file follows on.
    pub fn take_encoded(&mut self, min: usize) -> Option<Vec<u8>> {
        (self.inner.inner().len() >= min).then(|| std::mem::take(self.inner.inner_mut()))
    }

    /// Finishes the file with `metadata` in its footer and returns its bytes
    /// (those after the last [`Self::take_encoded`]).
    pub fn close(mut self, metadata: &[(&str, String)]) -> Result<Vec<u8>, WriteError> {
        for (key, value) in metadata {
            self.inner
                .append_key_value_metadata(KeyValue::new((*key).to_owned(), value.clone()));
        }
        Ok(self.inner.into_inner()?)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{Array, AsArray, DurationMicrosecondArray, RecordBatch};
    use arrow::datatypes::{DataType, DurationMicrosecondType, Field, Schema, TimeUnit};
    use bytes::Bytes;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    use super::*;

    #[test]
    fn compressor_memory_follows_codec_level_and_page_size() {
        let zstd = |level| {
            CompressorMemory::measure(&ParquetConfig {
                compression_level: Some(level),
                ..ParquetConfig::default()
            })
        };
        let (one, nine) = (zstd(1), zstd(9));
        // Level 1 after a full page: ~570 KiB with zstd 1.5.
        let full = one.after_page(usize::MAX);
        assert!((256 << 10..2 << 20).contains(&full), "{full}");
        assert!(one.after_page(8 << 10) < full);
        assert!(nine.after_page(1 << 20) > full);
        let none = CompressorMemory::measure(&ParquetConfig {
            compression: Codec::Snappy,
            ..ParquetConfig::default()
        });
        assert_eq!(none.after_page(1 << 20), 0);
    }

    /// A file handed out in stretches while written reads back whole.
    #[test]
    fn taken_stretches_and_the_rest_make_the_file() {
        let schema = Arc::new(Schema::new(vec![Field::new("v", DataType::Int64, false)]));
        let config = ParquetConfig {
            compression: Codec::None,
            ..ParquetConfig::default()
        };
        let mut writer =
            FileWriter::new(schema.clone(), properties(&config, &schema, &[])).unwrap();
        let mut file = Vec::new();
        for chunk in 0..20i64 {
            let values =
                arrow::array::Int64Array::from_iter_values(chunk * 10_000..(chunk + 1) * 10_000);
            let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(values)]).unwrap();
            writer.write(&batch).unwrap();
            writer.bound_row_group(32 * 1024).unwrap();
            if let Some(part) = writer.take_encoded(64 * 1024) {
                file.extend(part);
            }
        }
        assert!(
            file.len() > 1_000_000,
            "stretches were taken: {}",
            file.len()
        );
        file.extend(writer.close(&[]).unwrap());
        let reader = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(file)).unwrap();
        assert!(reader.metadata().num_row_groups() >= 20);
        let mut expected = 0i64;
        for batch in reader.build().unwrap() {
            let batch = batch.unwrap();
            for v in batch
                .column(0)
                .as_primitive::<arrow::datatypes::Int64Type>()
                .values()
            {
                assert_eq!(*v, expected);
                expected += 1;
            }
        }
        assert_eq!(expected, 200_000);
    }

    #[test]
    fn durations_and_footer_metadata_round_trip() {
        let schema = Arc::new(Schema::new(vec![Field::new(
            "d",
            DataType::Duration(TimeUnit::Microsecond),
            true,
        )]));
        let column = DurationMicrosecondArray::from(vec![Some(90_500_000), None]);
        let batch = RecordBatch::try_new(schema.clone(), vec![Arc::new(column)]).unwrap();
        let mut writer = FileWriter::new(
            schema.clone(),
            properties(&ParquetConfig::default(), &schema, &["d"]),
        )
        .unwrap();
        writer.write(&batch).unwrap();
        let bytes = writer.close(&[("sluice.event", "e".to_owned())]).unwrap();
        let builder = ParquetRecordBatchReaderBuilder::try_new(Bytes::from(bytes)).unwrap();
        let footer = builder
            .metadata()
            .file_metadata()
            .key_value_metadata()
            .unwrap()
            .clone();
        assert!(
            footer
                .iter()
                .any(|kv| kv.key == "sluice.event" && kv.value.as_deref() == Some("e"))
        );
        let read: Vec<_> = builder.build().unwrap().collect::<Result<_, _>>().unwrap();
        let d = read[0].column(0).as_primitive::<DurationMicrosecondType>();
        assert_eq!(d.value(0), 90_500_000);
        assert!(d.is_null(1));
    }
}
