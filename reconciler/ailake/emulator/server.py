"""Serving the emulator on a real socket: in a background thread for tests and the demo.

``start_background`` binds the listening socket itself, so ``port=0`` yields a free port that
is known before uvicorn starts, and returns only once the server accepts connections. The
server runs in a daemon thread (uvicorn installs no signal handlers off the main thread),
so the calling process keeps control of its own signals and lifetime.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

import uvicorn
from starlette.applications import Starlette

from reconciler.ailake.emulator.app import create_app
from reconciler.ailake.emulator.config import EmulatorConfig
from reconciler.ailake.emulator.state import EmulatorState
from reconciler.listen import bind_socket

__all__ = ["RunningEmulator", "start_background"]

STARTUP_TIMEOUT = 10.0


class RunningEmulator:
    """An emulator serving in a background thread; ``stop()`` (or leaving ``with``) ends it."""

    def __init__(
        self,
        app: Starlette,
        server: uvicorn.Server,
        thread: threading.Thread,
        sock: socket.socket,
        host: str,
    ) -> None:
        self.app = app
        self._server = server
        self._thread = thread
        self._socket = sock
        self.host = host
        self.port: int = sock.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        self.url: str = f"http://{shown}:{self.port}"

    @property
    def state(self) -> EmulatorState:
        """The live emulator state (``app.state.emulator``)."""
        state: EmulatorState = self.app.state.emulator
        return state

    def stop(self) -> None:
        """Stop serving and wait for the thread to end (idempotent)."""
        self._server.should_exit = True
        self._thread.join(timeout=10)
        if self._thread.is_alive():
            self._server.force_exit = True
            self._thread.join(timeout=5)
        with contextlib.suppress(OSError):
            self._socket.close()

    def __enter__(self) -> RunningEmulator:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


def _tcp_socket(sock: socket.socket) -> socket.socket:
    """The same listening socket, re-wrapped so that its ``proto`` reads ``IPPROTO_TCP``.

    ``bind_socket`` creates it with ``proto=0``; asyncio disables Nagle's algorithm only on
    accepted sockets whose ``proto`` is ``IPPROTO_TCP``, so without this every keep-alive
    answer whose body uvicorn writes after its headers waited ~40 ms for a delayed ACK.
    Wrapping the descriptor again lets the socket module read the real protocol from it.
    """
    if sock.proto == socket.IPPROTO_TCP:
        return sock
    return socket.socket(fileno=sock.detach())


def start_background(
    config: EmulatorConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    token: str | None = None,
) -> RunningEmulator:
    """Serve ``config`` on ``host:port`` in a daemon thread; returns once it accepts connections."""
    app = create_app(config, token=token)
    sock = _tcp_socket(bind_socket(host, port))
    uv_config = uvicorn.Config(
        app,
        log_level="warning",
        access_log=False,
        lifespan="off",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(uv_config)
    failure: list[BaseException] = []

    def serve() -> None:
        try:
            server.run(sockets=[sock])
        except BaseException as exc:  # reported to the caller below
            failure.append(exc)

    thread = threading.Thread(target=serve, name=f"ailake-emulator-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_TIMEOUT
    while not server.started:
        if failure or not thread.is_alive():
            sock.close()
            raise RuntimeError(f"AI Lake emulator failed to start: {failure[:1]}")
        if time.monotonic() > deadline:
            server.should_exit = True
            sock.close()
            raise RuntimeError("AI Lake emulator did not start in time")
        time.sleep(0.005)
    return RunningEmulator(app, server, thread, sock, host)
