//! Arbitrary bytes as the payload of the reference event.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sluice_fuzz::Target;

fuzz_target!(|payload: &[u8]| {
    Target::reference().decode_and_check(payload);
});
