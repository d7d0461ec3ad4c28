//! What the fuzz targets share: the schemas they decode with, compiled
//! once per process, and the decoder's contract as assertions.

use std::path::Path;
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::RecordBatch;
use arrow::datatypes::Schema;
use prost_reflect::MessageDescriptor;
use sluice::schema::{Column, Decoder, LocalRegistry, MessagePlan};

/// A message of the repository's schemas, flattened as the daemon does.
pub struct Target {
    pub descriptor: MessageDescriptor,
    pub plan: Arc<MessagePlan>,
    schema: Arc<Schema>,
    /// Reused from input to input: finishing a column empties it.
    columns: Mutex<Vec<Column>>,
}

fn registry() -> &'static LocalRegistry {
    static REGISTRY: OnceLock<LocalRegistry> = OnceLock::new();
    REGISTRY.get_or_init(|| {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../schemas");
        LocalRegistry::open(&dir).expect("the repository's schemas compile")
    })
}

impl Target {
    fn new(message: &str) -> Target {
        let descriptor = registry().message(message).expect("message defined");
        let plan = Arc::new(MessagePlan::new(&descriptor, 3).expect("plan"));
        let schema = Arc::new(Schema::new(plan.arrow_fields()));
        let columns = plan
            .arrow_fields()
            .iter()
            .filter_map(|f| Column::for_type(f.data_type()))
            .collect();
        Target {
            descriptor,
            plan,
            schema,
            columns: Mutex::new(columns),
        }
    }

    /// The reference event, `sluice.examples.OrderPlaced`.
    pub fn reference() -> &'static Target {
        static TARGET: OnceLock<Target> = OnceLock::new();
        TARGET.get_or_init(|| Target::new("sluice.examples.OrderPlaced"))
    }

    /// One field per row of the type mapping, `sluice.testing.KitchenSink`.
    pub fn kitchen_sink() -> &'static Target {
        static TARGET: OnceLock<Target> = OnceLock::new();
        TARGET.get_or_init(|| Target::new("sluice.testing.KitchenSink"))
    }

    /// Decodes `payload`, then `payload` again after an empty message, and
    /// checks the decoder's contract: a record either becomes exactly one
    /// row in every column or leaves no trace, and the columns always form
    /// a valid Arrow batch of the plan's schema. Returns whether `payload`
    /// decoded.
    pub fn decode_and_check(&self, payload: &[u8]) -> bool {
        let mut columns = self.columns.lock().unwrap_or_else(|e| e.into_inner());
        let columns = &mut *columns;
        let mut decoder = Decoder::new();
        let first = decoder.decode(&self.plan, payload, columns).is_ok();
        // The empty message is valid for every schema without required fields.
        let empty = decoder.decode(&self.plan, &[], columns).is_ok();
        let again = decoder.decode(&self.plan, payload, columns).is_ok();
        assert_eq!(first, again, "the same bytes decode the same way twice");
        let rows = usize::from(first) + usize::from(empty) + usize::from(again);
        let arrays: Vec<_> = columns.iter_mut().map(Column::finish).collect();
        for (array, field) in arrays.iter().zip(self.schema.fields()) {
            assert_eq!(
                array.len(),
                rows,
                "column {} holds a partial row",
                field.name()
            );
        }
        RecordBatch::try_new(self.schema.clone(), arrays)
            .expect("decoded columns form a batch of the plan's schema");
        first
    }
}
