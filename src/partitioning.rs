//! Which folder a row goes to: the `files.path` template, the time it is
//! bucketed by (`files.time`) and the payload field it may name, read
//! straight from the Protobuf bytes without decoding the record twice.

use prost_reflect::{Kind, MessageDescriptor};

use crate::layout::{self, PathTemplate};

/// Where a record's partitioning time comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TimeSource {
    /// `ce_time`, else the Kafka timestamp, else the time sluice read it.
    Event,
    /// The Kafka record timestamp (else the event time).
    Kafka,
    /// When sluice read the record.
    Ingestion,
    /// A top-level `google.protobuf.Timestamp` field of the payload (else
    /// the event time).
    Field(String),
}

impl TimeSource {
    pub fn parse(text: &str) -> Result<TimeSource, String> {
        match text {
            "event" => Ok(TimeSource::Event),
            "kafka" => Ok(TimeSource::Kafka),
            "ingestion" => Ok(TimeSource::Ingestion),
            _ => match text.strip_prefix("field:") {
                Some(name) if !name.is_empty() => Ok(TimeSource::Field(name.to_owned())),
                _ => Err(format!(
                    "expected `event`, `kafka`, `ingestion` or `field:<Timestamp field>`, got {text:?}"
                )),
            },
        }
    }
}

/// A top-level field read for partitioning.
#[derive(Debug, Clone)]
struct FieldRef {
    number: u32,
    kind: Kind,
    /// Absent means "not set" rather than the type's default.
    presence: bool,
}

#[derive(Debug, Clone)]
pub struct Partitioning {
    event: String,
    template: PathTemplate,
    time: TimeSource,
    time_field: Option<u32>,
    field: Option<FieldRef>,
}

/// A top-level field's raw value.
#[derive(Debug, Clone, Copy)]
enum Raw<'a> {
    Varint(u64),
    I64(u64),
    I32(u32),
    Len(&'a [u8]),
}

impl Partitioning {
    /// The default: `{event}/dt={date}/hr={hour}` by event time.
    pub fn hourly(event: &str) -> Partitioning {
        Partitioning {
            event: event.to_owned(),
            template: PathTemplate::parse(layout::DEFAULT_PATH).unwrap_or_else(|_| unreachable!()),
            time: TimeSource::Event,
            time_field: None,
            field: None,
        }
    }

    /// Checks that the fields `template` and `time` name exist at the top
    /// level of `message` with a usable type.
    pub fn new(
        event: &str,
        template: PathTemplate,
        time: TimeSource,
        message: &MessageDescriptor,
    ) -> Result<Partitioning, String> {
        let top_level = |name: &str, key: &str| {
            message.get_field_by_name(name).ok_or_else(|| {
                format!(
                    "{key}: {} has no top-level field `{name}`",
                    message.full_name()
                )
            })
        };
        let time_field = match &time {
            TimeSource::Field(name) => {
                let field = top_level(name, "files.time")?;
                match field.kind() {
                    Kind::Message(m)
                        if m.full_name() == "google.protobuf.Timestamp" && !field.is_list() => {}
                    _ => {
                        return Err(format!(
                            "files.time: field `{name}` is not a google.protobuf.Timestamp"
                        ));
                    }
                }
                Some(field.number())
            }
            _ => None,
        };
        let field = match template.field() {
            Some(name) => {
                let field = top_level(name, "files.path")?;
                let usable = !field.is_list()
                    && !field.is_map()
                    && !matches!(
                        field.kind(),
                        Kind::Message(_) | Kind::Bytes | Kind::Double | Kind::Float
                    );
                if !usable {
                    return Err(format!(
                        "files.path: field `{name}` must be a single string, integer, bool or enum"
                    ));
                }
                Some(FieldRef {
                    number: field.number(),
                    kind: field.kind(),
                    presence: field.supports_presence(),
                })
            }
            None => None,
        };
        Ok(Partitioning {
            event: event.to_owned(),
            template,
            time,
            time_field,
            field,
        })
    }

    /// Whether the folder names a payload field.
    pub fn has_field(&self) -> bool {
        self.field.is_some()
    }

