"""The object store's retry round (``steps.support.storage.retrying``) on botocore's real error objects; a real store
restarting mid-read is tests/integration/test_scaled_out.py."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from steps.support import storage
from steps.support.tracking import StoreUnreachable


def _answer(status: int, code: str) -> ClientError:
    return ClientError({"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}, "GetObject")


class _Store:
    """A request that fails with each of ``failures`` in turn, then answers ``"bytes"``."""

    def __init__(self, *failures: Exception) -> None:
        self.failures, self.calls = list(failures), 0

    def __call__(self) -> str:
        self.calls += 1
        if self.failures:
            raise self.failures.pop(0)
        return "bytes"


@pytest.fixture
def waits(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """The sleeps between attempts, recorded instead of slept; the endpoint the messages name."""
    slept: list[float] = []
    monkeypatch.setattr(storage.time, "sleep", lambda seconds: seconds and slept.append(seconds))  # 0 s: the first
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.delenv("MLFLOW_S3_ENDPOINT_URL", raising=False)  # it would win over AWS_ENDPOINT_URL
    for knob in ("ODIR_STORE_ATTEMPTS", "ODIR_STORE_BACKOFF_S"):
        monkeypatch.delenv(knob, raising=False)
    return slept


def test_a_restarting_store_is_waited_for_with_the_policys_doubling_waits(waits: list[float]) -> None:
    refused = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    store = _Store(refused, _answer(500, "InternalError"), _answer(503, "SlowDown"))
    assert storage.retrying(store) == "bytes"
    assert store.calls == 4 and waits == [1, 2, 4]  # attempts 2, 3, 4 after 1, 2, 4 s


def test_an_answer_about_the_request_is_not_retried(waits: list[float]) -> None:
    store = _Store(_answer(404, "NoSuchBucket"))
    with pytest.raises(ClientError, match="NoSuchBucket"):
        storage.retrying(store)
    assert store.calls == 1 and waits == []


def test_a_store_failing_every_attempt_is_one_line_naming_it_and_the_policy(
    waits: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ODIR_STORE_ATTEMPTS", "3")
    store = _Store(*[_answer(500, "InternalError")] * 3)
    with pytest.raises(StoreUnreachable) as failure:
        storage.retrying(store)
    assert store.calls == 3 and waits == [1, 2]
    message = str(failure.value)
    assert message.startswith("object store http://127.0.0.1:9 stopped answering (retry policy: 3 attempts")
    assert "last error: ClientError" in message and "\n" not in message


class _Pages:
    """``list_objects_v2`` over keys a..e in pages of two, whose second page fails once with a 500."""

    def __init__(self) -> None:
        self.asked: list[str | None] = []

    def list_objects_v2(self, Bucket: str, Prefix: str, ContinuationToken: str | None = None) -> dict:
        self.asked.append(ContinuationToken)
        if ContinuationToken == "2" and self.asked.count("2") == 1:
            raise _answer(500, "InternalError")
        start = int(ContinuationToken or 0)
        keys = [f"{Prefix}{key}" for key in "abcde"[start : start + 2]]
        page = {"Contents": [{"Key": key} for key in keys], "IsTruncated": start + 2 < 5}
        return {**page, "NextContinuationToken": str(start + 2)} if page["IsTruncated"] else page


def test_a_page_that_fails_is_asked_again_from_its_own_token(waits: list[float]) -> None:
    store = _Pages()
    keys = [item["Key"] for item in storage._listing(store, "bucket", "data")]
    assert keys == ["data/a", "data/b", "data/c", "data/d", "data/e"]
    assert store.asked == [None, "2", "2", "4"] and waits == [1]


class _Buckets:
    """A store whose create_bucket made the bucket but lost the answer: the retry hears BucketAlreadyOwnedByYou."""

    def __init__(self) -> None:
        self.created = 0

    def list_buckets(self) -> dict:
        return {"Buckets": []}

    def create_bucket(self, Bucket: str) -> None:
        self.created += 1
        raise _answer(500, "InternalError") if self.created == 1 else _answer(409, "BucketAlreadyOwnedByYou")


def test_a_bucket_made_by_an_attempt_whose_answer_was_lost_is_there(
    waits: list[float], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = _Buckets()
    monkeypatch.setattr(storage, "client", lambda: store)
    assert storage.ensure_bucket("odir") is False and store.created == 2
