//! Typed Arrow column builders the decoder appends to.
//!
//! An enum rather than `Box<dyn ArrayBuilder>` so the per-value append is a
//! match, not a downcast. Structs and lists are built by hand from their
//! children, which lets nested messages decode straight into their columns.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayBuilder, ArrayRef, ArrowPrimitiveType, AsArray, BinaryArray, BinaryBuilder,
    BooleanBuilder, DurationMicrosecondBuilder, Float32Builder, Float64Builder, Int32Builder,
    Int64Builder, ListArray, MapArray, NullBufferBuilder, PrimitiveBuilder, StringArray,
    StructArray, TimestampMicrosecondBuilder, UInt32Builder, UInt64Builder,
};
use arrow::buffer::{OffsetBuffer, ScalarBuffer};
use arrow::datatypes::{DataType, FieldRef, Fields, TimeUnit};

/// The timezone of every timestamp column sluice writes.
pub const UTC: &str = "UTC";

/// One Arrow column under construction.
#[derive(Debug)]
pub enum Column {
    F64(Float64Builder),
    F32(Float32Builder),
    I32(Int32Builder),
    I64(Int64Builder),
    U32(UInt32Builder),
    U64(UInt64Builder),
    Bool(BooleanBuilder),
    /// UTF-8 strings, collected as bytes: the decoder has validated each
    /// value already, and [`Column::finish`] checks the whole batch once.
    Str(BinaryBuilder),
    Bin(BinaryBuilder),
    Ts(TimestampMicrosecondBuilder),
    Dur(DurationMicrosecondBuilder),
    Struct(StructColumn),
    List(ListColumn),
}

#[derive(Debug)]
pub struct StructColumn {
    pub(crate) fields: Fields,
    pub(crate) children: Vec<Column>,
    pub(crate) nulls: NullBufferBuilder,
}

#[derive(Debug)]
pub struct ListColumn {
    pub(crate) field: FieldRef,
    pub(crate) child: Box<Column>,
    pub(crate) offsets: Vec<i32>,
    /// Finish as an Arrow map (the child is the key/value struct).
    pub(crate) map: bool,
}

impl Column {
    /// An empty builder for `data_type`. Only the types the schema mapping
    /// produces are supported; anything else is a bug in the mapping and is
    /// reported as `None`.
    ///
    /// Builders start empty: a process may hold thousands of open files,
    /// and `finish` leaves a builder empty anyway.
    pub fn for_type(data_type: &DataType) -> Option<Column> {
        Some(match data_type {
            DataType::Float64 => Column::F64(Float64Builder::with_capacity(0)),
            DataType::Float32 => Column::F32(Float32Builder::with_capacity(0)),
            DataType::Int32 => Column::I32(Int32Builder::with_capacity(0)),
            DataType::Int64 => Column::I64(Int64Builder::with_capacity(0)),
            DataType::UInt32 => Column::U32(UInt32Builder::with_capacity(0)),
            DataType::UInt64 => Column::U64(UInt64Builder::with_capacity(0)),
            DataType::Boolean => Column::Bool(BooleanBuilder::with_capacity(0)),
            DataType::Utf8 => Column::Str(BinaryBuilder::with_capacity(0, 0)),
            DataType::Binary => Column::Bin(BinaryBuilder::with_capacity(0, 0)),
            DataType::Timestamp(TimeUnit::Microsecond, _) => {
                Column::Ts(TimestampMicrosecondBuilder::with_capacity(0).with_timezone(UTC))
            }
            DataType::Duration(TimeUnit::Microsecond) => {
                Column::Dur(DurationMicrosecondBuilder::with_capacity(0))
            }
            DataType::Struct(fields) => Column::Struct(StructColumn {
                fields: fields.clone(),
                children: fields
                    .iter()
                    .map(|f| Column::for_type(f.data_type()))
                    .collect::<Option<_>>()?,
                nulls: NullBufferBuilder::new(0),
            }),
            DataType::List(field) => Column::List(ListColumn {
                field: field.clone(),
                child: Box::new(Column::for_type(field.data_type())?),
                offsets: vec![0],
                map: false,
            }),
            DataType::Map(entries, _) => Column::List(ListColumn {
                field: entries.clone(),
                child: Box::new(Column::for_type(entries.data_type())?),
                offsets: vec![0],
                map: true,
            }),
            _ => return None,
        })
    }

