//! Protobuf wire format straight into Arrow columns, without building a
//! message object per record.
//!
//! Two passes over each payload. The first walks the bytes, checks every tag,
//! length, wire type and string, and records what it found in a reusable
//! list of entries (a pre-order tree for nested messages). Only if the whole
//! record is valid does the second pass append to the columns, so a bad
//! record never leaves a half-written row behind. After the first few
//! records neither pass allocates.
//!
//! Semantics follow the Protobuf spec: unknown fields are skipped, the last
//! value of a non-repeated field wins, repeated scalars may come packed or
//! not, absent fields without presence read as their default.

use std::io::Write as _;

use prost_reflect::{DynamicMessage, MessageDescriptor};

use super::column::Column;
use super::plan::{FieldKind, FieldPlan, MAX_DEPTH, MessagePlan, WireType};

/// Why a payload could not be decoded. Names the field where it can.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("payload is truncated")]
    Truncated,
    #[error("invalid varint")]
    BadVarint,
    #[error("required field `{0}` is missing")]
    MissingRequired(String),
    #[error("invalid field number 0")]
    ZeroFieldNumber,
    #[error("unsupported wire type {0}")]
    BadWireType(u8),
    #[error(
        "field `{field}` arrived with wire type {wire:?}, which its schema type does not allow"
    )]
    WireTypeMismatch { field: String, wire: WireTypeName },
    #[error("field `{0}` is not valid UTF-8")]
    InvalidUtf8(String),
    #[error("message nesting deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("JSON payload does not match the schema: {0}")]
    Json(String),
    #[error("field `{field}` is not a valid {message}: {error}")]
    WellKnown {
        field: String,
        message: String,
        error: String,
    },
}

/// A wire type as shown in errors.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WireTypeName {
    Varint,
    I64,
    Len,
    I32,
}

impl From<WireType> for WireTypeName {
    fn from(w: WireType) -> Self {
        match w {
            WireType::Varint => WireTypeName::Varint,
            WireType::I64 => WireTypeName::I64,
            WireType::Len => WireTypeName::Len,
            WireType::I32 => WireTypeName::I32,
        }
    }
}

const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy)]
struct Entry {
    field: u32,
    value: Value,
}

#[derive(Debug, Clone, Copy)]
enum Value {
    Varint(u64),
    I64(u64),
    I32(u32),
    /// Bytes, a string, or packed scalars: a range of the payload.
    Len(u32, u32),
    /// A nested message; its fields are the entries up to `end`, in field
    /// order if `ordered` (see [`parse`]).
    Message {
        end: u32,
        ordered: bool,
    },
    /// A message written as JSON: index into the record's JSON strings.
    Json(u32),
}

/// What pass one records for one payload.
#[derive(Debug, Default)]
struct Scratch {
    entries: Vec<Entry>,
    /// Canonical JSON of `Struct`/`Value`/`ListValue`/`Any` fields.
    json: Vec<String>,
}

/// Decodes payloads of one message type into that message's columns.
#[derive(Debug, Default)]
pub struct Decoder {
    scratch: Scratch,
    slots: Vec<u32>,
}

impl Decoder {
    pub fn new() -> Decoder {
        Decoder::default()
    }

    /// Appends one row decoded from `payload` to `columns` (one per top-level
    /// field of `plan`). On error nothing is appended.
    pub fn decode(
        &mut self,
        plan: &MessagePlan,
        payload: &[u8],
        columns: &mut [Column],
    ) -> Result<(), DecodeError> {
        if payload.len() > u32::MAX as usize {
            return Err(DecodeError::Truncated);
        }
        self.scratch.entries.clear();
        self.scratch.json.clear();
        let ordered = parse(plan, payload, 0, payload.len(), &mut self.scratch, 0)?;
        let pass = Pass2 {
            buf: payload,
            entries: &self.scratch.entries,
            json: &self.scratch.json,
        };
        pass.append_level(
            plan,
            (0, self.scratch.entries.len()),
            ordered,
            columns,
            &mut self.slots,
        );
        Ok(())
    }
}

