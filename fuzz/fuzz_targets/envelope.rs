//! Arbitrary Kafka headers and timestamps through the CloudEvents envelope.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice::envelope::Envelope;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    headers: Vec<(&'a str, Option<&'a [u8]>)>,
    kafka_timestamp_ms: Option<i64>,
    tenant_header: &'a str,
}

fuzz_target!(|input: Input<'_>| {
    let headers = input.headers.iter().copied();
    if let Ok(envelope) = Envelope::parse(headers, input.kafka_timestamp_ms, input.tenant_header) {
        // Whatever is read comes from the headers given.
        if let Some(id) = envelope.id {
            assert!(
                input
                    .headers
                    .iter()
                    .any(|(_, v)| v.is_some_and(|v| v == id.as_bytes()))
            );
        }
    }
});
