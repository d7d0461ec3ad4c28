//! The decode plan: a Protobuf message descriptor flattened into what the
//! hot path needs (field number → column, wire type, conversion) and the
//! Arrow schema of the columns it fills.

use std::collections::HashMap;
use std::sync::Arc;

use arrow::datatypes::{DataType, Field, Fields, TimeUnit};
use prost_reflect::{Cardinality, EnumDescriptor, FieldDescriptor, Kind, MessageDescriptor};

use super::SchemaError;
use super::column::UTC;

/// Message nesting deeper than this is refused at start-up.
pub(crate) const MAX_DEPTH: usize = 32;

/// Field numbers below this are looked up in a dense table.
const DENSE_LIMIT: u32 = 256;

#[derive(Debug)]
pub struct MessagePlan {
    pub(crate) fields: Vec<FieldPlan>,
    /// Indices of proto2 `required` fields (nearly always empty).
    pub(crate) required: Vec<u32>,
    /// Whether any field is `repeated` (a list or a map).
    pub(crate) has_repeated: bool,
    /// By field number: see [`Known`].
    dense: Vec<Known>,
    sparse: HashMap<u32, Known>,
}

/// A field number the schema knows: its field's index + 1 (0 in `dense`
/// for numbers it does not know) and the wire type of one of its values,
/// side by side so that a tag is checked with one load.
#[derive(Debug, Clone, Copy)]
struct Known {
    index: u16,
    wire: WireType,
}

#[derive(Debug)]
pub(crate) struct FieldPlan {
    pub(crate) name: String,
    pub(crate) kind: FieldKind,
    pub(crate) repeated: bool,
    /// The wire type of one value (`kind.wire_type()`, kept for the hot path).
    pub(crate) wire: WireType,
    /// A `map<K, V>`: repeated key/value entries, written as an Arrow map.
    pub(crate) map: bool,
    /// Absent means null (explicit presence) rather than the default value.
    pub(crate) nullable: bool,
}

#[derive(Debug)]
pub(crate) enum FieldKind {
    Double,
    Float,
    Int32,
    Int64,
    UInt32,
    UInt64,
    SInt32,
    SInt64,
    Fixed32,
    Fixed64,
    SFixed32,
    SFixed64,
    Bool,
    String,
    Bytes,
    Enum(EnumPlan),
    Message(Box<MessagePlan>),
    /// `google.protobuf.Timestamp`, written as a UTC timestamp.
    Timestamp(Box<MessagePlan>),
    /// `google.protobuf.Duration`, written as a duration in µs.
    Duration(Box<MessagePlan>),
    /// `google.protobuf.*Value` wrappers: the wrapped scalar, null when absent.
    Wrapper(Box<MessagePlan>),
    /// `google.protobuf.Struct`, `Value`, `ListValue`, `Any`: their canonical
    /// JSON, as a string.
    Json(MessageDescriptor),
}

/// Well-known types written as their canonical JSON.
const AS_JSON: [&str; 4] = [
    "google.protobuf.Struct",
    "google.protobuf.Value",
    "google.protobuf.ListValue",
    "google.protobuf.Any",
];

fn is_wrapper(name: &str) -> bool {
    matches!(
        name,
        "google.protobuf.DoubleValue"
            | "google.protobuf.FloatValue"
            | "google.protobuf.Int64Value"
            | "google.protobuf.UInt64Value"
            | "google.protobuf.Int32Value"
            | "google.protobuf.UInt32Value"
            | "google.protobuf.BoolValue"
            | "google.protobuf.StringValue"
            | "google.protobuf.BytesValue"
    )
}

/// Protobuf wire types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WireType {
    Varint,
    I64,
    Len,
    I32,
}

#[derive(Debug)]
pub(crate) struct EnumPlan {
    /// Names by number for numbers in `0..names.len()`.
    dense: Vec<Option<Box<str>>>,
    sparse: HashMap<i32, Box<str>>,
    pub(crate) default: Box<str>,
}

/// State of a plan being built: the path of messages above the current one.
struct Build {
    ancestors: Vec<String>,
    recursion_depth: usize,
}

impl MessagePlan {
    /// `recursion_depth`: how many times a message may appear inside itself
    /// as columns; deeper, the field is written as its canonical JSON.
    pub fn new(
        message: &MessageDescriptor,
        recursion_depth: usize,
    ) -> Result<MessagePlan, SchemaError> {
        Self::build(
            message,
            &mut Build {
                ancestors: Vec::new(),
                recursion_depth,
            },
        )
    }