    pub fn append_null(&mut self) {
        match self {
            Column::F64(b) => b.append_null(),
            Column::F32(b) => b.append_null(),
            Column::I32(b) => b.append_null(),
            Column::I64(b) => b.append_null(),
            Column::U32(b) => b.append_null(),
            Column::U64(b) => b.append_null(),
            Column::Bool(b) => b.append_null(),
            Column::Str(b) => b.append_null(),
            Column::Bin(b) => b.append_null(),
            Column::Ts(b) => b.append_null(),
            Column::Dur(b) => b.append_null(),
            Column::Struct(s) => {
                for child in &mut s.children {
                    child.append_null();
                }
                s.nulls.append_null();
            }
            // Lists are never null: an absent repeated field is an empty list.
            Column::List(l) => l.close_row(),
        }
    }

    /// Builds the array of everything appended so far and starts over,
    /// empty.
    pub fn finish(&mut self) -> ArrayRef {
        self.take(false)
    }

    /// [`Column::finish`], leaving the builder with room for as many values
    /// (and value bytes) as it just held, so the next batch of a busy file
    /// fills it without growing it from empty. [`Column::buffered_bytes`]
    /// before the call is what the room costs.
    pub fn finish_keeping_capacity(&mut self) -> ArrayRef {
        self.take(true)
    }

    fn take(&mut self, keep: bool) -> ArrayRef {
        match self {
            Column::F64(b) => take_primitive(b, keep),
            Column::F32(b) => take_primitive(b, keep),
            Column::I32(b) => take_primitive(b, keep),
            Column::I64(b) => take_primitive(b, keep),
            Column::U32(b) => take_primitive(b, keep),
            Column::U64(b) => take_primitive(b, keep),
            Column::Ts(b) => take_primitive(b, keep),
            Column::Dur(b) => take_primitive(b, keep),
            Column::Bool(b) => {
                let array = b.finish();
                if keep {
                    *b = BooleanBuilder::with_capacity(array.len());
                }
                Arc::new(array)
            }
            Column::Str(b) => {
                let binary = take_binary(b, keep);
                match StringArray::try_from_binary(binary.clone()) {
                    Ok(strings) => Arc::new(strings),
                    // Unreachable: every value was validated on the way in.
                    // Keep the rows rather than lose them.
                    Err(_) => Arc::new(binary),
                }
            }
            Column::Bin(b) => Arc::new(take_binary(b, keep)),
            Column::Struct(s) => {
                let len = s.nulls.len();
                let arrays = s.children.iter_mut().map(|c| c.take(keep)).collect();
                let nulls = s.nulls.finish();
                if keep {
                    s.nulls = NullBufferBuilder::new(len);
                }
                Arc::new(struct_array(s.fields.clone(), arrays, nulls, len))
            }
            Column::List(l) => {
                let mut next = Vec::with_capacity(if keep { l.offsets.len() } else { 1 });
                next.push(0);
                let offsets =
                    OffsetBuffer::new(ScalarBuffer::from(std::mem::replace(&mut l.offsets, next)));
                let values = l.child.take(keep);
                let map = match (l.map, values.as_struct_opt()) {
                    (true, Some(entries)) => MapArray::try_new(
                        l.field.clone(),
                        offsets.clone(),
                        entries.clone(),
                        None,
                        false,
                    )
                    .ok(),
                    _ => None,
                };
                match map {
                    Some(map) => Arc::new(map),
                    // Not a well-formed map (a bug in the mapping): keep the
                    // entries as a list rather than lose them.
                    None => Arc::new(ListArray::new(l.field.clone(), offsets, values, None)),
                }
            }
        }
    }