/// Pass one: validate `buf[start..end]` as a `plan` message and record it.
/// Returns whether its known fields came once each, in field order, and
/// none is repeated: the usual encoding, which pass two reads in one walk.
fn parse(
    plan: &MessagePlan,
    buf: &[u8],
    start: usize,
    end: usize,
    scratch: &mut Scratch,
    depth: usize,
) -> Result<bool, DecodeError> {
    if depth >= MAX_DEPTH {
        return Err(DecodeError::TooDeep);
    }
    let level_start = scratch.entries.len();
    let mut ordered = !plan.has_repeated;
    let mut next_index = 0;
    let mut pos = start;
    while pos < end {
        let key = varint(buf, &mut pos, end)?;
        let number = u32::try_from(key >> 3).map_err(|_| DecodeError::BadVarint)?;
        if number == 0 {
            return Err(DecodeError::ZeroFieldNumber);
        }
        let wire = match key & 7 {
            0 => WireType::Varint,
            1 => WireType::I64,
            2 => WireType::Len,
            5 => WireType::I32,
            other => return Err(DecodeError::BadWireType(other as u8)),
        };
        let field = match plan.find(number) {
            Some((i, natural)) => {
                // The natural wire type settles nearly every tag without
                // reading the field's plan.
                if wire != natural && !plan.fields[i].accepts(wire) {
                    return Err(DecodeError::WireTypeMismatch {
                        field: plan.fields[i].name.clone(),
                        wire: wire.into(),
                    });
                }
                ordered &= i >= next_index;
                next_index = i + 1;
                Some(i as u32)
            }
            None => None,
        };
        let value = match wire {
            WireType::Varint => Value::Varint(varint(buf, &mut pos, end)?),
            WireType::I64 => Value::I64(u64::from_le_bytes(fixed(buf, &mut pos, end)?)),
            WireType::I32 => Value::I32(u32::from_le_bytes(fixed(buf, &mut pos, end)?)),
            WireType::Len => {
                let len = varint(buf, &mut pos, end)?;
                let from = pos;
                // Not `ok_or`, which builds (and drops) the error for
                // every field.
                let Some(to) = usize::try_from(len)
                    .ok()
                    .and_then(|len| from.checked_add(len))
                    .filter(|&to| to <= end)
                else {
                    return Err(DecodeError::Truncated);
                };
                pos = to;
                if let Some(i) = field {
                    parse_len(i, &plan.fields[i as usize], buf, from, to, scratch, depth)?;
                }
                continue;
            }
        };
        if let Some(i) = field {
            scratch.entries.push(Entry { field: i, value });
        }
    }
    for &required in &plan.required {
        if !level_has(&scratch.entries, level_start, required) {
            let name = &plan.fields[required as usize].name;
            return Err(DecodeError::MissingRequired(name.clone()));
        }
    }
    Ok(ordered)
}

/// Whether the level starting at `entries[start]` holds field `index`
/// (nested messages' entries are skipped over).
fn level_has(entries: &[Entry], start: usize, index: u32) -> bool {
    let mut i = start;
    while let Some(entry) = entries.get(i) {
        if entry.field == index {
            return true;
        }
        i = match entry.value {
            Value::Message { end, .. } => end as usize,
            _ => i + 1,
        };
    }
    false
}