    fn build(message: &MessageDescriptor, b: &mut Build) -> Result<MessagePlan, SchemaError> {
        let ancestors = &b.ancestors;
        if ancestors.len() >= MAX_DEPTH {
            return Err(SchemaError::Unsupported(format!(
                "message {} nests deeper than {MAX_DEPTH} levels",
                message.full_name()
            )));
        }
        b.ancestors.push(message.full_name().to_owned());
        let mut fields = Vec::new();
        let mut dense = vec![
            Known {
                index: 0,
                wire: WireType::Varint,
            };
            DENSE_LIMIT as usize
        ];
        let mut sparse = HashMap::new();
        let mut required = Vec::new();
        for field in message.fields() {
            let index = u16::try_from(fields.len() + 1).map_err(|_| {
                SchemaError::Unsupported(format!("{} has too many fields", message.full_name()))
            })?;
            if field.cardinality() == Cardinality::Required {
                required.push(u32::from(index - 1));
            }
            let plan = FieldPlan::build(&field, b)?;
            let known = Known {
                index,
                wire: plan.wire,
            };
            if field.number() < DENSE_LIMIT {
                dense[field.number() as usize] = known;
            } else {
                sparse.insert(field.number(), known);
            }
            fields.push(plan);
        }
        b.ancestors.pop();
        Ok(MessagePlan {
            has_repeated: fields.iter().any(|f| f.repeated),
            fields,
            required,
            dense,
            sparse,
        })
    }

    /// The index of the field with this number, if the schema knows it,
    /// and the wire type of one of its values.
    #[inline]
    pub(crate) fn find(&self, number: u32) -> Option<(usize, WireType)> {
        let known = if number < DENSE_LIMIT {
            self.dense[number as usize]
        } else {
            *self.sparse.get(&number)?
        };
        (known.index != 0).then(|| (known.index as usize - 1, known.wire))
    }

    /// The Arrow fields of this message's columns, in field order.
    pub fn arrow_fields(&self) -> Fields {
        self.fields.iter().map(FieldPlan::arrow_field).collect()
    }
}

impl FieldPlan {
    fn build(field: &FieldDescriptor, b: &mut Build) -> Result<FieldPlan, SchemaError> {
        let kind = match field.kind() {
            Kind::Double => FieldKind::Double,
            Kind::Float => FieldKind::Float,
            Kind::Int32 => FieldKind::Int32,
            Kind::Int64 => FieldKind::Int64,
            Kind::Uint32 => FieldKind::UInt32,
            Kind::Uint64 => FieldKind::UInt64,
            Kind::Sint32 => FieldKind::SInt32,
            Kind::Sint64 => FieldKind::SInt64,
            Kind::Fixed32 => FieldKind::Fixed32,
            Kind::Fixed64 => FieldKind::Fixed64,
            Kind::Sfixed32 => FieldKind::SFixed32,
            Kind::Sfixed64 => FieldKind::SFixed64,
            Kind::Bool => FieldKind::Bool,
            Kind::String => FieldKind::String,
            Kind::Bytes => FieldKind::Bytes,
            Kind::Enum(e) => FieldKind::Enum(EnumPlan::new(&e)),
            Kind::Message(m) if m.full_name() == "google.protobuf.Timestamp" => {
                FieldKind::Timestamp(Box::new(MessagePlan::build(&m, b)?))
            }
            Kind::Message(m) if m.full_name() == "google.protobuf.Duration" => {
                FieldKind::Duration(Box::new(MessagePlan::build(&m, b)?))
            }
            Kind::Message(m) if is_wrapper(m.full_name()) => {
                FieldKind::Wrapper(Box::new(MessagePlan::build(&m, b)?))
            }
            Kind::Message(m) if AS_JSON.contains(&m.full_name()) => FieldKind::Json(m),
            // Recursion cut: past the configured depth, the rest is JSON.
            Kind::Message(m)
                if b.ancestors.iter().filter(|a| *a == m.full_name()).count()
                    > b.recursion_depth =>
            {
                FieldKind::Json(m)
            }
            Kind::Message(m) => FieldKind::Message(Box::new(MessagePlan::build(&m, b)?)),
        };
        Ok(FieldPlan {
            name: field.name().to_owned(),
            wire: kind.wire_type(),
            kind,
            repeated: field.cardinality() == Cardinality::Repeated,
            map: field.is_map(),
            nullable: field.supports_presence(),
        })
    }

