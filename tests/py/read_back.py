"""Reads what sluice wrote, with pyarrow (a Parquet reader sluice did not
write), and prints it as JSON for the integration tests and the demo.

usage: read_back.py s3://bucket/prefix [--rows] [--committed] [--queue URL] [--extra COLUMN]
       read_back.py file:///dir [--rows] [--committed] [--extra COLUMN]

Prints {"files": [{key, size, e_tag, rows, metadata}], "rows": [...], "messages": [...],
"manifests": [...], "unmarked": [...], "orphans": [...]}: "unmarked" are the keys of
manifests without their .notified marker. With --committed only the files that a
manifest lists are read (what loaders may see); the rest are orphans.
Dead letters are [partition, offset, stage, reason, value hex, headers].
Rows are [partition, offset, order_id, customer_id, total_cents,
payment_method, promo_code, placed_at_us, latitude, is_first_order,
event_id, event_time_us] when the files hold the reference event, then
the --extra column's value (null in files without that column).
"""
import argparse
import io
import json
import os
import sys

import pyarrow.parquet as pq

REFERENCE = ["_kafka_partition", "_kafka_offset", "order_id", "customer_id",
             "total_cents", "payment_method", "promo_code", "placed_at",
             "latitude", "is_first_order", "_event_id", "_event_time"]


def objects(url):
    if url.startswith("s3://"):
        import boto3
        bucket, _, prefix = url[5:].partition("/")
        s3 = boto3.client("s3")
        pages = s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix)
        for page in pages:
            for obj in page.get("Contents", []):
                body = s3.get_object(Bucket=bucket, Key=obj["Key"])["Body"].read()
                yield obj["Key"], body, obj["ETag"]
    elif url.startswith("file://"):
        root = url[7:]
        for dirpath, _, names in os.walk(root):
            for name in sorted(names):
                path = os.path.join(dirpath, name)
                with open(path, "rb") as f:
                    yield os.path.relpath(path, root), f.read(), None
    else:
        sys.exit(f"unsupported url {url}")


def as_micros(value):
    if value is None:
        return None
    return int(value.timestamp() * 1_000_000) if hasattr(value, "timestamp") else value


def drain(queue_url):
    import boto3
    from aws_lambda_powertools.utilities.parser.models import S3Model
    sqs = boto3.client("sqs")
    messages = []
    while True:
        got = sqs.receive_message(QueueUrl=queue_url, MaxNumberOfMessages=10,
                                  WaitTimeSeconds=0).get("Messages", [])
        if not got:
            return messages
        for m in got:
            body = json.loads(m["Body"])
            # Every body must be a bucket notification as S3 writes it, by
            # a model sluice did not write (raises if it is not).
            S3Model.model_validate(body)
            messages.append(body)
            sqs.delete_message(QueueUrl=queue_url, ReceiptHandle=m["ReceiptHandle"])


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("url")
    parser.add_argument("--rows", action="store_true")
    parser.add_argument("--queue")
    parser.add_argument("--committed", action="store_true")
    parser.add_argument("--extra")
    args = parser.parse_args()
    out = {"files": [], "rows": [], "messages": [], "manifests": [], "unmarked": [],
           "orphans": [], "dead_letters": []}
    everything = list(objects(args.url))
    prefix = args.url[5:].partition("/")[2] if args.url.startswith("s3://") else ""
    keys = {key for key, _, _ in everything}
    for key, body, _ in everything:
        if "/_sluice/manifests/" in "/" + key and key.endswith(".json"):
            out["manifests"].append(json.loads(body))
            if key[:-len(".json")] + ".notified" not in keys:
                out["unmarked"].append(key)
    listed = {f["key"] for m in out["manifests"] for f in m["files"]}
    for key, body, e_tag in everything:
        if not key.endswith(".parquet"):
            continue
        full = key if not prefix or key.startswith(prefix) else prefix + "/" + key
        if args.committed and key not in listed and full not in listed:
            out["orphans"].append(key)
            continue
        table = pq.read_table(io.BytesIO(body))
        file_meta = pq.ParquetFile(io.BytesIO(body)).metadata
        meta = file_meta.metadata or {}
        out["files"].append({
            "key": key,
            "size": len(body),
            "e_tag": e_tag,
            "rows": table.num_rows,
            "row_groups": file_meta.num_row_groups,
            "metadata": {k.decode(): v.decode() for k, v in meta.items()
                         if k.decode().startswith("sluice.")},
            "columns": table.column_names,
        })
        if "reason" in table.column_names:
            for row in zip(*[table.column(c).to_pylist() for c in
                             ["_kafka_partition", "_kafka_offset", "stage", "reason", "value", "headers"]]):
                row = list(row)
                row[4] = row[4].hex() if row[4] is not None else None
                row[5] = [[h["key"], h["value"].hex() if h["value"] is not None else None] for h in row[5] or []]
                out["dead_letters"].append(row)
        if args.rows and all(c in table.column_names for c in REFERENCE):
            cols = [table.column(c).to_pylist() for c in REFERENCE]
            if args.extra:
                cols.append(table.column(args.extra).to_pylist()
                            if args.extra in table.column_names else [None] * table.num_rows)
            for row in zip(*cols):
                row = list(row)
                row[7] = as_micros(row[7])
                row[11] = as_micros(row[11])
                out["rows"].append(row)
    if args.queue:
        out["messages"] = drain(args.queue)
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
    # pyarrow's thread pool can abort the interpreter's teardown ("terminate
    # called without an active exception"); the output is complete here.
    sys.stdout.flush()
    os._exit(0)