/// A length-delimited value of a known field: nested message, string, bytes,
/// a well-known type or packed scalars.
fn parse_len(
    index: u32,
    field: &FieldPlan,
    buf: &[u8],
    from: usize,
    to: usize,
    scratch: &mut Scratch,
    depth: usize,
) -> Result<(), DecodeError> {
    let value = match &field.kind {
        FieldKind::Message(sub)
        | FieldKind::Timestamp(sub)
        | FieldKind::Duration(sub)
        | FieldKind::Wrapper(sub) => {
            let at = scratch.entries.len();
            scratch.entries.push(Entry {
                field: index,
                value: Value::Message {
                    end: 0,
                    ordered: false,
                },
            });
            let ordered = parse(sub, buf, from, to, scratch, depth + 1)?;
            scratch.entries[at].value = Value::Message {
                end: scratch.entries.len() as u32,
                ordered,
            };
            return Ok(());
        }
        FieldKind::Json(descriptor) => {
            let json =
                to_json(descriptor, &buf[from..to]).map_err(|error| DecodeError::WellKnown {
                    field: field.name.clone(),
                    message: descriptor.full_name().to_owned(),
                    error,
                })?;
            scratch.json.push(json);
            Value::Json(scratch.json.len() as u32 - 1)
        }
        FieldKind::String => {
            // Most strings are ASCII: a word-at-a-time check settles them.
            let bytes = &buf[from..to];
            if !bytes.is_ascii() && std::str::from_utf8(bytes).is_err() {
                return Err(DecodeError::InvalidUtf8(field.name.clone()));
            }
            Value::Len(from as u32, to as u32)
        }
        FieldKind::Bytes => Value::Len(from as u32, to as u32),
        packed => {
            // Packed repeated scalars: check every element now.
            let mut pos = from;
            while pos < to {
                match packed.wire_type() {
                    WireType::Varint => {
                        varint(buf, &mut pos, to)?;
                    }
                    WireType::I64 => {
                        fixed::<8>(buf, &mut pos, to)?;
                    }
                    WireType::I32 => {
                        fixed::<4>(buf, &mut pos, to)?;
                    }
                    WireType::Len => return Err(DecodeError::Truncated),
                }
            }
            Value::Len(from as u32, to as u32)
        }
    };
    scratch.entries.push(Entry {
        field: index,
        value,
    });
    Ok(())
}

/// The canonical JSON of a message (allocates: only for the well-known
/// types written as JSON).
fn to_json(descriptor: &MessageDescriptor, bytes: &[u8]) -> Result<String, String> {
    let message = DynamicMessage::decode(descriptor.clone(), bytes).map_err(|e| e.to_string())?;
    serde_json::to_string(&message).map_err(|e| e.to_string())
}

/// Pass two over a validated payload: appends to the columns. Everything
/// was checked by pass one, so nothing here can fail.
struct Pass2<'a> {
    buf: &'a [u8],
    entries: &'a [Entry],
    json: &'a [String],
}

