"""The check of the listener: its address parses and its port can be bound now (or is
a running reconciler's, when checked from inside its pod)."""

from __future__ import annotations

import errno

import httpx

from reconciler.cli.checks import Check, failing, passing, skipping
from reconciler.errors import ConfigError
from reconciler.listen import bind_socket, normalize_listen, parse_listen

__all__ = ["listen_check"]


def _reconciler_on(host: str, port: int) -> str | None:
    """What a reconciler's ``/healthz`` on ``host:port`` says (None: no reconciler)."""
    local = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(host, host)
    shown = f"[{local}]" if ":" in local else local
    try:
        answer = httpx.get(f"http://{shown}:{port}/healthz", timeout=1.0)
    except httpx.HTTPError:
        return None
    text = answer.text.strip()
    if answer.status_code in (200, 503) and text.startswith(("ok:", "unhealthy:")):
        return text
    return None


def listen_check(listen: str | None) -> Check:
    """The listener's address parses and its port can be bound now."""
    if not listen:
        return skipping("listen", "disabled (--listen '')")
    try:
        host, port = parse_listen(normalize_listen(listen))
    except ConfigError as exc:
        return failing("listen", str(exc), "give --listen HOST:PORT or :PORT "
                     "(RECONCILER_LISTEN)", fatal=True)
    where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    try:
        bind_socket(host, port).close()
    except OSError as exc:
        if exc.errno == errno.EADDRINUSE:
            running = _reconciler_on(host, port)
            if running is not None:  # checked from inside the pod, after deploying
                return passing("listen", f"{where} is taken by a running reconciler "
                             f"(its /healthz: {running})")
            return failing("listen", f"{where} is in use by another process",
                         "stop it, or give --listen another port (RECONCILER_LISTEN)",
                         fatal=True)
        if exc.errno == errno.EACCES:
            return failing("listen", f"{where}: permission denied (ports below 1024 need "
                         "privileges)", "use a port above 1024, e.g. --listen :8080",
                         fatal=True)
        if exc.errno == errno.EADDRNOTAVAIL:
            return failing("listen", f"{host} is not an address of this machine",
                         "use 0.0.0.0 (every interface), 127.0.0.1 or :PORT", fatal=True)
        return failing("listen", f"{where}: {exc.strerror or exc}", "", fatal=True)
    return passing("listen", f"{where} is free")
