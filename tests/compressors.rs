//! What the memory budget counts for open files whose columns have closed
//! pages, against the memory the process really gains: parquet-rs keeps a
//! zstd context per column from its first compressed page, allocated in C
//! where the writer's own accounting and `tests/allocations.rs` do not see
//! it. Its own test binary, so nothing else runs in the process while its
//! resident size is read.

use std::path::Path;

use sluice::buffer::Buffers;
use sluice::config::ParquetConfig;
use sluice::sample::{Encoded, Reference};

fn resident_bytes() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: usize = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    kib * 1024
}

#[test]
fn the_budget_counts_the_compressors_of_open_files() {
    let reference = Reference::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))
        .expect("reference event");
    // 24 open files (eight buffers of three hour folders) of ~25,000 rows:
    // every column has closed its first page (at 20,000 rows).
    let records = 75_000;
    let events = Encoded::new(&reference.sample, records);
    let config = ParquetConfig::default();
    let before = resident_bytes();
    let buffers: Vec<Buffers> = (0..8)
        .map(|_| {
            let mut buffers = reference.buffers(&config);
            events.push(&mut buffers, 0..records).expect("valid events");
            buffers
        })
        .collect();
    let gained = resident_bytes().saturating_sub(before) as f64;
    let counted = buffers.iter().map(Buffers::buffered_bytes).sum::<usize>() as f64;
    eprintln!(
        "24 files of ~25,000 rows: resident size grew {:.0} MiB, the budget counts {:.0} MiB",
        gained / (1 << 20) as f64,
        counted / (1 << 20) as f64
    );
    assert!(
        gained <= counted * 1.25,
        "open files hold {gained} bytes, the budget counts {counted}"
    );
    // Counting too much seals files early, and small files cost loaders:
    // dictionary columns are counted as if their pages held the values,
    // not the small indexes they do (1.4 times what the process gains).
    assert!(
        counted <= gained * 2.0,
        "the budget counts {counted} bytes for open files that hold {gained}"
    );
}
