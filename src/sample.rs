//! The reference event (`sluice.examples.OrderPlaced`), generated
//! deterministically from a sequence number: the demo produces it, the
//! integration tests check what lands against it, the benchmarks decode it.
//! Also the small Kafka helpers (create a topic, produce events) the demo
//! and the tests share. Not used by the daemon.

use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use prost::Message as _;
use prost_reflect::{DynamicMessage, MessageDescriptor, Value};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::config::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};

use crate::buffer::{Buffers, Record};
use crate::config::ParquetConfig;
use crate::envelope::Envelope;
use crate::schema::{LocalRegistry, MessagePlan};

/// The values of one generated event, as a reader should find them.
#[derive(Debug, Clone, PartialEq)]
pub struct OrderFields {
    pub order_id: String,
    pub customer_id: i64,
    pub store_id: i64,
    pub city: &'static str,
    pub total_cents: i64,
    pub item_count: i32,
    pub payment_method: &'static str,
    pub is_first_order: bool,
    pub latitude: f64,
    /// Microseconds since the Unix epoch, UTC.
    pub placed_at_micros: i64,
    pub promo_code: Option<String>,
}

const CITIES: [&str; 6] = ["berlin", "tokyo", "austin", "lyon", "toronto", "melbourne"];
const PAYMENT_METHODS: [&str; 3] = [
    "PAYMENT_METHOD_CARD",
    "PAYMENT_METHOD_WALLET",
    "PAYMENT_METHOD_CASH",
];

/// Generates `OrderPlaced` events.
#[derive(Debug, Clone)]
pub struct OrderSample {
    descriptor: MessageDescriptor,
    timestamp: MessageDescriptor,
    /// Event times spread over the three hours before this (µs since epoch).
    pub base_micros: i64,
    /// Bytes before each payload: the Confluent wire format's header.
    framing: Vec<u8>,
}

impl OrderSample {
    pub fn new(descriptor: &MessageDescriptor) -> Option<OrderSample> {
        let timestamp = descriptor
            .get_field_by_name("placed_at")?
            .kind()
            .as_message()?
            .clone();
        Some(OrderSample {
            descriptor: descriptor.clone(),
            timestamp,
            base_micros: 1_767_225_600_000_000, // 2026-01-01T00:00:00Z
            framing: Vec::new(),
        })
    }

    /// Payloads start with `framing` (a Confluent wire-format header).
    pub fn with_framing(mut self, framing: Vec<u8>) -> OrderSample {
        self.framing = framing;
        self
    }

    pub fn with_base_micros(mut self, base_micros: i64) -> OrderSample {
        self.base_micros = base_micros;
        self
    }

    pub fn fields(&self, seq: u64) -> OrderFields {
        let r = splitmix(seq);
        let spread_secs = (r % (3 * 3600)) as i64;
        OrderFields {
            order_id: format!("order-{seq:08}"),
            customer_id: (r >> 20) as i64 % 10_000_000,
            store_id: (r >> 40) as i64 % 50_000,
            city: CITIES[(r % 6) as usize],
            total_cents: 500 + (r >> 8) as i64 % 20_000,
            item_count: 1 + (r >> 16) as i32 % 9,
            payment_method: PAYMENT_METHODS[((r >> 4) % 3) as usize],
            is_first_order: r.is_multiple_of(10),
            latitude: -60.0 + ((r >> 12) % 120_000) as f64 / 1000.0,
            placed_at_micros: self.base_micros - spread_secs * 1_000_000 - (seq % 1000) as i64,
            promo_code: r.is_multiple_of(4).then(|| format!("PROMO{}", r % 100)),
        }
    }

    /// The encoded payload of event `seq`.
    pub fn encode(&self, seq: u64) -> Vec<u8> {
        let message = self.message(seq);
        if self.framing.is_empty() {
            return message.encode_to_vec();
        }
        let mut out = Vec::with_capacity(self.framing.len() + message.encoded_len());
        out.extend_from_slice(&self.framing);
        message.encode(&mut out).expect("a Vec grows");
        out
    }

    /// Event `seq` in the canonical Protobuf JSON mapping.
    pub fn encode_json(&self, seq: u64) -> Vec<u8> {
        serde_json::to_vec(&self.message(seq)).unwrap_or_default()
    }

