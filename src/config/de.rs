//! Deserializers that accept a value's native TOML form or its string form
//! (environment overrides are strings), and the byte sizes they read.

use serde::{Deserialize, Deserializer, de::Error};

#[derive(Deserialize)]
#[serde(untagged)]
enum Raw {
    Bool(bool),
    Int(u64),
    Str(String),
}

pub(super) fn opt_bool<'de, D: Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Bool(b) => Ok(Some(b)),
        Raw::Str(s) if s == "true" => Ok(Some(true)),
        Raw::Str(s) if s == "false" => Ok(Some(false)),
        _ => Err(D::Error::custom("expected `true` or `false`")),
    }
}

pub(crate) fn bool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    opt_bool(d).map(|b| b.unwrap_or(false))
}

/// `auto`, or a boolean (also as text, from the environment).
pub(super) fn dictionary<'de, D: Deserializer<'de>>(d: D) -> Result<super::Dictionary, D::Error> {
    use super::Dictionary;
    match Raw::deserialize(d)? {
        Raw::Bool(true) => Ok(Dictionary::All),
        Raw::Bool(false) => Ok(Dictionary::None),
        Raw::Str(s) => match s.trim() {
            "auto" => Ok(Dictionary::Auto),
            "true" | "all" => Ok(Dictionary::All),
            "false" | "none" => Ok(Dictionary::None),
            other => Err(D::Error::custom(format!(
                "expected `auto`, `true` or `false`, got {other:?}"
            ))),
        },
        Raw::Int(_) => Err(D::Error::custom("expected `auto`, `true` or `false`")),
    }
}

pub(super) fn opt_u64<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(Some(n)),
        Raw::Str(s) => s
            .trim()
            .parse()
            .map(Some)
            .map_err(|_| D::Error::custom(format!("expected a whole number, got {s:?}"))),
        Raw::Bool(_) => Err(D::Error::custom("expected a whole number")),
    }
}

pub(super) fn usize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Int(n) => usize::try_from(n).map_err(D::Error::custom),
        Raw::Str(s) => s
            .trim()
            .parse()
            .map_err(|_| D::Error::custom(format!("expected a whole number, got {s:?}"))),
        Raw::Bool(_) => Err(D::Error::custom("expected a whole number")),
    }
}

pub(super) fn version<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    let expected = || D::Error::custom("expected `latest` or a version number such as 3");
    match Raw::deserialize(d)? {
        Raw::Str(s) if s.trim() == "latest" => Ok(None),
        Raw::Str(s) => s
            .trim()
            .parse()
            .ok()
            .filter(|&v| v > 0)
            .map(Some)
            .ok_or_else(expected),
        Raw::Int(n) => u32::try_from(n)
            .ok()
            .filter(|&v| v > 0)
            .map(Some)
            .ok_or_else(expected),
        Raw::Bool(_) => Err(expected()),
    }
}

pub(super) fn byte_size<'de, D: Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match Raw::deserialize(d)? {
        Raw::Int(n) => Ok(n),
        Raw::Str(s) => parse_byte_size(&s).ok_or_else(|| {
            D::Error::custom(format!(
                "expected a size such as `268435456`, `256MiB` or `1GiB`, got {s:?}"
            ))
        }),
        Raw::Bool(_) => Err(D::Error::custom("expected a size such as `256MiB`")),
    }
}

/// `123`, `64KiB`, `256MiB`, `1GiB` (also `KB`/`MB`/`GB` as powers of 1000).
pub(super) fn parse_byte_size(text: &str) -> Option<u64> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let number: u64 = number.parse().ok()?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        _ => return None,
    };
    number.checked_mul(factor)
}
