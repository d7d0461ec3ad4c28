use std::path::Path;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::*;
use prost::Message as _;
use prost_reflect::{DynamicMessage, Value as PValue};

use super::*;
use crate::schema::{LocalRegistry, MessagePlan};

fn registry() -> LocalRegistry {
    LocalRegistry::open(&Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas")).unwrap()
}

struct Fixture {
    registry: LocalRegistry,
    plan: MessagePlan,
    columns: Vec<Column>,
    decoder: Decoder,
}

impl Fixture {
    fn new(message: &str) -> Fixture {
        Fixture::with_depth(message, 3)
    }

    fn with_depth(message: &str, depth: usize) -> Fixture {
        let registry = registry();
        let plan = MessagePlan::new(&registry.message(message).unwrap(), depth).unwrap();
        let columns = plan
            .arrow_fields()
            .iter()
            .map(|f| Column::for_type(f.data_type()).unwrap())
            .collect();
        Fixture {
            registry,
            plan,
            columns,
            decoder: Decoder::new(),
        }
    }

    fn message(&self, name: &str) -> DynamicMessage {
        DynamicMessage::new(self.registry.message(name).unwrap())
    }

    fn decode(&mut self, bytes: &[u8]) -> Result<(), DecodeError> {
        self.decoder.decode(&self.plan, bytes, &mut self.columns)
    }

    fn finish(&mut self) -> RecordBatch {
        self.batch(Column::finish)
    }

    fn batch(&mut self, finish: fn(&mut Column) -> arrow::array::ArrayRef) -> RecordBatch {
        let arrays = self.columns.iter_mut().map(finish).collect();
        let schema = Schema::new(self.plan.arrow_fields());
        RecordBatch::try_new(std::sync::Arc::new(schema), arrays).unwrap()
    }
}

fn set(m: &mut DynamicMessage, field: &str, value: PValue) {
    m.set_field_by_name(field, value);
}

fn full_scalars(f: &Fixture) -> DynamicMessage {
    let mut m = f.message("sluice.testing.Scalars");
    set(&mut m, "f_double", PValue::F64(1.5));
    set(&mut m, "f_float", PValue::F32(-2.25));
    set(&mut m, "f_int32", PValue::I32(-7));
    set(&mut m, "f_int64", PValue::I64(-9_000_000_000));
    set(&mut m, "f_uint32", PValue::U32(4_000_000_000));
    set(&mut m, "f_uint64", PValue::U64(u64::MAX));
    set(&mut m, "f_sint32", PValue::I32(-123));
    set(&mut m, "f_sint64", PValue::I64(i64::MIN));
    set(&mut m, "f_fixed32", PValue::U32(77));
    set(&mut m, "f_fixed64", PValue::U64(88));
    set(&mut m, "f_sfixed32", PValue::I32(-99));
    set(&mut m, "f_sfixed64", PValue::I64(-100));
    set(&mut m, "f_bool", PValue::Bool(true));
    set(&mut m, "f_string", PValue::String("héllo".into()));
    set(&mut m, "f_bytes", PValue::Bytes(vec![0, 1, 2].into()));
    set(&mut m, "f_enum", PValue::EnumNumber(2));
    set(&mut m, "f_optional", PValue::I32(0));
    let mut point = f.message("sluice.testing.Point");
    set(&mut point, "x", PValue::I32(-1));
    set(&mut point, "y", PValue::I32(2));
    set(&mut point, "label", PValue::String("p".into()));
    set(&mut m, "f_point", PValue::Message(point.clone()));
    set(
        &mut m,
        "f_packed",
        PValue::List(vec![PValue::I64(1), PValue::I64(-2), PValue::I64(300)]),
    );
    set(
        &mut m,
        "f_unpacked",
        PValue::List(vec![PValue::I64(4), PValue::I64(5)]),
    );
    set(
        &mut m,
        "f_strings",
        PValue::List(vec![PValue::String("a".into()), PValue::String("".into())]),
    );
    set(
        &mut m,
        "f_points",
        PValue::List(vec![PValue::Message(point.clone()), PValue::Message(point)]),
    );
    let mut ts = f.message("google.protobuf.Timestamp");
    set(&mut ts, "seconds", PValue::I64(1_700_000_000));
    set(&mut ts, "nanos", PValue::I32(123_456_789));
    set(&mut m, "f_time", PValue::Message(ts));
    set(&mut m, "f_far", PValue::I32(42));
    m
}

#[test]
fn every_scalar_kind_round_trips() {
    let mut f = Fixture::new("sluice.testing.Scalars");
    let m = full_scalars(&f);
    f.decode(&m.encode_to_vec()).unwrap();
    let b = f.finish();
    let col = |name: &str| b.column_by_name(name).unwrap().clone();
    assert_eq!(col("f_double").as_primitive::<Float64Type>().value(0), 1.5);
    assert_eq!(col("f_float").as_primitive::<Float32Type>().value(0), -2.25);
    assert_eq!(col("f_int32").as_primitive::<Int32Type>().value(0), -7);
    assert_eq!(
        col("f_int64").as_primitive::<Int64Type>().value(0),
        -9_000_000_000
    );
    assert_eq!(
        col("f_uint32").as_primitive::<UInt32Type>().value(0),
        4_000_000_000
    );
    assert_eq!(
        col("f_uint64").as_primitive::<UInt64Type>().value(0),
        u64::MAX
    );
    assert_eq!(col("f_sint32").as_primitive::<Int32Type>().value(0), -123);
    assert_eq!(
        col("f_sint64").as_primitive::<Int64Type>().value(0),
        i64::MIN
    );
    assert_eq!(col("f_fixed32").as_primitive::<UInt32Type>().value(0), 77);
    assert_eq!(col("f_fixed64").as_primitive::<UInt64Type>().value(0), 88);
    assert_eq!(col("f_sfixed32").as_primitive::<Int32Type>().value(0), -99);
    assert_eq!(col("f_sfixed64").as_primitive::<Int64Type>().value(0), -100);
    assert!(col("f_bool").as_boolean().value(0));
    assert_eq!(col("f_string").as_string::<i32>().value(0), "héllo");
    assert_eq!(col("f_bytes").as_binary::<i32>().value(0), &[0, 1, 2]);
    assert_eq!(col("f_enum").as_string::<i32>().value(0), "COLOR_GREEN");
    // Explicit presence: set to zero is not null.
    assert_eq!(col("f_optional").as_primitive::<Int32Type>().value(0), 0);
    assert!(col("f_optional").is_valid(0));
    let point = col("f_point");
    let point = point.as_struct();
    assert_eq!(point.column(0).as_primitive::<Int32Type>().value(0), -1);
    assert_eq!(point.column(2).as_string::<i32>().value(0), "p");
    let packed = col("f_packed");
    let packed = packed.as_list::<i32>().value(0);
    assert_eq!(packed.as_primitive::<Int64Type>().values(), &[1, -2, 300]);
    let unpacked = col("f_unpacked");
    assert_eq!(
        unpacked
            .as_list::<i32>()
            .value(0)
            .as_primitive::<Int64Type>()
            .values(),
        &[4, 5]
    );
    let strings = col("f_strings");
    let strings = strings.as_list::<i32>().value(0);
    assert_eq!(
        strings.as_string::<i32>().iter().collect::<Vec<_>>(),
        vec![Some("a"), Some("")]
    );
    let points = col("f_points");
    assert_eq!(points.as_list::<i32>().value(0).len(), 2);
    assert_eq!(
        col("f_time")
            .as_primitive::<TimestampMicrosecondType>()
            .value(0),
        1_700_000_000_123_456
    );
    assert_eq!(col("f_far").as_primitive::<Int32Type>().value(0), 42);
}

#[test]
fn absent_fields_are_defaults_or_null_by_presence() {
    let mut f = Fixture::new("sluice.testing.Scalars");
    f.decode(&[]).unwrap();
    let b = f.finish();
    let col = |name: &str| b.column_by_name(name).unwrap().clone();
    assert_eq!(col("f_int64").as_primitive::<Int64Type>().value(0), 0);
    assert!(col("f_int64").is_valid(0));
    assert_eq!(col("f_string").as_string::<i32>().value(0), "");
    assert_eq!(
        col("f_enum").as_string::<i32>().value(0),
        "COLOR_UNSPECIFIED"
    );
    assert!(col("f_optional").is_null(0));
    assert!(col("f_point").is_null(0));
    assert!(col("f_time").is_null(0));
    assert_eq!(col("f_packed").as_list::<i32>().value(0).len(), 0);
}

#[test]
fn last_value_wins_and_unknown_fields_are_skipped() {
    let mut f = Fixture::new("sluice.testing.Scalars");
    // f_int32 = 1, unknown field 99 (varint), f_int32 = 2, unknown 98 (bytes)
    let bytes = [
        0x18, 0x01, 0x98, 0x06, 0x05, 0x18, 0x02, 0x92, 0x06, 0x02, 0xAA, 0xBB,
    ];
    f.decode(&bytes).unwrap();
    let b = f.finish();
    assert_eq!(
        b.column_by_name("f_int32")
            .unwrap()
            .as_primitive::<Int32Type>()
            .value(0),
        2
    );
}

#[test]
fn unknown_enum_number_keeps_the_number() {
    let mut f = Fixture::new("sluice.testing.Scalars");
    f.decode(&[0x80, 0x01, 0x07]).unwrap(); // f_enum (16) = 7
    let b = f.finish();
    assert_eq!(
        b.column_by_name("f_enum")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "7"
    );
}

#[test]
fn bad_payloads_are_errors_and_leave_no_partial_row() {
    let mut f = Fixture::new("sluice.testing.Scalars");
    let good = full_scalars(&f).encode_to_vec();
    let cases: Vec<(Vec<u8>, DecodeError)> = vec![
        (good[..good.len() - 3].to_vec(), DecodeError::Truncated),
        (vec![0x00, 0x01], DecodeError::ZeroFieldNumber),
        (vec![0x1B], DecodeError::BadWireType(3)),
        (
            vec![0x72, 0x02, 0xC3, 0x28],
            DecodeError::InvalidUtf8("f_string".into()),
        ),
        (
            vec![0x1D, 1, 2, 3, 4], // f_int32 as fixed32
            DecodeError::WireTypeMismatch {
                field: "f_int32".into(),
                wire: WireTypeName::I32,
            },
        ),
        (
            vec![
                0x18, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0x7F,
            ],
            DecodeError::BadVarint,
        ),
    ];
    for (bytes, expected) in cases {
        assert_eq!(f.decode(&bytes), Err(expected), "{bytes:?}");
    }
    f.decode(&good).unwrap();
    let b = f.finish();
    assert_eq!(b.num_rows(), 1);
}

#[test]
fn random_bytes_never_panic() {
    let mut f = Fixture::new("sluice.testing.Scalars");
    let mut state = 0x2545F4914F6CDD1Du64;
    let mut ok = 0usize;
    for len in 0..2000usize {
        let bytes: Vec<u8> = (0..len % 97)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                state as u8
            })
            .collect();
        if f.decode(&bytes).is_ok() {
            ok += 1;
        }
    }
    let b = f.finish();
    assert_eq!(b.num_rows(), ok);
}

