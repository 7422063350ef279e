"""ailake-reconciler: a GitOps controller for GoodData Cloud AI Lake service commands."""

from __future__ import annotations

__version__ = "0.1.0"
