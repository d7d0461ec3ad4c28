//! The warehouse side of a sink, as SQL: a table whose columns match the
//! Parquet files, and how files get into it — Snowflake (stage + pipe with
//! `AUTO_INGEST`) or DuckDB (`read_parquet` over the files' folder).

use arrow::datatypes::{DataType, Field, Schema};

/// Which warehouse the SQL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Dialect {
    Snowflake,
    Duckdb,
}

/// Where the files are and what to call things.
#[derive(Debug, Clone)]
pub struct Target<'a> {
    pub table: &'a str,
    /// The folder holding the event's data files, ending in `/`: an
    /// `s3://bucket/prefix/event/` URL or a local directory.
    pub location: &'a str,
    /// Snowflake: the storage integration the stage uses.
    pub storage_integration: &'a str,
}

/// The statements, separated by blank lines.
pub fn render(dialect: Dialect, schema: &Schema, target: &Target<'_>) -> String {
    match dialect {
        Dialect::Snowflake => snowflake(schema, target),
        Dialect::Duckdb => duckdb(schema, target),
    }
}

fn columns(
    schema: &Schema,
    name: impl Fn(&str) -> String,
    ty: impl Fn(&DataType) -> String,
) -> String {
    schema
        .fields()
        .iter()
        .map(|f| {
            let null = if f.is_nullable() { "" } else { " NOT NULL" };
            format!("  {} {}{null}", name(f.name()), ty(f.data_type()))
        })
        .collect::<Vec<_>>()
        .join(",\n")
}

/// Quoted upper case: what an unquoted name means in Snowflake, safe for
/// reserved words.
fn snowflake_name(name: &str) -> String {
    format!("\"{}\"", name.to_uppercase().replace('"', "\"\""))
}

fn snowflake_type(ty: &DataType) -> String {
    match ty {
        DataType::Utf8 => "VARCHAR".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int32 | DataType::Int64 | DataType::UInt32 => "NUMBER(19,0)".into(),
        DataType::UInt64 => "NUMBER(20,0)".into(),
        DataType::Float32 | DataType::Float64 => "FLOAT".into(),
        DataType::Binary => "BINARY".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMP_TZ(6)".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP_NTZ(6)".into(),
        // Microseconds, as the files store them.
        DataType::Duration(_) => "NUMBER(19,0)".into(),
        DataType::Struct(_) => "OBJECT".into(),
        DataType::List(_) => "ARRAY".into(),
        _ => "VARIANT".into(),
    }
}

fn snowflake(schema: &Schema, target: &Target<'_>) -> String {
    let table = snowflake_name(target.table);
    let stage = snowflake_name(&format!("{}_stage", target.table));
    let pipe = snowflake_name(&format!("{}_pipe", target.table));
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n{columns}\n);\n\n\
         CREATE STAGE IF NOT EXISTS {stage}\n  URL = '{location}'\n  \
         STORAGE_INTEGRATION = {integration}\n  FILE_FORMAT = (TYPE = PARQUET);\n\n\
         -- AUTO_INGEST reads the bucket's event notifications: point those of the\n\
         -- stage's URL at the pipe's notification_channel (SHOW PIPES), and set\n\
         -- storage.bucket_notifications so only committed files appear there.\n\
         CREATE PIPE IF NOT EXISTS {pipe}\n  AUTO_INGEST = TRUE\n  AS COPY INTO {table}\n  \
         FROM @{stage}\n  FILE_FORMAT = (TYPE = PARQUET)\n  MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE;\n",
        columns = columns(schema, snowflake_name, snowflake_type),
        location = target.location.replace('\'', "''"),
        integration = target.storage_integration,
    )
}

