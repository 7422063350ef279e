"""Helpers of the engine, daemon and CLI tests: manifests in a temporary directory, emulator
configs, the ``reconciler`` CLI as a real subprocess, the emulator's admin lists and a fake
wall clock.

A unique module name (not ``conftest``), imported by ``tests/test_engine.py``,
``tests/test_daemon.py`` and ``tests/test_cli.py``.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from reconciler.ailake.client import ClientSettings
from reconciler.ailake.emulator import EmulatorConfig, RunningEmulator, start_background
from reconciler.execution.engine import EngineSettings
from reconciler.runtime.daemon import Daemon, DaemonSettings

SERVICE_ID = "6f1c2a4e-0000-4000-8000-0000000000c1"
OTHER_SERVICE_ID = "6f1c2a4e-0000-4000-8000-0000000000c2"
SERVICE_NAME = "lake"
OTHER_SERVICE_NAME = "warehouse"

#: every command behaviour the tests need, with short durations
COMMANDS: dict[str, dict[str, Any]] = {
    "instant": {"duration": "0s"},
    "quick": {"duration": "100ms"},
    "medium": {"duration": "500ms"},
    "long": {"duration": "3s"},
    "broken": {"duration": "100ms", "fail": True},
    "flaky": {"duration": "100ms", "failTimes": 1},
    "hang": {"duration": "never"},
}

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------- emulator


def emulator_config_dict(**overrides: Any) -> dict[str, Any]:
    """Two services (by id and by name) serving every command of :data:`COMMANDS`."""
    data: dict[str, Any] = {
        "dedup": True,
        "services": [
            {"id": SERVICE_ID, "name": SERVICE_NAME, "status": {"ready": True},
             "commands": dict(COMMANDS)},
            {"id": OTHER_SERVICE_ID, "name": OTHER_SERVICE_NAME, "status": {"ready": True},
             "commands": dict(COMMANDS)},
        ],
    }
    data.update(overrides)
    return data


def emulator_config(**overrides: Any) -> EmulatorConfig:
    return EmulatorConfig.from_dict(emulator_config_dict(**overrides), source="test.yaml")


@contextlib.contextmanager
def running_emulator(**overrides: Any) -> Iterator[RunningEmulator]:
    """An emulator in a background thread on a free loopback port."""
    with start_background(emulator_config(**overrides), host="127.0.0.1", port=0) as emu:
        yield emu


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator() as emu:
        yield emu


def clone_emulator(template: RunningEmulator) -> RunningEmulator:
    """A new emulator with the same config that already knows every operation and
    execution of ``template`` (in-process: the monotonic clock is shared), so a converged
    system can be set up once per module and copied per test."""
    clone = start_background(template.state.config, host="127.0.0.1", port=0)
    source, target = template.state, clone.state
    with source.lock, target.lock:
        operations_, executions_ = copy.deepcopy((source.operations, source.executions))
        target.operations.update(operations_)
        target.executions.extend(executions_)
        target.run_counts.update(source.run_counts)
    return clone


def admin(url: str, what: str) -> list[dict[str, Any]]:
    """``GET /_emulator/<what>`` (``executions`` or ``operations``)."""
    response = httpx.get(f"{url}/_emulator/{what}", timeout=10)
    response.raise_for_status()
    result: list[dict[str, Any]] = response.json()
    return result


def executions(url: str) -> list[dict[str, Any]]:
    return admin(url, "executions")


def operations(url: str) -> list[dict[str, Any]]:
    return admin(url, "operations")


def executions_by_command(url: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for e in executions(url):
        counts[e["command"]] = counts.get(e["command"], 0) + 1
    return counts


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


# ---------------------------------------------------------------------------- manifests


def manifest(name: str, command: str = "quick", *, service: str | None = SERVICE_ID,
             service_name: str | None = None, **spec: Any) -> dict[str, Any]:
    """One ServiceCommand document; ``spec`` keys are written as given (camelCase)."""
    body: dict[str, Any] = {}
    if service_name is not None:
        body["serviceName"] = service_name
    elif service is not None:
        body["service"] = service
    body["command"] = command
    body.update(spec)
    labels = body.pop("labels", None)
    metadata: dict[str, Any] = {"name": name}
    if labels is not None:
        metadata["labels"] = labels
    return {"apiVersion": "ailake.reconciler/v1", "kind": "ServiceCommand",
            "metadata": metadata, "spec": body}


def write_manifest(directory: Path, doc: Mapping[str, Any], filename: str | None = None) -> Path:
    """Write one document to ``directory/<name>.yaml`` (or ``filename``)."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / (filename or f"{doc['metadata']['name']}.yaml")
    path.write_text(yaml.safe_dump(dict(doc), sort_keys=False), encoding="utf-8")
    return path


