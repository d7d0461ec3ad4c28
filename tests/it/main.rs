//! Integration tests against the real local stack that `scripts/dev-up`
//! starts: Apache Kafka (KRaft, with secured listeners), moto (S3 + SQS)
//! and Apicurio Registry. What sluice writes is
//! read back with pyarrow. Every test makes its own topic, group, bucket and
//! queue, so they run in parallel and against a stack that is not fresh.

#![allow(unreachable_pub)]

mod apicurio;
mod broker;
mod configs;
mod deploy;
mod exactly_once;
mod fault_proxy;
mod faults;
mod files;
mod mapping;
mod memory;
mod operability;
mod parquet;
mod pipeline;
mod registry;
mod security;
mod stores;
mod subcommands;
mod support;
mod tcp_gate;
