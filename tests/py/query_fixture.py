"""Write the deterministic fixture warehouse of freshet's query tests with Python deltalake.

Usage: query_fixture.py <warehouse dir>
Tables: `telemetry` (partitioned by event_date; version 0 = 2,000 rows, version 1 = +1,000 rows) and `devices`
(a small reference table). Prints {"telemetry_version": .., "rows": ..} as JSON.
"""

import datetime
import json
import sys

import pyarrow as pa
from deltalake import DeltaTable, write_deltalake

BASE = datetime.datetime(2025, 11, 21, 0, 0, tzinfo=datetime.timezone.utc)
STATUSES = ["ok", "warn", "error"]


def telemetry(start, count):
    rows = {k: [] for k in ["device_id", "ts", "temp", "humidity", "status", "event_date"]}
    for i in range(start, start + count):
        ts = BASE + datetime.timedelta(minutes=i)
        rows["device_id"].append(f"dev-{i % 5}")
        rows["ts"].append(ts)
        rows["temp"].append(None if i % 97 == 0 else 15 + ((i * 37) % 200) / 10)
        rows["humidity"].append((i * 13) % 100)
        rows["status"].append(STATUSES[(i * 7) % 3])
        rows["event_date"].append(ts.date().isoformat())
    schema = pa.schema(
        [
            ("device_id", pa.string()),
            ("ts", pa.timestamp("us", tz="UTC")),
            ("temp", pa.float64()),
            ("humidity", pa.int64()),
            ("status", pa.string()),
            ("event_date", pa.string()),
        ]
    )
    return pa.table(rows, schema=schema)


def main():
    warehouse = sys.argv[1]
    path = f"{warehouse}/telemetry"
    write_deltalake(path, telemetry(0, 2000), partition_by=["event_date"], mode="append")
    write_deltalake(path, telemetry(2000, 1000), partition_by=["event_date"], mode="append")
    devices = pa.table(
        {
            "device_id": [f"dev-{i}" for i in range(5)],
            "site": ["north", "north", "south", "east", "south"],
            "installed_year": [2021, 2022, 2022, 2023, 2024],
        }
    )
    write_deltalake(f"{warehouse}/devices", devices, mode="append")
    table = DeltaTable(path)
    print(json.dumps({"telemetry_version": table.version(), "rows": 3000}))


if __name__ == "__main__":
    main()
