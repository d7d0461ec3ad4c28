//! Arbitrary bytes as a JSON payload (the first byte picks the schema).
//! Whatever JSON is accepted must re-encode to Protobuf that the decoder
//! takes: the two readers never disagree on a record.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice::schema::json_to_protobuf;
use sluice_fuzz::Target;

fuzz_target!(|data: &[u8]| {
    let Some((&pick, json)) = data.split_first() else {
        return;
    };
    let target = if pick % 2 == 0 {
        Target::reference()
    } else {
        Target::kitchen_sink()
    };
    let mut encoded = Vec::new();
    if json_to_protobuf(&target.descriptor, json, &mut encoded).is_ok() {
        assert!(
            target.decode_and_check(&encoded),
            "accepted JSON re-encodes to Protobuf the decoder refuses"
        );
    }
});
