"""Runs sluice's DuckDB DDL (CREATE TABLE + INSERT … read_parquet) in an
in-memory DuckDB, then prints the table's row count, column types and the
rows as JSON, for the integration tests.

usage: duckdb_load.py <ddl.sql> <table>
"""
import json
import sys

import duckdb


def main():
    sql_path, table = sys.argv[1], sys.argv[2]
    con = duckdb.connect()
    with open(sql_path) as f:
        con.execute(f.read())
    count = con.execute(f'SELECT count(*) FROM "{table}"').fetchone()[0]
    types = {name: ty for name, ty, *_ in con.execute(f'DESCRIBE "{table}"').fetchall()}
    # Zoned timestamps as text: fetching them as Python values needs pytz.
    columns = ", ".join(
        f'CAST("{name}" AS VARCHAR) AS "{name}"' if "TIME ZONE" in ty else f'"{name}"'
        for name, ty in types.items())
    cursor = con.execute(f'SELECT {columns} FROM "{table}" ORDER BY _kafka_offset')
    names = [d[0] for d in cursor.description]
    rows = [dict(zip(names, row)) for row in cursor.fetchall()]
    json.dump({"count": count, "types": types, "rows": rows}, sys.stdout, default=str)


if __name__ == "__main__":
    main()