    /// The time bucket of a record.
    #[inline]
    pub fn bucket(&self, event_micros: i64, kafka_ms: Option<i64>, payload: &[u8]) -> i64 {
        let time = match &self.time {
            TimeSource::Event => event_micros,
            TimeSource::Kafka => kafka_ms.map_or(event_micros, |ms| ms.saturating_mul(1000)),
            TimeSource::Ingestion => chrono::Utc::now().timestamp_micros(),
            TimeSource::Field(_) => self
                .time_field
                .and_then(|n| match scan(payload, n) {
                    Some(Raw::Len(bytes)) => timestamp_micros(bytes),
                    _ => None,
                })
                .unwrap_or(event_micros),
        };
        self.template.bucket(time)
    }

    /// The key-safe value of the path's field in `payload` into `out`
    /// (empty when the path names no field).
    pub fn field_value(&self, payload: &[u8], out: &mut String) {
        out.clear();
        let Some(field) = &self.field else { return };
        match (scan(payload, field.number), &field.kind) {
            (None, _) if field.presence => layout::key_part("", out),
            // Proto3 without presence: absent is the type's default.
            (None, Kind::String) => layout::key_part("", out),
            (None, Kind::Enum(e)) => layout::key_part(e.default_value().name(), out),
            (None, Kind::Bool) => layout::key_part("false", out),
            (None, _) => layout::key_part("0", out),
            (Some(Raw::Len(bytes)), Kind::String) => {
                layout::key_part(&String::from_utf8_lossy(bytes), out);
            }
            (Some(Raw::Varint(v)), Kind::Enum(e)) => match e.get_value(v as i32) {
                Some(value) => layout::key_part(value.name(), out),
                None => layout::key_part(&(v as i32).to_string(), out),
            },
            (Some(raw), kind) => layout::key_part(&integer(raw, kind).unwrap_or_default(), out),
        }
    }

    pub fn folder(&self, bucket: i64, field: &str) -> String {
        self.template.render(&self.event, bucket, field)
    }
}

fn integer(raw: Raw<'_>, kind: &Kind) -> Option<String> {
    Some(match (raw, kind) {
        (Raw::Varint(v), Kind::Int32) => (v as i32).to_string(),
        (Raw::Varint(v), Kind::Int64) => (v as i64).to_string(),
        (Raw::Varint(v), Kind::Uint32 | Kind::Uint64) => v.to_string(),
        (Raw::Varint(v), Kind::Sint32 | Kind::Sint64) => {
            (((v >> 1) as i64) ^ -((v & 1) as i64)).to_string()
        }
        (Raw::Varint(v), Kind::Bool) => (v != 0).to_string(),
        (Raw::I32(v), Kind::Fixed32) => v.to_string(),
        (Raw::I32(v), Kind::Sfixed32) => (v as i32).to_string(),
        (Raw::I64(v), Kind::Fixed64) => v.to_string(),
        (Raw::I64(v), Kind::Sfixed64) => (v as i64).to_string(),
        _ => return None,
    })
}

/// `google.protobuf.Timestamp` bytes as µs since the epoch.
fn timestamp_micros(bytes: &[u8]) -> Option<i64> {
    let seconds = match scan(bytes, 1) {
        Some(Raw::Varint(v)) => v as i64,
        None => 0,
        _ => return None,
    };
    let nanos = match scan(bytes, 2) {
        Some(Raw::Varint(v)) => v as i32 as i64,
        None => 0,
        _ => return None,
    };
    seconds
        .checked_mul(1_000_000)
        .and_then(|s| s.checked_add(nanos / 1000))
}

