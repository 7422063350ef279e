"""The revision a manifest tree stands at: its git commit, when it is in a work tree."""

from __future__ import annotations

import itertools
import os
import re
import subprocess
from pathlib import Path

__all__ = ["git_revision", "worktree_revision"]


_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def worktree_revision(path: Path) -> str | None:
    """The commit a git-sync v4 worktree (``.../.worktrees/<commit>/...``) holds, read from
    the resolved path alone (no git binary, no I/O beyond resolving symlinks)."""
    parts = path.resolve().parts
    for name, following in itertools.pairwise(parts):
        if name == ".worktrees" and _SHA.fullmatch(following):
            return following
    return None


def git_revision(path: Path) -> str | None:
    """HEAD's commit when ``path`` is inside a git work tree (git-sync, a checkout).

    Without a git binary (the slim image), a git-sync v4 work tree still tells: its
    folder ``.worktrees/<commit>`` is named for the commit it holds."""
    directory = path if path.is_dir() else path.parent
    from_path = worktree_revision(directory)
    if from_path is not None:
        return from_path
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) >= 40 else None
