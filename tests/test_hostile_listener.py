"""Hostile input, the daemon's HTTP listener: a real ``reconciler run`` process is abused
over real sockets (slowloris, idle sockets, lying and oversized bodies, floods) and must
stay bounded in memory, close what it should in time, and keep ``/healthz`` answering.

Each case prints its figures (``HOSTILE listener.<case>: ...``): peak RSS of the daemon,
connections held, time to close. Counts are small (at most a few hundred sockets) and each
case bounded in time (the listener's timeouts: headers 5 s, body 10 s, keep-alive 5 s).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from observability_support import Proc, daemon_env, manifest, start_daemon, write_manifests
from test_hostile_support import (
    MiB,
    PeakSampler,
    connect,
    figure,
    open_fds,
    read_status,
    terminal,
    wait_closed,
)

from reconciler.ailake.emulator import EmulatorConfig, start_background
from reconciler.runtime.listener import (
    BODY_TIMEOUT,
    HEADER_TIMEOUT,
    KEEP_ALIVE_TIMEOUT,
    LIMIT_CONCURRENCY,
    MAX_CONNECTIONS,
    MAX_HOOK_BODIES,
    MAX_HOOK_BODY,
    sign,
)

#: every case is bounded in time, whatever happens
pytestmark = pytest.mark.timeout(120)


SECRET = "whsec-hostile-listener-5d1e"
HOOK = "/hooks/reconcile"
SIG_FORMAT = "sha256=" + "0" * 64  # well-formed, wrong
#: slack over a timeout for "closed in time" (2 shared CPUs)
SLACK = 2.5


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory,
           pytestconfig: pytest.Config) -> Iterator[Proc]:
    terminal(pytestconfig)
    root = tmp_path_factory.mktemp("hostile-listener")
    config = EmulatorConfig.from_dict({"services": [{"id": "svc-1", "name": "alpha",
                                                     "commands": {"ok": {"duration": "0s"}}}]},
                                      source="hostile")
    with start_background(config) as emulator:
        manifests = write_manifests(root / "manifests", [manifest("one", "svc-1", "ok")])
        proc = start_daemon(root / "daemon", manifests=manifests, api_url=emulator.url,
                            env=daemon_env(RECONCILER_WEBHOOK_SECRET=SECRET), interval="60s")
        try:
            yield proc
        finally:
            proc.stop()


def _alive(daemon: Proc) -> None:
    assert daemon.popen.poll() is None, daemon.tail()
    assert httpx.get(daemon.url + "/healthz", timeout=5).status_code == 200


def _addr(daemon: Proc) -> tuple[str, int]:
    host, port = daemon.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


async def _open(daemon: Proc, count: int) -> list[tuple[asyncio.StreamReader,
                                                       asyncio.StreamWriter]]:
    host, port = _addr(daemon)
    return list(await asyncio.gather(*(asyncio.open_connection(host, port)
                                       for _ in range(count))))


async def _closed_after(reader: asyncio.StreamReader, limit: float) -> float | None:
    """Seconds until the server closed (EOF or reset), None if not within ``limit``."""
    started = time.monotonic()
    try:
        async with asyncio.timeout(limit):
            while await reader.read(65536):
                pass
    except TimeoutError:
        return None
    except OSError:
        pass
    return time.monotonic() - started


async def _healthz_latencies(daemon: Proc, count: int, every: float) -> list[float | None]:
    """``count`` /healthz GETs, ``every`` s apart: the seconds each took (None: not 200)."""
    out: list[float | None] = []
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(count):
            started = time.monotonic()
            try:
                ok = (await client.get(daemon.url + "/healthz")).status_code == 200
            except httpx.HTTPError:
                ok = False
            out.append(time.monotonic() - started if ok else None)
            await asyncio.sleep(every)
    return out


def _close_all(conns: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]) -> None:
    for _, writer in conns:
        with contextlib.suppress(Exception):
            writer.close()


def _request(method: str, path: str, *headers: str, body: bytes = b"") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: daemon", *headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


# ---------------------------------------------------------------- time


async def test_idle_sockets_are_closed_after_the_header_timeout(daemon: Proc) -> None:
    conns = await _open(daemon, 100)
    try:
        held = open_fds(daemon.popen.pid)
        times = await asyncio.gather(*(_closed_after(r, HEADER_TIMEOUT + SLACK + 5)
                                       for r, _ in conns))
    finally:
        _close_all(conns)
    closed = [t for t in times if t is not None]
    figure("listener.idle-sockets", sockets=100, daemon_fds_while_held=held,
           closed=len(closed), max_time_to_close_s=max(closed, default=-1.0))
    assert len(closed) == 100
    assert max(closed) <= HEADER_TIMEOUT + SLACK
    _alive(daemon)


async def test_slowloris_headers_are_cut_and_healthz_keeps_answering(daemon: Proc) -> None:
    conns = await _open(daemon, 200)

    async def drip(writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            writer.write(b"GET /status HTTP/1.1\r\nHost: x\r\n")
            for i in range(60):
                writer.write(b"X-%d: y\r\n" % i)
                await writer.drain()
                await asyncio.sleep(1)

    drips = [asyncio.create_task(drip(w)) for _, w in conns]
    try:
        with PeakSampler(daemon.popen.pid) as peak:
            probes = asyncio.create_task(_healthz_latencies(daemon, 8, 0.5))
            times = await asyncio.gather(*(_closed_after(r, HEADER_TIMEOUT + SLACK + 5)
                                           for r, _ in conns))
            latencies = await probes
    finally:
        for task in drips:
            task.cancel()
        _close_all(conns)
    closed = [t for t in times if t is not None]
    answered = [t for t in latencies if t is not None]
    figure("listener.slowloris", sockets=200, closed=len(closed),
           max_time_to_close_s=max(closed, default=-1.0),
           healthz_ok=f"{len(answered)}/{len(latencies)}",
           healthz_max_s=max(answered, default=-1.0),
           rss_mib=peak.baseline, peak_rss_mib=peak.peak)
    assert len(closed) == 200 and max(closed) <= HEADER_TIMEOUT + SLACK
    assert len(answered) == len(latencies) and max(answered) < 2.0
    _alive(daemon)


def test_an_idle_kept_alive_connection_is_closed(daemon: Proc) -> None:
    with connect(daemon.url) as sock:
        sock.sendall(_request("GET", "/healthz"))
        assert read_status(sock) == 200
        closed = wait_closed(sock, KEEP_ALIVE_TIMEOUT + SLACK + 5)
    figure("listener.keep-alive-idle", time_to_close_s=closed)
    assert closed is not None and closed <= KEEP_ALIVE_TIMEOUT + SLACK


def test_a_lying_content_length_holds_the_connection_no_longer_than_the_body_timeout(
        daemon: Proc) -> None:
    with connect(daemon.url) as sock:
        sock.sendall(_request("POST", HOOK, f"X-Hub-Signature-256: {SIG_FORMAT}",
                              "Content-Length: 500000", body=b"0123456789"))
        closed = wait_closed(sock, BODY_TIMEOUT + SLACK + 5)
    figure("listener.lying-content-length", declared=500000, sent=10, time_to_close_s=closed)
    assert closed is not None and closed <= BODY_TIMEOUT + SLACK
    _alive(daemon)


def test_a_body_dripped_slowly_is_cut_at_the_body_timeout(daemon: Proc) -> None:
    with connect(daemon.url) as sock:
        sock.sendall(_request("POST", HOOK, f"X-Hub-Signature-256: {SIG_FORMAT}",
                              "Content-Length: 1000"))
        started = time.monotonic()
        closed = None
        with contextlib.suppress(OSError):
            for _ in range(int(BODY_TIMEOUT + SLACK + 5)):
                sock.sendall(b"x")
                if wait_closed(sock, 1.0) is not None:
                    closed = time.monotonic() - started
                    break
    figure("listener.body-drip", bytes_per_s=1, time_to_close_s=closed)
    assert closed is not None and closed <= BODY_TIMEOUT + SLACK


# ---------------------------------------------------------------- bodies


@pytest.mark.parametrize(("path", "declared", "signature", "expected"), [
    (HOOK, 2 * MiB, SIG_FORMAT, 413), (HOOK, 10**12, SIG_FORMAT, 413),
    ("/status", MiB, SIG_FORMAT, 413), ("/metrics", 10**9, SIG_FORMAT, 413),
    (HOOK, MiB, None, 401), (HOOK, MiB, "sha256=not-hex", 401)])
def test_a_body_is_refused_before_it_is_read(
        daemon: Proc, path: str, declared: int, signature: str | None, expected: int) -> None:
    """Only the headers are sent: the answer comes without waiting for the body."""
    method = "POST" if path == HOOK else "GET"
    headers = [f"Content-Length: {declared}"]
    if signature is not None:
        headers.append(f"X-Hub-Signature-256: {signature}")
    with connect(daemon.url) as sock:
        started = time.monotonic()
        sock.sendall(_request(method, path, *headers))
        status = read_status(sock)
        answered = time.monotonic() - started
        closed = wait_closed(sock, 5)
    form = {None: "unsigned", SIG_FORMAT: "signed"}.get(signature, "malformed-signature")
    case = f"{path}:{declared}:{form}"
    figure(f"listener.refused-unread[{case}]", status=status, answered_s=answered,
           closed_s=closed)
    assert status == expected and answered < 2.0
    assert closed is not None, "the connection is closed: the body is never read"


def test_a_chunked_body_is_cut_at_the_limit(daemon: Proc) -> None:
    sent = 0
    with connect(daemon.url) as sock:
        sock.sendall(_request("POST", HOOK, f"X-Hub-Signature-256: {SIG_FORMAT}",
                              "Transfer-Encoding: chunked"))
        chunk = b"%x\r\n%s\r\n" % (65536, b"c" * 65536)
        with contextlib.suppress(OSError):
            for _ in range(512):  # 32 MiB at most
                sock.sendall(chunk)
                sent += 65536
        status = read_status(sock)
    figure("listener.chunked-too-large", limit=MAX_HOOK_BODY,
           sent_before_cut_incl_socket_buffers=sent, status=status)
    assert status == 413
    assert sent < 512 * 65536, "the server stopped reading and closed"
    _alive(daemon)


async def _post_bodies(daemon: Proc, count: int, size: int,
                       signature: str | None) -> Counter[int | None]:
    """``count`` concurrent webhook POSTs of ``size`` bytes each: their statuses."""
    host, port = _addr(daemon)
    body = b"b" * size
    head = _request("POST", HOOK, f"Content-Length: {size}",
                    *([f"X-Hub-Signature-256: {signature}"] if signature else []))

    async def one() -> int | None:
        try:
            reader, writer = await asyncio.open_connection(host, port)
        except OSError:
            return None
        try:
            writer.write(head)
            writer.write(body)
            with contextlib.suppress(OSError, TimeoutError):
                async with asyncio.timeout(15):
                    await writer.drain()
            async with asyncio.timeout(15):
                line = await reader.readline()
            return int(line.split(b" ")[1]) if line.startswith(b"HTTP/1.1") else None
        except (OSError, TimeoutError, ValueError, IndexError):
            return None
        finally:
            writer.close()

    return Counter(await asyncio.gather(*(one() for _ in range(count))))


async def test_unsigned_bodies_are_refused_unread_in_bounded_memory(daemon: Proc) -> None:
    started = time.monotonic()
    with PeakSampler(daemon.popen.pid) as peak:
        statuses = await _post_bodies(daemon, 300, MiB, signature=None)
    took = time.monotonic() - started
    figure("listener.unsigned-1MiB-x300", statuses=dict(statuses), seconds=took,
           rss_mib=peak.baseline, peak_rss_mib=peak.peak,
           peak_growth_mib=peak.peak - peak.baseline)
    # each is answered 401 and closed at once; a client still sending its body usually
    # sees the connection reset (None) before it reads that answer
    assert set(statuses) <= {401, None}, statuses
    assert took < 15
    assert peak.peak - peak.baseline < 60
    _alive(daemon)


async def test_wrongly_signed_bodies_are_read_a_few_at_a_time(daemon: Proc) -> None:
    with PeakSampler(daemon.popen.pid) as peak:
        statuses = await _post_bodies(daemon, 50, MiB, signature=SIG_FORMAT)
    figure("listener.wrong-hmac-1MiB-x50", statuses=dict(statuses),
           concurrent_bodies_max=MAX_HOOK_BODIES, rss_mib=peak.baseline,
           peak_rss_mib=peak.peak, peak_growth_mib=peak.peak - peak.baseline)
    assert set(statuses) <= {401, 503, None} and statuses[401] >= 1
    assert peak.peak - peak.baseline < 40
    _alive(daemon)


def test_a_signed_body_at_the_limit_still_triggers_a_pass(daemon: Proc) -> None:
    body = b"{" + b" " * (MAX_HOOK_BODY - 2) + b"}"
    answer = httpx.post(daemon.url + HOOK, content=body, timeout=10,
                        headers={"X-Hub-Signature-256": sign(body, SECRET)})
    bad = httpx.post(daemon.url + HOOK, content=body, timeout=10,
                     headers={"X-Hub-Signature-256": sign(body + b"x", SECRET)})
    figure("listener.signed-at-limit", status=answer.status_code, wrong=bad.status_code)
    assert (answer.status_code, bad.status_code) == (202, 401)


@pytest.mark.parametrize("value", ["abc", "-1", "1e9", "12 34"])
def test_a_malformed_content_length_is_refused(daemon: Proc, value: str) -> None:
    with connect(daemon.url) as sock:
        sock.sendall(_request("POST", HOOK, f"Content-Length: {value}"))
        status = read_status(sock)
    figure(f"listener.bad-content-length[{value}]", status=status)
    assert status in (400, 413)


# ---------------------------------------------------------------- headers, garbage


@pytest.mark.parametrize(("case", "payload"), [
    ("one-100KiB-header", _request("GET", "/healthz", "X-Big: " + "a" * 100_000)),
    ("2000-headers", _request("GET", "/healthz", *(f"X-{i}: v" for i in range(2000)))),
    ("100KiB-request-line", b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\n\r\n"),
    ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 500),
])
def test_oversized_or_garbled_requests_are_refused_and_closed(
        daemon: Proc, case: str, payload: bytes) -> None:
    with connect(daemon.url) as sock:
        with contextlib.suppress(OSError):
            sock.sendall(payload)
        status = read_status(sock)
        closed = wait_closed(sock, HEADER_TIMEOUT + SLACK)
    figure(f"listener.{case}", bytes=len(payload), status=status, closed_s=closed)
    assert status in (400, 413, 431, None)
    assert closed is not None
    _alive(daemon)


def test_pipelined_requests_are_answered_in_order(daemon: Proc) -> None:
    with connect(daemon.url) as sock:
        sock.sendall(_request("GET", "/healthz") * 50)
        data = b""
        sock.settimeout(10)
        while data.count(b"HTTP/1.1 200") < 50:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    figure("listener.pipelined", requests=50, answered=data.count(b"HTTP/1.1 200"))
    assert data.count(b"HTTP/1.1 200") == 50


def test_a_reset_in_the_middle_of_a_body_harms_nothing(daemon: Proc) -> None:
    for _ in range(20):
        sock = connect(daemon.url)
        sock.sendall(_request("POST", HOOK, f"X-Hub-Signature-256: {SIG_FORMAT}",
                              "Content-Length: 100000", body=b"r" * 5000))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # RST
    figure("listener.reset-mid-body", resets=20)
    _alive(daemon)


# ---------------------------------------------------------------- floods


async def test_a_connection_flood_cannot_starve_the_probes(daemon: Proc) -> None:
    count = LIMIT_CONCURRENCY + 100
    conns = await _open(daemon, count)
    try:
        held = open_fds(daemon.popen.pid)
        with PeakSampler(daemon.popen.pid) as peak:
            latencies = await _healthz_latencies(daemon, 6, 0.2)
        times = await asyncio.gather(*(_closed_after(r, HEADER_TIMEOUT + SLACK + 5)
                                       for r, _ in conns))
    finally:
        _close_all(conns)
    closed = [t for t in times if t is not None]
    answered = [t for t in latencies if t is not None]
    figure("listener.connection-flood", sockets=count, evict_beyond=MAX_CONNECTIONS,
           daemon_fds_while_held=held, healthz_ok=f"{len(answered)}/{len(latencies)}",
           healthz_max_s=max(answered, default=-1.0), closed=len(closed),
           max_time_to_close_s=max(closed, default=-1.0), peak_rss_mib=peak.peak)
    assert len(answered) == len(latencies) and max(answered) < 2.0
    assert len(closed) == count and max(closed) <= HEADER_TIMEOUT + SLACK
    _alive(daemon)


async def test_healthz_answers_under_mixed_abuse(daemon: Proc) -> None:
    idle = await _open(daemon, 100)
    uploads = asyncio.create_task(_post_bodies(daemon, 100, MiB, signature=SIG_FORMAT))
    try:
        with PeakSampler(daemon.popen.pid) as peak:
            latencies = await _healthz_latencies(daemon, 10, 0.3)
            statuses = await uploads
    finally:
        _close_all(idle)
    answered = [t for t in latencies if t is not None]
    figure("listener.mixed-abuse", idle_sockets=100, uploads=dict(statuses),
           healthz_ok=f"{len(answered)}/{len(latencies)}",
           healthz_max_s=max(answered, default=-1.0), peak_rss_mib=peak.peak)
    assert len(answered) == len(latencies) and max(answered) < 2.0


def test_figures_of_the_listener_at_rest(daemon: Proc, tmp_path: Path) -> None:
    current, peak = (round(v, 1) for v in _rss(daemon))
    figure("listener.at-rest", rss_mib=current, peak_rss_mib_since_start=peak,
           fds=open_fds(daemon.popen.pid))
    _alive(daemon)


def _rss(daemon: Proc) -> tuple[float, float]:
    from test_hostile_support import rss_mib

    return rss_mib(daemon.popen.pid)
