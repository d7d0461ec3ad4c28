//! Writer settings on the reference event: envelope → decode → Arrow →
//! Parquet for each codec × level × dictionary policy (and, at the
//! defaults, v2 pages and no statistics), reporting records/s
//! (criterion) **and** bytes per row of output (printed once per setting),
//! so the size a setting costs sits next to its speed. DESIGN.md
//! ("Performance") has the figures and the defaults chosen from them.
//!
//! cargo bench --bench encode [-- <filter>]

use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::config::{Codec, Dictionary, ParquetConfig, ParquetVersion, Statistics};
use sluice::sample::{Encoded, Reference};

const EVENTS: usize = 100_000;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn config(codec: Codec, level: Option<u64>, dictionary: Dictionary) -> ParquetConfig {
    ParquetConfig {
        compression: codec,
        compression_level: level,
        dictionary,
        ..ParquetConfig::default()
    }
}

/// Runs the events through fresh buffers; returns bytes of output.
fn write_all(input: &Encoded, reference: &Reference, parquet: &ParquetConfig) -> u64 {
    let mut buffers = reference.buffers(parquet);
    input
        .push(&mut buffers, 0..input.len())
        .expect("valid events");
    let files = buffers.finish_all().expect("encode");
    files.iter().map(|f| f.body.size()).sum()
}

fn benches(c: &mut Criterion) {
    let reference = Reference::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))
        .expect("reference event");
    let input = Encoded::new(&reference.sample, EVENTS);

    let mut group = c.benchmark_group("writer_settings");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(10);
    let codecs = [
        ("zstd3", Codec::Zstd, Some(3)),
        ("zstd1", Codec::Zstd, Some(1)),
        ("lz4", Codec::Lz4, None),
        ("snappy", Codec::Snappy, None),
        ("none", Codec::None, None),
    ];
    let dictionaries = [
        ("dict_auto", Dictionary::Auto),
        ("dict_all", Dictionary::All),
        ("dict_none", Dictionary::None),
    ];
    let mut settings = Vec::new();
    for (codec_name, codec, level) in codecs {
        for (dict_name, dictionary) in dictionaries {
            settings.push((
                format!("{codec_name}/{dict_name}"),
                config(codec, level, dictionary),
            ));
        }
    }
    // The other two axes, next to the defaults (zstd 1, dictionary auto):
    // v2 data pages (delta encodings for integers and for strings without a
    // dictionary) and no min/max statistics.
    let defaults = config(Codec::Zstd, Some(1), Dictionary::Auto);
    settings.push((
        "zstd1/dict_auto/v2".to_owned(),
        ParquetConfig {
            writer_version: ParquetVersion::V2,
            ..defaults.clone()
        },
    ));
    settings.push((
        "zstd1/dict_auto/no_statistics".to_owned(),
        ParquetConfig {
            statistics: Statistics::None,
            ..defaults
        },
    ));
    for (name, parquet) in &settings {
        let bytes = write_all(&input, &reference, parquet);
        eprintln!("{name}: {:.1} bytes per row", bytes as f64 / EVENTS as f64);
        group.bench_function(name, |b| b.iter(|| write_all(&input, &reference, parquet)));
    }
    group.finish();
}

criterion_group!(encode, benches);
criterion_main!(encode);
