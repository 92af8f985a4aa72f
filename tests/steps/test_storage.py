"""The object store's retry round (``steps.storage.retrying``) on botocore's real error objects; a real store
restarting mid-read is tests/integration/test_scaled_out.py."""

from __future__ import annotations

import pytest
from botocore.exceptions import ClientError, EndpointConnectionError

from steps import storage
from steps.tracking import StoreUnreachable


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
    monkeypatch.setattr(storage.time, "sleep", slept.append)
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://127.0.0.1:9")
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
