//! Arbitrary Kafka values and `ce_dataschema` headers through the
//! Confluent framing (wire format or a schema id named by the header).
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use sluice::framing::frame;

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    value: &'a [u8],
    dataschema: Option<&'a str>,
}

fuzz_target!(|input: Input<'_>| {
    if let Ok(framed) = frame(input.value, input.dataschema) {
        assert!(
            input.value.ends_with(framed.payload),
            "the payload is what follows the framing"
        );
        if input.value.first() == Some(&0) {
            assert!(framed.payload.len() + 6 <= input.value.len());
            assert_eq!(&input.value[1..5], &framed.id.to_be_bytes());
        }
    }
});
