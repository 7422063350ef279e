"""What the reconciler tells the outside: logs, metrics and how every manifest stands.

- :mod:`.logs`: structured logging (JSON lines or console), secrets scrubbed;
- :mod:`.metrics`: the Prometheus metrics, a public interface (DESIGN section 7);
- :mod:`.status`: the per-manifest status rows of ``/status``, ``reconciler status`` and
  the demo, built in one place;
- :mod:`.web`: the read-only web view (``GET /``, ``/manifests/{name}``) made of those rows.
"""

from __future__ import annotations

from reconciler.observe import logs
from reconciler.observe.metrics import INTENT_STATES, PREFIX, Metrics
from reconciler.observe.status import StatusRow, status_document, status_item, status_rows

__all__ = [
    "INTENT_STATES",
    "PREFIX",
    "Metrics",
    "StatusRow",
    "logs",
    "status_document",
    "status_item",
    "status_rows",
]
