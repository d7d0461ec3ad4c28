"""Writes records with Confluent's own Protobuf serializer (confluent-kafka's
ProtobufSerializer, auto-registering their schemas and references), as a
Python service produces them, so the tests meet the wire format and the
registered schemas of a real client rather than sluice's reading of them.

usage: confluent_produce.py SPEC.json

SPEC: {"brokers": B, "registry": {"url": U, "user": N, "password": P},
       "topic": T, "strategy": "topic" | "record" (default "topic"),
       "schemas": [{"descriptors": PATH, "message": FULL_NAME}, ...],
       "records": [{"schema": I, "value": {...}, "headers": {...}, "partition": P}, ...],
       "produce": true}
PATH holds a serialized FileDescriptorSet, imports first; each schema gets its
own descriptor pool, so two versions of one file can be written in one run.
"value" is the message as protobuf JSON. Records are produced in order to T
(through confluent-kafka's Producer), or with "produce": false only
serialized, for the test to produce later.
Prints [{"partition", "offset", "schema_id", "value_hex"}] per record.
"""
import json
import sys

from confluent_kafka import Producer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.protobuf import ProtobufSerializer
from confluent_kafka.serialization import MessageField, SerializationContext
from google.protobuf import descriptor_pb2, descriptor_pool, json_format, message_factory
from google.protobuf import timestamp_pb2  # noqa: F401  (known to the default pool)

STRATEGIES = {
    "topic": lambda ctx, name: f"{ctx.topic}-value",
    "record": lambda ctx, name: name,
}


def message_class(path, name):
    files = descriptor_pb2.FileDescriptorSet()
    with open(path, "rb") as f:
        files.ParseFromString(f.read())
    pool = descriptor_pool.DescriptorPool()
    for file in files.file:
        pool.Add(file)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName(name))


def main():
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    registry = spec["registry"]
    registry = SchemaRegistryClient({
        "url": registry["url"],
        "basic.auth.user.info": f"{registry['user']}:{registry['password']}",
    })
    strategy = STRATEGIES[spec.get("strategy", "topic")]
    schemas = []
    for s in spec["schemas"]:
        cls = message_class(s["descriptors"], s["message"])
        serializer = ProtobufSerializer(cls, registry, {
            "auto.register.schemas": True,
            "subject.name.strategy": strategy,
        })
        schemas.append((cls, serializer))

    topic = spec["topic"]
    ctx = SerializationContext(topic, MessageField.VALUE)
    values = []
    for record in spec["records"]:
        cls, serializer = schemas[record["schema"]]
        values.append(serializer(json_format.ParseDict(record["value"], cls()), ctx))

    out = [{"partition": None, "offset": None,
            "schema_id": int.from_bytes(v[1:5], "big"), "value_hex": v.hex()} for v in values]
    if spec.get("produce", True):
        producer = Producer({"bootstrap.servers": spec["brokers"],
                             "enable.idempotence": True, "linger.ms": 5})

        def delivered(i):
            def report(err, msg):
                if err is not None:
                    sys.exit(f"record {i}: {err}")
                out[i]["partition"], out[i]["offset"] = msg.partition(), msg.offset()
            return report

        for i, (record, value) in enumerate(zip(spec["records"], values)):
            headers = [(k, v.encode()) for k, v in record.get("headers", {}).items()]
            producer.produce(topic, value=value, headers=headers,
                             partition=record.get("partition", 0), on_delivery=delivered(i))
            producer.poll(0)
        if producer.flush(60) != 0:
            sys.exit("records left undelivered after 60 s")
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
