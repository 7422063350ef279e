"""Helpers for the deployment tests (Helm chart, alert rules, Dockerfile).

External tools (helm, promtool, hadolint, kubernetes-validate) are installed by
`.ci/tools.sh`. When one is missing the tests that need it are skipped locally, but FAIL
when the CI environment variable is set, so CI can never pass without running them.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "helm" / "ailake-reconciler"
RULES_FILE = CHART / "files" / "prometheus-rules.yaml"
CHART_DASHBOARD = CHART / "files" / "grafana-dashboard.json"
DOCS_DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
ALERTS_DOC = REPO / "docs" / "alerts.md"
PROMTOOL_TESTS = Path(__file__).resolve().parent / "alerts_test.yaml"

# The public metric interface (DESIGN.md section 7), without the ailake_reconciler_ prefix.
KNOWN_METRICS = frozenset(
    {
        "reconcile_duration_seconds",
        "reconciles_total",
        "intents",
        "invalid_manifests",
        "operations_total",
        "operation_duration_seconds",
        "command_failed",
        "command_stalled",
        "command_lost",
        "command_last_success_timestamp_seconds",
        "api_requests_total",
        "api_request_duration_seconds",
        "last_successful_reconcile_timestamp_seconds",
        "source_last_success_timestamp_seconds",
        "source_revision_info",
        "source_errors_total",
        "manifest_invalid",
        "source_empty_withheld",
        "leader",
        "build_info",
    }
)
HISTOGRAMS = frozenset(
    {"reconcile_duration_seconds", "operation_duration_seconds", "api_request_duration_seconds"}
)
METRIC_RE = re.compile(r"ailake_reconciler_([a-z_]+)")


def metric_names(expr: str) -> set[str]:
    """Metric names (prefix stripped) referenced in a PromQL expression."""
    names = set()
    for raw in METRIC_RE.findall(expr):
        name = raw
        for suffix in ("_bucket", "_sum", "_count"):
            base = raw.removesuffix(suffix)
            if base != raw and base in HISTOGRAMS:
                name = base
                break
        names.add(name)
    return names


def missing_tool(what: str, hint: str = "run .ci/tools.sh") -> None:
    """Skip locally, fail in CI."""
    message = f"{what} is not installed ({hint})"
    if os.environ.get("CI"):
        pytest.fail(f"{message}; CI is set, so this is an error, not a skip")
    pytest.skip(message)


def find_tool(name: str) -> str:
    """An executable on PATH or next to the running interpreter (venv bin)."""
    found = shutil.which(name) or shutil.which(name, path=str(Path(sys.executable).parent))
    if not found:
        missing_tool(name)
    assert found is not None
    return found


def run(cmd: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)


def kinds(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The rendered objects by kind (each kind at most once)."""
    by_kind: dict[str, dict[str, Any]] = {}
    for doc in docs:
        assert doc["kind"] not in by_kind, f"two {doc['kind']} objects"
        by_kind[doc["kind"]] = doc
    return by_kind


def container(docs: list[dict[str, Any]], name: str = "reconciler") -> dict[str, Any]:
    """A container of the rendered Deployment."""
    spec = kinds(docs)["Deployment"]["spec"]["template"]["spec"]
    return next(c for c in spec["containers"] if c["name"] == name)