impl Pass2<'_> {
    /// Appends the message whose entries are `entries[first..end]`;
    /// `ordered` as [`parse`] found it.
    fn append_level(
        &self,
        plan: &MessagePlan,
        (first, end): (usize, usize),
        ordered: bool,
        columns: &mut [Column],
        slots: &mut Vec<u32>,
    ) {
        if ordered {
            // Entries and fields side by side: each entry is the next
            // present field's only value.
            let mut i = first;
            for (index, (field, column)) in plan.fields.iter().zip(columns.iter_mut()).enumerate() {
                if i < end && self.entries[i].field as usize == index {
                    self.append_value(&field.kind, i, column, slots);
                    i = self.next(i);
                } else {
                    append_absent(field, column);
                }
            }
            debug_assert_eq!(i, end, "every entry of an ordered level is appended");
            return;
        }
        let base = slots.len();
        slots.resize(base + plan.fields.len(), NONE);
        let mut i = first;
        while i < end {
            let e = self.entries[i];
            if !plan.fields[e.field as usize].repeated {
                slots[base + e.field as usize] = i as u32;
            }
            i = self.next(i);
        }
        for (index, (field, column)) in plan.fields.iter().zip(columns.iter_mut()).enumerate() {
            if field.repeated {
                let Column::List(list) = column else {
                    continue;
                };
                let mut i = first;
                while i < end {
                    if self.entries[i].field as usize == index {
                        self.append_repeated(field, i, &mut list.child, slots);
                    }
                    i = self.next(i);
                }
                list.close_row();
            } else {
                match slots[base + index] {
                    NONE => append_absent(field, column),
                    at => self.append_value(&field.kind, at as usize, column, slots),
                }
            }
        }
        slots.truncate(base);
    }

    fn next(&self, i: usize) -> usize {
        match self.entries[i].value {
            Value::Message { end, .. } => end as usize,
            _ => i + 1,
        }
    }

    fn append_repeated(
        &self,
        field: &FieldPlan,
        at: usize,
        child: &mut Column,
        slots: &mut Vec<u32>,
    ) {
        let natural = field.kind.wire_type();
        match self.entries[at].value {
            Value::Len(from, to) if natural != WireType::Len => {
                let (mut pos, to) = (from as usize, to as usize);
                while pos < to {
                    let value =
                        match natural {
                            WireType::Varint => varint(self.buf, &mut pos, to).map(Value::Varint),
                            WireType::I64 => fixed(self.buf, &mut pos, to)
                                .map(|b| Value::I64(u64::from_le_bytes(b))),
                            WireType::I32 => fixed(self.buf, &mut pos, to)
                                .map(|b| Value::I32(u32::from_le_bytes(b))),
                            WireType::Len => break,
                        };
                    match value {
                        Ok(value) => append_scalar(&field.kind, self.buf, value, child),
                        Err(_) => break,
                    }
                }
            }
            _ => self.append_value(&field.kind, at, child, slots),
        }
    }

    /// The last value of field `index` among the entries in `(at, end)`.
    fn last_of(&self, at: usize, end: usize, index: u32) -> Option<Value> {
        self.entries[at + 1..end]
            .iter()
            .rev()
            .find(|e| e.field == index)
            .map(|e| e.value)
    }

    /// Seconds and nanos of a Timestamp or Duration, as µs.
    fn micros(&self, at: usize, end: usize) -> i64 {
        let seconds = match self.last_of(at, end, 0) {
            Some(Value::Varint(v)) => v as i64,
            _ => 0,
        };
        let nanos = match self.last_of(at, end, 1) {
            Some(Value::Varint(v)) => i64::from(v as i32),
            _ => 0,
        };
        seconds
            .saturating_mul(1_000_000)
            .saturating_add(nanos / 1_000)
    }

    // Inlined into `append_level`'s loops, as is `append_scalar`: a call
    // per field was a fifth of decoding (`cargo bench --bench decode`).
    #[inline(always)]
    fn append_value(&self, kind: &FieldKind, at: usize, column: &mut Column, slots: &mut Vec<u32>) {
        match (kind, self.entries[at].value, column) {
            (FieldKind::Message(sub), Value::Message { end, ordered }, Column::Struct(s)) => {
                self.append_level(sub, (at + 1, end as usize), ordered, &mut s.children, slots);
                s.close_row();
            }
            (FieldKind::Timestamp(_), Value::Message { end, .. }, Column::Ts(b)) => {
                b.append_value(self.micros(at, end as usize));
            }
            (FieldKind::Duration(_), Value::Message { end, .. }, Column::Dur(b)) => {
                b.append_value(self.micros(at, end as usize));
            }
            (FieldKind::Wrapper(sub), Value::Message { end, .. }, column) => {
                let Some(inner) = sub.fields.first() else {
                    column.append_null();
                    return;
                };
                match self.last_of(at, end as usize, 0) {
                    Some(value) => append_scalar(&inner.kind, self.buf, value, column),
                    // A wrapper present without its value holds the default.
                    None => append_default(&inner.kind, column),
                }
            }
            (FieldKind::Json(_), Value::Json(i), Column::Str(b)) => match self.json.get(i as usize)
            {
                Some(json) => b.append_value(json),
                None => b.append_null(),
            },
            (kind, value, column) => append_scalar(kind, self.buf, value, column),
        }
    }
}

