//! JSON payloads (`content-type: application/json`): the canonical
//! Protobuf JSON mapping, read against the same schema as binary payloads
//! and re-encoded as Protobuf, so one decoder writes both.

use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor};

use super::DecodeError;

/// The canonical Protobuf JSON mapping, validated against the schema
/// (unknown fields are errors), re-encoded as Protobuf into `out`.
pub fn json_to_protobuf(
    descriptor: &MessageDescriptor,
    json: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), DecodeError> {
    let mut deserializer = serde_json::Deserializer::from_slice(json);
    let message = DynamicMessage::deserialize(descriptor.clone(), &mut deserializer)
        .and_then(|m| deserializer.end().map(|()| m))
        .map_err(|e| DecodeError::Json(e.to_string()))?;
    out.clear();
    message
        .encode(out)
        .map_err(|e| DecodeError::Json(e.to_string()))
}
