"""Variant (c) of `cargo xtask bench`: the same transfers with boto3, what users reach for.

Run by the xtask with the project's own boto3 (target/venv/). Prints one JSON object:
{"seconds": <wall time of the transfers only>, "latencies_ms": [...]} (latencies for `small`).
Interpreter start-up and imports are outside the timed section.
"""

import argparse
import concurrent.futures
import json
import pathlib
import sys
import time

import boto3
from boto3.s3.transfer import TransferConfig
from botocore.config import Config


def s3_client(args):
    config = Config(
        region_name=args.region,
        s3={"addressing_style": "path"},
        max_pool_connections=max(64, args.concurrency * 4),
        retries={"mode": "standard", "max_attempts": 5},
        # As the Rust clients against an endpoint: checksums only where an operation needs one.
        request_checksum_calculation="when_required",
        response_checksum_validation="when_required",
    )
    return boto3.client(
        "s3",
        endpoint_url=args.endpoint,
        # Credentials from the environment the xtask passes (the emulator's operator profile).
        config=config,
    )


def sse(args):
    return {"ServerSideEncryption": "aws:kms", "SSEKMSKeyId": args.kms_key_arn}


def large(args, s3):
    """Every file concurrently through the transfer manager (multipart, ranged GETs)."""
    transfer = TransferConfig(
        multipart_threshold=args.part_size,
        multipart_chunksize=args.part_size,
        max_concurrency=args.concurrency,
    )
    files = [pathlib.Path(f) for f in args.files]
    out_dir = pathlib.Path(args.out_dir)

    def one(index, path):
        key = f"{args.prefix}{index}"
        if args.direction == "upload":
            s3.upload_file(str(path), args.bucket, key, ExtraArgs=sse(args), Config=transfer)
        else:
            s3.download_file(args.bucket, key, str(out_dir / f"c-{index}"), Config=transfer)

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(len(files)) as pool:
        for future in [pool.submit(one, i, f) for i, f in enumerate(files)]:
            future.result()
    return {"seconds": time.perf_counter() - started}


def small(args, s3):
    """The pipeline's S3 calls per object: PUT raw, GET raw, PUT processed, GET processed."""
    payloads = [p.read_bytes() for p in sorted(pathlib.Path(args.dir).iterdir())]

    def one(index):
        key = f"{args.prefix}{index}"
        body = payloads[index]
        started = time.perf_counter()
        s3.put_object(Bucket=args.bucket, Key=f"raw/{key}", Body=body, **sse(args))
        raw = s3.get_object(Bucket=args.bucket, Key=f"raw/{key}")["Body"].read()
        s3.put_object(Bucket=args.final_bucket, Key=f"processed/{key}", Body=raw, **sse(args))
        latency = time.perf_counter() - started
        got = s3.get_object(Bucket=args.final_bucket, Key=f"processed/{key}")["Body"].read()
        if got != body:
            raise RuntimeError(f"object {index} came back different")
        return latency * 1000.0

    started = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(args.concurrency) as pool:
        latencies = list(pool.map(one, range(len(payloads))))
    return {"seconds": time.perf_counter() - started, "latencies_ms": latencies}


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("mode", choices=["large", "small"])
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--region", required=True)
    parser.add_argument("--bucket", required=True)
    parser.add_argument("--final-bucket")
    parser.add_argument("--kms-key-arn", required=True)
    parser.add_argument("--prefix", required=True)
    parser.add_argument("--concurrency", type=int, required=True)
    parser.add_argument("--part-size", type=int)
    parser.add_argument("--direction", choices=["upload", "download"])
    parser.add_argument("--out-dir")
    parser.add_argument("--dir")
    parser.add_argument("files", nargs="*")
    args = parser.parse_intermixed_args()
    s3 = s3_client(args)
    result = large(args, s3) if args.mode == "large" else small(args, s3)
    json.dump(result, sys.stdout)


if __name__ == "__main__":
    main()
