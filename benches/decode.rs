//! The hot path on one core: reference event (22 fields, ~250 bytes)
//! → CloudEvents envelope → Protobuf decode → Arrow → Parquet (zstd).
//! Target: ≥ 1 million events/s for `envelope_decode_parquet_zstd`.
//! Results are written down in DESIGN.md ("Performance").

use std::path::Path;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use sluice::buffer::{Buffers, Record};
use sluice::envelope::Envelope;
use sluice::sample::OrderSample;
use sluice::schema::{Column, Decoder, LocalRegistry, MessagePlan};

const EVENTS: usize = 100_000;

/// As in the daemon.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

struct Input {
    payloads: Vec<Vec<u8>>,
    headers: Vec<Vec<(&'static str, Vec<u8>)>>,
}

fn input(sample: &OrderSample) -> Input {
    let payloads = (0..EVENTS as u64).map(|s| sample.encode(s)).collect();
    let headers = (0..EVENTS as u64)
        .map(|s| {
            sample
                .headers(s)
                .into_iter()
                .map(|(k, v)| (k, v.into_bytes()))
                .collect()
        })
        .collect();
    Input { payloads, headers }
}

fn benches(c: &mut Criterion) {
    let registry = LocalRegistry::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))
        .expect("schemas compile");
    let descriptor = registry
        .message("sluice.examples.OrderPlaced")
        .expect("reference event");
    let sample = OrderSample::new(&descriptor).expect("reference event");
    let plan = Arc::new(MessagePlan::new(&descriptor, 3).expect("plan"));
    let input = input(&sample);
    let mean = input.payloads.iter().map(Vec::len).sum::<usize>() / EVENTS;
    eprintln!("reference event: {mean} bytes encoded on average");

    let mut group = c.benchmark_group("hot_path");
    group.throughput(Throughput::Elements(EVENTS as u64));
    group.sample_size(10);

    group.bench_function("decode_to_arrow", |b| {
        let mut decoder = Decoder::new();
        let mut columns: Vec<Column> = plan
            .arrow_fields()
            .iter()
            .filter_map(|f| Column::for_type(f.data_type()))
            .collect();
        b.iter(|| {
            for (i, payload) in input.payloads.iter().enumerate() {
                decoder.decode(&plan, payload, &mut columns).expect("valid");
                if i % 8192 == 8191 {
                    columns.iter_mut().for_each(|c| drop(c.finish()));
                }
            }
            columns.iter_mut().for_each(|c| drop(c.finish()));
        })
    });

    group.bench_function("envelope_decode_parquet_zstd", |b| {
        b.iter(|| {
            let mut buffers = Buffers::new(
                descriptor.clone(),
                plan.clone(),
                &Default::default(),
                Vec::new(),
            );
            for (i, (payload, headers)) in input.payloads.iter().zip(&input.headers).enumerate() {
                let envelope = Envelope::parse(
                    headers.iter().map(|(k, v)| (*k, Some(v.as_slice()))),
                    Some(1_767_225_600_000),
                    "baggage",
                )
                .expect("valid envelope");
                let record = Record {
                    partition: 0,
                    offset: i as i64,
                    kafka_timestamp_ms: Some(1_767_225_600_000),
                    envelope,
                    payload,
                    route: 0,
                };
                buffers.push(&record).expect("valid record");
            }
            let files = buffers.finish_all().expect("encode");
            assert!(!files.is_empty());
        })
    });
    group.finish();
}

criterion_group!(hot_path, benches);
criterion_main!(hot_path);
