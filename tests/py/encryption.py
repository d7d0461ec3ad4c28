"""Prints, as JSON, each object under s3://<bucket>/<prefix> with the
encryption S3 reports for it (HeadObject): key → {sse, kms_key_id, bucket_key}."""
import json
import sys

import boto3


def main(url):
    bucket, _, prefix = url.removeprefix("s3://").partition("/")
    s3 = boto3.client("s3")
    out = {}
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        for item in page.get("Contents", []):
            head = s3.head_object(Bucket=bucket, Key=item["Key"])
            out[item["Key"]] = {
                "sse": head.get("ServerSideEncryption"),
                "kms_key_id": head.get("SSEKMSKeyId"),
                "bucket_key": head.get("BucketKeyEnabled"),
            }
    print(json.dumps(out))


if __name__ == "__main__":
    main(sys.argv[1])
