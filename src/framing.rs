//! How the payload sits in the Kafka value, and which schema version reads
//! it: plain Protobuf with the configured schema, or — with a Confluent
//! registry — the Confluent wire format (magic byte 0, 4-byte schema id,
//! message-index array, then the Protobuf bytes) or a plain payload whose
//! `ce_dataschema` header names the schema id. Detect, don't guess: a value
//! that is in neither form, names an unknown schema id, or a schema of
//! another message is an error (a dead letter), never decoded on luck. (A
//! Protobuf message never starts with byte 0, so the magic byte cannot be
//! mistaken for a plain payload.)
//!
//! Schema evolution: every record decodes with the newest compatible
//! version seen so far ([`Framed::upgrade`] says when that changes, so the
//! open files roll once per new version, never back). A version whose field
//! types conflict with it is refused, its records are dead letters.

use std::collections::HashMap;
use std::sync::Arc;

use prost_reflect::MessageDescriptor;

use crate::schema::{ConfluentRegistry, MessagePlan, check_compatible};

#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error(
        "not in the Confluent wire format (first byte {0:#04x}, expected 0x00) and no ce_dataschema header"
    )]
    BadMagic(u8),
    #[error("empty value: not in the Confluent wire format and no ce_dataschema header")]
    Empty,
    #[error("Confluent wire format header is truncated")]
    Truncated,
    #[error("message-index path deeper than {MAX_PATH}")]
    PathTooDeep,
    #[error("ce_dataschema {0:?} does not name a schema id (expected …/schemas/ids/<id>)")]
    BadDataSchema(String),
    #[error("schema id {id}: {message}")]
    Schema { id: u32, message: String },
    #[error("schema id {id} is for message {found}, this sink reads {expected}")]
    WrongMessage {
        id: u32,
        found: String,
        expected: String,
    },
    #[error("schema id {id} is incompatible with schema id {current} in use: {reason}")]
    Incompatible {
        id: u32,
        current: u32,
        reason: String,
    },
}

impl FramingError {
    /// The schema is readable but conflicts with the version in use: an
    /// operator must act.
    pub fn is_incompatible(&self) -> bool {
        matches!(self, FramingError::Incompatible { .. })
    }
}

/// Message-index paths longer than this are refused.
const MAX_PATH: usize = 8;

#[derive(Debug, Clone)]
pub enum Framing {
    Plain,
    Confluent(Confluent),
}

/// The payload of one value and the schema version it was written with.
#[derive(Debug)]
pub struct Framed<'a> {
    pub payload: &'a [u8],
    pub schema_id: Option<u32>,
    /// Set when this record brings a newer compatible version: it and every
    /// record after it decode with this one.
    pub upgrade: Option<Upgrade>,
}

#[derive(Debug)]
pub struct Upgrade {
    pub id: u32,
    pub descriptor: MessageDescriptor,
    pub plan: Arc<MessagePlan>,
}

#[derive(Debug, Clone)]
pub struct Confluent {
    registry: Arc<ConfluentRegistry>,
    message: String,
    recursion_depth: usize,
    /// The version records decode with: the highest compatible id seen.
    current: (u32, MessageDescriptor),
    /// Ids already resolved: where the message was found and whether it
    /// is compatible with the version in use.
    verdicts: HashMap<u32, Verdict>,
}

#[derive(Debug, Clone)]
struct Verdict {
    /// How records named the message in this schema, each checked once.
    located: Vec<Locator>,
    /// The message, when the version is accepted.
    accepted: Option<MessageDescriptor>,
    incompatible: Option<(u32, String)>,
}

/// How a record names its message within a schema: by message-index path
/// (wire format) or, for plain payloads, by the sink's message name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Locator {
    Path([i64; MAX_PATH], usize),
    Name,
}

impl Framing {
    /// Confluent framing for `message`, starting with schema `id`
    /// (`descriptor` is its message, resolved at start-up).
    pub fn confluent(
        registry: Arc<ConfluentRegistry>,
        id: u32,
        descriptor: MessageDescriptor,
        recursion_depth: usize,
    ) -> Framing {
        // Accepted, but no way of naming the message is taken on trust: the
        // first record with each index path (even `[0]`) is checked against
        // the schema, so a record of another message of the same file is
        // refused.
        Framing::Confluent(Confluent {
            registry,
            message: descriptor.full_name().to_owned(),
            recursion_depth,
            current: (id, descriptor.clone()),
            verdicts: HashMap::from([(
                id,
                Verdict {
                    located: Vec::new(),
                    accepted: Some(descriptor),
                    incompatible: None,
                },
            )]),
        })
    }