    fn arrow_field(&self) -> Field {
        let element = self.kind.arrow_type();
        if let (true, DataType::Struct(entry)) = (self.map, &element) {
            // Arrow maps: non-null keys, nullable values, never a null map.
            let fields: Fields = entry
                .iter()
                .enumerate()
                .map(|(i, f)| Arc::new(f.as_ref().clone().with_nullable(i != 0)))
                .collect();
            let entries = Field::new("entries", DataType::Struct(fields), false);
            return Field::new(&self.name, DataType::Map(Arc::new(entries), false), false);
        }
        if self.repeated {
            let item = Field::new("item", element, true);
            Field::new(&self.name, DataType::List(Arc::new(item)), false)
        } else {
            Field::new(&self.name, element, true)
        }
    }

    /// Whether a value of this field may arrive with `wire`.
    #[inline]
    pub(crate) fn accepts(&self, wire: WireType) -> bool {
        wire == self.wire || (self.repeated && wire == WireType::Len && self.wire != WireType::Len)
    }
}

impl FieldKind {
    pub(crate) fn wire_type(&self) -> WireType {
        match self {
            FieldKind::Int32
            | FieldKind::Int64
            | FieldKind::UInt32
            | FieldKind::UInt64
            | FieldKind::SInt32
            | FieldKind::SInt64
            | FieldKind::Bool
            | FieldKind::Enum(_) => WireType::Varint,
            FieldKind::Double | FieldKind::Fixed64 | FieldKind::SFixed64 => WireType::I64,
            FieldKind::Float | FieldKind::Fixed32 | FieldKind::SFixed32 => WireType::I32,
            FieldKind::String
            | FieldKind::Bytes
            | FieldKind::Message(_)
            | FieldKind::Timestamp(_)
            | FieldKind::Duration(_)
            | FieldKind::Wrapper(_)
            | FieldKind::Json(_) => WireType::Len,
        }
    }

    fn arrow_type(&self) -> DataType {
        match self {
            FieldKind::Double => DataType::Float64,
            FieldKind::Float => DataType::Float32,
            FieldKind::Int32 | FieldKind::SInt32 | FieldKind::SFixed32 => DataType::Int32,
            FieldKind::Int64 | FieldKind::SInt64 | FieldKind::SFixed64 => DataType::Int64,
            FieldKind::UInt32 | FieldKind::Fixed32 => DataType::UInt32,
            FieldKind::UInt64 | FieldKind::Fixed64 => DataType::UInt64,
            FieldKind::Bool => DataType::Boolean,
            FieldKind::String | FieldKind::Enum(_) => DataType::Utf8,
            FieldKind::Bytes => DataType::Binary,
            FieldKind::Message(m) => DataType::Struct(m.arrow_fields()),
            FieldKind::Timestamp(_) => DataType::Timestamp(TimeUnit::Microsecond, Some(UTC.into())),
            FieldKind::Duration(_) => DataType::Duration(TimeUnit::Microsecond),
            FieldKind::Wrapper(inner) => inner
                .fields
                .first()
                .map_or(DataType::Null, |value| value.kind.arrow_type()),
            FieldKind::Json(_) => DataType::Utf8,
        }
    }
}

impl EnumPlan {
    fn new(descriptor: &EnumDescriptor) -> EnumPlan {
        let mut dense: Vec<Option<Box<str>>> = Vec::new();
        let mut sparse = HashMap::new();
        for value in descriptor.values() {
            let name: Box<str> = value.name().into();
            match usize::try_from(value.number()) {
                Ok(n) if n < 1024 => {
                    if dense.len() <= n {
                        dense.resize(n + 1, None);
                    }
                    dense[n].get_or_insert(name);
                }
                _ => {
                    sparse.entry(value.number()).or_insert(name);
                }
            }
        }
        EnumPlan {
            dense,
            sparse,
            default: descriptor.default_value().name().into(),
        }
    }

    /// The value's name, or `None` for a number the schema does not know.
    #[inline]
    pub(crate) fn name(&self, number: i32) -> Option<&str> {
        match usize::try_from(number) {
            Ok(n) if n < self.dense.len() => self.dense[n].as_deref(),
            _ => self.sparse.get(&number).map(|s| &**s),
        }
    }
}
