"""Datasets in S3-compatible object storage: ``s3://bucket/prefix`` as a dataset root.

The objects under the prefix are mirrored to a local folder (``.odir/s3/<bucket>/<prefix>`` under the project
root) and validated there exactly like a local dataset; a later call downloads only objects whose size or ETag
changed. The endpoint comes from ``AWS_ENDPOINT_URL`` or ``MLFLOW_S3_ENDPOINT_URL`` (MinIO, SeaweedFS, ...), the
credentials from the usual ``AWS_*`` variables.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

from components.errors import DataError, Problem

SHAPES_RESULTS = False  # moves data, computes none of a step's results: steps.support.fingerprint

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_s3(root: str | Path) -> bool:
    return str(root).startswith("s3://")


def split_s3(uri: str) -> tuple[str, str]:
    """``s3://bucket/a/b`` -> ``("bucket", "a/b")``."""
    bucket, _, prefix = uri.removeprefix("s3://").partition("/")
    if not bucket:
        raise DataError([Problem(uri, "an S3 dataset root needs a bucket: s3://bucket/prefix")])
    return bucket, prefix.strip("/")


def client():
    """A boto3 S3 client for the configured endpoint; it tries each request once: :func:`retrying` owns the round."""
    import boto3
    from botocore.config import Config

    from steps.support.tracking import RetryPolicy

    endpoint = os.environ.get("AWS_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
    once = Config(retries={"total_max_attempts": 1, "mode": "standard"},
                  connect_timeout=RetryPolicy.from_env().timeout_s, read_timeout=60)  # fmt: skip
    region = os.environ.get("AWS_DEFAULT_REGION", "us-east-1")
    return boto3.client("s3", endpoint_url=endpoint, region_name=region, config=once)


def retrying(operation: Callable[[], T]) -> T:
    """``operation()`` (one object-store request) under the retry policy: the same doubling waits as the tracking
    server's (1, 2, 4, 8 s by default), while the store refuses connections, times out or answers with a 5xx.

    boto's own standard-mode waits are drawn at random up to 50, 100, 200, 400 ms: its five attempts pass within a
    second, less than SeaweedFS answers InternalError after a restart.

    Raises:
        StoreUnreachable: the store still failing after the last attempt (one line naming it and the policy).
    """
    from steps.support.tracking import RetryPolicy, StoreUnreachable, store_unreachable, unreachable_message

    for wait in RetryPolicy.from_env().waits():
        time.sleep(wait)
        try:
            return operation()
        except Exception as error:
            if not (store_unreachable(error) or _server_error(error)):
                raise
            last = error
    raise StoreUnreachable(unreachable_message(last)) from None


def _server_error(error: Exception) -> bool:
    """A 5xx answer: the store up but failing (InternalError while SeaweedFS restarts, SlowDown, ...)."""
    from botocore.exceptions import ClientError

    status = (getattr(error, "response", None) or {}).get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    return isinstance(error, ClientError) and status >= 500


def _listing(s3: Any, bucket: str, prefix: str) -> Iterator[dict]:
    """Every object under ``prefix``, one retried request per page of 1000 (a page that fails is asked again,
    from its own continuation token)."""
    query = {"Bucket": bucket, "Prefix": f"{prefix}/" if prefix else ""}
    while True:
        page = retrying(partial(s3.list_objects_v2, **query))
        yield from page.get("Contents", [])
        if not page.get("IsTruncated"):
            return
        query["ContinuationToken"] = page["NextContinuationToken"]


def mirror_folder(uri: str) -> Path:
    from steps.support.tracking import project_root

    bucket, prefix = split_s3(uri)
    return project_root() / ".odir" / "s3" / bucket / prefix


def localize(root: str | Path) -> Path:
    """A local folder holding the dataset: ``root`` itself, or the synchronised mirror of an ``s3://`` root.

    Raises:
        DataError: when the bucket or prefix cannot be read (naming the URI and the reason) or holds nothing.
    """
    from boto3.exceptions import Boto3Error
    from botocore.exceptions import BotoCoreError, ClientError

    if not is_s3(root):
        return Path(root)
    uri = str(root)
    bucket, prefix = split_s3(uri)
    target = mirror_folder(uri)
    index_file = target / ".odir-s3-index.json"
    index = json.loads(index_file.read_text()) if index_file.exists() else {}
    s3 = client()
    fetched, seen = 0, {}
    try:
        for item in _listing(s3, bucket, prefix):
            relative = item["Key"][len(prefix) + 1 :] if prefix else item["Key"]
            if not relative or relative.endswith("/"):
                continue
            stamp = f"{item['Size']}:{item['ETag']}"
            seen[relative] = stamp
            local = target / relative
            if index.get(relative) != stamp or not local.exists():
                local.parent.mkdir(parents=True, exist_ok=True)
                retrying(partial(s3.download_file, bucket, item["Key"], str(local)))
                fetched += 1
    except (Boto3Error, BotoCoreError, ClientError) as error:  # no such bucket, access denied, no credentials
        raise DataError([Problem(uri, f"cannot read the dataset from object storage ({error})")]) from None
    if not seen:
        raise DataError([Problem(uri, "no objects under this prefix")])
    for stale in set(index) - set(seen):
        (target / stale).unlink(missing_ok=True)
    index_file.write_text(json.dumps(seen))
    log.info("%s: %d objects, %d downloaded to %s", uri, len(seen), fetched, target)
    return target


def upload_folder(folder: Path | str, uri: str) -> int:
    """Uploads every file under ``folder`` to ``uri`` (``s3://bucket/prefix``); returns the number of files."""
    bucket, prefix = split_s3(uri)
    s3 = client()
    count = 0
    for path in sorted(Path(folder).rglob("*")):
        if path.is_file():
            key = "/".join(part for part in (prefix, path.relative_to(folder).as_posix()) if part)
            retrying(partial(s3.upload_file, str(path), bucket, key))
            count += 1
    return count


def ensure_bucket(name: str) -> bool:
    """Creates the bucket unless it exists; returns whether it was created."""
    s3 = client()
    existing = {bucket["Name"] for bucket in retrying(s3.list_buckets).get("Buckets", [])}
    if name in existing:
        return False
    from botocore.exceptions import ClientError

    try:
        retrying(partial(s3.create_bucket, Bucket=name))
    except ClientError as error:  # made by an attempt whose answer was lost, or by someone else meanwhile
        if error.response.get("Error", {}).get("Code") not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
        return False
    return True
