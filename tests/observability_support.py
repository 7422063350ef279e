"""Helpers of the observability tests: manifests, a real daemon subprocess, a real
Prometheus, metric-name extraction from the alert rules and the dashboard.

Imported by ``tests/test_*.py`` as a top-level module (``tests/`` is on ``sys.path`` in
pytest's default import mode). Nothing here starts a process without handing back a way to
stop it; every test stops what it started in a ``finally`` block.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

REPO = Path(__file__).resolve().parents[1]
RULES_FILE = REPO / "helm" / "ailake-reconciler" / "files" / "prometheus-rules.yaml"
ALERTS_DOC = REPO / "docs" / "alerts.md"
DASHBOARD_FILES = (
    REPO / "docs" / "grafana-dashboard.json",
    REPO / "helm" / "ailake-reconciler" / "files" / "grafana-dashboard.json",
)
PROMETHEUS = "/usr/bin/prometheus"
PREFIX = "ailake_reconciler_"
METRIC_RE = re.compile(r"ailake_reconciler_[a-z_]+")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

T = TypeVar("T")


# ---------------------------------------------------------------- generic helpers


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Callable[[], T | None], *, timeout: float, interval: float = 0.2,
             what: str = "condition", diagnose: Callable[[], str] | None = None) -> T:
    """Call ``check`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        try:
            last = check()
        except (httpx.HTTPError, OSError, ValueError, KeyError):
            last = None
        if last:
            return last
        time.sleep(interval)
    extra = f"\n{diagnose()}" if diagnose is not None else ""
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}){extra}")


def missing_tool(what: str) -> None:
    """Skip locally, FAIL when the CI environment variable is set (as tests/deploy does)."""
    message = f"{what} is not installed (run .ci/tools.sh)"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so this is an error, not a skip")
    pytest.skip(message)


def prometheus_binary() -> str:
    if not (os.path.isfile(PROMETHEUS) and os.access(PROMETHEUS, os.X_OK)):
        missing_tool(PROMETHEUS)
    return PROMETHEUS


# ---------------------------------------------------------------- manifests


def manifest(name: str, service: str, command: str, **spec: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"service": service, "command": command,
                            "retry": {"limit": 1, "backoff": "1s", "maxBackoff": "1s"}}
    body.update(spec)
    return {"apiVersion": "ailake.reconciler/v1", "kind": "ServiceCommand",
            "metadata": {"name": name}, "spec": body}


def write_manifests(directory: Path, docs: Iterable[Mapping[str, Any]]) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "commands.yaml").write_text(
        yaml.safe_dump_all(list(docs), sort_keys=False), encoding="utf-8")
    return directory


# ---------------------------------------------------------------- metrics text


def parse_scrape(text: str) -> dict[str, Any]:
    """Metric families of an exposition by name (prometheus_client's parser)."""
    return {f.name: f for f in text_string_to_metric_families(text)}


def sample_names(text: str) -> set[str]:
    """Every sample name in an exposition (``x_bucket``, ``x_sum``, ... included)."""
    return {s.name for f in text_string_to_metric_families(text) for s in f.samples}


def scraped_metric_names(text: str) -> set[str]:
    """Metric names of an exposition as PromQL knows them (``x_total``; a histogram's
    ``x_bucket``/``x_sum``/``x_count`` as ``x``), including families declared by a ``# TYPE``
    line with no sample yet (``manifest_invalid`` while nothing is invalid)."""
    names = sample_names(text) | {line.split()[2] for line in text.splitlines()
                                  if line.startswith("# TYPE ") and len(line.split()) > 3
                                  and line.split()[3] != "counter"}
    histograms = {n.removesuffix("_bucket") for n in names if n.endswith("_bucket")}
    found = set()
    for name in names:
        base = name
        for suffix in HISTOGRAM_SUFFIXES:
            if name.endswith(suffix) and name.removesuffix(suffix) in histograms:
                base = name.removesuffix(suffix)
        found.add(base)
    return found


def referenced_metrics(text: str) -> set[str]:
    """Metric names used in PromQL (or prose) text, histogram suffixes stripped."""
    found = set()
    for raw in METRIC_RE.findall(text):
        if raw == PREFIX:
            continue
        for suffix in HISTOGRAM_SUFFIXES:
            raw = raw.removesuffix(suffix)
        found.add(raw)
    return found


def rules_expressions(path: Path = RULES_FILE) -> list[str]:
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    return [str(rule["expr"]) for group in doc["groups"] for rule in group["rules"]
            if "expr" in rule]


def dashboard_expressions(path: Path) -> list[str]:
    """Every ``expr`` (and templating ``query``/``definition``) string in a dashboard."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key in ("expr", "query", "definition") and isinstance(value, str):
                    found.append(value)
                elif isinstance(value, dict) and key == "query" and isinstance(
                        value.get("query"), str):
                    found.append(value["query"])
                    walk(value)
                else:
                    walk(value)
        elif isinstance(node, list):
            for item in node:
                walk(item)

    walk(json.loads(path.read_text(encoding="utf-8")))
    return found


def failed_command_alert(path: Path = RULES_FILE) -> str:
    """The name of the alert built on ``ailake_reconciler_command_failed``."""
    doc = yaml.safe_load(path.read_text(encoding="utf-8"))
    names = [rule["alert"] for group in doc["groups"] for rule in group["rules"]
             if "alert" in rule and "ailake_reconciler_command_failed" in str(rule["expr"])]
    assert len(names) == 1, f"expected one alert on command_failed in {path}, got {names}"
    return str(names[0])


def test_rules_copy(target: Path, source: Path = RULES_FILE) -> Path:
    """The shipped rules with every ``for:`` rewritten to ``0s`` (so alerts fire at once)."""
    text = source.read_text(encoding="utf-8")
    rewritten, count = re.subn(r"(?m)^(\s+for:\s*)\S+\s*$", r"\g<1>0s", text)
    assert count > 0, "no `for:` found to rewrite in the rules file"
    doc = yaml.safe_load(rewritten)
    fors = {rule.get("for") for group in doc["groups"] for rule in group["rules"]}
    assert fors <= {"0s", None}, fors
    target.write_text(rewritten, encoding="utf-8")
    return target


test_rules_copy.__test__ = False  # type: ignore[attr-defined]  # not a pytest test


# ---------------------------------------------------------------- processes


@dataclass
class Proc:
    """A subprocess whose stdout and stderr go to files (never a full pipe)."""

    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path
    url: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def output(self) -> str:
        out = self.stdout_path.read_text(encoding="utf-8", errors="replace")
        err = self.stderr_path.read_text(encoding="utf-8", errors="replace")
        return out + err

    def stdout(self) -> str:
        return self.stdout_path.read_text(encoding="utf-8", errors="replace")

    def json_lines(self) -> list[dict[str, Any]]:
        """stdout parsed as JSON lines; fails the test on a line that is not JSON."""
        events = []
        for line in self.stdout().splitlines():
            if not line.strip():
                continue
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pytest.fail(f"stdout line is not JSON: {line!r}")
        return events

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(5)
        return self.popen.returncode

    def tail(self, lines: int = 40) -> str:
        return "\n".join(self.output().splitlines()[-lines:])


def _spawn(cmd: list[str], workdir: Path, label: str, env: Mapping[str, str]) -> Proc:
    workdir.mkdir(parents=True, exist_ok=True)
    out, err = workdir / f"{label}.stdout", workdir / f"{label}.stderr"
    with out.open("wb") as fo, err.open("wb") as fe:
        popen = subprocess.Popen(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL,
                                 env=dict(env), cwd=workdir)
    return Proc(popen, out, err)


def daemon_env(**extra: str) -> dict[str, str]:
    """The test process environment minus any ``RECONCILER_*`` leaking in, plus ``extra``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RECONCILER_")}
    env.update(extra)
    return env


def start_daemon(workdir: Path, *, manifests: Path, api_url: str, env: Mapping[str, str],
                 args: Iterable[str] = (), interval: str = "1s",
                 timeout: float = 15.0) -> Proc:
    """``reconciler run`` as a subprocess on a free loopback port; returns once /healthz
    answers. ``proc.url`` is the listener's base URL, ``proc.extra['state']`` the DB path."""
    port = free_port()
    state = workdir / "state.db"
    cmd = [sys.executable, "-m", "reconciler", "run", "--manifests", str(manifests),
           "--api-url", api_url, "--state", str(state), "--interval", interval,
           "--listen", f"127.0.0.1:{port}", "--grace-period", "3s", *args]
    proc = _spawn(cmd, workdir, "daemon", env)
    proc.url = f"http://127.0.0.1:{port}"
    proc.extra["state"] = state

    _await_ok(proc, "/healthz", name="daemon", timeout=timeout)
    return proc


def _await_ok(proc: Proc, path: str, *, name: str, timeout: float) -> None:
    """Wait until ``proc`` answers 200 on ``path``; fail with its output if it exits."""

    def ok() -> bool:
        if proc.popen.poll() is not None:
            pytest.fail(f"{name} exited with {proc.popen.returncode}:\n{proc.tail()}")
        return httpx.get(proc.url + path, timeout=2).status_code == 200

    try:
        wait_for(ok, timeout=timeout, what=f"{name} {path}", diagnose=proc.tail)
    except BaseException:
        proc.stop()
        raise


def start_prometheus(workdir: Path, *, targets: Iterable[str], rules: Path,
                     timeout: float = 20.0) -> Proc:
    """A real Prometheus on a free loopback port scraping ``targets`` (host:port) every 1s,
    evaluating ``rules`` every 1s, storing in ``workdir``."""
    binary = prometheus_binary()
    port = free_port()
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s",
                   "evaluation_interval": "1s"},
        "rule_files": [str(rules)],
        "scrape_configs": [{"job_name": "ailake-reconciler",
                            "static_configs": [{"targets": list(targets)}]}],
    }
    config_path = workdir / "prometheus.yml"
    workdir.mkdir(parents=True, exist_ok=True)
    config_path.write_text(yaml.safe_dump(config), encoding="utf-8")
    data = workdir / "tsdb"
    cmd = [binary, f"--config.file={config_path}", f"--storage.tsdb.path={data}",
           f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"]
    # Debian's build reads its web assets from /usr/share/prometheus; the API needs none.
    proc = _spawn(cmd, workdir, "prometheus", os.environ)
    proc.url = f"http://127.0.0.1:{port}"

    _await_ok(proc, "/-/ready", name="prometheus", timeout=timeout)
    return proc


def prom_query(prom: Proc, query: str) -> list[dict[str, Any]]:
    answer = httpx.get(prom.url + "/api/v1/query", params={"query": query}, timeout=5)
    answer.raise_for_status()
    body = answer.json()
    assert body["status"] == "success", body
    result: list[dict[str, Any]] = body["data"]["result"]
    return result


def prom_alerts(prom: Proc) -> list[dict[str, Any]]:
    answer = httpx.get(prom.url + "/api/v1/alerts", timeout=5)
    answer.raise_for_status()
    alerts: list[dict[str, Any]] = answer.json()["data"]["alerts"]
    return alerts
