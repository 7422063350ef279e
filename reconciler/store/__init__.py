"""Persistence of intent records: it stores what it is given and decides nothing."""

from __future__ import annotations

from reconciler.store.sqlite import SCHEMA_VERSION, Store

__all__ = ["SCHEMA_VERSION", "Store"]
