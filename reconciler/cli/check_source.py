"""The checks of the manifest source: ``source`` (readable; a git URL: fetched into a
scratch folder, removed after) and ``manifests`` (valid)."""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

from reconciler.cli.checks import Check, failing, passing, skipping, uid
from reconciler.errors import ConfigError, SourceError
from reconciler.model.manifest import LoadResult
from reconciler.source.git import GitSettings, GitSource
from reconciler.source.loader import load_manifests

__all__ = ["source_checks"]


def source_checks(manifests: Path | None, git: GitSettings | None,
                  problem: str | None = None) -> tuple[list[Check], LoadResult | None]:
    """source and manifests, and what was loaded (None: nothing could be)."""
    if problem is not None or (manifests is None and git is None):
        why = problem or ("no manifest source: give --manifests DIR (RECONCILER_MANIFESTS) "
                          "or --git-url URL (RECONCILER_GIT_URL)")
        return [failing("source", why, "", fatal=True),
                skipping("manifests", "not checked: no source")], None
    if git is not None:
        return _git_checks(git)
    assert manifests is not None
    if not manifests.exists():
        return [failing("source", f"{manifests} does not exist",
                      "give --manifests (RECONCILER_MANIFESTS) the folder (or file) of the "
                      "manifests; in the chart, check the ConfigMap or git-sync volume",
                      fatal=True), skipping("manifests", "not checked: no source")], None
    if not os.access(manifests, os.R_OK | (os.X_OK if manifests.is_dir() else 0)):
        return [failing("source", f"{manifests} is not readable by {uid()}",
                      "fix its mode, or mount it readable", fatal=True),
                skipping("manifests", "not checked: no source")], None
    load = load_manifests(manifests)
    source = passing("source", f"{manifests}: {load.files} file(s), revision {load.revision}")
    return [source, _manifests_check(load, str(manifests))], load


def _git_checks(git: GitSettings) -> tuple[list[Check], LoadResult | None]:
    with tempfile.TemporaryDirectory(prefix="reconciler-check-") as scratch:
        source = GitSource(dataclasses.replace(git, cache_dir=Path(scratch) / "cache"))
        try:
            source.fetch()
            load = source.load()
        except (SourceError, ConfigError) as exc:
            return [failing("source", f"{git.location}: {exc}",
                          "check --git-url, --git-ref and --git-path, and the credentials "
                          "(--git-token-file, or --git-ssh-key-file with "
                          "--git-known-hosts-file)", fatal=True),
                    skipping("manifests", "not checked: nothing fetched")], None
    return [passing("source", f"{git.location}: fetched {load.revision}, {load.files} "
                  "file(s)"), _manifests_check(load, git.location)], load


def _manifests_check(load: LoadResult, where: str) -> Check:
    if load.problems:
        first = load.problems[0]
        return failing("manifests", f"{len(load.problems)} problem(s), {load.invalid} invalid "
                     f"document(s), skipped (the {len(load.commands)} valid ones run); the first: "
                     f"{first}", f"run reconciler validate {where} for every problem")
    if not load.commands:
        return failing("manifests", f"no manifests (*.yaml, *.yml) in {where}",
                     "check --manifests or --git-path; an empty source orphans nothing "
                     "without --allow-empty")
    return passing("manifests", f"{len(load.commands)} valid manifest(s)")
