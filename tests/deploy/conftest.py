"""Fixtures for the deployment tests; helpers live in deploy_support.py (importable from the
test modules whatever pytest's import mode, because this directory is put on sys.path)."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))

from deploy_support import CHART, RULES_FILE, find_tool, run


@pytest.fixture(scope="session")
def helm() -> str:
    return find_tool("helm")


@pytest.fixture(scope="session")
def promtool() -> str:
    return find_tool("promtool")


@pytest.fixture(scope="session")
def hadolint() -> str:
    return find_tool("hadolint")


@pytest.fixture(scope="session")
def rules() -> dict[str, Any]:
    return yaml.safe_load(RULES_FILE.read_text())


@pytest.fixture(scope="session")
def alert_rules(rules: dict[str, Any]) -> list[dict[str, Any]]:
    return [r for g in rules["groups"] for r in g["rules"] if "alert" in r]


HelmTemplate = Callable[..., subprocess.CompletedProcess[str]]
Render = Callable[..., list[dict[str, Any]]]


@pytest.fixture(scope="session")
def helm_template(helm: str) -> HelmTemplate:
    """Run `helm template` on the chart; returns the CompletedProcess."""

    def _template(
        *args: str, values: tuple[str, ...] = ("default",)
    ) -> subprocess.CompletedProcess[str]:
        cmd = [helm, "template", "rel", str(CHART), "--namespace", "ailake"]
        for name in values:
            cmd += ["-f", str(CHART / "ci" / f"{name}-values.yaml")]
        return run([*cmd, *args])

    return _template


@pytest.fixture(scope="session")
def render(helm_template: HelmTemplate) -> Render:
    """Render the chart and parse it; memoised, every call returns fresh copies."""
    cache: dict[tuple[Any, ...], str] = {}

    def _render(*args: str, values: tuple[str, ...] = ("default",)) -> list[dict[str, Any]]:
        key = (args, values)
        if key not in cache:
            proc = helm_template(*args, values=values)
            assert proc.returncode == 0, f"helm template failed:\n{proc.stderr}"
            cache[key] = proc.stdout
        return [d for d in yaml.safe_load_all(cache[key]) if d]

    return _render
