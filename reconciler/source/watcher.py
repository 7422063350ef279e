"""Whether the manifest files changed since they were last loaded."""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Sequence
from pathlib import Path

from reconciler.source.files import yaml_files

__all__ = ["SourceWatcher"]


class SourceWatcher:
    """Tells whether the manifest files' content changed: a cheap stat pass on every
    look, and a content hash (what decides) only when names, sizes or mtimes moved."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self._stat = ""
        self.content = ""

    def _stat_digest(self, files: Sequence[Path]) -> str:
        digest = hashlib.sha256()
        for path in files:
            with contextlib.suppress(OSError):
                st = path.stat()
                digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        return digest.hexdigest()

    def _content_digest(self, files: Sequence[Path]) -> str:
        digest = hashlib.sha256()
        for path in files:
            with contextlib.suppress(OSError):
                digest.update(str(path).encode() + b"\0" + path.read_bytes() + b"\0")
        return digest.hexdigest()

    def changed(self) -> bool:
        """True when the content differs from the last :meth:`mark` (or none was made)."""
        files = yaml_files(self.root)
        stat = self._stat_digest(files)
        if stat == self._stat and self.content:
            return False
        self._stat = stat
        return self._content_digest(files) != self.content

    def mark(self) -> None:
        """Remember the current content as loaded."""
        files = yaml_files(self.root)
        self._stat = self._stat_digest(files)
        self.content = self._content_digest(files)
