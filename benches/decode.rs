//! The hot path on one core: reference event (22 fields, ~250 bytes)
//! → CloudEvents envelope → Protobuf decode → Arrow → Parquet (zstd).
//! Target: ≥ 1 million events/s for `envelope_decode_parquet_zstd`.
//! Results are written down in DESIGN.md ("Performance").

use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::sample::{Encoded, Reference};
use sluice::schema::{Column, Decoder};

const EVENTS: usize = 100_000;

/// As in the daemon.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn benches(c: &mut Criterion) {
    let reference = Reference::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))
        .expect("reference event");
    let input = Encoded::new(&reference.sample, EVENTS);
    let mean = input.payloads.iter().map(Vec::len).sum::<usize>() / EVENTS;
    eprintln!("reference event: {mean} bytes encoded on average");

    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(10);

    group.bench_function("decode_to_arrow", |b| {
        let mut decoder = Decoder::new();
        let mut columns: Vec<Column> = reference
            .plan
            .arrow_fields()
            .iter()
            .filter_map(|f| Column::for_type(f.data_type()))
            .collect();
        b.iter(|| {
            for (i, payload) in input.payloads.iter().enumerate() {
                decoder
                    .decode(&reference.plan, payload, &mut columns)
                    .expect("valid");
                // Full batches keep their builders' room, as a busy file's do.
                if i % 8192 == 8191 {
                    columns
                        .iter_mut()
                        .for_each(|c| drop(c.finish_keeping_capacity()));
                }
            }
            columns.iter_mut().for_each(|c| drop(c.finish()));
        })
    });

    group.bench_function("envelope_decode_parquet_zstd", |b| {
        b.iter(|| {
            let mut buffers = reference.buffers(&Default::default());
            input
                .push(&mut buffers, 0..input.len())
                .expect("valid events");
            let files = buffers.finish_all().expect("encode");
            assert!(!files.is_empty());
        })
    });
    group.finish();
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