    fn message(&self, seq: u64) -> DynamicMessage {
        let f = self.fields(seq);
        let mut m = DynamicMessage::new(self.descriptor.clone());
        let mut set = |name: &str, value: Value| m.set_field_by_name(name, value);
        set("order_id", Value::String(f.order_id.clone()));
        set("customer_id", Value::I64(f.customer_id));
        set("store_id", Value::I64(f.store_id));
        set("city", Value::String(f.city.to_owned()));
        set("country_code", Value::String("DE".into()));
        set("currency", Value::String("EUR".into()));
        set("subtotal_cents", Value::I64(f.total_cents * 8 / 10));
        set("tax_cents", Value::I64(f.total_cents / 10));
        set("tip_cents", Value::I64(f.total_cents / 20));
        set("total_cents", Value::I64(f.total_cents));
        set("item_count", Value::I32(f.item_count));
        let method = PAYMENT_METHODS
            .iter()
            .position(|m| *m == f.payment_method)
            .unwrap_or(0) as i32
            + 1;
        set("payment_method", Value::EnumNumber(method));
        set("platform", Value::EnumNumber(1 + (seq % 3) as i32));
        set("is_first_order", Value::Bool(f.is_first_order));
        set("latitude", Value::F64(f.latitude));
        set("longitude", Value::F64(13.404954));
        let mut ts = DynamicMessage::new(self.timestamp.clone());
        ts.set_field_by_name(
            "seconds",
            Value::I64(f.placed_at_micros.div_euclid(1_000_000)),
        );
        ts.set_field_by_name(
            "nanos",
            Value::I32((f.placed_at_micros.rem_euclid(1_000_000) * 1000) as i32),
        );
        set("placed_at", Value::Message(ts));
        if let Some(code) = &f.promo_code {
            set("promo_code", Value::String(code.clone()));
        }
        set("delivery_fee_cents", Value::I32(299));
        let d = splitmix(seq ^ 0xdead);
        let device = format!(
            "{:08x}-{:04x}-4{:03x}-a{:03x}-{:012x}",
            d >> 32,
            (d >> 16) & 0xffff,
            d & 0xfff,
            (d >> 4) & 0xfff,
            splitmix(d) & 0xffff_ffff_ffff
        );
        set("device_id", Value::String(device));
        let agent = "OrderApp/24.11.3 (iPhone15,2; iOS 18.1)";
        set("app_version", Value::String(agent.into()));
        set("distance_km", Value::F32(3.25));
        let address = format!("{} Hauptstraße, 10115 {}", 1 + f.store_id % 200, f.city);
        set("delivery_address", Value::String(address));
        m
    }

    /// CloudEvents binary-mode headers for event `seq` (key, value).
    pub fn headers(&self, seq: u64) -> [(&'static str, String); 6] {
        let f = self.fields(seq);
        [
            ("ce_id", f.order_id),
            ("ce_source", "/sluice/demo".to_owned()),
            ("ce_type", self.descriptor.full_name().to_owned()),
            ("ce_time", rfc3339_micros(f.placed_at_micros)),
            ("ce_specversion", "1.0".to_owned()),
            ("content-type", "application/protobuf".to_owned()),
        ]
    }
}

/// The reference event compiled from the `.proto` files under `schemas`
/// (the repository's `schemas/`): its descriptor, its generator and its
/// decode plan (recursion depth 3, the default), for the benchmarks and
/// tests of the hot path.
#[derive(Debug)]
pub struct Reference {
    pub descriptor: MessageDescriptor,
    pub sample: OrderSample,
    pub plan: Arc<MessagePlan>,
}

impl Reference {
    pub fn load(schemas: &Path) -> anyhow::Result<Reference> {
        let descriptor = LocalRegistry::open(schemas)?.message("sluice.examples.OrderPlaced")?;
        let sample = OrderSample::new(&descriptor)
            .ok_or_else(|| anyhow::anyhow!("OrderPlaced lacks a field the sample sets"))?;
        let plan = Arc::new(MessagePlan::new(&descriptor, 3)?);
        Ok(Reference {
            descriptor,
            sample,
            plan,
        })
    }

    /// Empty buffers for the reference event.
    pub fn buffers(&self, parquet: &ParquetConfig) -> Buffers {
        Buffers::new(
            self.descriptor.clone(),
            self.plan.clone(),
            parquet,
            Vec::new(),
        )
    }
}

/// Reference events encoded ahead of time (payloads and CloudEvents
/// headers), for the benchmarks and tests of the hot path: pushed into
/// [`Buffers`] the way the run loop pushes a record.
#[derive(Debug)]
pub struct Encoded {
    pub payloads: Vec<Vec<u8>>,
    pub headers: Vec<Vec<(&'static str, Vec<u8>)>>,
    kafka_timestamp_ms: i64,
}

impl Encoded {
    /// Events `0..count` of `sample`.
    pub fn new(sample: &OrderSample, count: usize) -> Encoded {
        let seqs = 0..count as u64;
        Encoded {
            payloads: seqs.clone().map(|s| sample.encode(s)).collect(),
            headers: seqs
                .map(|s| {
                    sample
                        .headers(s)
                        .into_iter()
                        .map(|(k, v)| (k, v.into_bytes()))
                        .collect()
                })
                .collect(),
            kafka_timestamp_ms: sample.base_micros / 1000,
        }
    }

    pub fn len(&self) -> usize {
        self.payloads.len()
    }

