"""The web view's test scene: an emulator, manifests in every state, and how to wait for
them to settle. Shared by ``tests/test_web_pages.py`` (HTTP, an in-process daemon) and
``tests/test_web_view.py`` (a real browser against a ``reconciler run`` process).

The scene (one service, commands that succeed, fail or never end):

========================  ==========================================================
manifest                  ends up
========================  ==========================================================
``provision-db``          in_sync (``team=data``)
``migrate-schema``        in_sync, after ``provision-db``
``reindex-vectors``       pending for ever (``hang``), after ``migrate-schema``
``backfill-orders``       waiting for ``reindex-vectors``
``nightly-export``        stalled: its command fails, twice (retry limit 1)
``flaky-refresh``         failed, its retry an hour away (``team=ops``)
``paused-compaction``     suspended; its payload holds the API token and a bearer token
``nightly-report``        a cron schedule (its next tick is shown)
``broken-doc``            invalid (``timeout: forever``), in ``broken-doc.yaml``
========================  ==========================================================
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import httpx
import yaml

from reconciler.ailake.emulator import EmulatorConfig, RunningEmulator, start_background
from reconciler.runtime.daemon import Daemon, DaemonSettings

SERVICE = "6f1c2a4e-0000-4000-8000-0000000000e1"
TOKEN = "web-view-token-7f3a9c21"
BEARER = "Bearer abc123def456ghi789"
REPO = Path(__file__).resolve().parents[1]
ARTEFACTS = REPO / "tests" / "artefacts"

EMULATOR = {"token": TOKEN, "services": [{"id": SERVICE, "name": "lake", "commands": {
    "ok": {"duration": "100ms"},
    "bad": {"duration": "100ms", "fail": True},
    "hang": {"duration": "never"},
}}]}

#: the state every manifest of the scene settles in
SETTLED = {
    "provision-db": "in_sync", "migrate-schema": "in_sync", "reindex-vectors": "pending",
    "backfill-orders": "waiting", "nightly-export": "stalled", "flaky-refresh": "failed",
    "paused-compaction": "suspended", "broken-doc": "invalid",
}


def doc(name: str, command: str, *, labels: Mapping[str, str] | None = None,
        **spec: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = dict(labels)
    return {"apiVersion": "ailake.reconciler/v1", "kind": "ServiceCommand",
            "metadata": metadata, "spec": {"service": SERVICE, "command": command, **spec}}


def scene_docs() -> list[dict[str, Any]]:
    return [
        doc("provision-db", "ok", labels={"team": "data"}),
        doc("migrate-schema", "ok", dependsOn=["provision-db"]),
        doc("reindex-vectors", "hang", dependsOn=["migrate-schema"]),
        doc("backfill-orders", "ok", dependsOn=["reindex-vectors"]),
        doc("nightly-export", "bad", retry={"limit": 1, "backoff": "200ms"}),
        doc("flaky-refresh", "bad", labels={"team": "ops"}, timeout="6h",
            retry={"limit": 3, "backoff": "1h", "maxBackoff": "2h"}),
        doc("paused-compaction", "ok", suspend=True,
            payload={"note": f"token {TOKEN}", "header": BEARER}),
        doc("nightly-report", "ok", policy={"schedule": "0 3 * * *", "timezone": "UTC"}),
    ]


def write_scene(directory: Path) -> Path:
    """The scene's manifests in ``directory`` (one file, plus the invalid one alone)."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "commands.yaml").write_text(yaml.safe_dump_all(scene_docs(), sort_keys=False),
                                             encoding="utf-8")
    (directory / "broken-doc.yaml").write_text(
        yaml.safe_dump(doc("broken-doc", "ok", timeout="forever"), sort_keys=False),
        encoding="utf-8")
    return directory


def add_manifest(directory: Path, name: str, command: str = "ok") -> None:
    (directory / f"{name}.yaml").write_text(yaml.safe_dump(doc(name, command)),
                                            encoding="utf-8")


def emulator() -> RunningEmulator:
    return start_background(EmulatorConfig.from_dict(EMULATOR, source="web-scene"),
                            host="127.0.0.1", port=0)


def states(url: str) -> dict[str, str]:
    """Every manifest's state, from the daemon's ``/status``."""
    answer = httpx.get(url + "/status", timeout=10)
    answer.raise_for_status()
    return {i["name"]: i["state"] for i in answer.json()["intents"]}


def wait_until(check: Callable[[], Any], *, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except httpx.HTTPError:
            last = None
        if last:
            return last
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def wait_settled(url: str, timeout: float = 30.0) -> None:
    def settled() -> bool:
        found = states(url)
        return all(found.get(n) == s for n, s in SETTLED.items())

    try:
        wait_until(settled, timeout=timeout, what="the scene to settle")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; states now: {states(url)}") from None


class ThreadedDaemon:
    """A :class:`Daemon` on an event loop of its own in a thread (so tests can use a plain
    HTTP client); :meth:`close` stops it as SIGTERM would."""

    def __init__(self, settings: DaemonSettings) -> None:
        self._listening = threading.Event()
        self.url = ""
        self.daemon = Daemon(settings, on_listening=self._on_listening)
        self.loop: asyncio.AbstractEventLoop | None = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="web-daemon", daemon=True)
        self.thread.start()
        if not self._listening.wait(20):
            self.close()
            raise AssertionError(f"the daemon did not listen: {self.error!r}")

    def _on_listening(self, url: str) -> None:
        self.url = url
        self._listening.set()

    def _run(self) -> None:
        async def main() -> None:
            self.loop = asyncio.get_running_loop()
            await self.daemon.run()

        try:
            asyncio.run(main())
        except BaseException as exc:  # reported by the test that waits for it
            self.error = exc
            self._listening.set()

    def close(self) -> None:
        if self.thread.is_alive() and self.loop is not None:
            self.loop.call_soon_threadsafe(self.daemon.stop)
        self.thread.join(30)


def threaded_daemon(settings: DaemonSettings) -> Iterator[ThreadedDaemon]:
    running = ThreadedDaemon(settings)
    try:
        yield running
    finally:
        running.close()
