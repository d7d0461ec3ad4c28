//! Arbitrary bytes as the payload of the kitchen-sink message: every
//! scalar, enum, nested and repeated field, map, well-known type, proto2
//! presence and recursion the type mapping covers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_fuzz::Target;

fuzz_target!(|payload: &[u8]| {
    Target::kitchen_sink().decode_and_check(payload);
});
