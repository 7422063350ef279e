"""The Prometheus alert rules and the Grafana dashboard.

- `promtool check rules` / `promtool test rules` on the single rule file;
- every alert has a promtool case where it fires and one where it stays silent;
- alerts carry severity, summary, description and a runbook_url whose anchor exists;
- rules and dashboard use only the public metric names (DESIGN.md section 7);
- every dashboard query is valid PromQL (checked by promtool as a recording rule).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml
from deploy_support import (
    ALERTS_DOC,
    CHART_DASHBOARD,
    DOCS_DASHBOARD,
    KNOWN_METRICS,
    PROMTOOL_TESTS,
    RULES_FILE,
    metric_names,
    run,
)

SEVERITIES = {"critical", "warning", "info"}
REQUIRED_ALERTS = {
    "AiLakeReconcilerCommandFailed",
    "AiLakeReconcilerCommandStalled",
    "AiLakeReconcilerDown",
    "AiLakeReconcilerMetricsAbsent",
    "AiLakeReconcilerReconcileStale",
    "AiLakeReconcilerInvalidManifests",
    "AiLakeReconcilerApiErrorRatioHigh",
    "AiLakeReconcilerSourceStale",
    "AiLakeReconcilerManifestInvalid",
    "AiLakeReconcilerSourceEmpty",
}


def _github_anchor(heading: str) -> str:
    """The anchor GitHub generates for a Markdown heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def _doc_anchors() -> set[str]:
    return {
        _github_anchor(m.group(1))
        for m in re.finditer(r"^#{1,6}\s+(.+?)\s*$", ALERTS_DOC.read_text(), re.MULTILINE)
    }


def _dashboard() -> dict[str, Any]:
    return json.loads(DOCS_DASHBOARD.read_text())


def _dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    exprs: list[str] = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            exprs.extend(t["expr"] for t in panel.get("targets", []) if t.get("expr"))
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    return exprs


# -- promtool ---------------------------------------------------------------------------------