#[test]
fn reference_event_decodes() {
    let mut f = Fixture::new("sluice.examples.OrderPlaced");
    let descriptor = f.registry.message("sluice.examples.OrderPlaced").unwrap();
    let sample = crate::sample::OrderSample::new(&descriptor).unwrap();
    let bytes = sample.encode(7);
    f.decode(&bytes).unwrap();
    let b = f.finish();
    assert_eq!(
        b.column_by_name("order_id")
            .unwrap()
            .as_string::<i32>()
            .value(0),
        "order-00000007"
    );
}

/// Fields in field order, each once, are appended in one walk; shuffled,
/// or with a field twice, they take the general path. Both read the same.
#[test]
fn fields_in_any_order_decode_alike() {
    let mut f = Fixture::new("sluice.examples.OrderPlaced");
    let descriptor = f.registry.message("sluice.examples.OrderPlaced").unwrap();
    let sample = crate::sample::OrderSample::new(&descriptor).unwrap();
    let message = DynamicMessage::decode(descriptor.clone(), sample.encode(3).as_slice()).unwrap();
    // One encoded piece per field that is set: any concatenation of them
    // encodes the same message.
    let pieces: Vec<Vec<u8>> = message
        .fields()
        .map(|(field, value)| {
            let mut one = DynamicMessage::new(descriptor.clone());
            one.set_field(&field, value.clone());
            one.encode_to_vec()
        })
        .collect();
    assert!(pieces.len() > 10);
    let in_order = pieces.concat();
    let reversed: Vec<u8> = pieces.iter().rev().flatten().copied().collect();
    // order_id twice: a stale value first, the real one later.
    let mut stale = DynamicMessage::new(descriptor.clone());
    stale.set_field_by_name("order_id", PValue::String("stale".into()));
    let twice = [stale.encode_to_vec(), in_order.clone()].concat();

    let walks = |bytes: &[u8]| {
        let mut scratch = Scratch::default();
        parse(&f.plan, bytes, 0, bytes.len(), &mut scratch, 0).unwrap()
    };
    assert!(walks(&in_order));
    assert!(!walks(&reversed));
    assert!(!walks(&twice));

    for bytes in [&in_order, &reversed, &twice] {
        f.decode(bytes).unwrap();
    }
    let b = f.finish();
    assert_eq!(b.num_rows(), 3);
    assert_eq!(
        b.column_by_name("order_id")
            .unwrap()
            .as_string::<i32>()
            .value(2),
        "order-00000003"
    );
    for row in 1..3 {
        assert_eq!(b.slice(row, 1), b.slice(0, 1), "row {row}");
    }
}