/// The last value of top-level field `number` in `buf` (Protobuf: the last
/// one wins). `None` when absent or when the bytes are not valid Protobuf
/// (the decoder then reports the error).
fn scan(buf: &[u8], number: u32) -> Option<Raw<'_>> {
    let mut pos = 0;
    let mut found = None;
    while pos < buf.len() {
        let key = varint(buf, &mut pos)?;
        let value = match key & 7 {
            0 => Raw::Varint(varint(buf, &mut pos)?),
            1 => {
                let bytes = buf.get(pos..pos + 8)?;
                pos += 8;
                Raw::I64(u64::from_le_bytes(bytes.try_into().ok()?))
            }
            2 => {
                let len = usize::try_from(varint(buf, &mut pos)?).ok()?;
                let bytes = buf.get(pos..pos.checked_add(len)?)?;
                pos += len;
                Raw::Len(bytes)
            }
            5 => {
                let bytes = buf.get(pos..pos + 4)?;
                pos += 4;
                Raw::I32(u32::from_le_bytes(bytes.try_into().ok()?))
            }
            _ => return None,
        };
        if key >> 3 == u64::from(number) {
            found = Some(value);
        }
    }
    found
}

fn varint(buf: &[u8], pos: &mut usize) -> Option<u64> {
    let mut value = 0u64;
    for shift in (0..64).step_by(7) {
        let byte = *buf.get(*pos)?;
        *pos += 1;
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Some(value);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sample::OrderSample;
    use crate::schema::LocalRegistry;

    fn order() -> MessageDescriptor {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
        LocalRegistry::open(&dir)
            .unwrap()
            .message("sluice.examples.OrderPlaced")
            .unwrap()
    }

    #[test]
    fn fields_and_times_are_read_from_the_payload() {
        let message = order();
        let sample = OrderSample::new(&message).unwrap();
        let payload = sample.encode(5);
        let fields = sample.fields(5);
        let mut out = String::new();
        for (name, expected) in [
            ("city", fields.city.to_owned()),
            ("payment_method", fields.payment_method.to_owned()),
            ("customer_id", fields.customer_id.to_string()),
            ("is_first_order", fields.is_first_order.to_string()),
            ("promo_code", layout::NO_VALUE.to_owned()),
        ] {
            let template = PathTemplate::parse(&format!("{{event}}/x={{field:{name}}}")).unwrap();
            let p = Partitioning::new("ev", template, TimeSource::Event, &message).unwrap();
            let mut payload = payload.clone();
            if name == "promo_code" {
                payload = OrderSample::new(&message).unwrap().encode(
                    (0..)
                        .find(|&s| sample.fields(s).promo_code.is_none())
                        .unwrap(),
                );
            }
            p.field_value(&payload, &mut out);
            assert_eq!(out, expected.replace(' ', "_"), "{name}");
        }
        let template = PathTemplate::parse("{event}/{date}/{hour}").unwrap();
        let by_field = Partitioning::new(
            "ev",
            template.clone(),
            TimeSource::Field("placed_at".into()),
            &message,
        )
        .unwrap();
        assert_eq!(
            by_field.bucket(0, None, &payload),
            layout::hour_of(fields.placed_at_micros)
        );
        // Absent or unreadable: the event time.
        assert_eq!(by_field.bucket(7_200_000_000, None, &[]), 2);
        let by_kafka = Partitioning::new("ev", template, TimeSource::Kafka, &message).unwrap();
        assert_eq!(by_kafka.bucket(0, Some(3_600_000), &payload), 1);
        assert_eq!(by_kafka.bucket(7_200_000_000, None, &payload), 2);
    }

    #[test]
    fn unusable_fields_are_config_errors() {
        let message = order();
        let path = |t: &str| PathTemplate::parse(t).unwrap();
        let cases = [
            (
                path("{event}/{field:nope}"),
                TimeSource::Event,
                "no top-level field `nope`",
            ),
            (
                path("{event}/{field:latitude}"),
                TimeSource::Event,
                "must be a single string",
            ),
            (
                path("{event}/{field:placed_at}"),
                TimeSource::Event,
                "must be a single string",
            ),
            (
                path("{event}/{date}"),
                TimeSource::Field("city".into()),
                "not a google.protobuf.Timestamp",
            ),
        ];
        for (template, time, says) in cases {
            let e = Partitioning::new("ev", template, time, &message).unwrap_err();
            assert!(e.contains(says), "{e}");
        }
        assert!(
            TimeSource::parse("wall")
                .unwrap_err()
                .contains("expected `event`")
        );
        assert_eq!(
            TimeSource::parse("field:placed_at").unwrap(),
            TimeSource::Field("placed_at".into())
        );
    }
}