#[inline(always)]
fn append_scalar(kind: &FieldKind, buf: &[u8], value: Value, column: &mut Column) {
    match (kind, value, column) {
        (FieldKind::Int32, Value::Varint(v), Column::I32(b)) => b.append_value(v as i32),
        (FieldKind::SInt32, Value::Varint(v), Column::I32(b)) => b.append_value(zigzag32(v as u32)),
        (FieldKind::SFixed32, Value::I32(v), Column::I32(b)) => b.append_value(v as i32),
        (FieldKind::Int64, Value::Varint(v), Column::I64(b)) => b.append_value(v as i64),
        (FieldKind::SInt64, Value::Varint(v), Column::I64(b)) => b.append_value(zigzag64(v)),
        (FieldKind::SFixed64, Value::I64(v), Column::I64(b)) => b.append_value(v as i64),
        (FieldKind::UInt32, Value::Varint(v), Column::U32(b)) => b.append_value(v as u32),
        (FieldKind::Fixed32, Value::I32(v), Column::U32(b)) => b.append_value(v),
        (FieldKind::UInt64, Value::Varint(v), Column::U64(b)) => b.append_value(v),
        (FieldKind::Fixed64, Value::I64(v), Column::U64(b)) => b.append_value(v),
        (FieldKind::Double, Value::I64(v), Column::F64(b)) => b.append_value(f64::from_bits(v)),
        (FieldKind::Float, Value::I32(v), Column::F32(b)) => b.append_value(f32::from_bits(v)),
        (FieldKind::Bool, Value::Varint(v), Column::Bool(b)) => b.append_value(v != 0),
        (FieldKind::Enum(e), Value::Varint(v), Column::Str(b)) => match e.name(v as i32) {
            Some(name) => b.append_value(name),
            None => {
                // An enum number newer than the schema: keep the number.
                let _ = write!(b, "{}", v as i32);
                b.append_value([]);
            }
        },
        // Validated as UTF-8 in pass one.
        (FieldKind::String, Value::Len(from, to), Column::Str(b)) => {
            b.append_value(&buf[from as usize..to as usize])
        }
        (FieldKind::Bytes, Value::Len(from, to), Column::Bin(b)) => {
            b.append_value(&buf[from as usize..to as usize])
        }
        (_, _, column) => column.append_null(),
    }
}

/// An absent non-repeated field: null with explicit presence, else the
/// type's default.
fn append_absent(field: &FieldPlan, column: &mut Column) {
    if field.nullable {
        column.append_null();
    } else {
        append_default(&field.kind, column);
    }
}

/// The type's default value (proto3 zero values; an enum's first value).
fn append_default(kind: &FieldKind, column: &mut Column) {
    match (kind, column) {
        (_, Column::I32(b)) => b.append_value(0),
        (_, Column::I64(b)) => b.append_value(0),
        (_, Column::U32(b)) => b.append_value(0),
        (_, Column::U64(b)) => b.append_value(0),
        (_, Column::F32(b)) => b.append_value(0.0),
        (_, Column::F64(b)) => b.append_value(0.0),
        (_, Column::Bool(b)) => b.append_value(false),
        (FieldKind::Enum(e), Column::Str(b)) => b.append_value(e.default.as_bytes()),
        (_, Column::Str(b)) => b.append_value([]),
        (_, Column::Bin(b)) => b.append_value([]),
        (_, column) => column.append_null(),
    }
}

#[inline]
fn varint(buf: &[u8], pos: &mut usize, end: usize) -> Result<u64, DecodeError> {
    // Tags and small values are one byte.
    if *pos < end && buf[*pos] < 0x80 {
        *pos += 1;
        return Ok(u64::from(buf[*pos - 1]));
    }
    let mut value = 0u64;
    for shift in (0..70).step_by(7) {
        if *pos >= end {
            return Err(DecodeError::Truncated);
        }
        let byte = buf[*pos];
        *pos += 1;
        if shift == 63 && byte > 1 {
            return Err(DecodeError::BadVarint);
        }
        value |= u64::from(byte & 0x7f) << shift;
        if byte < 0x80 {
            return Ok(value);
        }
    }
    Err(DecodeError::BadVarint)
}

#[inline]
fn fixed<const N: usize>(buf: &[u8], pos: &mut usize, end: usize) -> Result<[u8; N], DecodeError> {
    let to = *pos + N;
    if to > end {
        return Err(DecodeError::Truncated);
    }
    let mut out = [0u8; N];
    out.copy_from_slice(&buf[*pos..to]);
    *pos = to;
    Ok(out)
}

#[inline]
fn zigzag32(v: u32) -> i32 {
    ((v >> 1) as i32) ^ -((v & 1) as i32)
}

#[inline]
fn zigzag64(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

#[cfg(test)]
#[path = "decode_tests.rs"]
mod tests;
