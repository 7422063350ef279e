"""The emulator as a real process: ``python -m reconciler.ailake.emulator``.

It must accept connections within 2 s of being started, serve the API, announce itself on
stderr, and exit 0 on SIGTERM; a bad config must exit non-zero with the file named. The
``--help`` text is the config reference users read, so it is checked to cover every key.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from reconciler.ailake.emulator.cli import configure_parser, parse_listen
from reconciler.errors import ConfigError


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_accepting(port: int, timeout: float) -> float:
    """Seconds until ``port`` accepts a TCP connection; fails after ``timeout``."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return time.monotonic() - started
        except OSError:
            time.sleep(0.02)
    pytest.fail(f"emulator did not accept connections on port {port} within {timeout} s")


def spawn(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reconciler.ailake.emulator", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def process_port() -> Iterator[int]:
    yield free_port()


def test_process_starts_fast_serves_and_exits_zero_on_sigterm(process_port: int) -> None:
    started = time.monotonic()
    proc = spawn("--listen", f"127.0.0.1:{process_port}")
    try:
        wait_until_accepting(process_port, timeout=5)
        assert time.monotonic() - started < 2.0
        response = httpx.get(f"http://127.0.0.1:{process_port}/api/v1/ailake/services", timeout=5)
        assert response.status_code == 200
        assert len(response.json()["data"]) == 3  # the bundled default config
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 0, stderr
    assert f"AI Lake emulator listening on http://127.0.0.1:{process_port}" in stderr


def test_process_exits_zero_on_sigint(process_port: int) -> None:
    proc = spawn("--listen", f"127.0.0.1:{process_port}")
    try:
        wait_until_accepting(process_port, timeout=5)
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_process_reads_config_and_token_from_environment(process_port: int, tmp_path: Path) -> None:
    config = tmp_path / "emu.yaml"
    config.write_text("services:\n  - {id: s1, name: one}\n", encoding="utf-8")
    proc = spawn(
        "--listen",
        f"127.0.0.1:{process_port}",
        env={"RECONCILER_EMULATOR_CONFIG": str(config), "RECONCILER_EMULATOR_TOKEN": "tok"},
    )
    try:
        wait_until_accepting(process_port, timeout=5)
        url = f"http://127.0.0.1:{process_port}/api/v1/ailake/services"
        assert httpx.get(url, timeout=5).status_code == 401
        response = httpx.get(url, headers={"Authorization": "Bearer tok"}, timeout=5)
        assert [item["id"] for item in response.json()["data"]] == ["s1"]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=10)
    assert proc.returncode == 0


def test_process_with_invalid_config_exits_2_naming_the_file(tmp_path: Path) -> None:
    config = tmp_path / "broken.yaml"
    config.write_text("servics: []\n", encoding="utf-8")
    proc = spawn("--config", str(config), "--listen", f"127.0.0.1:{free_port()}")
    _, stderr = proc.communicate(timeout=10)
    assert proc.returncode == 2
    assert "broken.yaml: servics: unknown key" in stderr


def test_help_documents_the_whole_config_format() -> None:
    parser = argparse.ArgumentParser(prog="reconciler emulator")
    configure_parser(parser)
    text = parser.format_help()
    for needle in (
        "--config",
        "--listen",
        "--token",
        "RECONCILER_EMULATOR_CONFIG",
        "RECONCILER_EMULATOR_TOKEN",
        "token:",
        "dedup:",
        "seed:",
        "services:",
        "status:",
        "commands:",
        "duration: never",
        "fail: true",
        "failTimes:",
        "errorRate:",
        "throttleRate:",
        "retryAfter:",
        "dropRate:",
        "latency:",
        "/_emulator/operations",
        "/_emulator/executions",
        "/_emulator/faults",
        "/_emulator/reset",
    ):
        assert needle in text, needle


def test_listen_flag_defaults_and_parsing() -> None:
    parser = argparse.ArgumentParser()
    configure_parser(parser)
    assert parser.parse_args([]).listen == "127.0.0.1:8765"
    assert parse_listen("0.0.0.0:80") == ("0.0.0.0", 80)
    assert parse_listen("[::1]:9000") == ("::1", 9000)
    for bad in ("8765", "host:", ":80", "host:99999", "host:x"):
        with pytest.raises(ConfigError):
            parse_listen(bad)
