"""boto3 (the AWS SDK for Python) against a Kinesis endpoint whose sequence numbers are AWS-sized (kinesalite).

Usage: kinesalite_boto3.py <endpoint-url> <stream> <records>

Puts <records> records with PutRecords (partition keys boto-0..boto-4, data "boto <i>"), then reads every shard from
TRIM_HORIZON and prints {"puts": [{"shard", "seq"}], "shards": {"<shard id>": [{"seq", "key", "data"}]}} with the
sequence numbers exactly as the endpoint sent them. Run by tests/tests/e2e/remote_kinesalite.rs.
"""

import json
import sys

import boto3
from botocore.config import Config


def main():
    endpoint, stream, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
    kin = boto3.client(
        "kinesis",
        endpoint_url=endpoint,
        region_name="us-east-1",
        aws_access_key_id="AKIDKINESALITE",
        aws_secret_access_key="unchecked",
        config=Config(retries={"max_attempts": 1, "mode": "standard"}),
    )
    records = [{"PartitionKey": f"boto-{i % 5}", "Data": f"boto {i}".encode()} for i in range(count)]
    out = kin.put_records(StreamName=stream, Records=records)
    assert out["FailedRecordCount"] == 0, out
    puts = [{"shard": r["ShardId"], "seq": r["SequenceNumber"]} for r in out["Records"]]
    shards = {}
    for shard in kin.list_shards(StreamName=stream)["Shards"]:
        it = kin.get_shard_iterator(StreamName=stream, ShardId=shard["ShardId"], ShardIteratorType="TRIM_HORIZON")[
            "ShardIterator"
        ]
        got = []
        while it:
            page = kin.get_records(ShardIterator=it, Limit=1000)
            got += [
                {"seq": r["SequenceNumber"], "key": r["PartitionKey"], "data": r["Data"].decode()}
                for r in page["Records"]
            ]
            if not page["Records"]:
                break
            it = page.get("NextShardIterator")
        shards[shard["ShardId"]] = got
    print(json.dumps({"puts": puts, "shards": shards}))


if __name__ == "__main__":
    main()
