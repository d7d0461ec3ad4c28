//! How the payload sits in the Kafka value: plain Protobuf, or the
//! Confluent wire format (magic byte 0, 4-byte schema id, message-index
//! array, then the Protobuf bytes). Detect, don't guess: with a Confluent
//! registry configured, a value that is not in the wire format, names an
//! unknown schema id, or a schema of another message is an error (a dead
//! letter), never decoded on luck.

use std::collections::HashSet;
use std::sync::Arc;

use prost_reflect::MessageDescriptor;

use crate::schema::ConfluentRegistry;

#[derive(Debug, thiserror::Error)]
pub enum FramingError {
    #[error("not in the Confluent wire format: first byte {0:#04x}, expected 0x00")]
    BadMagic(u8),
    #[error("Confluent wire format header is truncated")]
    Truncated,
    #[error("schema id {id}: {message}")]
    Schema { id: u32, message: String },
    #[error("schema id {id} is for message {found}, this sink reads {expected}")]
    WrongMessage {
        id: u32,
        found: String,
        expected: String,
    },
}

#[derive(Debug)]
pub enum Framing {
    Plain,
    Confluent(Confluent),
}

#[derive(Debug)]
pub struct Confluent {
    registry: Arc<ConfluentRegistry>,
    message: String,
    /// Ids already checked to hold this sink's message.
    accepted: HashSet<u32>,
}

impl Framing {
    /// Confluent framing for `message`; `known_id` is the id the plan was
    /// built from (accepted without a registry call).
    pub fn confluent(registry: Arc<ConfluentRegistry>, message: &str, known_id: u32) -> Framing {
        Framing::Confluent(Confluent {
            registry,
            message: message.to_owned(),
            accepted: HashSet::from([known_id]),
        })
    }

    /// The Protobuf bytes of `value`.
    pub fn payload<'a>(&mut self, value: &'a [u8]) -> Result<&'a [u8], FramingError> {
        match self {
            Framing::Plain => Ok(value),
            Framing::Confluent(c) => c.payload(value),
        }
    }
}

impl Confluent {
    fn payload<'a>(&mut self, value: &'a [u8]) -> Result<&'a [u8], FramingError> {
        let (&magic, rest) = value.split_first().ok_or(FramingError::Truncated)?;
        if magic != 0 {
            return Err(FramingError::BadMagic(magic));
        }
        let id_bytes: [u8; 4] = rest
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .ok_or(FramingError::Truncated)?;
        let id = u32::from_be_bytes(id_bytes);
        let mut pos = 5;
        let count = zigzag(varint(value, &mut pos)?);
        // A count of 0 stands for the path [0]: the file's first message.
        let mut path = [0i64; 8];
        let depth = usize::try_from(count).unwrap_or(0).max(1);
        for i in 0..usize::try_from(count).unwrap_or(0) {
            let index = zigzag(varint(value, &mut pos)?);
            if let Some(slot) = path.get_mut(i) {
                *slot = index;
            }
        }
        if !self.accepted.contains(&id) {
            self.check(id, &path[..depth.min(path.len())])?;
            self.accepted.insert(id);
        }
        Ok(&value[pos..])
    }

    /// Fetches schema `id` and checks the message its index path names.
    fn check(&self, id: u32, path: &[i64]) -> Result<(), FramingError> {
        let pool = self.registry.schema(id).map_err(|e| FramingError::Schema {
            id,
            message: e.to_string(),
        })?;
        let file = pool
            .get_file_by_name(&format!("schema-{id}.proto"))
            .ok_or_else(|| FramingError::Schema {
                id,
                message: "schema file missing from its own pool".into(),
            })?;
        let nth = |mut it: Box<dyn Iterator<Item = MessageDescriptor> + '_>, i: i64| {
            usize::try_from(i).ok().and_then(|i| it.nth(i))
        };
        let mut message = nth(Box::new(file.messages()), path[0]);
        for &i in &path[1..] {
            message = message.and_then(|m| nth(Box::new(m.child_messages()), i));
        }
        let found =
            message
                .map(|m| m.full_name().to_owned())
                .ok_or_else(|| FramingError::Schema {
                    id,
                    message: format!("no message at index path {path:?}"),
                })?;
        if found != self.message {
            return Err(FramingError::WrongMessage {
                id,
                found,
                expected: self.message.clone(),
            });
        }
        Ok(())
    }
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
