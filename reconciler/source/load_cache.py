"""The load cache: per source, each file's stat, digest and validated documents, and the
last tree's signature and result (see :mod:`reconciler.source.loader`)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from reconciler.model.manifest import LoadResult
from reconciler.source.files import FileStat
from reconciler.source.parsed import _Parsed

#: sources whose files are remembered (each directory or git path loaded)
_MEMO_SOURCES = 8



@dataclass(frozen=True)
class _FileMemo:
    """What one file was at its last load: where, its stat, whether that stat can be
    trusted, its content digest, and its validated documents."""

    path: str
    stat: FileStat | None
    trusted: bool
    digest: bytes
    parsed: _Parsed


@dataclass
class _SourceMemo:
    """The last load of one source: each file, the tree's signature and the result."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    files: dict[str, _FileMemo] = field(default_factory=dict)
    signature: tuple[Any, ...] | None = None
    result: LoadResult | None = None


_memos: OrderedDict[tuple[Any, ...], _SourceMemo] = OrderedDict()
_memos_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every file and tree remembered (tests, benchmarks of a cold load)."""
    with _memos_lock:
        _memos.clear()


def _memo(key: tuple[Any, ...]) -> _SourceMemo:
    with _memos_lock:
        memo = _memos.get(key)
        if memo is None:
            memo = _memos[key] = _SourceMemo()
            while len(_memos) > _MEMO_SOURCES:
                _memos.popitem(last=False)
        else:
            _memos.move_to_end(key)
        return memo
