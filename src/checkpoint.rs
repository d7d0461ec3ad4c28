//! Progress as a pure value: per partition, the offset of the last record
//! committed, and the `(from, to]` ranges that move it.
//!
//! A range may only start where the partition's progress ends; anything else
//! is a gap (records would be lost) or an overlap (records would be written
//! twice), and [`Checkpoint::try_apply`] refuses it without changing
//! anything. No I/O here, so the arithmetic is tested on its own.

use std::collections::BTreeMap;

/// Offsets `(from, to]`: every record after `from` up to and including `to`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Range {
    pub from: i64,
    pub to: i64,
}

impl Range {
    /// The offset of the first record this range can hold.
    pub fn start(&self) -> i64 {
        self.from + 1
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("partition {partition}: range ({from}, {to}] is empty or backwards")]
    Empty { partition: i32, from: i64, to: i64 },
    #[error("partition {partition}: range starts after {from} but progress is at {at}: records {gap_from}..={gap_to} would be lost", gap_from = at + 1, gap_to = from)]
    Gap { partition: i32, at: i64, from: i64 },
    #[error("partition {partition}: range starts after {from} but progress is at {at}: records {overlap_from}..={at} would be written twice", overlap_from = from + 1)]
    Overlap { partition: i32, at: i64, from: i64 },
}

/// Per partition, the offset of the last committed record. A partition
/// without an entry has no progress yet: its first range may start anywhere.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Checkpoint {
    positions: BTreeMap<i32, i64>,
}

impl Checkpoint {
    pub fn new() -> Checkpoint {
        Checkpoint::default()
    }

    /// The last committed offset of `partition`, if any.
    pub fn position(&self, partition: i32) -> Option<i64> {
        self.positions.get(&partition).copied()
    }

    /// Sets a partition's progress as read from the store.
    pub fn reset(&mut self, partition: i32, to: Option<i64>) {
        match to {
            Some(to) => self.positions.insert(partition, to),
            None => self.positions.remove(&partition),
        };
    }

    /// Forgets a partition (it was revoked).
    pub fn forget(&mut self, partition: i32) {
        self.positions.remove(&partition);
    }

    /// Whether `range` may be applied to `partition`.
    pub fn check(&self, partition: i32, range: Range) -> Result<(), CheckpointError> {
        if range.to <= range.from {
            return Err(CheckpointError::Empty {
                partition,
                from: range.from,
                to: range.to,
            });
        }
        match self.position(partition) {
            None => Ok(()),
            Some(at) if at == range.from => Ok(()),
            Some(at) if at < range.from => Err(CheckpointError::Gap {
                partition,
                at,
                from: range.from,
            }),
            Some(at) => Err(CheckpointError::Overlap {
                partition,
                at,
                from: range.from,
            }),
        }
    }

    /// Applies every range, or none if any is refused.
    pub fn try_apply(&mut self, ranges: &[(i32, Range)]) -> Result<(), CheckpointError> {
        let mut next = self.clone();
        for &(partition, range) in ranges {
            next.check(partition, range)?;
            next.positions.insert(partition, range.to);
        }
        *self = next;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(from: i64, to: i64) -> Range {
        Range { from, to }
    }

    #[test]
    fn ranges_chain() {
        let mut c = Checkpoint::new();
        c.try_apply(&[(0, r(-1, 9)), (1, r(99, 100))]).unwrap();
        c.try_apply(&[(0, r(9, 20))]).unwrap();
        assert_eq!(c.position(0), Some(20));
        assert_eq!(c.position(1), Some(100));
    }

    #[test]
    fn gaps_overlaps_and_empty_ranges_are_refused_atomically() {
        let mut c = Checkpoint::new();
        c.try_apply(&[(0, r(-1, 9))]).unwrap();
        let before = c.clone();
        assert_eq!(
            c.try_apply(&[(1, r(0, 5)), (0, r(10, 12))]),
            Err(CheckpointError::Gap {
                partition: 0,
                at: 9,
                from: 10
            })
        );
        assert_eq!(
            c.try_apply(&[(0, r(5, 12))]),
            Err(CheckpointError::Overlap {
                partition: 0,
                at: 9,
                from: 5
            })
        );
        assert!(matches!(
            c.try_apply(&[(0, r(9, 9))]),
            Err(CheckpointError::Empty { .. })
        ));
        assert_eq!(c, before, "a refused delta changes nothing");
        assert_eq!(
            CheckpointError::Gap {
                partition: 0,
                at: 9,
                from: 12
            }
            .to_string(),
            "partition 0: range starts after 12 but progress is at 9: records 10..=12 would be lost"
        );
    }

    /// Property: cutting a partition's offsets into consecutive ranges and
    /// applying them in order always succeeds and ends at the last offset;
    /// applying any range twice, or skipping one, is always refused.
    #[test]
    fn property_consecutive_ranges_and_only_those_apply() {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        let mut rand = |n: u64| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state % n
        };
        for _ in 0..500 {
            let partitions = 1 + rand(4) as i32;
            let mut cuts: Vec<Vec<Range>> = Vec::new();
            for _ in 0..partitions {
                let mut at = rand(1000) as i64 - 1;
                let mut ranges = Vec::new();
                for _ in 0..1 + rand(20) {
                    let to = at + 1 + rand(50) as i64;
                    ranges.push(r(at, to));
                    at = to;
                }
                cuts.push(ranges);
            }
            let mut c = Checkpoint::new();
            let longest = cuts.iter().map(Vec::len).max().unwrap_or(0);
            for step in 0..longest {
                let delta: Vec<(i32, Range)> = cuts
                    .iter()
                    .enumerate()
                    .filter_map(|(p, rs)| rs.get(step).map(|r| (p as i32, *r)))
                    .collect();
                c.try_apply(&delta).unwrap();
                // The same delta again overlaps.
                assert!(matches!(
                    c.try_apply(&delta),
                    Err(CheckpointError::Overlap { .. })
                ));
            }
            for (p, rs) in cuts.iter().enumerate() {
                assert_eq!(c.position(p as i32), rs.last().map(|r| r.to));
            }
            // Skipping the next range of a partition leaves a gap.
            let p = rand(partitions as u64) as i32;
            let at = c.position(p).unwrap_or(0);
            let skip = r(at + 1 + rand(5) as i64, at + 10);
            if skip.from < skip.to {
                assert!(matches!(
                    c.try_apply(&[(p, skip)]),
                    Err(CheckpointError::Gap { .. })
                ));
            }
        }
    }
}
