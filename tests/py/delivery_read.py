"""Read a freshet Delta table with two independent readers and print what each sees, as one JSON object.

Readers:
- `deltalake` (delta-rs's Python package): `DeltaTable(path).to_pyarrow_table()`.
- `duckdb`: DuckDB's `delta` extension cannot be downloaded offline, so this script replays the Delta log itself
  (JSON commits after the newest checkpoint, the checkpoint read with DuckDB) and has DuckDB read the active
  Parquet files with hive partitioning. It shares no code with delta-rs.

For each reader: row count, column names, distinct partition values, and a checksum: FNV-1a 64 over the sorted
lines `"<_shard_id>|<_sequence_number>|<key column>"` (the key column given on the command line), the same
function the Rust test computes over the records it wrote.

usage: delivery_read.py <table_dir_or_url> <key_column> [<partition_column>] [--options <json>]
With an `s3://` table (and `--options` holding the object-store options) only `deltalake` reads it.
"""

import json
import os
import sys


def fnv1a64(lines):
    h = 0xCBF29CE484222325
    for line in lines:
        for b in line.encode() + b"\n":
            h ^= b
            h = (h * 0x100000001B3) & 0xFFFFFFFFFFFFFFFF
    return h


def summarize(rows, columns, key, part):
    lines = sorted(f"{r['_shard_id']}|{r['_sequence_number']}|{fmt(r.get(key))}" for r in rows)
    pairs = [(r["_shard_id"], r["_sequence_number"]) for r in rows]
    return {
        "rows": len(rows),
        "distinct_positions": len(set(pairs)),
        "columns": sorted(columns),
        "partitions": sorted({str(r.get(part)) for r in rows}) if part else [],
        "checksum": str(fnv1a64(lines)),
    }


def fmt(v):
    if v is None:
        return "null"
    if isinstance(v, float) and v.is_integer():
        return str(int(v))
    return str(v)


def with_deltalake(path, key, part, options=None):
    from deltalake import DeltaTable

    t = DeltaTable(path, storage_options=options).to_pyarrow_table()
    return summarize(t.to_pylist(), t.column_names, key, part)


def active_files(path):
    """Replay the Delta log: the newest checkpoint (if any), then the JSON commits after it."""
    import duckdb

    log = os.path.join(path, "_delta_log")
    files = {}
    start = 0
    last = os.path.join(log, "_last_checkpoint")
    if os.path.exists(last):
        with open(last) as f:
            cp = json.load(f)["version"]
        cp_file = os.path.join(log, f"{cp:020d}.checkpoint.parquet")
        rows = duckdb.sql(
            f"SELECT add.path AS a, remove.path AS r FROM read_parquet('{cp_file}')"
        ).fetchall()
        for a, r in rows:
            if a:
                files[a] = True
            if r:
                files.pop(r, None)
        start = cp + 1
    versions = sorted(
        int(n[:20]) for n in os.listdir(log) if n.endswith(".json") and n[:20].isdigit()
    )
    for v in versions:
        if v < start:
            continue
        with open(os.path.join(log, f"{v:020d}.json")) as f:
            for line in f:
                if not line.strip():
                    continue
                action = json.loads(line)
                if "add" in action:
                    files[action["add"]["path"]] = True
                elif "remove" in action:
                    files.pop(action["remove"]["path"], None)
    from urllib.parse import unquote

    return [os.path.join(path, unquote(p)) for p in files]


def with_duckdb(path, key, part):
    import duckdb

    files = active_files(path)
    if not files:
        return summarize([], [], key, part)
    rel = duckdb.read_parquet(files, hive_partitioning=True, union_by_name=True)
    t = rel.arrow()
    if hasattr(t, "read_all"):
        t = t.read_all()
    return summarize(t.to_pylist(), t.column_names, key, part)


def main():
    args = sys.argv[1:]
    options = None
    if "--options" in args:
        i = args.index("--options")
        options = json.loads(args[i + 1])
        del args[i : i + 2]
    path, key = args[0], args[1]
    part = args[2] if len(args) > 2 else None
    out = {"deltalake": with_deltalake(path, key, part, options)}
    out["duckdb"] = None if "://" in path else with_duckdb(path, key, part)
    print(json.dumps(out), flush=True)
    # deltalake's native threads sometimes abort at interpreter shutdown after the work is done: skip the shutdown.
    os._exit(0)


if __name__ == "__main__":
    main()
