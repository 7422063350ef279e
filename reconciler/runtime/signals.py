"""The daemon's signal handlers: SIGTERM/SIGINT stop it, SIGHUP triggers a pass.

Split out of :mod:`reconciler.runtime.daemon`.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import Callable

__all__ = ["install_signals", "remove_signals"]


def install_signals(stop: Callable[[], None], trigger: Callable[[str], None]) -> None:
    """SIGTERM and SIGINT call ``stop``, SIGHUP ``trigger("SIGHUP")`` (where the loop
    supports signal handlers)."""
    loop = asyncio.get_running_loop()
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGTERM, stop)
        loop.add_signal_handler(signal.SIGINT, stop)
        loop.add_signal_handler(signal.SIGHUP, trigger, "SIGHUP")


def remove_signals() -> None:
    """Remove the handlers :func:`install_signals` set."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.remove_signal_handler(sig)
