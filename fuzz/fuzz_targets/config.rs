//! Arbitrary text as a sink's TOML file, then (after a NUL byte) lines of
//! `SLUICE_<SECTION>__<KEY>=value` overrides: a config is either accepted
//! or refused with an error that names the file.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use sluice::config::Config;

fuzz_target!(|data: &[u8]| {
    let Ok(data) = std::str::from_utf8(data) else {
        return;
    };
    let (text, overrides) = data.split_once('\0').unwrap_or((data, ""));
    let env = overrides.lines().filter_map(|line| {
        let (key, value) = line.split_once('=')?;
        Some((key.to_owned(), value.to_owned()))
    });
    match Config::from_text(Path::new("fuzz.toml"), text, env) {
        Ok(config) => {
            let _ = config.redacted();
            let _ = config.schema_source();
            let _ = config.storage_url();
            let _ = config.metrics_listen();
        }
        Err(e) => assert!(e.to_string().starts_with("fuzz.toml"), "{e}"),
    }
});
