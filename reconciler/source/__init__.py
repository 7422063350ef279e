"""Where manifests come from: listing, reading, the git revision, YAML, validation.

Sources (:mod:`~reconciler.source.kinds`): a directory, a git-sync checkout, or the built-in
git follower (:mod:`~reconciler.source.git`); what survives a bad load:
:mod:`~reconciler.source.continuity`.
"""

from __future__ import annotations

from reconciler.source.continuity import Continuity, Hold, HoldReason, SourceMemory, continuity
from reconciler.source.kinds import (
    DirectorySource,
    Snapshot,
    Source,
    SourceStatus,
    check_manifests_path,
    open_source,
)
from reconciler.source.loader import load_manifests, parse_documents
from reconciler.source.schema import load_schema

__all__ = [
    "Continuity",
    "DirectorySource",
    "Hold",
    "HoldReason",
    "Snapshot",
    "Source",
    "SourceMemory",
    "SourceStatus",
    "check_manifests_path",
    "continuity",
    "load_manifests",
    "load_schema",
    "open_source",
    "parse_documents",
]
