"""The container image definition: hadolint-clean, non-root, read-only-root friendly."""

from __future__ import annotations

import json
import re
import tomllib
from pathlib import Path

import yaml
from deploy_support import CHART, REPO, run

DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"


def _instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    out: list[tuple[str, str]] = []
    buf = ""
    for line in path.read_text().splitlines():
        stripped = line.strip()
        if not buf and (not stripped or stripped.startswith("#")):
            continue
        if stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            buf += stripped[:-1] + " "
            continue
        buf += stripped
        keyword, _, rest = buf.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        buf = ""
    return out


def _final_stage() -> list[tuple[str, str]]:
    ins = _instructions()
    last_from = max(i for i, (k, _) in enumerate(ins) if k == "FROM")
    return ins[last_from:]


def test_hadolint_clean(hadolint: str) -> None:
    proc = run([hadolint, "--no-color", "--failure-threshold", "info", str(DOCKERFILE)])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.strip() == "", proc.stdout


def test_multi_stage_with_pinned_base() -> None:
    froms = [args for k, args in _instructions() if k == "FROM"]
    assert len(froms) >= 2, "build and runtime stages expected"
    for args in froms:
        image = args.split()[0]
        assert re.fullmatch(r"python:3\.11(\.\d+)?-slim(-\w+)?", image), image
        assert "latest" not in image


def test_runs_as_numeric_non_root_user() -> None:
    users = [args for k, args in _final_stage() if k == "USER"]
    assert users == ["10001"]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    assert values["securityContext"]["runAsUser"] == 10001
    assert values["podSecurityContext"]["runAsUser"] == 10001


def test_entrypoint_and_cmd() -> None:
    final = dict(_final_stage())
    assert json.loads(final["ENTRYPOINT"]) == ["reconciler"]
    assert json.loads(final["CMD"]) == ["run"]
    assert final["EXPOSE"] == "8080"
    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert "reconciler" in scripts


def test_read_only_root_friendly_environment() -> None:
    env = " ".join(args for k, args in _final_stage() if k == "ENV")
    assert "RECONCILER_STATE=/data/reconciler-state.db" in env
    assert "PYTHONDONTWRITEBYTECODE=1" in env
    volumes = [args for k, args in _final_stage() if k == "VOLUME"]
    assert volumes and "/data" in volumes[0]


def test_pip_never_caches() -> None:
    for keyword, args in _instructions():
        if keyword == "RUN" and re.search(r"\bpip\b.*\b(install|wheel)\b", args):
            assert "--no-cache-dir" in args, args


def test_dockerignore_keeps_context_small() -> None:
    lines = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*", "allow-list expected"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert {"pyproject.toml", "reconciler", "README.md"} <= allowed
    assert not allowed & {".git", "tests", "helm", ".venv"}
