"""The classification table of reconciler.errors, one test per row.

Each row is exercised end to end where the client produces it: an HTTP answer or a
transport failure (httpx.MockTransport) -> the exception the client raises -> ``classify``
-> kind, unsent, delay. The pure rules (``classify_status``, ``classify_transport``) are
pinned separately below.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import httpx
import pytest

from reconciler.ailake.client import AiLakeClient, ClientSettings
from reconciler.errors import (
    ApiError,
    CredentialsError,
    Outcome,
    OutcomeKind,
    OutcomeUnknownError,
    PermanentError,
    TemporaryError,
    TransportFailure,
    classify,
    classify_status,
    classify_transport,
)

BASE = "https://ailake.example.com"
OP_ID = "e9fd5d74-8a1b-46bd-ac60-bd91e9206897"

TERMINAL = OutcomeKind.TERMINAL
TRANSIENT = OutcomeKind.TRANSIENT
UNKNOWN = OutcomeKind.UNKNOWN
CREDENTIALS = OutcomeKind.CREDENTIALS


async def _no_sleep(delay: float) -> None:
    return None


def _answer(answer: httpx.Response | Exception) -> Callable[[httpx.Request], httpx.Response]:
    def handler(request: httpx.Request) -> httpx.Response:
        if isinstance(answer, Exception):
            raise answer
        return answer

    return handler


async def failure(call: str, answer: httpx.Response | Exception) -> ApiError:
    """The error the client raises for ``answer`` to a GET or a run POST, no retries."""
    client = AiLakeClient(
        ClientSettings(base_url=BASE, token="tok", get_retries=0, post_retries=0),
        transport=httpx.MockTransport(_answer(answer)),
        sleep=_no_sleep,
    )
    async with client:
        with pytest.raises(ApiError) as info:
            if call == "POST":
                await client.run_command(
                    "svc-1", "reindex", operation_id=OP_ID, payload=None, context=None
                )
            else:
                await client.get_operation(OP_ID)
    return info.value


def status(code: int, **headers: str) -> httpx.Response:
    return httpx.Response(code, json={"title": "T", "detail": "D"}, headers=headers)


# ----------------------------------------------------------------------- statuses


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("code", [401, 403])
async def test_401_403_are_credentials_refused_unsent(method: str, code: int) -> None:
    error = await failure(method, status(code))
    assert isinstance(error, CredentialsError) and isinstance(error, PermanentError)
    assert classify(error) == Outcome(CREDENTIALS, delay=None, unsent=True)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("code", [400, 405, 410, 413, 422])
async def test_other_4xx_are_terminal_refused_unsent(method: str, code: int) -> None:
    error = await failure(method, status(code, **{"Retry-After": "5"}))
    assert type(error) is PermanentError
    assert classify(error) == Outcome(TERMINAL, delay=None, unsent=True)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_3xx_is_terminal_redirects_are_not_followed(method: str) -> None:
    error = await failure(method, httpx.Response(302, headers={"Location": "/elsewhere"}))
    assert classify(error) == Outcome(TERMINAL, delay=None, unsent=True)


async def test_get_404_of_an_operation_is_an_answer_not_an_error() -> None:
    client = AiLakeClient(
        ClientSettings(base_url=BASE), transport=httpx.MockTransport(_answer(status(404)))
    )
    async with client:
        assert await client.get_operation(OP_ID) is None


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_429_is_transient_unsent_with_retry_after(method: str) -> None:
    error = await failure(method, status(429, **{"Retry-After": "7"}))
    assert type(error) is TemporaryError
    assert classify(error) == Outcome(TRANSIENT, delay=7.0, unsent=True)


@pytest.mark.parametrize("code", [408, 409, 500, 502, 503, 504])
async def test_get_408_409_5xx_are_transient_and_may_have_been_served(code: int) -> None:
    error = await failure("GET", status(code, **{"Retry-After": "3"}))
    assert type(error) is TemporaryError
    assert classify(error) == Outcome(TRANSIENT, delay=3.0, unsent=False)


@pytest.mark.parametrize("code", [408, 409, 500, 502, 503, 504])
async def test_post_408_409_5xx_are_unknown_and_carry_no_delay(code: int) -> None:
    error = await failure("POST", status(code, **{"Retry-After": "3"}))
    assert isinstance(error, OutcomeUnknownError)
    assert error.operation_id == OP_ID
    assert classify(error) == Outcome(UNKNOWN, delay=None, unsent=False)


async def test_get_2xx_that_is_not_a_json_object_is_transient_not_unsent() -> None:
    error = await failure("GET", httpx.Response(200, text="<html>proxy</html>"))
    assert type(error) is TemporaryError
    assert classify(error) == Outcome(TRANSIENT, delay=None, unsent=False)


# ----------------------------------------------------------------------- transport

NOT_SENT = [httpx.ConnectError("refused"), httpx.ConnectTimeout("slow"), httpx.PoolTimeout("full")]
NO_ANSWER = [
    httpx.ReadTimeout("slow"),
    httpx.WriteTimeout("slow"),
    httpx.ReadError("reset"),
    httpx.WriteError("broken pipe"),
    httpx.RemoteProtocolError("disconnected"),
    httpx.ProxyError("proxy"),
    httpx.DecodingError("bad gzip"),
]
INVALID = [httpx.UnsupportedProtocol("ftp"), httpx.LocalProtocolError("bad header")]


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("exc", NOT_SENT, ids=lambda e: type(e).__name__)
async def test_connection_failed_before_sending_is_transient_unsent(
    method: str, exc: Exception
) -> None:
    error = await failure(method, exc)
    assert type(error) is TemporaryError
    assert error.transport is TransportFailure.NOT_SENT
    assert classify(error) == Outcome(TRANSIENT, delay=None, unsent=True)


@pytest.mark.parametrize("exc", NO_ANSWER, ids=lambda e: type(e).__name__)
async def test_get_timeout_or_dropped_connection_is_transient_not_unsent(exc: Exception) -> None:
    error = await failure("GET", exc)
    assert type(error) is TemporaryError
    assert classify(error) == Outcome(TRANSIENT, delay=None, unsent=False)


@pytest.mark.parametrize("exc", NO_ANSWER, ids=lambda e: type(e).__name__)
async def test_post_timeout_or_dropped_connection_is_unknown(exc: Exception) -> None:
    error = await failure("POST", exc)
    assert isinstance(error, OutcomeUnknownError)
    assert classify(error) == Outcome(UNKNOWN, delay=None, unsent=False)


@pytest.mark.parametrize("method", ["GET", "POST"])
@pytest.mark.parametrize("exc", INVALID, ids=lambda e: type(e).__name__)
async def test_request_that_cannot_be_built_is_terminal_unsent(
    method: str, exc: Exception
) -> None:
    error = await failure(method, exc)
    assert type(error) is PermanentError
    assert classify(error) == Outcome(TERMINAL, delay=None, unsent=True)


async def test_unrecognised_transport_failure_on_get_is_terminal_not_unsent() -> None:
    error = await failure("GET", httpx.TransportError("something else"))
    assert type(error) is PermanentError
    assert error.transport is TransportFailure.UNRECOGNISED
    assert classify(error) == Outcome(TERMINAL, delay=None, unsent=False)


async def test_unrecognised_transport_failure_on_post_is_unknown() -> None:
    error = await failure("POST", httpx.TransportError("something else"))
    assert isinstance(error, OutcomeUnknownError)
    assert classify(error) == Outcome(UNKNOWN, delay=None, unsent=False)


# ----------------------------------------------------------------------- other exceptions


@pytest.mark.parametrize("exc", [ValueError("bug"), RuntimeError("bug"), KeyError("x")])
def test_anything_but_an_api_error_is_terminal_not_unsent(exc: BaseException) -> None:
    assert classify(exc) == Outcome(TERMINAL, delay=None, unsent=False)


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"status": 403, "method": "GET"}, Outcome(CREDENTIALS, None, True)),
        ({"status": 503, "method": "POST"}, Outcome(UNKNOWN, None, False)),
        ({"status": 429, "method": "GET", "delay": 2.0}, Outcome(TRANSIENT, 2.0, True)),
        (
            {"transport": TransportFailure.NOT_SENT, "method": "POST"},
            Outcome(TRANSIENT, None, True),
        ),
        ({"method": "GET"}, Outcome(TERMINAL, None, False)),
    ],
)
def test_unclassified_api_error_is_classified_by_its_status_or_transport(
    fields: dict[str, Any], expected: Outcome
) -> None:
    assert classify(ApiError("x", **fields)) == expected


def test_delay_is_a_typed_attribute_of_every_api_error() -> None:
    assert PermanentError("x").delay is None
    assert OutcomeUnknownError("x", operation_id="op").delay is None
    assert TemporaryError("x", delay=1.5).delay == 1.5


# ----------------------------------------------------------------------- the pure rules


@pytest.mark.parametrize(
    ("code", "get", "post"),
    [
        (401, CREDENTIALS, CREDENTIALS),
        (403, CREDENTIALS, CREDENTIALS),
        (429, TRANSIENT, TRANSIENT),
        (408, TRANSIENT, UNKNOWN),
        (409, TRANSIENT, UNKNOWN),
        (500, TRANSIENT, UNKNOWN),
        (503, TRANSIENT, UNKNOWN),
        (599, TRANSIENT, UNKNOWN),
        (400, TERMINAL, TERMINAL),
        (404, TERMINAL, TERMINAL),
        (422, TERMINAL, TERMINAL),
        (301, TERMINAL, TERMINAL),
        (204, TERMINAL, TERMINAL),
    ],
)
def test_classify_status_table(code: int, get: OutcomeKind, post: OutcomeKind) -> None:
    assert classify_status(code, method="GET") is get
    assert classify_status(code, method="PUT") is get  # idempotent like a GET
    assert classify_status(code, method="POST") is post
    assert classify_status(code, method="post") is post


@pytest.mark.parametrize(
    ("failure_", "get", "post"),
    [
        (TransportFailure.NOT_SENT, TRANSIENT, TRANSIENT),
        (TransportFailure.NO_ANSWER, TRANSIENT, UNKNOWN),
        (TransportFailure.INVALID_REQUEST, TERMINAL, TERMINAL),
        (TransportFailure.UNRECOGNISED, TERMINAL, UNKNOWN),
    ],
)
def test_classify_transport_table(
    failure_: TransportFailure, get: OutcomeKind, post: OutcomeKind
) -> None:
    assert classify_transport(failure_, method="GET") is get
    assert classify_transport(failure_, method="POST") is post
