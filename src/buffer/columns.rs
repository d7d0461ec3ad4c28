//! The columns of a file: the payload's, then the envelope columns sluice
//! adds to every row.

use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

use crate::schema::{MessagePlan, UTC};

/// Envelope columns whose values are (nearly) unique per row.
pub const UNIQUE_COLUMNS: [&str; 4] = [
    "_event_id",
    "_event_time",
    "_kafka_offset",
    "_kafka_timestamp",
];

/// The columns sluice adds to every row, after the payload's.
fn envelope_fields() -> [Field; 7] {
    let ts = DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into()));
    [
        Field::new("_event_id", DataType::Utf8, true),
        Field::new("_event_time", ts.clone(), false),
        Field::new("_source", DataType::Utf8, true),
        Field::new("_kafka_partition", DataType::Int32, false),
        Field::new("_kafka_offset", DataType::Int64, false),
        Field::new("_kafka_timestamp", ts, true),
        Field::new("_extensions", DataType::Utf8, true),
    ]
}

/// Parquet leaf columns under each column of `schema`: one for a scalar,
/// those of its children for a struct, list or map.
pub(super) fn leaf_counts(schema: &SchemaRef) -> Vec<usize> {
    fn leaves(data_type: &DataType) -> usize {
        match data_type {
            DataType::Struct(fields) => fields.iter().map(|f| leaves(f.data_type())).sum(),
            DataType::List(field) | DataType::LargeList(field) | DataType::Map(field, _) => {
                leaves(field.data_type())
            }
            _ => 1,
        }
    }
    schema
        .fields()
        .iter()
        .map(|f| leaves(f.data_type()))
        .collect()
}

/// The payload's columns, then the envelope's.
pub fn table_schema(plan: &MessagePlan) -> SchemaRef {
    let mut fields: Vec<Field> = plan.arrow_fields().iter().map(|f| (**f).clone()).collect();
    fields.extend(envelope_fields());
    Arc::new(Schema::new(fields))
}
