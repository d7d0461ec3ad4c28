"""Prints every row of the Parquet data files under a directory as JSON,
with each column's pyarrow type: {"types": {column: type}, "rows": [{column:
value, "_file": path relative to DIR}], "dead_letters": [reason]}. Values are made JSON-comparable: bytes as
{"hex": …}, timestamps and durations as integer microseconds, maps as lists
of [key, value] pairs.

usage: rows.py DIR
"""
import datetime
import json
import os
import sys

import pyarrow.parquet as pq

EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)


def plain(value):
    if isinstance(value, bytes):
        return {"hex": value.hex()}
    if isinstance(value, datetime.datetime):
        return (value - EPOCH) // datetime.timedelta(microseconds=1)
    if isinstance(value, datetime.timedelta):
        return value // datetime.timedelta(microseconds=1)
    if isinstance(value, dict):
        return {k: plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def main():
    out = {"types": {}, "rows": [], "dead_letters": []}
    for dirpath, _, names in os.walk(sys.argv[1]):
        for name in sorted(names):
            if not name.endswith(".parquet"):
                continue
            table = pq.read_table(os.path.join(dirpath, name))
            if "reason" in table.column_names:
                out["dead_letters"].extend(table.column("reason").to_pylist())
                continue
            for field in table.schema:
                out["types"][field.name] = str(field.type)
            relative = os.path.relpath(os.path.join(dirpath, name), sys.argv[1])
            out["rows"].extend(dict(plain(row), _file=relative) for row in table.to_pylist())
    out["rows"].sort(key=lambda r: r["_kafka_offset"])
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
    # pyarrow's thread pool can abort the interpreter's teardown ("terminate
    # called without an active exception"); the output is complete here.
    sys.stdout.flush()
    os._exit(0)
