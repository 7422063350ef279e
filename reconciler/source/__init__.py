"""Where manifests come from: listing, reading, the git revision, YAML, validation."""

from __future__ import annotations

from reconciler.source.loader import load_manifests, parse_documents
from reconciler.source.schema import load_schema

__all__ = ["load_manifests", "load_schema", "parse_documents"]
