"""Contract: every registry call is retried a bounded number of times with backoff on transient
failures only, and then fails with a RegistryUnavailableError naming the URI."""

from __future__ import annotations

import socket
import time

import pytest
import requests
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE, RESOURCE_DOES_NOT_EXIST

from registry import RegistryClient, RegistryConfig, RegistryUnavailableError
from registry.client import is_transient


def flaky(failures: list[BaseException]):
    calls = []

    def fn():
        calls.append(time.monotonic())
        if len(calls) <= len(failures):
            raise failures[len(calls) - 1]
        return "ok"

    return fn, calls


@pytest.fixture
def client(tmp_path):
    return RegistryClient(
        RegistryConfig(tracking_uri=f"sqlite:///{tmp_path}/m.db", attempts=3, backoff_s=0.05)
    )


def test_transient_classification():
    assert is_transient(requests.exceptions.ConnectionError("refused"))
    assert is_transient(MlflowException("API request to x failed with exception"))
    assert not is_transient(MlflowException("nope", error_code=RESOURCE_DOES_NOT_EXIST))
    assert not is_transient(MlflowException("bad", error_code=INVALID_PARAMETER_VALUE))
    assert not is_transient(KeyError("x"))


def test_retries_transient_then_succeeds_with_backoff(client):
    fn, calls = flaky([MlflowException("down"), MlflowException("down")])
    assert client.call("op", fn) == "ok"
    assert len(calls) == 3
    assert calls[2] - calls[1] >= calls[1] - calls[0] >= 0.05  # 0.05 then 0.1 s


def test_permanent_error_is_not_retried(client):
    fn, calls = flaky([MlflowException("gone", error_code=RESOURCE_DOES_NOT_EXIST)])
    with pytest.raises(MlflowException, match="gone"):
        client.call("op", fn)
    assert len(calls) == 1


def test_exhausted_retries_name_uri_and_operation(client):
    fn, calls = flaky([MlflowException("down")] * 5)
    with pytest.raises(RegistryUnavailableError, match=r"sqlite:///.*set alias champion failed 3"):
        client.call("set alias champion", fn)
    assert len(calls) == 3


def test_unreachable_server_fails_fast_and_clearly():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        uri = f"http://127.0.0.1:{s.getsockname()[1]}"
    client = RegistryClient(RegistryConfig(tracking_uri=uri, attempts=2, backoff_s=0.1))
    started = time.monotonic()
    with pytest.raises(RegistryUnavailableError, match=uri) as caught:
        client.aliases()
    assert caught.value.uri == uri and caught.value.attempts == 2
    assert time.monotonic() - started < 10
