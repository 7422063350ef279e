"""Helpers of the hostile-input suite (``tests/test_hostile_*.py``); no tests here.

- :class:`HostileApi`: a real HTTP server (asyncio, in a thread, raw bytes on a loopback
  socket) speaking just enough of the AI Lake API for a daemon to get as far as the
  answer under test, and answering that one as badly as asked: 100 MB bodies (declared or
  chunked), gzip bombs, drips, giant headers, deep JSON.
- RSS of a process from ``/proc`` (``VmRSS``, and the peak ``VmHWM``, which
  :func:`reset_peak` resets through ``/proc/PID/clear_refs``), sockets, timing.
- :func:`figure`: prints one line of figures to the terminal even under ``-q``
  (``HOSTILE <case>: key=value ...``), so CI logs carry peak RSS, connections held and
  times to close.

Every server and process started here is stopped by the test (or fixture) that started it.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import os
import socket
import threading
import time
import zlib
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

MiB = 1024 * 1024
SERVICE_ID = "svc-hostile"
SERVICE_NAME = "hostile"
OPS = "/api/v1/ailake/operations/"
RUN = f"/api/v1/ailake/services/{SERVICE_ID}/commands/"
SERVICES = "/api/v1/ailake/services"

Writer = asyncio.StreamWriter
Responder = Callable[["Request", Writer], Awaitable[None]]


# ---------------------------------------------------------------- figures


_CONFIG: pytest.Config | None = None


def figure(case: str, **values: Any) -> str:
    """Print ``HOSTILE case: k=v ...`` to the terminal, past pytest's capture (so CI logs
    carry it under ``-q`` too), and return it."""
    shown = " ".join(f"{k}={_fmt(v)}" for k, v in values.items())
    line = f"HOSTILE {case}: {shown}"
    config = _CONFIG
    capture = config.pluginmanager.get_plugin("capturemanager") if config else None
    reporter = config.pluginmanager.get_plugin("terminalreporter") if config else None
    if capture is not None and reporter is not None:
        with capture.global_and_fixture_disabled():
            reporter.write_line(line)
    else:
        print(line, flush=True)
    return line


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}"
    return str(value)


# ---------------------------------------------------------------- processes


def rss_mib(pid: int) -> tuple[float, float]:
    """(current RSS, peak RSS since start or the last :func:`reset_peak`) in MiB."""
    fields: dict[str, float] = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(rest.split()[0]) / 1024
    return fields["VmRSS"], fields["VmHWM"]


def reset_peak(pid: int) -> None:
    """Reset the peak RSS (``VmHWM``) of ``pid`` to its current RSS."""
    with contextlib.suppress(OSError):
        Path(f"/proc/{pid}/clear_refs").write_text("5")


class PeakSampler:
    """Samples a process's RSS every 20 ms in a thread (``VmHWM`` is reset first, and
    read at the end too): the peak during a ``with`` block."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.peak = 0.0
        self.baseline = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> PeakSampler:
        reset_peak(self.pid)
        self.baseline = rss_mib(self.pid)[0]
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(0.02):
            with contextlib.suppress(OSError, KeyError):
                self.peak = max(self.peak, rss_mib(self.pid)[0])

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(2)
        with contextlib.suppress(OSError, KeyError):
            self.peak = max(self.peak, rss_mib(self.pid)[1])


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def wait_closed(sock: socket.socket, timeout: float) -> float | None:
    """Seconds until the peer closes ``sock`` (reads EOF or a reset), None if it did not
    within ``timeout``. Whatever the peer sends meanwhile is read and dropped."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return None
        sock.settimeout(left)
        try:
            data = sock.recv(65536)
        except TimeoutError:
            return None
        except OSError:
            return time.monotonic() - started
        if not data:
            return time.monotonic() - started


def connect(url: str, timeout: float = 5.0) -> socket.socket:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return socket.create_connection((host.strip("[]"), int(port)), timeout=timeout)


def read_status(sock: socket.socket, timeout: float = 10.0) -> int | None:
    """The status code of the next answer on ``sock`` (None: closed without one)."""
    sock.settimeout(timeout)
    data = b""
    with contextlib.suppress(OSError):
        while b"\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    if not data.startswith(b"HTTP/1.1 "):
        return None
    return int(data.split(b" ", 2)[1])


# ---------------------------------------------------------------- the hostile server


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


def _head(status: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} X"] + [f"{k}: {v}" for k, v in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def answer(status: int, body: bytes = b"", content_type: str = "application/json",
           **headers: str) -> Responder:
    """A plain answer with a Content-Length."""
    async def respond(_request: Request, writer: Writer) -> None:
        hdrs = {"Content-Type": content_type, "Content-Length": str(len(body)),
                **{k.replace("_", "-"): v for k, v in headers.items()}}
        writer.write(_head(status, hdrs) + body)
        await writer.drain()
    return respond


def json_answer(status: int, obj: Any, **headers: str) -> Responder:
    return answer(status, json.dumps(obj).encode(), **headers)


def declared_huge(size: int, status: int = 200,
                  content_type: str = "application/json") -> Responder:
    """Headers declaring ``size`` bytes, then that many bytes as fast as they go (until
    the client hangs up)."""
    async def respond(_request: Request, writer: Writer) -> None:
        writer.write(_head(status, {"Content-Type": content_type,
                                    "Content-Length": str(size)}))
        await _stream(writer, size, b'{"status": "succeeded", "result": {"x": "')
    return respond


def chunked_huge(size: int, status: int = 200) -> Responder:
    """A chunked body of ``size`` bytes (no length announced)."""
    async def respond(_request: Request, writer: Writer) -> None:
        writer.write(_head(status, {"Content-Type": "application/json",
                                    "Transfer-Encoding": "chunked"}))
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            await writer.drain()
        writer.write(b"0\r\n\r\n")
        await writer.drain()
    return respond


_BOMBS: dict[int, bytes] = {}


def gzip_bomb(size: int) -> Responder:
    """A small gzip body that decodes to ``size`` bytes."""
    if size not in _BOMBS:
        compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
        block = b"0" * MiB
        parts = [compressor.compress(block) for _ in range(size // MiB)]
        _BOMBS[size] = b"".join(parts) + compressor.flush()

    async def respond(_request: Request, writer: Writer) -> None:
        body = _BOMBS[size]
        writer.write(_head(200, {"Content-Type": "application/json",
                                 "Content-Encoding": "gzip",
                                 "Content-Length": str(len(body))}) + body)
        await writer.drain()
    return respond


def gzip_answer(obj: Any) -> Responder:
    body = gzip.compress(json.dumps(obj).encode())
    return answer(200, body, Content_Encoding="gzip")


def drip(interval: float, total: int = 10_000) -> Responder:
    """Headers at once, then one byte of body every ``interval`` seconds."""
    async def respond(_request: Request, writer: Writer) -> None:
        writer.write(_head(200, {"Content-Type": "application/json",
                                 "Content-Length": str(total)}))
        await writer.drain()
        for _ in range(total):
            writer.write(b" ")
            await writer.drain()
            await asyncio.sleep(interval)
    return respond


def endless_headers() -> Responder:
    """A status line, then header lines forever."""
    async def respond(_request: Request, writer: Writer) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\n")
        for i in range(100_000):
            writer.write(b"X-Filler-%d: %s\r\n" % (i, b"y" * 1000))
            await writer.drain()
    return respond


async def _stream(writer: Writer, size: int, prefix: bytes = b"") -> None:
    block = b"x" * 65536
    writer.write(prefix)
    sent = len(prefix)
    while sent < size:
        part = block[: min(len(block), size - sent)]
        writer.write(part)
        sent += len(part)
        await writer.drain()


def services_page() -> Responder:
    return json_answer(200, {
        "data": [{"id": SERVICE_ID, "type": "aiLakeService",
                  "attributes": {"name": SERVICE_NAME, "serviceId": SERVICE_ID}}],
        "meta": {"page": {"number": 0, "size": 100, "totalPages": 1}}})


def accepted() -> Responder:
    async def respond(request: Request, writer: Writer) -> None:
        op = request.headers.get("operation-id", "op-1")
        await answer(202, b"", **{"operation-id": op,
                                  "operation-location": OPS + op})(request, writer)
    return respond


def not_found() -> Responder:
    return json_answer(404, {"title": "Not Found", "status": 404, "detail": "no such thing"})


@dataclass
class HostileApi:
    """The server: ``services``, ``run`` and ``operation`` say how each endpoint answers
    (changeable while it runs); ``hits`` counts requests per endpoint."""

    services: Responder = field(default_factory=services_page)
    run: Responder = field(default_factory=accepted)
    operation: Responder = field(default_factory=not_found)
    #: a GET of an operation never POSTed answers 404 (the adoption probe, the probe
    #: before the first POST); only the operations POSTed get ``operation``
    probe_404: bool = True
    hits: Counter[str] = field(default_factory=Counter)
    url: str = ""
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _server: asyncio.Server | None = None
    _seen: set[str] = field(default_factory=set)

    def start(self) -> HostileApi:
        ready = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            self._server = loop.run_until_complete(
                asyncio.start_server(self._serve, "127.0.0.1", 0, limit=1 << 20))
            port = self._server.sockets[0].getsockname()[1]
            self.url = f"http://127.0.0.1:{port}"
            ready.set()
            loop.run_forever()
            self._server.close()
            loop.run_until_complete(self._server.wait_closed())
            loop.close()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        assert ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._loop.stop)
        if self._thread is not None:
            self._thread.join(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: Writer) -> None:
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    return
                await self._route(request, writer)
        except (ConnectionError, asyncio.IncompleteReadError, ValueError):
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _route(self, request: Request, writer: Writer) -> None:
        path = request.path.split("?", 1)[0]
        if request.method == "GET" and path == SERVICES:
            self.hits["services"] += 1
            await self.services(request, writer)
        elif request.method == "POST" and path.startswith(RUN):
            self.hits["run"] += 1
            self._seen.add(request.headers.get("operation-id", ""))
            await self.run(request, writer)
        elif request.method == "GET" and path.startswith(OPS):
            op = path.removeprefix(OPS)
            if self.probe_404 and op not in self._seen:
                self.hits["probe"] += 1
                await not_found()(request, writer)
            else:
                self.hits["operation"] += 1
                await self.operation(request, writer)
        elif request.method == "GET" and path.endswith("/status"):
            await json_answer(200, {"status": None})(request, writer)
        else:
            await not_found()(request, writer)


async def _read_request(reader: asyncio.StreamReader) -> Request | None:
    line = await reader.readline()
    if not line:
        return None
    method, target, _ = line.decode("latin-1").split(" ", 2)
    headers: dict[str, str] = {}
    while True:
        raw = await reader.readline()
        if raw in (b"\r\n", b"\n", b""):
            break
        key, _, value = raw.decode("latin-1").partition(":")
        headers[key.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return Request(method, target, headers, body)


@contextlib.contextmanager
def hostile_api(**responders: Any) -> Iterator[HostileApi]:
    api = HostileApi(**responders).start()
    try:
        yield api
    finally:
        api.stop()


def hostile_manifest(name: str = "victim", command: str = "go") -> dict[str, Any]:
    return {"apiVersion": "ailake.reconciler/v1", "kind": "ServiceCommand",
            "metadata": {"name": name},
            "spec": {"serviceName": SERVICE_NAME, "command": command,
                     "retry": {"limit": 1, "backoff": "1s", "maxBackoff": "1s"}}}


def terminal(config: pytest.Config) -> None:
    """Let :func:`figure` write to pytest's terminal (call from a fixture)."""
    global _CONFIG
    _CONFIG = config