    /// Approximate bytes held, for the memory budget.
    pub fn buffered_bytes(&self) -> usize {
        match self {
            Column::F64(b) => b.values_slice().len() * 8,
            Column::F32(b) => b.values_slice().len() * 4,
            Column::I32(b) => b.values_slice().len() * 4,
            Column::I64(b) => b.values_slice().len() * 8,
            Column::U32(b) => b.values_slice().len() * 4,
            Column::U64(b) => b.values_slice().len() * 8,
            Column::Bool(b) => b.len() / 8,
            Column::Str(b) => b.values_slice().len() + b.offsets_slice().len() * 4,
            Column::Bin(b) => b.values_slice().len() + b.offsets_slice().len() * 4,
            Column::Ts(b) => b.values_slice().len() * 8,
            Column::Dur(b) => b.values_slice().len() * 8,
            Column::Struct(s) => s.children.iter().map(Column::buffered_bytes).sum(),
            Column::List(l) => l.offsets.len() * 4 + l.child.buffered_bytes(),
        }
    }
}

/// Finishes a primitive builder; with `keep`, leaves it with room for as
/// many values (its data type, timezone included, carried over).
fn take_primitive<T: ArrowPrimitiveType>(b: &mut PrimitiveBuilder<T>, keep: bool) -> ArrayRef {
    let array = b.finish();
    if keep {
        *b = PrimitiveBuilder::with_capacity(array.len()).with_data_type(array.data_type().clone());
    }
    Arc::new(array)
}

/// Finishes a byte builder; with `keep`, leaves it with room for as many
/// values and value bytes.
fn take_binary(b: &mut BinaryBuilder, keep: bool) -> BinaryArray {
    let array = b.finish();
    if keep {
        *b = BinaryBuilder::with_capacity(array.len(), array.values().len());
    }
    array
}

impl StructColumn {
    pub(crate) fn close_row(&mut self) {
        self.nulls.append_non_null();
    }
}

impl ListColumn {
    /// Ends the current row's list: the elements appended to `child` since
    /// the last call belong to it.
    pub(crate) fn close_row(&mut self) {
        let len = i32::try_from(self.child_len()).unwrap_or(i32::MAX);
        self.offsets.push(len);
    }

    fn child_len(&self) -> usize {
        match self.child.as_ref() {
            Column::F64(b) => b.len(),
            Column::F32(b) => b.len(),
            Column::I32(b) => b.len(),
            Column::I64(b) => b.len(),
            Column::U32(b) => b.len(),
            Column::U64(b) => b.len(),
            Column::Bool(b) => b.len(),
            Column::Str(b) => b.len(),
            Column::Bin(b) => b.len(),
            Column::Ts(b) => b.len(),
            Column::Dur(b) => b.len(),
            Column::Struct(s) => s.nulls.len(),
            Column::List(l) => l.offsets.len() - 1,
        }
    }
}

/// `StructArray::new` cannot know the length of a struct without fields.
fn struct_array(
    fields: Fields,
    arrays: Vec<ArrayRef>,
    nulls: Option<arrow::buffer::NullBuffer>,
    len: usize,
) -> StructArray {
    if fields.is_empty() {
        StructArray::new_empty_fields(len, nulls)
    } else {
        StructArray::new(fields, arrays, nulls)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{Array, AsArray};
    use arrow::datatypes::{Field, Int64Type};

    #[test]
    fn list_of_int_builds_offsets() {
        let item = Arc::new(Field::new("item", DataType::Int64, true));
        let mut col = Column::for_type(&DataType::List(item)).unwrap();
        let Column::List(list) = &mut col else {
            unreachable!()
        };
        if let Column::I64(b) = list.child.as_mut() {
            b.append_value(1);
            b.append_value(2);
        }
        list.close_row();
        col.append_null();
        let array = col.finish();
        let list = array.as_list::<i32>();
        assert_eq!(list.len(), 2);
        assert_eq!(list.value(0).as_primitive::<Int64Type>().values(), &[1, 2]);
        assert_eq!(list.value(1).len(), 0);
    }

    #[test]
    fn null_struct_keeps_children_aligned() {
        let fields = Fields::from(vec![Field::new("a", DataType::Int32, true)]);
        let mut col = Column::for_type(&DataType::Struct(fields)).unwrap();
        col.append_null();
        let array = col.finish();
        assert_eq!(array.len(), 1);
        assert!(array.is_null(0));
    }
}
