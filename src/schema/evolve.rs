//! Whether two versions of a message can share one table.
//!
//! Protobuf is compatible by field number: a reader with a newer version
//! reads older records (new fields take their defaults, removed fields are
//! skipped). What breaks the table is a field number whose type changed:
//! the column would hold values of two types, or bytes decoded as the wrong
//! type. Renames, added and removed fields, presence and oneof changes are
//! compatible; enum values may come and go (the column holds names).

use std::collections::HashSet;

use prost_reflect::{FieldDescriptor, Kind, MessageDescriptor};

/// `Err` names the first field number whose type differs between `old` and
/// `new`, with both types.
pub fn check_compatible(old: &MessageDescriptor, new: &MessageDescriptor) -> Result<(), String> {
    let mut seen = HashSet::new();
    compare(old, new, "", &mut seen)
}

fn compare(
    old: &MessageDescriptor,
    new: &MessageDescriptor,
    path: &str,
    seen: &mut HashSet<(String, String)>,
) -> Result<(), String> {
    // A recursive message compares once per pair of versions.
    if !seen.insert((old.full_name().to_owned(), new.full_name().to_owned())) {
        return Ok(());
    }
    for field in old.fields() {
        let Some(other) = new.get_field(field.number()) else {
            continue;
        };
        let here = format!("{path}{}", other.name());
        let (was, is) = (shape(&field), shape(&other));
        if was != is {
            return Err(format!(
                "field {} (`{here}`) was {was}, is now {is}",
                field.number()
            ));
        }
        if let (Kind::Message(a), Kind::Message(b)) = (field.kind(), other.kind())
            && !is_well_known(&a)
        {
            // Map entries compare their value fields.
            compare(&a, &b, &format!("{here}."), seen)?;
        }
    }
    Ok(())
}

/// What must stay the same for a field number: its cardinality and, for
/// scalars, the exact type (each one decodes its bytes differently or maps
/// to another column type); any enum is an enum; a well-known type must
/// stay that type; other messages are compared field by field.
fn shape(field: &FieldDescriptor) -> String {
    let kind = match field.kind() {
        Kind::Enum(_) => "enum".to_owned(),
        Kind::Message(m) if is_well_known(&m) => m.full_name().to_owned(),
        Kind::Message(m) if m.is_map_entry() => "map".to_owned(),
        Kind::Message(_) => "message".to_owned(),
        scalar => format!("{scalar:?}").to_lowercase(),
    };
    if field.is_list() {
        format!("repeated {kind}")
    } else {
        kind
    }
}

fn is_well_known(message: &MessageDescriptor) -> bool {
    message.package_name() == "google.protobuf"
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(text: &str) -> MessageDescriptor {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("m.proto"), text).unwrap();
        let mut compiler = protox::Compiler::new([dir.path()]).unwrap();
        compiler.include_imports(true);
        compiler.open_files(["m.proto"]).unwrap();
        compiler
            .descriptor_pool()
            .get_message_by_name("t.M")
            .unwrap()
    }

    const V1: &str = r#"syntax = "proto3"; package t;
        import "google/protobuf/timestamp.proto";
        enum E { A = 0; }
        message Inner { int64 cents = 1; string currency = 2; }
        message M { string id = 1; Inner total = 2; E e = 3; repeated int32 n = 4;
                    map<string, Inner> by = 5; google.protobuf.Timestamp at = 6; M next = 7; }"#;

    #[test]
    fn additions_removals_renames_and_presence_are_compatible() {
        let v2 = r#"syntax = "proto3"; package t;
            import "google/protobuf/timestamp.proto";
            enum E { A = 0; B = 1; }
            message Inner { int64 cents = 1; string code = 2; bool new = 3; }
            message M { optional string order_id = 1; Inner total = 2; E e = 3;
                        map<string, Inner> by = 5; google.protobuf.Timestamp at = 6;
                        M next = 7; string coupon = 8; }"#;
        assert_eq!(check_compatible(&message(V1), &message(v2)), Ok(()));
        assert_eq!(check_compatible(&message(v2), &message(V1)), Ok(()));
    }

    #[test]
    fn a_changed_type_names_the_field() {
        let inner = "message Inner { int64 cents = 1; }";
        let cases = [
            (
                format!("{inner} message M {{ string id = 1; repeated int64 n = 4; }}"),
                "field 4 (`n`) was repeated int32, is now repeated int64",
            ),
            (
                "message M { bytes id = 1; }".to_owned(),
                "field 1 (`id`) was string, is now bytes",
            ),
            (
                "message M { Inner total = 2; } message Inner { string cents = 1; }".to_owned(),
                "field 1 (`total.cents`) was int64, is now string",
            ),
            (
                "message M { int32 e = 3; }".to_owned(),
                "field 3 (`e`) was enum, is now int32",
            ),
            (
                "message M { string id = 1; repeated string at = 6; }".to_owned(),
                "field 6 (`at`) was google.protobuf.Timestamp, is now repeated string",
            ),
            (
                "message M { map<string, Inner> by = 5; } message Inner { sint64 cents = 1; }"
                    .to_owned(),
                "field 1 (`by.value.cents`) was int64, is now sint64",
            ),
            (
                "message M { M next = 7; string id = 1; int64 at = 6; }".to_owned(),
                "field 6 (`at`) was google.protobuf.Timestamp, is now int64",
            ),
        ];
        for (body, expected) in cases {
            let text = format!(r#"syntax = "proto3"; package t; {body}"#);
            let v2 = message(&text);
            assert_eq!(
                check_compatible(&message(V1), &v2),
                Err(expected.to_owned()),
                "{body}"
            );
        }
    }
}