    /// The Protobuf bytes of `value`; `dataschema` is the record's
    /// `ce_dataschema` header.
    pub fn payload<'a>(
        &mut self,
        value: &'a [u8],
        dataschema: Option<&str>,
    ) -> Result<Framed<'a>, FramingError> {
        match self {
            Framing::Plain => Ok(Framed {
                payload: value,
                schema_id: None,
                upgrade: None,
            }),
            Framing::Confluent(c) => c.payload(value, dataschema),
        }
    }
}

impl Confluent {
    fn payload<'a>(
        &mut self,
        value: &'a [u8],
        dataschema: Option<&str>,
    ) -> Result<Framed<'a>, FramingError> {
        let Frame {
            id,
            locator,
            payload,
        } = frame(value, dataschema)?;
        let upgrade = match self.verdicts.get(&id) {
            Some(Verdict {
                incompatible: Some((current, reason)),
                ..
            }) => {
                return Err(FramingError::Incompatible {
                    id,
                    current: *current,
                    reason: reason.clone(),
                });
            }
            Some(v) if v.located.contains(&locator) => None,
            Some(_) => {
                // An accepted version, its message named another way.
                self.locate(id, locator)?;
                if let Some(v) = self.verdicts.get_mut(&id) {
                    v.located.push(locator);
                }
                None
            }
            None => self.resolve(id, locator)?,
        };
        Ok(Framed {
            payload,
            schema_id: Some(id),
            upgrade,
        })
    }

    /// First sight of `id`: fetch,
    /// check it names this sink's message and agrees with every version
    /// accepted so far (compatibility is not transitive: a field removed in
    /// one version may come back with another type in the next).
    fn resolve(&mut self, id: u32, locator: Locator) -> Result<Option<Upgrade>, FramingError> {
        let descriptor = self.locate(id, locator)?;
        let current = self.current.0;
        let mut accepted: Vec<_> = self
            .verdicts
            .iter()
            .filter_map(|(&other, v)| v.accepted.as_ref().map(|d| (other, d)))
            .collect();
        accepted.sort_by_key(|(other, _)| std::cmp::Reverse(*other));
        let mut verdict = accepted.iter().try_for_each(|(other, accepted)| {
            check_compatible(accepted, &descriptor).map_err(|reason| {
                if *other == current {
                    reason
                } else {
                    format!("{reason} (against schema id {other}, also in use)")
                }
            })
        });
        let mut upgrade = None;
        if verdict.is_ok() && id > current {
            match MessagePlan::new(&descriptor, self.recursion_depth) {
                Ok(plan) => {
                    upgrade = Some(Upgrade {
                        id,
                        descriptor: descriptor.clone(),
                        plan: Arc::new(plan),
                    });
                }
                Err(e) => verdict = Err(e.to_string()),
            }
        }
        self.verdicts.insert(
            id,
            Verdict {
                located: vec![locator],
                accepted: verdict.is_ok().then(|| descriptor.clone()),
                incompatible: verdict.as_ref().err().map(|r| (current, r.clone())),
            },
        );
        match verdict {
            Ok(()) => {
                if upgrade.is_some() {
                    self.current = (id, descriptor);
                }
                Ok(upgrade)
            }
            Err(reason) => {
                let refused = FramingError::Incompatible {
                    id,
                    current,
                    reason,
                };
                tracing::error!(error = %refused, "schema version refused; its records become dead letters");
                Err(refused)
            }
        }
    }

    /// The sink's message in schema `id`.
    fn locate(&self, id: u32, locator: Locator) -> Result<MessageDescriptor, FramingError> {
        let pool = self.registry.schema(id).map_err(|e| FramingError::Schema {
            id,
            message: e.to_string(),
        })?;
        let message = match locator {
            Locator::Name => pool.get_message_by_name(&self.message),
            Locator::Path(path, depth) => {
                let file = pool
                    .get_file_by_name(&format!("schema-{id}.proto"))
                    .ok_or_else(|| FramingError::Schema {
                        id,
                        message: "schema file missing from its own pool".into(),
                    })?;
                let path = &path[..depth];
                let nth = |mut it: Box<dyn Iterator<Item = MessageDescriptor> + '_>, i: i64| {
                    usize::try_from(i).ok().and_then(|i| it.nth(i))
                };
                let mut message = nth(Box::new(file.messages()), path[0]);
                for &i in &path[1..] {
                    message = message.and_then(|m| nth(Box::new(m.child_messages()), i));
                }
                let found = message.ok_or_else(|| FramingError::Schema {
                    id,
                    message: format!("no message at index path {path:?}"),
                })?;
                if found.full_name() != self.message {
                    return Err(FramingError::WrongMessage {
                        id,
                        found: found.full_name().to_owned(),
                        expected: self.message.clone(),
                    });
                }
                Some(found)
            }
        };
        message.ok_or_else(|| FramingError::Schema {
            id,
            message: format!("does not define message {}", self.message),
        })
    }
}

