//! Every config shipped in the repo loads; bad ones fail with a message
//! naming the file and key, from the binary itself.

use std::process::Command;

use sluice::config::Config;

use crate::support;

#[test]
fn every_shipped_sink_config_loads() {
    let mut seen = 0;
    for entry in std::fs::read_dir(support::repo().join("sinks")).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "toml") {
            Config::load_with_env(&path, std::iter::empty())
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            seen += 1;
        }
    }
    assert!(seen >= 2, "expected the example sinks, found {seen}");
}

#[test]
fn bad_config_exits_non_zero_naming_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let shipped = std::fs::read_to_string(support::repo().join("sinks/order_placed.toml")).unwrap();
    std::fs::write(
        &path,
        shipped.replace("interval = \"10s\"", "interval = \"ten seconds\""),
    )
    .unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("{}: key `checkpoint.interval`", path.display())),
        "{stderr}"
    );

    let missing = dir.path().join("missing.toml");
    let out = Command::new(env!("CARGO_BIN_EXE_sluice"))
        .args(["run", "--config"])
        .arg(&missing)
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("missing.toml: cannot read config file"));
}
