"""One S3 operation with boto3, run by the S3 venv's Python inside the pod's
network namespace: s3client.py ENDPOINT KEY SECRET (mkbucket B | put B K FILE |
get B K | list B)."""

from __future__ import annotations

import json
import sys

import boto3  # type: ignore[import-not-found, unused-ignore]


def main(argv: list[str]) -> None:
    endpoint, key, secret, operation, *args = argv
    s3 = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id=key,
                      aws_secret_access_key=secret, region_name="us-east-1")
    if operation == "mkbucket":
        s3.create_bucket(Bucket=args[0])
    elif operation == "put":
        with open(args[2], "rb") as source:
            s3.put_object(Bucket=args[0], Key=args[1], Body=source.read())
    elif operation == "get":
        print(s3.get_object(Bucket=args[0], Key=args[1])["Body"].read().hex())
    elif operation == "list":
        listed = s3.list_objects_v2(Bucket=args[0]).get("Contents", [])
        print(json.dumps([item["Key"] for item in listed]))
    else:
        raise SystemExit(f"unknown operation {operation}")


if __name__ == "__main__":
    main(sys.argv[1:])
