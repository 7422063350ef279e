"""End to end with real tools: ``reconciler run`` as a subprocess against the emulator,
scraped by a real Prometheus (``/usr/bin/prometheus``, Debian package ``prometheus``,
installed in CI by ``.ci/tools.sh``) that evaluates the shipped alert rules.

Without Prometheus the Prometheus test is skipped locally and FAILS when ``CI`` is set,
as tests/deploy does for promtool. The log tests need only the emulator.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from observability_support import (
    ALERTS_DOC,
    DASHBOARD_FILES,
    RULES_FILE,
    Proc,
    daemon_env,
    dashboard_expressions,
    failed_command_alert,
    manifest,
    prom_alerts,
    prom_query,
    prometheus_binary,
    referenced_metrics,
    rules_expressions,
    scraped_metric_names,
    start_daemon,
    start_prometheus,
    test_rules_copy,
    wait_for,
    write_manifests,
)

from reconciler.ailake.emulator import EmulatorConfig, RunningEmulator, start_background
from reconciler.model.lifecycle import SETTLED_BAD
from reconciler.model.lifecycle import IntentState as S

SERVICE = "svc-1"
EMULATOR_CONFIG = {"services": [{"id": SERVICE, "name": "alpha", "commands": {
    "ok": {"duration": "200ms"},
    "bad": {"duration": "100ms", "fail": True},
}}]}
GOOD, BAD = "good-one", "bad-one"


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with start_background(EmulatorConfig.from_dict(EMULATOR_CONFIG, source="e2e")) as emu:
        yield emu


@pytest.fixture
def manifests(tmp_path: Path) -> Path:
    return write_manifests(tmp_path / "manifests", [manifest(GOOD, SERVICE, "ok"),
                                                    manifest(BAD, SERVICE, "bad")])


def test_prometheus_scrapes_the_daemon_and_the_failed_command_alert_fires(
        tmp_path: Path, emulator: RunningEmulator, manifests: Path) -> None:
    prometheus_binary()  # skip (locally) or fail (CI) before starting anything
    started = time.monotonic()
    alert_name = failed_command_alert()
    rules = test_rules_copy(tmp_path / "rules-for-0s.yaml")
    daemon: Proc | None = None
    prom: Proc | None = None
    try:
        daemon = start_daemon(tmp_path / "daemon", manifests=manifests, api_url=emulator.url,
                              env=daemon_env())
        prom = start_prometheus(tmp_path / "prometheus", rules=rules,
                                targets=[daemon.url.removeprefix("http://")])
        assert prom is not None

        def diagnose() -> str:
            assert daemon is not None and prom is not None
            targets = httpx.get(prom.url + "/api/v1/targets", timeout=5).text
            return f"targets: {targets}\ndaemon:\n{daemon.tail()}\nprometheus:\n{prom.tail()}"

        query = f'ailake_reconciler_command_failed{{name="{BAD}"}}'

        def failed_is_one() -> list[dict[str, Any]] | None:
            result = prom_query(prom, query)
            return result if result and float(result[0]["value"][1]) == 1 else None

        result = wait_for(failed_is_one, timeout=20, interval=0.5,
                          what=f"{query} == 1 in Prometheus", diagnose=diagnose)
        labels = result[0]["metric"]
        assert labels["service"] == SERVICE and labels["command"] == "bad"
        assert labels["job"] == "ailake-reconciler"
        good = prom_query(prom, f'ailake_reconciler_command_failed{{name="{GOOD}"}}')
        assert [float(r["value"][1]) for r in good] == [0.0]

        def alert_active() -> dict[str, Any] | None:
            for alert in prom_alerts(prom):
                if (alert["labels"].get("alertname") == alert_name
                        and alert["labels"].get("name") == BAD
                        and alert["state"] in ("pending", "firing")):
                    return alert
            return None

        alert = wait_for(alert_active, timeout=15, interval=0.5,
                         what=f"{alert_name} pending or firing", diagnose=diagnose)
        assert alert["labels"]["severity"]
        assert BAD in alert["annotations"]["summary"]
        # nothing fires for the command that succeeded
        assert not [a for a in prom_alerts(prom)
                    if a["labels"].get("alertname") == alert_name
                    and a["labels"].get("name") == GOOD]
        # the scrape target is healthy, and the counters Prometheus sees are sane
        up = prom_query(prom, 'up{job="ailake-reconciler"}')
        assert [float(r["value"][1]) for r in up] == [1.0]
        failed_ops = prom_query(prom, 'ailake_reconciler_operations_total{command="bad",'
                                      'outcome="failed"}')
        assert failed_ops and float(failed_ops[0]["value"][1]) >= 1

        # the daemon's own surface
        assert httpx.get(daemon.url + "/readyz", timeout=5).status_code == 200
        assert httpx.get(daemon.url + "/healthz", timeout=5).status_code == 200
        status = httpx.get(daemon.url + "/status", timeout=5).json()
        by_name = {i["name"]: i for i in status["intents"]}
        assert set(by_name) == {GOOD, BAD}
        assert by_name[GOOD]["state"] == S.IN_SYNC
        assert by_name[BAD]["state"] in SETTLED_BAD
        assert by_name[BAD]["attempts"] >= 1 and by_name[BAD]["error"]
        for item in by_name.values():
            assert item["operationId"] and item["revision"] == status["revision"]

        # every metric the alert rules and the dashboard use exists in a real scrape
        scraped = scraped_metric_names(httpx.get(daemon.url + "/metrics", timeout=5).text)
        used: dict[str, set[str]] = {str(RULES_FILE): set()}
        for expr in rules_expressions():
            used[str(RULES_FILE)] |= referenced_metrics(expr)
        for dashboard in DASHBOARD_FILES:
            used[str(dashboard)] = set()
            for expr in dashboard_expressions(dashboard):
                used[str(dashboard)] |= referenced_metrics(expr)
        used[str(ALERTS_DOC)] = referenced_metrics(ALERTS_DOC.read_text(encoding="utf-8"))
        for source, names in used.items():
            assert names, f"no ailake_reconciler_ metric found in {source}"
            assert names <= scraped, f"{source} uses metrics not exported: {names - scraped}"
        assert time.monotonic() - started < 40
    finally:
        if prom is not None:
            prom.stop()
        if daemon is not None:
            daemon.stop()


def test_metric_names_of_rules_and_dashboards_are_parsed() -> None:
    """The expression parser the e2e test relies on finds what is really in the files (a
    guard against a regex that silently matches nothing)."""
    rules = set().union(*(referenced_metrics(e) for e in rules_expressions()))
    assert {"ailake_reconciler_command_failed", "ailake_reconciler_command_stalled",
            "ailake_reconciler_api_requests_total"} <= rules
    for dashboard in DASHBOARD_FILES:
        exprs = dashboard_expressions(dashboard)
        assert exprs, dashboard
        names = set().union(*(referenced_metrics(e) for e in exprs))
        # histogram suffixes are stripped to the metric's name
        assert not {n for n in names if n.endswith(("_bucket", "_sum", "_count"))}, names
        assert "ailake_reconciler_command_failed" in names


def test_the_test_rules_copy_only_changes_for(tmp_path: Path) -> None:
    import yaml

    original = yaml.safe_load(RULES_FILE.read_text(encoding="utf-8"))
    copy = yaml.safe_load(test_rules_copy(tmp_path / "r.yaml").read_text(encoding="utf-8"))
    for g_orig, g_copy in zip(original["groups"], copy["groups"], strict=True):
        for r_orig, r_copy in zip(g_orig["rules"], g_copy["rules"], strict=True):
            if "for" in r_orig:
                assert r_copy["for"] == "0s"
            assert {k: v for k, v in r_orig.items() if k != "for"} == {
                k: v for k, v in r_copy.items() if k != "for"}


# ---------------------------------------------------------------- structured logs


def test_logs_are_json_lines_with_one_transition_event_per_transition(
        tmp_path: Path, emulator: RunningEmulator, manifests: Path) -> None:
    daemon = start_daemon(tmp_path / "daemon", manifests=manifests, api_url=emulator.url,
                          env=daemon_env())
    try:
        def settled() -> bool:
            status = httpx.get(daemon.url + "/status", timeout=5).json()
            states = {i["name"]: i["state"] for i in status["intents"]}
            return states == {GOOD: S.IN_SYNC, BAD: S.STALLED}

        wait_for(settled, timeout=20, what="good in sync and bad stalled",
                 diagnose=daemon.tail)
    finally:
        daemon.stop()
    events = daemon.json_lines()  # fails on any stdout line that is not JSON
    assert events, "no log lines"
    assert all({"event", "level", "timestamp"} <= set(e) for e in events)

    transitions = [e for e in events if e["event"] == "transition"]
    good = [(e["previous"], e["state"]) for e in transitions if e["name"] == GOOD]
    assert good == [(None, S.SUBMITTING), (S.SUBMITTING, S.PENDING), (S.PENDING, S.IN_SYNC)]
    bad = [(e["previous"], e["state"], e["attempt"]) for e in transitions if e["name"] == BAD]
    # attempt numbers are 1-based ("attempt N"), as in every table, JSON and the demo
    assert bad == [(None, S.SUBMITTING, 1), (S.SUBMITTING, S.PENDING, 1),
                   (S.PENDING, S.FAILED, 1), (S.FAILED, S.SUBMITTING, 2),
                   (S.SUBMITTING, S.PENDING, 2), (S.PENDING, S.STALLED, 2)]
    revisions = {e["revision"] for e in events if e["event"] == "manifests_loaded"}
    assert len(revisions) == 1
    for e in transitions:
        assert {"name", "service", "command", "operation_id", "attempt", "revision"} <= set(e)
        assert e["service"] == SERVICE and e["operation_id"] and e["revision"] in revisions
        terminal = e["state"] in {S.IN_SYNC, *SETTLED_BAD}
        assert ("duration" in e) == terminal, e
        if terminal:
            assert isinstance(e["duration"], float | int) and e["duration"] >= 0
        if e["state"] in SETTLED_BAD:
            assert e["level"] == "warning" and e["error_title"] == "Command failed"
    # every recorded attempt has its own operation id; the retry uses a new one
    ops = {e["attempt"]: e["operation_id"] for e in transitions if e["name"] == BAD}
    assert len(set(ops.values())) == 2


def test_api_errors_are_logged_with_status_and_trace_id(
        tmp_path: Path, emulator: RunningEmulator, manifests: Path) -> None:
    httpx.put(emulator.url + "/_emulator/faults", json={"errorRate": 1.0},
              timeout=5).raise_for_status()
    daemon = start_daemon(tmp_path / "daemon", manifests=manifests, api_url=emulator.url,
                          env=daemon_env())
    try:
        def api_error_logged() -> dict[str, Any] | None:
            for e in daemon.json_lines():
                if e["level"] in ("warning", "error") and e.get("status") == 503 \
                        and e.get("trace_id"):
                    return e
            return None

        error = wait_for(api_error_logged, timeout=20, what="a 503 logged with its trace id",
                         diagnose=daemon.tail)
        assert error.get("name") in (GOOD, BAD)
        ready = httpx.get(daemon.url + "/readyz", timeout=10)
        assert ready.status_code == 503 and "API" in ready.text

        httpx.put(emulator.url + "/_emulator/faults", json={"errorRate": 0.0},
                  timeout=5).raise_for_status()

        def recovered() -> bool:
            status = httpx.get(daemon.url + "/status", timeout=5).json()
            return {i["name"]: i["state"] for i in status["intents"]}.get(GOOD) == S.IN_SYNC

        wait_for(recovered, timeout=30, what="the good command in sync after the outage",
                 diagnose=daemon.tail)
    finally:
        daemon.stop()
    traces = {e["trace_id"] for e in daemon.json_lines()
              if e.get("status") == 503 and e.get("trace_id")}
    executed = httpx.get(emulator.url + "/_emulator/executions", timeout=5).json()
    assert len([x for x in executed if x["command"] == "ok"]) == 1, "ran exactly once"
    assert traces, "every 503 of the emulator carries a trace id"