def test_promtool_check_rules(promtool: str) -> None:
    proc = run([promtool, "check", "rules", str(RULES_FILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_promtool_unit_tests(promtool: str) -> None:
    proc = run([promtool, "test", "rules", str(PROMTOOL_TESTS)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "SUCCESS" in proc.stdout + proc.stderr


def test_dashboard_queries_are_valid_promql(promtool: str, tmp_path: Path) -> None:
    """Grafana variables replaced by concrete values, each query checked as a recording rule."""
    substitutions = {"$__rate_interval": "5m", "$__interval": "1m", "$job": ".*"}
    rules = []
    for i, expr in enumerate(_dashboard_exprs(_dashboard())):
        for var, value in substitutions.items():
            expr = expr.replace(var, value)
        assert "$" not in expr, f"unhandled Grafana variable in {expr!r}"
        rules.append({"record": f"dashboard:query_{i}:check", "expr": expr})
    rule_file = tmp_path / "dashboard-queries.yaml"
    rule_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    proc = run([promtool, "check", "rules", str(rule_file)])
    assert proc.returncode == 0, proc.stdout + proc.stderr


# -- rule content (no external tool needed) ---------------------------------------------------


def test_rule_file_is_plain_prometheus_format(rules: dict[str, Any]) -> None:
    assert set(rules) == {"groups"}
    for group in rules["groups"]:
        assert set(group) <= {"name", "interval", "rules", "limit"}
        assert group["rules"]


def test_expected_alerts_present(alert_rules: list[dict[str, Any]]) -> None:
    names = [r["alert"] for r in alert_rules]
    assert len(names) == len(set(names)), "duplicate alert names"
    assert set(names) >= REQUIRED_ALERTS
    for name in names:
        assert re.fullmatch(r"AiLakeReconciler(?:[A-Z][a-z0-9]+)+", name), name


def test_alert_labels_and_annotations(alert_rules: list[dict[str, Any]]) -> None:
    anchors = _doc_anchors()
    for rule in alert_rules:
        name = rule["alert"]
        assert rule["labels"]["severity"] in SEVERITIES, name
        ann = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(ann), name
        url = ann["runbook_url"]
        assert url == f"docs/alerts.md#{name.lower()}", (name, url)
        assert name.lower() in anchors, f"docs/alerts.md has no section for {name}"


def test_per_manifest_alerts_name_the_manifest(alert_rules: list[dict[str, Any]]) -> None:
    """An alert on a metric labelled name/service/command must show them."""
    for rule in alert_rules:
        if metric_names(rule["expr"]) & {"command_failed", "command_stalled", "command_lost"}:
            text = rule["annotations"]["summary"] + rule["annotations"]["description"]
            for label in ("name", "service", "command"):
                assert f"$labels.{label}" in text, (rule["alert"], label)


def test_stalled_is_distinguishable_from_failed(alert_rules: list[dict[str, Any]]) -> None:
    by_name = {r["alert"]: r for r in alert_rules}
    stalled = by_name["AiLakeReconcilerCommandStalled"]["expr"]
    assert "command_stalled" in stalled
    assert "command_failed" not in stalled


def test_rules_use_only_public_metrics(alert_rules: list[dict[str, Any]]) -> None:
    used: set[str] = set()
    for rule in alert_rules:
        used |= metric_names(rule["expr"])
    assert used, "no ailake_reconciler_ metric found in the rules"
    assert used <= KNOWN_METRICS, f"unknown metrics: {sorted(used - KNOWN_METRICS)}"


def test_every_alert_fires_and_stays_silent_in_promtool_tests(
    alert_rules: list[dict[str, Any]],
) -> None:
    cases = yaml.safe_load(PROMTOOL_TESTS.read_text())
    fires: set[str] = set()
    silent: set[str] = set()
    for test in cases["tests"]:
        for case in test.get("alert_rule_test", []):
            (fires if case.get("exp_alerts") else silent).add(case["alertname"])
    names = {r["alert"] for r in alert_rules}
    assert names <= fires, f"never shown to fire: {sorted(names - fires)}"
    assert names <= silent, f"never shown to stay silent: {sorted(names - silent)}"


# -- dashboard --------------------------------------------------------------------------------


def test_dashboard_copies_identical() -> None:
    assert CHART_DASHBOARD.read_bytes() == DOCS_DASHBOARD.read_bytes(), (
        "helm/ailake-reconciler/files/grafana-dashboard.json must be a copy of "
        "docs/grafana-dashboard.json"
    )


def test_dashboard_uses_only_public_metrics() -> None:
    dashboard = _dashboard()
    used: set[str] = set()
    for expr in _dashboard_exprs(dashboard):
        used |= metric_names(expr)
    for var in dashboard["templating"]["list"]:
        query = var.get("query")
        if isinstance(query, dict):
            query = query.get("query", "")
        used |= metric_names(str(query or ""))
    assert used <= KNOWN_METRICS, f"unknown metrics: {sorted(used - KNOWN_METRICS)}"


def test_dashboard_covers_the_essentials() -> None:
    dashboard = _dashboard()
    exprs = "\n".join(_dashboard_exprs(dashboard))
    for metric in (
        "intents",
        "reconciles_total",
        "command_failed",
        "operation_duration_seconds",
        "api_requests_total",
        "last_successful_reconcile_timestamp_seconds",
        "source_revision_info",
    ):
        assert f"ailake_reconciler_{metric}" in exprs, metric
    assert "histogram_quantile(0.5," in exprs
    assert "histogram_quantile(0.95," in exprs
    ids = []

    def walk(panels: list[dict[str, Any]]) -> None:
        for panel in panels:
            ids.append(panel["id"])
            for target in panel.get("targets", []):
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]
            walk(panel.get("panels", []))

    walk(dashboard["panels"])
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    assert dashboard["uid"]
    assert not dashboard.get("__inputs"), "the dashboard must load without import inputs"


@pytest.mark.parametrize("doc", ["alerts.md", "deployment.md"])
def test_docs_exist(doc: str) -> None:
    text = (ALERTS_DOC.parent / doc).read_text()
    assert len(text) > 1000
    assert "TODO" not in text
