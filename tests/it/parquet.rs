//! Every `[parquet]` option combination, written by sluice's buffers and
//! writer, read back by pyarrow (an independent reader) with the settings
//! checked in each file's metadata.

use std::collections::HashMap;
use std::sync::Arc;

use sluice::buffer::{Buffers, Record};
use sluice::config::{Codec, Dictionary, ParquetConfig, ParquetVersion, Statistics};
use sluice::envelope::Envelope;
use sluice::schema::{LocalRegistry, MessagePlan};

use crate::support;

const ROWS: u64 = 2000;

#[test]
fn pyarrow_reads_every_codec_and_option_combination() {
    let registry = LocalRegistry::open(&support::schemas_dir()).unwrap();
    let descriptor = registry.message("sluice.examples.OrderPlaced").unwrap();
    let plan = Arc::new(MessagePlan::new(&descriptor, 3).unwrap());
    let sample = support::reference_sample();
    let expected_cents: i64 = (0..ROWS).map(|seq| sample.fields(seq).total_cents).sum();
    let dir = tempfile::tempdir().unwrap();

    let codecs = [
        (Codec::Zstd, None, "ZSTD"),
        (Codec::Zstd, Some(9), "ZSTD"),
        (Codec::Snappy, None, "SNAPPY"),
        // pyarrow names LZ4_RAW (the framing Parquet specifies today) "LZ4".
        (Codec::Lz4, None, "LZ4"),
        (Codec::Gzip, Some(9), "GZIP"),
        (Codec::None, None, "UNCOMPRESSED"),
    ];
    let mut expected = HashMap::new();
    for (codec, level, codec_name) in codecs {
        // Which of a string column and a number column get a dictionary.
        for (dictionary, on_strings, on_numbers) in [
            (Dictionary::Auto, true, false),
            (Dictionary::All, true, true),
            (Dictionary::None, false, false),
        ] {
            for statistics in [Statistics::None, Statistics::Chunk, Statistics::Page] {
                for version in [ParquetVersion::V1, ParquetVersion::V2] {
                    let config = ParquetConfig {
                        compression: codec,
                        compression_level: level,
                        row_group_rows: 1000,
                        data_page_bytes: 4096,
                        dictionary,
                        statistics,
                        bloom_filters: if on_strings {
                            vec!["order_id".into()]
                        } else {
                            vec![]
                        },
                        writer_version: version,
                    };
                    let name = format!(
                        "{}-{level:?}-{dictionary:?}-{statistics:?}-{version:?}.parquet",
                        codec.name()
                    );
                    let mut buffers =
                        Buffers::new(descriptor.clone(), plan.clone(), &config, vec![]);
                    for seq in 0..ROWS {
                        let headers = sample.headers(seq);
                        let envelope = Envelope::parse(
                            headers.iter().map(|(k, v)| (*k, Some(v.as_bytes()))),
                            None,
                            "baggage",
                        )
                        .unwrap();
                        let payload = sample.encode(seq);
                        let record = Record {
                            partition: 0,
                            offset: seq as i64,
                            kafka_timestamp_ms: None,
                            // One file: every row in the same hour.
                            envelope: Envelope {
                                time_micros: 1_767_225_600_000_000,
                                ..envelope
                            },
                            payload: &payload,
                            route: 0,
                        };
                        buffers.push(&record).unwrap();
                    }
                    let mut files = buffers.finish_all().unwrap();
                    assert_eq!(files.len(), 1);
                    std::fs::write(
                        dir.path().join(&name),
                        files.remove(0).body.whole().unwrap(),
                    )
                    .unwrap();
                    expected.insert(
                        name,
                        serde_json::json!({
                            "rows": ROWS,
                            "row_groups": ROWS.div_ceil(1000),
                            "codec": codec_name,
                            "format_version": match version {
                                ParquetVersion::V1 => "1.0",
                                ParquetVersion::V2 => "2.6",
                            },
                            "statistics": statistics != Statistics::None,
                            "dictionary": on_strings,
                            "number_dictionary": on_numbers,
                            "page_index": statistics == Statistics::Page,
                            "bloom": on_strings,
                            "total_cents": expected_cents,
                        }),
                    );
                }
            }
        }
    }
    let seen = support::python_json("parquet_facts.py", &[dir.path()]);
    let seen: HashMap<String, serde_json::Value> = serde_json::from_value(seen).unwrap();
    assert_eq!(seen.len(), expected.len());
    for (name, facts) in &expected {
        assert_eq!(&seen[name], facts, "{name}");
    }
}
