"""Drives freshet's Kinesis-compatible API with boto3, the AWS SDK for Python, as a user's producer or consumer would.

Usage: kinesis_boto3.py <scenario> <endpoint-url> [args...]

Each scenario asserts what it checks and prints one JSON object on success; a failed check raises, printing a
traceback and exiting non-zero. Run by tests/tests/e2e/kinesis_api.rs against an in-process server.
Credentials come from the environment (AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY), or from the arguments.
"""

import base64
import hashlib
import http.client
import json
import os
import sys
import time
import urllib.parse

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

REGION = "us-east-1"


def client(endpoint, key=None, secret=None):
    return boto3.client(
        "kinesis",
        endpoint_url=endpoint,
        region_name=REGION,
        aws_access_key_id=key or os.environ.get("AWS_ACCESS_KEY_ID", "AKIDFRESHETTEST"),
        aws_secret_access_key=secret or os.environ.get("AWS_SECRET_ACCESS_KEY", "unchecked"),
        config=Config(
            retries={"max_attempts": 1, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
        ),
    )


def expect_error(code, fn, *args, **kwargs):
    """Call fn, which must fail with AWS error `code` and HTTP 400."""
    try:
        fn(*args, **kwargs)
    except ClientError as e:
        got = e.response["Error"]["Code"]
        assert got == code, f"expected {code}, got {got}: {e}"
        status = e.response["ResponseMetadata"]["HTTPStatusCode"]
        assert status == 400, f"{code} came with HTTP {status}"
        assert e.response["Error"]["Message"], f"{code} has no message"
        return e.response["Error"]["Message"]
    raise AssertionError(f"expected {code}, but the call succeeded")


def hash_key(partition_key):
    """Kinesis's routing key: MD5 of the partition key as a big-endian 128-bit integer."""
    return int(hashlib.md5(partition_key.encode("utf-8")).hexdigest(), 16)


def all_shards(kin, stream, page=1000):
    shards, token = [], None
    for _ in range(1000):
        out = kin.list_shards(NextToken=token, MaxResults=page) if token else kin.list_shards(
            StreamName=stream, MaxResults=page)
        shards += out["Shards"]
        token = out.get("NextToken")
        if not token:
            return shards
    raise AssertionError("ListShards did not end")


def read_shard(kin, stream, shard_id, iterator_type="TRIM_HORIZON", limit=10000, **kwargs):
    """Read a shard from `iterator_type` until it is caught up (open) or ended (closed).
    Returns (records, child_shards or None when the shard is still open)."""
    it = kin.get_shard_iterator(StreamName=stream, ShardId=shard_id, ShardIteratorType=iterator_type,
                                **kwargs)["ShardIterator"]
    records = []
    for _ in range(10000):
        out = kin.get_records(ShardIterator=it, Limit=limit)
        assert "MillisBehindLatest" in out
        records += out["Records"]
        nxt = out.get("NextShardIterator")
        if nxt is None:
            return records, out.get("ChildShards", [])
        if not out["Records"]:
            return records, None
        it = nxt
    raise AssertionError("reading a shard did not end")


def ms(dt):
    return round(dt.timestamp() * 1000)


# ---------------------------------------------------------------- scenarios

def basics(endpoint):
    kin = client(endpoint)
    kin.create_stream(StreamName="basics", ShardCount=3)
    kin.get_waiter("stream_exists").wait(StreamName="basics", WaiterConfig={"Delay": 1, "MaxAttempts": 10})
    desc = kin.describe_stream(StreamName="basics")["StreamDescription"]
    assert desc["StreamStatus"] == "ACTIVE", desc
    assert desc["StreamName"] == "basics"
    arn = desc["StreamARN"]
    assert arn.startswith("arn:aws:kinesis:us-east-1:") and arn.endswith(":stream/basics"), arn
    assert desc["RetentionPeriodHours"] == 24
    assert len(desc["Shards"]) == 3 and desc["HasMoreShards"] is False
    starts = [int(s["HashKeyRange"]["StartingHashKey"]) for s in desc["Shards"]]
    ends = [int(s["HashKeyRange"]["EndingHashKey"]) for s in desc["Shards"]]
    assert starts[0] == 0 and ends[-1] == 2**128 - 1, (starts, ends)
    assert all(ends[i] + 1 == starts[i + 1] for i in range(2)), (starts, ends)
    # DescribeStream pages by ExclusiveStartShardId.
    first = kin.describe_stream(StreamName="basics", Limit=2)["StreamDescription"]
    assert len(first["Shards"]) == 2 and first["HasMoreShards"] is True
    rest = kin.describe_stream(StreamName="basics", Limit=2,
                               ExclusiveStartShardId=first["Shards"][-1]["ShardId"])["StreamDescription"]
    assert [s["ShardId"] for s in first["Shards"] + rest["Shards"]] == [s["ShardId"] for s in desc["Shards"]]

    summary = kin.describe_stream_summary(StreamARN=arn)["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 3 and summary["StreamName"] == "basics", summary
    assert summary["ConsumerCount"] == 0

    for name in ["basics-b", "basics-c"]:
        kin.create_stream(StreamName=name, ShardCount=1)
    names = []
    for page in kin.get_paginator("list_streams").paginate(PaginationConfig={"PageSize": 1}):
        names += page["StreamNames"]
    assert names == ["basics", "basics-b", "basics-c"], names
    listed = kin.list_streams(Limit=2)
    assert listed["HasMoreStreams"] is True and listed["StreamNames"] == ["basics", "basics-b"]
    assert listed["StreamSummaries"][0]["StreamARN"] == arn

    # ListShards pages by NextToken, one shard at a time.
    paged = all_shards(kin, "basics", page=1)
    assert [s["ShardId"] for s in paged] == [s["ShardId"] for s in desc["Shards"]], paged
    latest = kin.list_shards(StreamName="basics", ShardFilter={"Type": "AT_LATEST"})["Shards"]
    assert len(latest) == 3
    after = kin.list_shards(StreamName="basics", ExclusiveStartShardId="shardId-000000000000")["Shards"]
    assert [s["ShardId"] for s in after] == ["shardId-000000000001", "shardId-000000000002"]
    # boto3's paginator resends StreamName with the NextToken; a token of another stream is refused.
    paginated = []
    for page in kin.get_paginator("list_shards").paginate(StreamName="basics", PaginationConfig={"PageSize": 1}):
        paginated += [s["ShardId"] for s in page["Shards"]]
    assert paginated == [s["ShardId"] for s in desc["Shards"]], paginated
    expect_error("InvalidArgumentException", kin.list_shards, StreamName="basics-b",
                 NextToken=kin.list_shards(StreamName="basics", MaxResults=1)["NextToken"])

    kin.delete_stream(StreamName="basics-c")
    kin.get_waiter("stream_not_exists").wait(StreamName="basics-c", WaiterConfig={"Delay": 1, "MaxAttempts": 10})
    assert kin.list_streams()["StreamNames"] == ["basics", "basics-b"]
    return {"streams": names, "shards": len(desc["Shards"])}


def routing(endpoint):
    """500 records with mixed partition keys land on the shard whose hash-key range holds MD5(key)."""
    kin = client(endpoint)
    kin.create_stream(StreamName="routing", ShardCount=4)
    shards = kin.describe_stream(StreamName="routing")["StreamDescription"]["Shards"]
    ranges = [(int(s["HashKeyRange"]["StartingHashKey"]), int(s["HashKeyRange"]["EndingHashKey"]), s["ShardId"])
              for s in shards]

    def owner(key):
        found = [sid for lo, hi, sid in ranges if lo <= key <= hi]
        assert len(found) == 1, (key, found)
        return found[0]

    keys = [f"device-{i % 37}" for i in range(300)] + [f"k{i}" for i in range(150)] \
        + ["ü-ñ-€-" + str(i) for i in range(40)] + ["x" * 256] * 5 + [str(i) for i in range(5)]
    assert len(keys) == 500
    entries = [{"Data": f"{k}|{i}".encode(), "PartitionKey": k} for i, k in enumerate(keys)]
    # A few explicit hash keys override the partition key's MD5.
    explicit = {7: 0, 8: 2**128 - 1, 9: ranges[2][0]}
    for i, key in explicit.items():
        entries[i]["ExplicitHashKey"] = str(key)
    out = kin.put_records(StreamName="routing", Records=entries)
    assert out["FailedRecordCount"] == 0, out
    assert len(out["Records"]) == 500
    per_shard = {}
    for i, (entry, result) in enumerate(zip(entries, out["Records"])):
        key = explicit.get(i, hash_key(entry["PartitionKey"]))
        assert result["ShardId"] == owner(key), (i, entry["PartitionKey"], result)
        per_shard.setdefault(result["ShardId"], []).append((int(result["SequenceNumber"]), entry))
    assert len(per_shard) == 4, "500 mixed keys reach every shard"
    seqs = [int(r["SequenceNumber"]) for r in out["Records"]]
    assert len(set(seqs)) == 500, "sequence numbers are unique across the stream"

    for sid, expected in per_shard.items():
        records, children = read_shard(kin, "routing", sid, limit=100)
        assert children is None
        got = [(int(r["SequenceNumber"]), r["Data"], r["PartitionKey"]) for r in records]
        want = [(seq, e["Data"], e["PartitionKey"]) for seq, e in expected]
        assert got == want, f"{sid}: read back differs"
        assert all(a[0] < b[0] for a, b in zip(got, got[1:])), "sequence numbers increase within a shard"
    return {"records": 500, "shards": {k: len(v) for k, v in sorted(per_shard.items())}}


def iterators(endpoint):
    kin = client(endpoint)
    kin.create_stream(StreamName="iterators", ShardCount=1)
    sid = "shardId-000000000000"
    puts = [kin.put_record(StreamName="iterators", PartitionKey=f"p{i}", Data=f"r{i}".encode())
            for i in range(10)]
    seqs = [p["SequenceNumber"] for p in puts]
    assert all(p["ShardId"] == sid for p in puts)

    records, _ = read_shard(kin, "iterators", sid, "TRIM_HORIZON", limit=3)
    assert [r["Data"] for r in records] == [f"r{i}".encode() for i in range(10)], records
    assert [r["SequenceNumber"] for r in records] == seqs
    arrivals = [ms(r["ApproximateArrivalTimestamp"]) for r in records]
    assert arrivals == sorted(arrivals)

    at = kin.get_shard_iterator(StreamName="iterators", ShardId=sid, ShardIteratorType="AT_SEQUENCE_NUMBER",
                                StartingSequenceNumber=seqs[3])["ShardIterator"]
    assert kin.get_records(ShardIterator=at, Limit=1)["Records"][0]["Data"] == b"r3"
    after = kin.get_shard_iterator(StreamName="iterators", ShardId=sid, ShardIteratorType="AFTER_SEQUENCE_NUMBER",
                                   StartingSequenceNumber=seqs[3])["ShardIterator"]
    assert kin.get_records(ShardIterator=after, Limit=1)["Records"][0]["Data"] == b"r4"

    # botocore sends timestamps in whole seconds: AT_TIMESTAMP starts at the first record that arrived since.
    ts = records[5]["ApproximateArrivalTimestamp"]
    sent_ms = ms(ts) // 1000 * 1000
    first = next(i for i, a in enumerate(arrivals) if a >= sent_ms)
    at_ts, _ = read_shard(kin, "iterators", sid, "AT_TIMESTAMP", Timestamp=ts)
    assert [r["SequenceNumber"] for r in at_ts] == seqs[first:], (first, at_ts)
    future, _ = read_shard(kin, "iterators", sid, "AT_TIMESTAMP", Timestamp=ts.timestamp() + 3600)
    assert future == [], future
    from_epoch, _ = read_shard(kin, "iterators", sid, "AT_TIMESTAMP", Timestamp=0)
    assert [r["SequenceNumber"] for r in from_epoch] == seqs

    latest = kin.get_shard_iterator(StreamName="iterators", ShardId=sid, ShardIteratorType="LATEST")["ShardIterator"]
    empty = kin.get_records(ShardIterator=latest)
    assert empty["Records"] == [] and empty["MillisBehindLatest"] == 0
    kin.put_record(StreamName="iterators", PartitionKey="late", Data=b"after latest")
    got = kin.get_records(ShardIterator=empty["NextShardIterator"])["Records"]
    assert [r["Data"] for r in got] == [b"after latest"], got

    # An iterator on a stream named by ARN, and GetRecords naming the stream by ARN too.
    arn = kin.describe_stream_summary(StreamName="iterators")["StreamDescriptionSummary"]["StreamARN"]
    by_arn = kin.get_shard_iterator(StreamARN=arn, ShardId="0", ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    assert len(kin.get_records(ShardIterator=by_arn, StreamARN=arn, Limit=2)["Records"]) == 2
    return {"records": len(records) + 1, "at_timestamp_from": first}


def read_lineage(kin, stream):
    """Read a whole stream following lineage: a shard only after all its parents ended."""
    shards = {s["ShardId"]: s for s in all_shards(kin, stream)}
    done, queued, out, children_of = set(), [], [], {}
    queue = sorted(s for s, d in shards.items() if "ParentShardId" not in d)
    queued += queue
    while queue:
        sid = queue.pop(0)
        records, children = read_shard(kin, stream, sid, limit=37)
        out += [(sid, r) for r in records]
        done.add(sid)
        if children is None:
            continue
        children_of[sid] = children
        for child in children:
            if all(p in done for p in child["ParentShards"]) and child["ShardId"] not in queued:
                queue.append(child["ShardId"])
                queued.append(child["ShardId"])
    return out, children_of, shards


def resharding(endpoint):
    kin = client(endpoint)
    kin.create_stream(StreamName="reshard", ShardCount=2)
    keys = [f"key-{i}" for i in range(20)]
    counter = {k: 0 for k in keys}

    def put_round(n):
        entries = []
        for i in range(n):
            k = keys[i % len(keys)]
            entries.append({"PartitionKey": k, "Data": f"{k}:{counter[k]}".encode()})
            counter[k] += 1
        assert kin.put_records(StreamName="reshard", Records=entries)["FailedRecordCount"] == 0

    put_round(100)
    # botocore sends ShardFilter.Timestamp as whole epoch seconds (it drops the fraction): keep the filters' times
    # more than a second away from the reshards'.
    before_split = time.time() - 1.5
    s0 = kin.describe_stream(StreamName="reshard")["StreamDescription"]["Shards"][0]
    lo, hi = int(s0["HashKeyRange"]["StartingHashKey"]), int(s0["HashKeyRange"]["EndingHashKey"])
    kin.split_shard(StreamName="reshard", ShardToSplit=s0["ShardId"], NewStartingHashKey=str((lo + hi) // 2))
    shards = kin.describe_stream(StreamName="reshard")["StreamDescription"]["Shards"]
    assert len(shards) == 4, shards
    parent = next(s for s in shards if s["ShardId"] == s0["ShardId"])
    assert "EndingSequenceNumber" in parent["SequenceNumberRange"], "a split closes its parent"
    kids = [s for s in shards if s.get("ParentShardId") == s0["ShardId"]]
    assert len(kids) == 2, shards
    put_round(100)

    kin.merge_shards(StreamName="reshard", ShardToMerge=kids[0]["ShardId"], AdjacentShardToMerge=kids[1]["ShardId"])
    shards = kin.describe_stream(StreamName="reshard")["StreamDescription"]["Shards"]
    merged = [s for s in shards if s.get("AdjacentParentShardId")]
    assert len(merged) == 1 and {merged[0]["ParentShardId"], merged[0]["AdjacentParentShardId"]} == \
        {k["ShardId"] for k in kids}, shards
    put_round(100)

    # ShardFilter by time: the shards open before the split, everything touched since, the shards open now.
    def filtered(kind, at):
        return sorted(s["ShardId"] for s in kin.list_shards(StreamName="reshard",
                                                             ShardFilter={"Type": kind, "Timestamp": at})["Shards"])
    ids = sorted(s["ShardId"] for s in shards)
    open_now = sorted(s["ShardId"] for s in shards if "EndingSequenceNumber" not in s["SequenceNumberRange"])
    assert filtered("AT_TIMESTAMP", before_split) == sorted(s["ShardId"] for s in shards
                                                           if "ParentShardId" not in s), shards
    assert filtered("FROM_TIMESTAMP", before_split) == ids
    assert filtered("AT_TIMESTAMP", time.time() + 1.5) == open_now == \
        sorted(s["ShardId"] for s in kin.list_shards(StreamName="reshard", ShardFilter={"Type": "AT_LATEST"})["Shards"])
    assert filtered("FROM_TIMESTAMP", time.time() + 1.5) == open_now
    horizon = kin.list_shards(StreamName="reshard", ShardFilter={"Type": "AT_TRIM_HORIZON"})["Shards"]
    assert sorted(s["ShardId"] for s in horizon) == filtered("AT_TIMESTAMP", before_split), horizon
    every = kin.list_shards(StreamName="reshard", ShardFilter={"Type": "FROM_TRIM_HORIZON"})["Shards"]
    assert sorted(s["ShardId"] for s in every) == ids

    records, children_of, _ = read_lineage(kin, "reshard")
    assert len(records) == 300, len(records)
    seen = {}
    for _, r in records:
        k, n = r["Data"].decode().split(":")
        assert r["PartitionKey"] == k
        seen.setdefault(k, []).append(int(n))
    assert all(v == list(range(counter[k])) for k, v in seen.items()), "per-key order holds across reshards"
    # The split parent names both children; each child of the split names the merged shard.
    split_children = sorted(c["ShardId"] for c in children_of[s0["ShardId"]])
    assert split_children == sorted(k["ShardId"] for k in kids), children_of
    assert all(c["ParentShards"] == [s0["ShardId"]] for c in children_of[s0["ShardId"]])
    for k in kids:
        assert [c["ShardId"] for c in children_of[k["ShardId"]]] == [merged[0]["ShardId"]], children_of
        assert sorted(children_of[k["ShardId"]][0]["ParentShards"]) == sorted(x["ShardId"] for x in kids)

    out = kin.update_shard_count(StreamName="reshard", TargetShardCount=4, ScalingType="UNIFORM_SCALING")
    assert out["CurrentShardCount"] == 2 and out["TargetShardCount"] == 4, out
    summary = kin.describe_stream_summary(StreamName="reshard")["StreamDescriptionSummary"]
    assert summary["OpenShardCount"] == 4, summary
    put_round(40)
    records, _, _ = read_lineage(kin, "reshard")
    assert len(records) == 340, len(records)
    expect_error("ResourceInUseException", kin.split_shard, StreamName="reshard", ShardToSplit=s0["ShardId"],
                 NewStartingHashKey=str((lo + hi) // 2))
    return {"records": len(records), "shards": len(all_shards(kin, "reshard"))}


def retention(endpoint):
    kin = client(endpoint)
    kin.create_stream(StreamName="retention", ShardCount=1)

    def hours():
        return kin.describe_stream_summary(StreamName="retention")["StreamDescriptionSummary"]["RetentionPeriodHours"]

    assert hours() == 24
    kin.increase_stream_retention_period(StreamName="retention", RetentionPeriodHours=168)
    assert hours() == 168
    assert kin.describe_stream(StreamName="retention")["StreamDescription"]["RetentionPeriodHours"] == 168
    kin.decrease_stream_retention_period(StreamName="retention", RetentionPeriodHours=48)
    assert hours() == 48
    expect_error("InvalidArgumentException", kin.increase_stream_retention_period, StreamName="retention",
                 RetentionPeriodHours=30)
    expect_error("InvalidArgumentException", kin.decrease_stream_retention_period, StreamName="retention",
                 RetentionPeriodHours=100)
    expect_error("InvalidArgumentException", kin.increase_stream_retention_period, StreamName="retention",
                 RetentionPeriodHours=9000)
    expect_error("InvalidArgumentException", kin.decrease_stream_retention_period, StreamName="retention",
                 RetentionPeriodHours=23)
    assert hours() == 48
    return {"hours": hours()}


def consumers(endpoint):
    kin = client(endpoint)
    kin.create_stream(StreamName="consumers", ShardCount=1)
    arn = kin.describe_stream_summary(StreamName="consumers")["StreamDescriptionSummary"]["StreamARN"]
    registered = []
    for name in ["analytics", "archiver", "zeta"]:
        c = kin.register_stream_consumer(StreamARN=arn, ConsumerName=name)["Consumer"]
        assert c["ConsumerName"] == name and c["ConsumerStatus"] == "ACTIVE", c
        assert c["ConsumerARN"].startswith(arn + "/consumer/" + name + ":"), c
        registered.append(c)
    expect_error("ResourceInUseException", kin.register_stream_consumer, StreamARN=arn, ConsumerName="analytics")
    listed = []
    for page in kin.get_paginator("list_stream_consumers").paginate(StreamARN=arn,
                                                                     PaginationConfig={"PageSize": 2}):
        listed += [c["ConsumerName"] for c in page["Consumers"]]
    assert listed == ["analytics", "archiver", "zeta"], listed
    by_arn = kin.describe_stream_consumer(ConsumerARN=registered[0]["ConsumerARN"])["ConsumerDescription"]
    by_name = kin.describe_stream_consumer(StreamARN=arn, ConsumerName="analytics")["ConsumerDescription"]
    assert by_arn == by_name and by_arn["StreamARN"] == arn, (by_arn, by_name)
    assert kin.describe_stream_summary(StreamName="consumers")["StreamDescriptionSummary"]["ConsumerCount"] == 3

    kin.deregister_stream_consumer(ConsumerARN=registered[0]["ConsumerARN"])
    kin.deregister_stream_consumer(StreamARN=arn, ConsumerName="archiver")
    expect_error("ResourceNotFoundException", kin.describe_stream_consumer, ConsumerARN=registered[0]["ConsumerARN"])
    expect_error("ResourceNotFoundException", kin.deregister_stream_consumer, StreamARN=arn, ConsumerName="archiver")
    assert [c["ConsumerName"] for c in kin.list_stream_consumers(StreamARN=arn)["Consumers"]] == ["zeta"]

    expect_error("ResourceInUseException", kin.delete_stream, StreamName="consumers")
    kin.delete_stream(StreamName="consumers", EnforceConsumerDeletion=True)
    expect_error("ResourceNotFoundException", kin.describe_stream_summary, StreamName="consumers")
    return {"consumers": listed}


def raw(endpoint, target, body, content_type="application/x-amz-json-1.1"):
    """POST a hand-made request, as a broken client would; returns (status, parsed body)."""
    url = urllib.parse.urlparse(endpoint)
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    headers = {"Content-Type": content_type}
    if target:
        headers["X-Amz-Target"] = target
    conn.request("POST", "/", body=body, headers=headers)
    response = conn.getresponse()
    data = response.read()
    conn.close()
    return response.status, json.loads(data) if data else None


def errors(endpoint):
    """Every bad input gets AWS's error name and status; the server keeps serving."""
    kin = client(endpoint)
    kin.create_stream(StreamName="errors", ShardCount=2)
    seen = {}

    def raw_expect(code, target, body):
        status, answer = raw(endpoint, target, body)
        assert status == 400 and answer["__type"] == code, (target, body[:80], status, answer)
        assert answer["message"], answer
        seen[code] = seen.get(code, 0) + 1

    def sdk_expect(code, fn, **kwargs):
        expect_error(code, fn, **kwargs)
        seen[code] = seen.get(code, 0) + 1

    k = "Kinesis_20131202."
    # Malformed JSON, wrong types, bad base64: SerializationException.
    raw_expect("SerializationException", k + "DescribeStream", b'{"StreamName": ')
    raw_expect("SerializationException", k + "DescribeStream", b"[1, 2]")
    raw_expect("SerializationException", k + "CreateStream", b'{"StreamName": 5, "ShardCount": 1}')
    raw_expect("SerializationException", k + "CreateStream", b'{"StreamName": "x", "ShardCount": "one"}')
    raw_expect("SerializationException", k + "PutRecord",
               b'{"StreamName": "errors", "PartitionKey": "p", "Data": "!!not base64!!"}')
    raw_expect("SerializationException", k + "PutRecords",
               b'{"StreamName": "errors", "Records": [{"PartitionKey": "p", "Data": "@@@@"}]}')
    # Missing members and broken constraints: ValidationException.
    raw_expect("ValidationException", k + "CreateStream", b"{}")
    raw_expect("ValidationException", k + "PutRecord", b'{"StreamName": "errors", "Data": "aGk="}')
    raw_expect("ValidationException", k + "PutRecord",
               json.dumps({"StreamName": "errors", "PartitionKey": "p" * 257, "Data": "aGk="}).encode())
    raw_expect("ValidationException", k + "PutRecords", json.dumps({
        "StreamName": "errors", "Records": [{"PartitionKey": "p", "Data": "aGk="}] * 501}).encode())
    raw_expect("ValidationException", k + "PutRecords", b'{"StreamName": "errors", "Records": []}')
    raw_expect("ValidationException", k + "GetShardIterator",
               b'{"StreamName": "errors", "ShardId": "0", "ShardIteratorType": "SIDEWAYS"}')
    raw_expect("ValidationException", k + "CreateStream", b'{"StreamName": "bad name!", "ShardCount": 1}')
    raw_expect("ValidationException", k + "GetRecords", b'{"ShardIterator": "x", "Limit": 0}')
    # Unknown operations: UnknownOperationException.
    raw_expect("UnknownOperationException", k + "LaunchRockets", b"{}")
    raw_expect("UnknownOperationException", "Nope_20990101.DescribeStream", b"{}")
    raw_expect("UnknownOperationException", None, b"{}")

    # Through the SDK, as producers and consumers meet them.
    sdk_expect("ResourceNotFoundException", kin.describe_stream, StreamName="no-such-stream")
    sdk_expect("ResourceNotFoundException", kin.put_record, StreamName="no-such-stream", PartitionKey="p", Data=b"x")
    sdk_expect("ResourceNotFoundException", kin.get_shard_iterator, StreamName="errors",
               ShardId="shardId-000000000099", ShardIteratorType="TRIM_HORIZON")
    sdk_expect("ResourceNotFoundException", kin.get_shard_iterator, StreamName="errors",
               ShardId="not-a-shard", ShardIteratorType="TRIM_HORIZON")
    sdk_expect("ResourceInUseException", kin.create_stream, StreamName="errors", ShardCount=1)
    sdk_expect("InvalidArgumentException", kin.get_records, ShardIterator="garbage-iterator")
    it = kin.get_shard_iterator(StreamName="errors", ShardId="0", ShardIteratorType="LATEST")["ShardIterator"]
    tampered = it[:10] + ("A" if it[10] != "A" else "B") + it[11:]
    sdk_expect("InvalidArgumentException", kin.get_records, ShardIterator=tampered)
    sdk_expect("InvalidArgumentException", kin.get_shard_iterator, StreamName="errors", ShardId="0",
               ShardIteratorType="AT_SEQUENCE_NUMBER")
    sdk_expect("InvalidArgumentException", kin.get_shard_iterator, StreamName="errors", ShardId="0",
               ShardIteratorType="AT_SEQUENCE_NUMBER", StartingSequenceNumber="1")
    sdk_expect("InvalidArgumentException", kin.split_shard, StreamName="errors", ShardToSplit="0",
               NewStartingHashKey="0")
    sdk_expect("InvalidArgumentException", kin.merge_shards, StreamName="errors", ShardToMerge="0",
               AdjacentShardToMerge="0")
    sdk_expect("InvalidArgumentException", kin.update_shard_count, StreamName="errors", TargetShardCount=9,
               ScalingType="UNIFORM_SCALING")
    sdk_expect("InvalidArgumentException", kin.describe_stream_summary)
    sdk_expect("LimitExceededException", kin.create_stream, StreamName="huge", ShardCount=100000)

    # After all that, the server still serves.
    put = kin.put_record(StreamName="errors", PartitionKey="still", Data=b"alive")
    assert put["ShardId"].startswith("shardId-")
    return {"errors": seen}


def get_iterator(endpoint, stream):
    """Hand out a TRIM_HORIZON iterator of shard 0 (the test then moves the server's clock past its expiry)."""
    kin = client(endpoint)
    kin.create_stream(StreamName=stream, ShardCount=1)
    kin.put_record(StreamName=stream, PartitionKey="p", Data=b"x")
    it = kin.get_shard_iterator(StreamName=stream, ShardId="0", ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    assert len(kin.get_records(ShardIterator=it)["Records"]) == 1
    return {"iterator": it}


def expired(endpoint, iterator):
    kin = client(endpoint)
    message = expect_error("ExpiredIteratorException", kin.get_records, ShardIterator=iterator)
    return {"message": message}


def throttled(endpoint):
    """With provisioned-mode limits and a server clock that stands still: 1,000 records/s per shard, 5 reads/s."""
    kin = client(endpoint)
    kin.create_stream(StreamName="throttled", ShardCount=1)
    failed, codes = 0, set()
    for _ in range(3):
        out = kin.put_records(StreamName="throttled",
                              Records=[{"PartitionKey": f"p{i}", "Data": b"tiny"} for i in range(500)])
        failed += out["FailedRecordCount"]
        for r in out["Records"]:
            if "ErrorCode" in r:
                codes.add(r["ErrorCode"])
                assert "ShardId" not in r and r["ErrorMessage"], r
            else:
                assert r["SequenceNumber"] and r["ShardId"], r
    assert failed == 500, failed
    assert codes == {"ProvisionedThroughputExceededException"}, codes
    expect_error("ProvisionedThroughputExceededException", kin.put_record, StreamName="throttled",
                 PartitionKey="p", Data=b"x")
    it = kin.get_shard_iterator(StreamName="throttled", ShardId="0", ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
    read = 0
    for _ in range(5):
        out = kin.get_records(ShardIterator=it, Limit=300)
        read += len(out["Records"])
        it = out["NextShardIterator"]
    assert read == 1000, read
    expect_error("ProvisionedThroughputExceededException", kin.get_records, ShardIterator=it)
    return {"failed": failed, "read": read}


def signed(endpoint, key, secret):
    """With the right access key and secret, calls work."""
    kin = client(endpoint, key, secret)
    kin.create_stream(StreamName="signed", ShardCount=1)
    kin.put_record(StreamName="signed", PartitionKey="p", Data=b"signed data")
    records, _ = read_shard(kin, "signed", "shardId-000000000000")
    assert [r["Data"] for r in records] == [b"signed data"]
    return {"streams": kin.list_streams()["StreamNames"]}


def refused(endpoint, key, secret, code):
    """With a wrong secret or an unknown key, every call is refused with `code`."""
    kin = client(endpoint, key, secret)
    expect_error(code, kin.list_streams)
    expect_error(code, kin.put_record, StreamName="signed", PartitionKey="p", Data=b"forged")
    # And unsigned requests are refused as well.
    status, answer = raw(endpoint, "Kinesis_20131202.ListStreams", b"{}")
    assert status == 400 and answer["__type"] == "UnrecognizedClientException", (status, answer)
    return {"refused": code}


SCENARIOS = {
    "basics": basics,
    "routing": routing,
    "iterators": iterators,
    "resharding": resharding,
    "retention": retention,
    "consumers": consumers,
    "errors": errors,
    "get_iterator": get_iterator,
    "expired": expired,
    "throttled": throttled,
    "signed": signed,
    "refused": refused,
}

if __name__ == "__main__":
    scenario, endpoint, *args = sys.argv[1:]
    result = SCENARIOS[scenario](endpoint, *args)
    print(json.dumps(result, default=lambda b: base64.b64encode(b).decode() if isinstance(b, bytes) else str(b)))
