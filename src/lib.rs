//! sluice: one Kafka topic into time-partitioned Parquet files on S3,
//! announced on SQS for warehouse loaders.
//!
//! A record's path, module by module: [`source`] (Kafka) → [`envelope`]
//! (CloudEvents headers) → [`schema`] (Protobuf straight into Arrow) →
//! [`buffer`] (one open file per partition and [`partitioning`] folder) → [`writer`] (Parquet)
//! → [`commit`] (upload to [`store`], advise Kafka) → [`notify`] (SQS).
//! [`pipeline`] is the loop that drives them; [`cli`] the commands.

pub mod backfill;
pub mod buffer;
pub mod chain;
pub mod checkpoint;
pub mod cli;
pub mod commit;
pub mod config;
pub mod ddl;
pub mod diagnose;
pub mod dlq;
pub mod envelope;
pub mod failpoint;
pub mod framing;
pub mod gc;
pub mod health;
pub mod layout;
pub mod manifest;
pub mod msk_iam;
pub mod notify;
pub mod partitioning;
pub mod pipeline;
pub mod sample;
pub mod schema;
pub mod security;
pub mod source;
pub mod store;
pub mod telemetry;
pub mod tenancy;
pub mod upload;
pub mod writer;
