"""Run SQL queries with DuckDB over the Delta tables of a warehouse (read with Python deltalake as Arrow datasets).

Usage: query_duckdb.py <warehouse dir> <json list of SQL strings>
Prints a JSON list: for each query, its rows as lists (floats as numbers, timestamps as ISO strings).
"""

import datetime
import decimal
import json
import os
import sys

import duckdb
from deltalake import DeltaTable


def plain(value):
    if isinstance(value, (datetime.datetime, datetime.date)):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return float(value)
    return value


def main():
    warehouse, queries = sys.argv[1], json.loads(sys.argv[2])
    con = duckdb.connect()
    for name in sorted(os.listdir(warehouse)):
        if os.path.isdir(os.path.join(warehouse, name, "_delta_log")):
            dataset = DeltaTable(os.path.join(warehouse, name)).to_pyarrow_dataset()
            con.register(name, dataset)
    out = []
    for sql in queries:
        out.append([[plain(v) for v in row] for row in con.execute(sql).fetchall()])
    print(json.dumps(out))


if __name__ == "__main__":
    main()
