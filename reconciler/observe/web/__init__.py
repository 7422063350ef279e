"""The read-only web view of the daemon: ``GET /`` and ``GET /manifests/{name}``.

- :mod:`.data`: the small read-only surface the daemon gives it, and the facts it returns;
- :mod:`.pages` and :mod:`.manifest_page`: pure functions from those facts (the status rows
  of ``/status``, the history) to what a person sees, every text scrubbed;
- :mod:`.graph`: the dependency chains laid out for a server-side SVG;
- :mod:`.routes`: the Starlette routes, with the security headers (CSP, ``nosniff``);
- ``templates/`` (Jinja2, autoescaped) and ``static/`` (the stylesheet and the polling
  script), shipped in the package: no external asset, it works offline.

``docs/web.md`` describes it for users.
"""

from __future__ import annotations

from reconciler.observe.web.data import Leadership, ManifestFacts, OverviewFacts, WebSurface
from reconciler.observe.web.routes import CSP, SECURITY_HEADERS, web_routes

__all__ = ["CSP", "SECURITY_HEADERS", "Leadership", "ManifestFacts", "OverviewFacts",
           "WebSurface", "web_routes"]
