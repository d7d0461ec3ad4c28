//! `SLUICE_<SECTION>__<KEY>` overrides and `${VAR}` interpolation, applied
//! to the parsed TOML before it is deserialized.

use std::collections::BTreeMap;

/// `SLUICE_KAFKA__BROKERS=…` sets `kafka.brokers`. Values go in as strings;
/// the few non-string keys accept their string forms. An empty value removes
/// the key (as if the file did not set it), the way container environments
/// unset a variable.
pub(super) fn apply_env_overrides(
    table: &mut toml::Table,
    env: impl IntoIterator<Item = (String, String)>,
) {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("SLUICE_") else {
            continue;
        };
        let path: Vec<String> = rest.split("__").map(str::to_ascii_lowercase).collect();
        let [tables @ .., key] = path.as_slice() else {
            continue;
        };
        if tables.is_empty() {
            continue;
        }
        override_key(table, tables, key, value);
    }
}

/// Sets (or, for an empty value, removes) `key` in the table at `tables`,
/// making the tables that are missing; a path through a non-table is left
/// alone (deserialization then names the key).
fn override_key(table: &mut toml::Table, tables: &[String], key: &str, value: String) {
    match tables.split_first() {
        Some((name, rest)) => {
            let entry = table
                .entry(name.as_str())
                .or_insert_with(|| toml::Value::Table(toml::Table::new()));
            if let toml::Value::Table(inner) = entry {
                override_key(inner, rest, key, value);
            }
        }
        None if value.is_empty() => {
            table.remove(key);
        }
        None => {
            table.insert(key.to_owned(), toml::Value::String(value));
        }
    }
}

/// Replaces `${VAR}` in every string of `table` with the variable's value
/// (`$${` stands for a literal `${`); an unset variable is an error naming
/// the key and the variable.
pub(super) fn interpolate_table(
    table: &mut toml::Table,
    prefix: &str,
    vars: &BTreeMap<&str, &str>,
) -> Result<(), (String, String)> {
    for (name, value) in table.iter_mut() {
        let key = if prefix.is_empty() {
            name.clone()
        } else {
            format!("{prefix}.{name}")
        };
        interpolate_value(value, &key, vars)?;
    }
    Ok(())
}

fn interpolate_value(
    value: &mut toml::Value,
    key: &str,
    vars: &BTreeMap<&str, &str>,
) -> Result<(), (String, String)> {
    match value {
        toml::Value::String(text) if text.contains("${") => {
            *text = interpolate(text, vars).map_err(|m| (key.to_owned(), m))?;
        }
        toml::Value::Table(table) => interpolate_table(table, key, vars)?,
        toml::Value::Array(items) => {
            for item in items {
                interpolate_value(item, key, vars)?;
            }
        }
        _ => {}
    }
    Ok(())
}

fn interpolate(text: &str, vars: &BTreeMap<&str, &str>) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("${") {
        if rest[..at].ends_with('$') {
            out.push_str(&rest[..at - 1]);
            out.push_str("${");
            rest = &rest[at + 2..];
            continue;
        }
        out.push_str(&rest[..at]);
        let Some(end) = rest[at..].find('}') else {
            return Err("`${` without a closing `}` (write `$${` for a literal `${`)".into());
        };
        let name = &rest[at + 2..at + end];
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(format!(
                "`${{{name}}}` is not an environment variable name (letters, digits, `_`)"
            ));
        }
        match vars.get(name) {
            Some(value) => out.push_str(value),
            None => return Err(format!("environment variable {name} is not set")),
        }
        rest = &rest[at + end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}
