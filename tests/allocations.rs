//! The hot path's regression guard, without timing: heap allocations
//! counted while the reference event runs envelope → decode → Arrow →
//! Parquet (`allocation-counter` counts them, per thread). Per record,
//! nothing may allocate: a busy file's builders keep their room from one
//! batch to the next, so they rarely grow; per batch of rows encoded into
//! the file's pages, a bounded number per column.
//! A change that adds an allocation per record or per value fails here on
//! any machine, however fast.

use std::path::Path;

use sluice::buffer::{BATCH_ROWS, Buffers};
use sluice::config::ParquetConfig;
use sluice::sample::{Encoded, Reference};

fn push(buffers: &mut Buffers, events: &Encoded, range: std::ops::Range<usize>) {
    push_to(buffers, events, 0, range);
}

fn push_to(buffers: &mut Buffers, events: &Encoded, partition: i32, range: std::ops::Range<usize>) {
    events
        .push_to(buffers, partition, range)
        .expect("valid events");
}

#[test]
fn the_hot_path_allocates_per_batch_not_per_record() {
    let reference = Reference::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))
        .expect("reference event");
    // Warm-up: the file is opened, its builders and the writer's buffers
    // reach their working size. Then whole batches are measured.
    let (warm, measured) = (2 * BATCH_ROWS, 4 * BATCH_ROWS);
    let total = warm + BATCH_ROWS / 4 + measured;
    let events = Encoded::new(&reference.sample, total);
    // The sample's events fall in three hours: three files stay open.
    let mut buffers = reference.buffers(&ParquetConfig::default());
    push(&mut buffers, &events, 0..warm);

    // Record by record: almost every push allocates nothing; the few that
    // may are builders outgrowing the room of their previous batch (none
    // on the reference event; 17 of 2048 when builders started every batch
    // empty).
    let window = BATCH_ROWS / 4;
    let allocating = (warm..warm + window)
        .filter(|&i| {
            allocation_counter::measure(|| push(&mut buffers, &events, i..i + 1)).count_total > 0
        })
        .count();
    eprintln!("{allocating} of {window} records allocated");
    assert!(
        allocating * 200 <= window,
        "{allocating} of {window} records allocated: the hot path allocates per record"
    );
    let warm = warm + window;
    // Counts this thread's allocations (the crate's global allocator).
    let taken = allocation_counter::measure(|| push(&mut buffers, &events, warm..warm + measured))
        .count_total;

    let batches = (measured / BATCH_ROWS) as u64;
    let columns = buffers.schema().fields().len() as u64;
    let per_record = taken as f64 / measured as f64;
    let per_batch_per_column = taken as f64 / (batches * columns) as f64;
    eprintln!(
        "{taken} allocations for {measured} records in about {batches} batches of {columns} columns: \
         {per_record:.3} per record, {per_batch_per_column:.1} per batch and column"
    );
    assert!(
        per_record < 0.5,
        "the hot path allocates per record: {taken} allocations for {measured} records"
    );
    // 22 on the reference event with builders keeping their room, 54 when
    // they grew from empty every batch.
    assert!(
        per_batch_per_column < 32.0,
        "{per_batch_per_column:.1} allocations per batch and column: builders no longer keep \
         their room between batches?"
    );
}

/// What the memory budget counts for open files against the heap they
/// really hold (live bytes, counted by the allocator on this thread): files
/// of a few rows, files just short of their first batch, files a few
/// hundred rows past it (mostly the room their builders kept), files with
/// many batches encoded. The budget must not count much less than is held, or
/// many partitions and hour folders take the process past it.
#[test]
fn the_budget_counts_what_open_files_hold() {
    let reference = Reference::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))
        .expect("reference event");
    // Three hour folders: three open files.
    for records in [1_000, 3 * (BATCH_ROWS - 100), 15_000, 60_000] {
        let events = Encoded::new(&reference.sample, records);
        let mut buffers = reference.buffers(&ParquetConfig::default());
        let held = allocation_counter::measure(|| push(&mut buffers, &events, 0..records))
            .bytes_current as f64;
        let counted = buffers.buffered_bytes() as f64;
        eprintln!(
            "{records} records in 3 files: {:.0} KiB held, {:.0} KiB counted",
            held / 1024.0,
            counted / 1024.0
        );
        assert!(
            held <= counted * 1.25,
            "{records} records: open files hold {held} bytes, the budget counts {counted}"
        );
    }
}

/// Files the budget must count beyond their rows: many small open files
/// (many partitions × hour folders), each holding its builders' first room
/// and its writer's state whatever its rows; and files whose row groups
/// memory pressure closed early, each keeping every closed row group's
/// metadata until its footer, and its encoded bytes in a buffer grown by
/// doubling. Counted too little, thousands of small files or hundreds of
/// small row groups take the process past its budget; counted much too
/// much, files are sealed needlessly small.
#[test]
fn the_budget_counts_small_files_and_closed_row_groups() {
    let reference = Reference::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas"))
        .expect("reference event");
    let check = |what: &str, held: f64, counted: f64| {
        eprintln!(
            "{what}: {:.0} KiB held, {:.0} KiB counted",
            held / 1024.0,
            counted / 1024.0
        );
        assert!(
            held <= counted * 1.25,
            "{what}: open files hold {held} bytes, the budget counts {counted}"
        );
        assert!(
            counted <= held * 1.5,
            "{what}: the budget counts {counted} bytes, open files hold {held}"
        );
    };
    // 64 partitions: 64 files of one row, 192 (three hours) of 10 and 100.
    for rows in [1, 30, 300] {
        let events = Encoded::new(&reference.sample, rows);
        let mut buffers = reference.buffers(&ParquetConfig::default());
        let held = allocation_counter::measure(|| {
            for partition in 0..64 {
                push_to(&mut buffers, &events, partition, 0..rows);
            }
        })
        .bytes_current as f64;
        let what = format!("64 partitions of {rows} records");
        check(&what, held, buffers.buffered_bytes() as f64);
    }
    // Row groups closed every 2,000 records, as memory pressure would.
    let records = 60_000;
    let events = Encoded::new(&reference.sample, records);
    let mut buffers = reference.buffers(&ParquetConfig::default());
    let mut closed = 0;
    let held = allocation_counter::measure(|| {
        for start in (0..records).step_by(2_000) {
            push_to(&mut buffers, &events, 0, start..start + 2_000);
            closed += buffers.compact(0).expect("compacted");
        }
    })
    .bytes_current as f64;
    assert!(closed >= 30, "{closed} row groups closed");
    let what = format!("{records} records in 3 files, {closed} row groups closed early");
    check(&what, held, buffers.buffered_bytes() as f64);
}