def write_manifests(directory: Path, docs: Sequence[Mapping[str, Any]]) -> Path:
    for doc in docs:
        write_manifest(directory, doc)
    return directory


# ---------------------------------------------------------------------------- the CLI


def cli_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment for a CLI subprocess: no inherited RECONCILER_* settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env["PYTHONUNBUFFERED"] = "1"
    env.update(extra or {})
    return env


def reconciler(*args: str | os.PathLike[str], env: Mapping[str, str] | None = None,
               timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run ``python -m reconciler ARGS`` to the end; stdout and stderr captured."""
    return subprocess.run(
        [sys.executable, "-m", "reconciler", *map(str, args)],
        capture_output=True, text=True, timeout=timeout, env=cli_env(env), cwd=cwd,
        check=False,
    )


def run_once(manifests: Path, url: str, state: Path, *extra: str,
             timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``reconciler run --once`` without an HTTP listener, JSON logs on stdout."""
    return reconciler("run", "--once", "--manifests", manifests, "--api-url", url,
                      "--state", state, "--listen", "", "--interval", "1s",
                      "--request-timeout", "2s", "--settle-window", "3s", "--log-format", "json",
                      *extra,
                      timeout=timeout)


def daemon_settings(manifests: Path, url: str, state: Path, *,
                    client: Mapping[str, Any] | None = None,
                    engine: Mapping[str, Any] | None = None,
                    **overrides: Any) -> DaemonSettings:
    """Settings of ``reconciler run --once`` in-process, with fast polling (the CLI polls
    from 1 s), no rate limit and no listener; ``client`` and ``engine`` override fields of
    the nested :class:`ClientSettings` and :class:`EngineSettings`, ``overrides`` the
    daemon's own."""
    settings = DaemonSettings(
        manifests=manifests, state=str(state), once=True, listen=None, interval=1.0,
        grace_period=5.0,
        client=ClientSettings(base_url=url, rate_limit=None, timeout=3.0),
        engine=EngineSettings(poll_initial=0.05, poll_max=0.2, settle=3.0),
    )
    return dataclasses.replace(
        settings, client=dataclasses.replace(settings.client, **(client or {})),
        engine=dataclasses.replace(settings.engine, **(engine or {})), **overrides)


async def run_daemon_once(manifests: Path, url: str, state: Path, *,
                          client: Mapping[str, Any] | None = None,
                          **overrides: Any) -> int:
    """The daemon of ``reconciler run --once`` in-process (:func:`daemon_settings`):
    returns its exit status."""
    settings = daemon_settings(manifests, url, state, client=client, **overrides)
    return await Daemon(settings).run()


def start_daemon(manifests: Path, url: str, state: Path, *extra: str,
                 log: Path | None = None) -> subprocess.Popen[str]:
    """``reconciler run`` in the background (logs to ``log`` or discarded)."""
    out = open(log, "w", encoding="utf-8") if log else subprocess.DEVNULL  # noqa: SIM115
    try:
        return subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run", "--manifests", str(manifests),
             "--api-url", url, "--state", str(state), "--log-format", "json", *extra],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=cli_env(),
        )
    finally:
        if log:
            out.close()  # type: ignore[union-attr]


def stop_process(proc: subprocess.Popen[str], sig: int = signal.SIGTERM,
                 timeout: float = 10) -> int:
    """Signal ``proc`` (one we started) and wait for it; kill it if it lingers."""
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)
        raise


def status_json(state: Path, *extra: str) -> dict[str, dict[str, Any]]:
    """``reconciler status --output json`` as rows by name."""
    done = reconciler("status", "--state", state, "--output", "json", *extra)
    assert done.returncode == 0, done.stderr
    return {row["name"]: row for row in json.loads(done.stdout)}


def wait_for(predicate: Callable[[], Any], timeout: float = 10.0, step: float = 0.05,
             what: str = "condition") -> Any:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)


# ---------------------------------------------------------------------------- time


class FakeClock:
    """A settable, timezone-aware UTC wall clock for :class:`reconciler.execution.engine.Engine`."""

    def __init__(self, start: datetime | None = None) -> None:
        self.now = start or datetime(2026, 3, 2, 2, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now

    def set(self, moment: datetime) -> None:
        assert moment.tzinfo is not None
        self.now = moment

    def advance(self, delta: timedelta | float) -> None:
        self.now += delta if isinstance(delta, timedelta) else timedelta(seconds=delta)
