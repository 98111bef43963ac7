"""Reads a report's outputs from an S3 bucket with boto3, as an operator inspecting the bucket would.

Usage: s3_outputs.py <endpoint-url> <bucket> <warehouse-prefix> <report>

Prints one JSON object:
  keys          every key under <prefix>/reports/<report>/, sorted
  latest        the `latest` pointer (parsed), or null when there is none yet
  result        the `result.json` the pointer names (parsed), or null
  parquet_rows  the rows of the pointer's `result.parquet` as pyarrow reads them, or null
  csv_rows      data lines of the pointer's `result.csv`, or null
  records       every `runs/<id>/run.json` (parsed), by run id
  table_log     keys under <prefix>/telemetry/_delta_log/ (the delivery's commits), sorted
Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), else moto's `testing`; region
us-east-1.
"""

import io
import json
import os
import sys

import boto3
import pyarrow.parquet as pq


def main():
    endpoint, bucket, prefix, report = sys.argv[1:5]
    prefix = prefix.strip("/")
    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID", "testing"),
        aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY", "testing"),
    )
    base = f"{prefix}/reports/{report}/" if prefix else f"reports/{report}/"

    def keys_under(p):
        out = []
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=p):
            out.extend(o["Key"] for o in page.get("Contents", []))
        return sorted(out)

    def get(key):
        return s3.get_object(Bucket=bucket, Key=key)["Body"].read()

    keys = keys_under(base)
    out = {"keys": keys, "latest": None, "result": None, "parquet_rows": None, "csv_rows": None}
    if base + "latest" in keys:
        latest = json.loads(get(base + "latest"))
        out["latest"] = latest
        for rel in latest["outputs"]:
            body = get(base + rel)
            if rel.endswith(".json"):
                out["result"] = json.loads(body)
            elif rel.endswith(".parquet"):
                out["parquet_rows"] = pq.read_table(io.BytesIO(body)).to_pylist()
            elif rel.endswith(".csv"):
                out["csv_rows"] = max(len(body.decode().strip().splitlines()) - 1, 0)
    out["records"] = {
        k[len(base) + len("runs/") : -len("/run.json")]: json.loads(get(k))
        for k in keys
        if k.endswith("/run.json")
    }
    table = f"{prefix}/telemetry/_delta_log/" if prefix else "telemetry/_delta_log/"
    out["table_log"] = keys_under(table)
    print(json.dumps(out, default=str))


if __name__ == "__main__":
    main()