    pub fn is_empty(&self) -> bool {
        self.payloads.is_empty()
    }

    /// Envelope → decode → Arrow (→ Parquet at each full batch) for the
    /// events of `range`, all of partition 0 at their own offsets.
    pub fn push(&self, buffers: &mut Buffers, range: Range<usize>) -> anyhow::Result<()> {
        self.push_to(buffers, 0, range)
    }

    /// [`Encoded::push`] into `partition`'s files.
    pub fn push_to(
        &self,
        buffers: &mut Buffers,
        partition: i32,
        range: Range<usize>,
    ) -> anyhow::Result<()> {
        for i in range {
            let envelope = Envelope::parse(
                self.headers[i]
                    .iter()
                    .map(|(k, v)| (*k, Some(v.as_slice()))),
                Some(self.kafka_timestamp_ms),
                "baggage",
            )?;
            buffers.push(&Record {
                partition,
                offset: i as i64,
                kafka_timestamp_ms: Some(self.kafka_timestamp_ms),
                envelope,
                payload: &self.payloads[i],
                route: 0,
            })?;
        }
        Ok(())
    }
}

fn rfc3339_micros(micros: i64) -> String {
    chrono::DateTime::from_timestamp_micros(micros)
        .map(|t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true))
        .unwrap_or_default()
}

fn splitmix(seq: u64) -> u64 {
    let mut z = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where one produced event landed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Produced {
    pub seq: u64,
    pub partition: i32,
    pub offset: i64,
}

/// Creates `topic` with `partitions` partitions unless it exists.
pub async fn ensure_topic(brokers: &str, topic: &str, partitions: i32) -> Result<(), KafkaError> {
    ensure_topic_with(brokers, topic, partitions, &[]).await
}

/// [`ensure_topic`] with topic `settings` (`retention.ms`, …) for a topic
/// it creates.
pub async fn ensure_topic_with(
    brokers: &str,
    topic: &str,
    partitions: i32,
    settings: &[(&str, &str)],
) -> Result<(), KafkaError> {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let new = settings.iter().fold(
        NewTopic::new(topic, partitions, TopicReplication::Fixed(1)),
        |new, (key, value)| new.set(key, value),
    );
    for result in admin.create_topics([&new], &AdminOptions::new()).await? {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((_, code)) => return Err(KafkaError::AdminOp(code)),
        }
    }
    Ok(())
}

/// How many records `topic` holds, over all its partitions (high minus low
/// watermark).
/// A broker that just started may not lead its partitions yet: the count is
/// tried again for up to half a minute.
pub fn records_in(brokers: &str, topic: &str) -> Result<i64, KafkaError> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()?;
    let timeout = std::time::Duration::from_secs(10);
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let count = || -> Result<i64, KafkaError> {
        let metadata = consumer.fetch_metadata(Some(topic), timeout)?;
        let mut held = 0;
        for partition in metadata.topics().iter().flat_map(|t| t.partitions()) {
            let (low, high) = consumer.fetch_watermarks(topic, partition.id(), timeout)?;
            held += high - low;
        }
        Ok(held)
    };
    loop {
        match count() {
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// Produces events `seqs` (as CloudEvents, round-robin over `partitions`)
/// and returns where each landed, in sequence order.
pub async fn produce(
    brokers: &str,
    topic: &str,
    partitions: i32,
    sample: &OrderSample,
    seqs: std::ops::Range<u64>,
) -> Result<Vec<Produced>, KafkaError> {
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("linger.ms", "20")
        .set("compression.type", "lz4")
        .set("queue.buffering.max.messages", "200000")
        .create()?;
    let mut out = Vec::with_capacity(seqs.end.saturating_sub(seqs.start) as usize);
    let chunks: Vec<u64> = seqs.clone().step_by(20_000).collect();
    for start in chunks {
        let end = (start + 20_000).min(seqs.end);
        let mut pending = Vec::with_capacity((end - start) as usize);
        for seq in start..end {
            let payload = sample.encode(seq);
            let key = format!("order-{seq:08}");
            let mut headers = OwnedHeaders::new();
            for (name, value) in sample.headers(seq) {
                headers = headers.insert(Header {
                    key: name,
                    value: Some(value.as_bytes()),
                });
            }
            let record = FutureRecord::to(topic)
                .partition((seq % partitions as u64) as i32)
                .key(&key)
                .payload(&payload)
                .headers(headers);
            let delivery = producer.send_result(record).map_err(|(e, _)| e)?;
            pending.push((seq, delivery));
        }
        for (seq, delivery) in pending {
            match delivery.await {
                Ok(Ok(d)) => out.push(Produced {
                    seq,
                    partition: d.partition,
                    offset: d.offset,
                }),
                Ok(Err((e, _))) => return Err(e),
                Err(_) => return Err(KafkaError::Canceled),
            }
        }
    }
    Ok(out)
}