/// Where a registry-framed value says its schema is, and its Protobuf bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// The registry's schema id.
    pub id: u32,
    locator: Locator,
    /// The Protobuf bytes: a suffix of the value.
    pub payload: &'a [u8],
}

/// Reads the framing of `value`: the wire format (first byte 0), else a
/// plain payload whose `ce_dataschema` header names the schema id. No
/// registry call: which schema that is, is decided after.
pub fn frame<'a>(value: &'a [u8], dataschema: Option<&str>) -> Result<Frame<'a>, FramingError> {
    let (id, locator, payload) = match (value.first(), dataschema) {
        (Some(0), _) => wire_format(value)?,
        (_, Some(uri)) => (schema_id_in(uri)?, Locator::Name, value),
        (Some(&magic), None) => return Err(FramingError::BadMagic(magic)),
        (None, None) => return Err(FramingError::Empty),
    };
    Ok(Frame {
        id,
        locator,
        payload,
    })
}

/// Schema id, message path and payload of a value in the wire format.
fn wire_format(value: &[u8]) -> Result<(u32, Locator, &[u8]), FramingError> {
    let id_bytes: [u8; 4] = value
        .get(1..5)
        .and_then(|b| b.try_into().ok())
        .ok_or(FramingError::Truncated)?;
    let id = u32::from_be_bytes(id_bytes);
    let mut pos = 5;
    let count = zigzag(varint(value, &mut pos)?);
    // A count of 0 stands for the path [0]: the file's first message.
    let count = usize::try_from(count).map_err(|_| FramingError::Truncated)?;
    if count > MAX_PATH {
        return Err(FramingError::PathTooDeep);
    }
    let mut path = [0i64; MAX_PATH];
    for slot in path.iter_mut().take(count) {
        *slot = zigzag(varint(value, &mut pos)?);
    }
    Ok((id, Locator::Path(path, count.max(1)), &value[pos..]))
}

/// The schema id a `ce_dataschema` URI names: the registry's own address of
/// the schema, `…/schemas/ids/<id>` (a trailing `/schema` is allowed).
fn schema_id_in(uri: &str) -> Result<u32, FramingError> {
    let bad = || FramingError::BadDataSchema(uri.to_owned());
    let path = uri.trim_end_matches('/');
    let path = path.strip_suffix("/schema").unwrap_or(path);
    let (head, id) = path.rsplit_once('/').ok_or_else(bad)?;
    if !head.ends_with("/schemas/ids") && head != "schemas/ids" {
        return Err(bad());
    }
    id.parse().map_err(|_| bad())
}

fn varint(buf: &[u8], pos: &mut usize) -> Result<u64, FramingError> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos).ok_or(FramingError::Truncated)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(FramingError::Truncated)
}

fn zigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

/// The wire-format header for schema `id` and the file's first message
/// (what Confluent's serializers write for a top-level message at index 0).
pub fn confluent_header(id: u32) -> [u8; 6] {
    let [a, b, c, d] = id.to_be_bytes();
    [0, a, b, c, d, 0]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_format_header_and_paths() {
        let mut value = confluent_header(7).to_vec();
        value.extend_from_slice(b"\x08\x01");
        let (id, locator, payload) = wire_format(&value).unwrap();
        assert_eq!((id, payload), (7, &b"\x08\x01"[..]));
        assert_eq!(locator, Locator::Path([0; MAX_PATH], 1));
        // Path [1, 2]: count 2, then 1 and 2, all zigzag varints.
        let nested = [0, 0, 0, 0, 9, 4, 2, 4, 0x08];
        let (_, locator, payload) = wire_format(&nested).unwrap();
        let mut path = [0; MAX_PATH];
        path[..2].copy_from_slice(&[1, 2]);
        assert_eq!(locator, Locator::Path(path, 2));
        assert_eq!(payload, &[0x08]);
        assert!(matches!(
            wire_format(&[0, 0, 0]),
            Err(FramingError::Truncated)
        ));
        assert!(matches!(
            wire_format(&[0, 0, 0, 0, 1, 40]),
            Err(FramingError::PathTooDeep)
        ));
    }

    #[test]
    fn dataschema_names_a_schema_id() {
        assert_eq!(
            schema_id_in("https://registry:8081/schemas/ids/42").unwrap(),
            42
        );
        assert_eq!(schema_id_in("http://r/schemas/ids/42/schema").unwrap(), 42);
        assert_eq!(schema_id_in("schemas/ids/3").unwrap(), 3);
        for bad in [
            "https://r/subjects/x/versions/1",
            "https://r/schemas/ids/x",
            "42",
            "",
        ] {
            let e = schema_id_in(bad).unwrap_err().to_string();
            assert!(e.contains("does not name a schema id"), "{bad}: {e}");
        }
    }
}