#[test]
fn well_known_types_map_to_nullable_scalars_durations_and_json() {
    let mut f = Fixture::new("sluice.testing.WellKnown");
    let wrapper = |f: &Fixture, name: &str, value: PValue| {
        let mut w = f.message(name);
        set(&mut w, "value", value);
        PValue::Message(w)
    };
    let mut m = f.message("sluice.testing.WellKnown");
    set(
        &mut m,
        "w_int64",
        wrapper(&f, "google.protobuf.Int64Value", PValue::I64(-5)),
    );
    // Present but holding the default: not null.
    set(
        &mut m,
        "w_string",
        PValue::Message(f.message("google.protobuf.StringValue")),
    );
    let mut d = f.message("google.protobuf.Duration");
    set(&mut d, "seconds", PValue::I64(90));
    set(&mut d, "nanos", PValue::I32(500_000_000));
    set(&mut m, "d", PValue::Message(d));
    let mut value = f.message("google.protobuf.Value");
    set(&mut value, "string_value", PValue::String("hi".into()));
    let mut s = f.message("google.protobuf.Struct");
    s.get_field_by_name_mut("fields")
        .unwrap()
        .as_map_mut()
        .unwrap()
        .insert(
            prost_reflect::MapKey::String("k".into()),
            PValue::Message(value.clone()),
        );
    set(&mut m, "s", PValue::Message(s));
    set(&mut m, "v", PValue::Message(value));
    set(
        &mut m,
        "w_list",
        PValue::List(vec![
            wrapper(&f, "google.protobuf.Int32Value", PValue::I32(1)),
            wrapper(&f, "google.protobuf.Int32Value", PValue::I32(2)),
        ]),
    );
    f.decode(&m.encode_to_vec()).unwrap();
    f.decode(&[]).unwrap();
    let b = f.finish();
    let col = |name: &str| b.column_by_name(name).unwrap().clone();
    assert_eq!(col("w_int64").data_type(), &DataType::Int64);
    assert_eq!(col("w_int64").as_primitive::<Int64Type>().value(0), -5);
    assert!(col("w_int64").is_null(1), "absent wrapper is null");
    assert_eq!(col("w_string").as_string::<i32>().value(0), "");
    assert!(col("w_string").is_valid(0));
    assert!(col("w_bool").is_null(0));
    assert_eq!(
        col("d").data_type(),
        &DataType::Duration(TimeUnit::Microsecond)
    );
    assert_eq!(
        col("d").as_primitive::<DurationMicrosecondType>().value(0),
        90_500_000
    );
    assert_eq!(col("s").as_string::<i32>().value(0), r#"{"k":"hi"}"#);
    assert_eq!(col("v").as_string::<i32>().value(0), r#""hi""#);
    assert!(col("any").is_null(0));
    let list = col("w_list");
    assert_eq!(
        list.as_list::<i32>()
            .value(0)
            .as_primitive::<Int32Type>()
            .values(),
        &[1, 2]
    );
}

#[test]
fn invalid_json_mapped_well_known_type_is_an_error() {
    let mut f = Fixture::new("sluice.testing.WellKnown");
    // Field 6 (Struct) holding bytes that are not a Struct.
    let err = f.decode(&[0x32, 0x02, 0xFF, 0xFF]).unwrap_err();
    assert!(
        matches!(err, DecodeError::WellKnown { ref field, .. } if field == "s"),
        "{err}"
    );
    assert_eq!(f.finish().num_rows(), 0);
}

#[test]
fn maps_become_arrow_maps() {
    let mut f = Fixture::new("sluice.testing.WithMaps");
    let mut m = f.message("sluice.testing.WithMaps");
    {
        let counts = m
            .get_field_by_name_mut("counts")
            .unwrap()
            .as_map_mut()
            .unwrap();
        counts.insert(prost_reflect::MapKey::String("a".into()), PValue::I64(1));
        counts.insert(prost_reflect::MapKey::String("b".into()), PValue::I64(0));
    }
    let mut point = f.message("sluice.testing.Point");
    set(&mut point, "x", PValue::I32(3));
    m.get_field_by_name_mut("points")
        .unwrap()
        .as_map_mut()
        .unwrap()
        .insert(prost_reflect::MapKey::I32(7), PValue::Message(point));
    f.decode(&m.encode_to_vec()).unwrap();
    f.decode(&[]).unwrap();
    let b = f.finish();
    let counts = b.column_by_name("counts").unwrap();
    assert!(
        matches!(counts.data_type(), DataType::Map(_, false)),
        "{:?}",
        counts.data_type()
    );
    let counts = counts.as_map();
    assert_eq!(counts.value_length(0), 2);
    assert_eq!(counts.value_length(1), 0, "absent map is empty");
    let mut entries: Vec<(String, i64)> = (0..2)
        .map(|i| {
            let keys = counts.keys().as_string::<i32>();
            let values = counts.values().as_primitive::<Int64Type>();
            (keys.value(i).to_owned(), values.value(i))
        })
        .collect();
    entries.sort();
    assert_eq!(entries, vec![("a".into(), 1), ("b".into(), 0)]);
    let points = b.column_by_name("points").unwrap().as_map();
    assert_eq!(points.keys().as_primitive::<Int32Type>().value(0), 7);
    let x = points
        .values()
        .as_struct()
        .column(0)
        .as_primitive::<Int32Type>()
        .value(0);
    assert_eq!(x, 3);
}

#[test]
fn recursion_is_cut_at_the_configured_depth_and_the_rest_is_json() {
    let mut f = Fixture::with_depth("sluice.testing.Tree", 1);
    let tree = |f: &Fixture, name: &str, children: Vec<DynamicMessage>| {
        let mut t = f.message("sluice.testing.Tree");
        set(&mut t, "name", PValue::String(name.into()));
        set(
            &mut t,
            "children",
            PValue::List(children.into_iter().map(PValue::Message).collect()),
        );
        t
    };
    let leaf = tree(&f, "leaf", vec![]);
    let mid = tree(&f, "mid", vec![leaf]);
    let root = tree(&f, "root", vec![mid]);
    f.decode(&root.encode_to_vec()).unwrap();
    let b = f.finish();
    // root.children: list<struct<name, children: list<utf8 JSON>>>
    let children = b
        .column_by_name("children")
        .unwrap()
        .as_list::<i32>()
        .value(0);
    let mid = children.as_struct();
    assert_eq!(mid.column(0).as_string::<i32>().value(0), "mid");
    let grandchildren = mid.column(1).as_list::<i32>().value(0);
    assert_eq!(grandchildren.data_type(), &DataType::Utf8);
    assert_eq!(
        grandchildren.as_string::<i32>().value(0),
        r#"{"name":"leaf"}"#
    );
}

#[test]
fn proto2_fields_have_presence_and_required_fields_are_checked() {
    let mut f = Fixture::new("sluice.testing.Legacy");
    let mut m = f.message("sluice.testing.Legacy");
    set(&mut m, "id", PValue::I64(5));
    f.decode(&m.encode_to_vec()).unwrap();
    set(&mut m, "with_default", PValue::I32(0));
    set(&mut m, "name", PValue::String("n".into()));
    f.decode(&m.encode_to_vec()).unwrap();
    // Without the required `id`, nested or not: an error, no partial row.
    let mut missing = f.message("sluice.testing.Legacy");
    set(&mut missing, "name", PValue::String("n".into()));
    assert_eq!(
        f.decode(&missing.encode_to_vec()),
        Err(DecodeError::MissingRequired("id".into()))
    );
    let batch = f.finish();
    assert_eq!(batch.num_rows(), 2);
    let with_default = batch.column(0).as_primitive::<Int32Type>();
    // `[default = 7]` is not materialised: absent reads as null.
    assert!(with_default.is_null(0));
    assert_eq!(with_default.value(1), 0);
    let name = batch.column(1).as_string::<i32>();
    assert!(name.is_null(0));
    assert_eq!(name.value(1), "n");
    assert_eq!(batch.column(2).as_primitive::<Int64Type>().value(0), 5);

    let mut sink = Fixture::new("sluice.testing.KitchenSink");
    let mut outer = sink.message("sluice.testing.KitchenSink");
    set(&mut outer, "f_legacy", PValue::Message(missing));
    assert_eq!(
        sink.decode(&outer.encode_to_vec()),
        Err(DecodeError::MissingRequired("id".into()))
    );
}

#[test]
fn builders_keeping_their_room_build_the_same_batches() {
    let mut kept = Fixture::new("sluice.testing.KitchenSink");
    let mut fresh = Fixture::new("sluice.testing.KitchenSink");
    let json = r#"{
        "fDouble": 1.5, "fFloat": -2.5, "fInt32": -3, "fSint32": -4, "fSfixed32": 5,
        "fInt64": "-6", "fSint64": "7", "fSfixed64": "-8", "fUint32": 9, "fFixed32": 10,
        "fUint64": "11", "fFixed64": "12", "fBool": true, "fString": "héllo",
        "fBytes": "AAEC", "fEnum": "COLOR_RED", "fEnumUnknown": 7,
        "fMessage": {"x": 1, "y": -2, "label": "p"},
        "fPacked": ["-1", "2"], "fUnpacked": [3, 4], "fStrings": ["a", "", "c"],
        "fMessages": [{"x": 5}, {"label": "q"}], "fEnums": ["COLOR_GREEN", 9],
        "fMap": {"k": "1", "l": "-2"}, "fMapMessages": {"3": {"y": 4}},
        "fTimestamp": "2026-11-27T10:00:00.123456Z", "fDuration": "1.5s",
        "wInt32": 1, "wInt64": "2", "wUint32": 3, "wUint64": "4", "wFloat": 5.5,
        "wDouble": 6.5, "wBool": false, "wString": "w", "wBytes": "AQ==",
        "fStruct": {"a": [1, "b", null]}, "fValue": 3, "fListValue": [true],
        "fOptional": "0", "choicePoint": {"x": 6},
        "fTree": {"name": "root", "children": [{"name": "mid", "children": [{"name": "leaf"}]}]},
        "fLegacy": {"id": "5", "name": "n"}
    }"#;
    let descriptor = kept.registry.message("sluice.testing.KitchenSink").unwrap();
    let full =
        DynamicMessage::deserialize(descriptor, &mut serde_json::Deserializer::from_str(json))
            .unwrap()
            .encode_to_vec();
    let mut text = kept.message("sluice.testing.KitchenSink");
    set(&mut text, "choice_text", PValue::String("t".into()));
    // Every column with values, with defaults and nulls, then a batch of
    // another size: kept builders start each batch empty, with the same
    // data types (timestamps keep their timezone).
    let payloads = [full.clone(), Vec::new(), text.encode_to_vec(), full];
    for rows in [4, 1, 7] {
        for payload in payloads.iter().cycle().take(rows) {
            kept.decode(payload).unwrap();
            fresh.decode(payload).unwrap();
        }
        let (a, b) = (kept.batch(Column::finish_keeping_capacity), fresh.finish());
        assert_eq!(a.num_rows(), rows);
        assert_eq!(a, b);
    }
}