fn duckdb_name(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

fn duckdb_type(ty: &DataType) -> String {
    match ty {
        DataType::Utf8 => "VARCHAR".into(),
        DataType::Boolean => "BOOLEAN".into(),
        DataType::Int32 => "INTEGER".into(),
        DataType::Int64 => "BIGINT".into(),
        DataType::UInt32 => "UINTEGER".into(),
        DataType::UInt64 => "UBIGINT".into(),
        DataType::Float32 => "FLOAT".into(),
        DataType::Float64 => "DOUBLE".into(),
        DataType::Binary => "BLOB".into(),
        DataType::Timestamp(_, Some(_)) => "TIMESTAMPTZ".into(),
        DataType::Timestamp(_, None) => "TIMESTAMP".into(),
        // Microseconds, as the files store them.
        DataType::Duration(_) => "BIGINT".into(),
        DataType::Struct(fields) => format!(
            "STRUCT({})",
            fields
                .iter()
                .map(|f| format!("{} {}", duckdb_name(f.name()), duckdb_type(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        DataType::List(item) => format!("{}[]", duckdb_type(item.data_type())),
        DataType::Map(entries, _) => match entries.data_type() {
            DataType::Struct(kv) if kv.len() == 2 => format!(
                "MAP({}, {})",
                duckdb_type(kv[0].data_type()),
                duckdb_type(kv[1].data_type())
            ),
            _ => "JSON".into(),
        },
        _ => "VARCHAR".into(),
    }
}

fn duckdb(schema: &Schema, target: &Target<'_>) -> String {
    let table = duckdb_name(target.table);
    let names: Vec<String> = schema
        .fields()
        .iter()
        .map(|f: &std::sync::Arc<Field>| duckdb_name(f.name()))
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS {table} (\n{columns}\n);\n\n\
         -- Every file under the event's folder. Files of checkpoints that never\n\
         -- committed match too: run `sluice gc --delete` first, or load the keys\n\
         -- the manifests list.\n\
         INSERT INTO {table} ({list})\n  SELECT {list}\n  \
         FROM read_parquet('{location}**/*.parquet', hive_partitioning = false);\n",
        columns = columns(schema, duckdb_name, duckdb_type),
        list = names.join(", "),
        location = target.location.replace('\'', "''"),
    )
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::datatypes::{Fields, TimeUnit};

    use super::*;

    fn schema() -> Schema {
        let kv = Fields::from(vec![
            Field::new("key", DataType::Utf8, false),
            Field::new("value", DataType::Int64, true),
        ]);
        Schema::new(vec![
            Field::new("order_id", DataType::Utf8, true),
            Field::new(
                "tags",
                DataType::List(Arc::new(Field::new("item", DataType::Utf8, true))),
                false,
            ),
            Field::new(
                "attrs",
                DataType::Map(
                    Arc::new(Field::new("entries", DataType::Struct(kv), false)),
                    false,
                ),
                false,
            ),
            Field::new(
                "_event_time",
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                false,
            ),
        ])
    }

    #[test]
    fn snowflake_table_stage_and_pipe() {
        let sql = render(
            Dialect::Snowflake,
            &schema(),
            &Target {
                table: "order_placed",
                location: "s3://bkt/raw/order_placed/",
                storage_integration: "sluice_s3",
            },
        );
        assert!(sql.contains("CREATE TABLE IF NOT EXISTS \"ORDER_PLACED\" (\n  \"ORDER_ID\" VARCHAR,\n  \"TAGS\" ARRAY NOT NULL,\n  \"ATTRS\" VARIANT NOT NULL,\n  \"_EVENT_TIME\" TIMESTAMP_TZ(6) NOT NULL\n);"), "{sql}");
        assert!(sql.contains("URL = 's3://bkt/raw/order_placed/'"), "{sql}");
        assert!(sql.contains("STORAGE_INTEGRATION = sluice_s3"), "{sql}");
        assert!(sql.contains("AUTO_INGEST = TRUE"), "{sql}");
        assert!(sql.contains("AS COPY INTO \"ORDER_PLACED\"\n  FROM @\"ORDER_PLACED_STAGE\"\n  FILE_FORMAT = (TYPE = PARQUET)\n  MATCH_BY_COLUMN_NAME = CASE_INSENSITIVE;"), "{sql}");
    }

    #[test]
    fn duckdb_nested_types() {
        let sql = render(
            Dialect::Duckdb,
            &schema(),
            &Target {
                table: "orders",
                location: "/data/raw/order_placed/",
                storage_integration: "",
            },
        );
        assert!(sql.contains("\"tags\" VARCHAR[] NOT NULL"), "{sql}");
        assert!(
            sql.contains("\"attrs\" MAP(VARCHAR, BIGINT) NOT NULL"),
            "{sql}"
        );
        assert!(
            sql.contains("\"_event_time\" TIMESTAMPTZ NOT NULL"),
            "{sql}"
        );
        assert!(
            sql.contains("FROM read_parquet('/data/raw/order_placed/**/*.parquet', hive_partitioning = false);"),
            "{sql}"
        );
    }
}
