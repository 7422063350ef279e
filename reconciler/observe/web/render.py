"""The overview's rows as HTML and JSON fragments, kept between requests.

With 10,000 manifests most rows do not change from one request (or one poll of the page's
script) to the next, so each row's :class:`~reconciler.observe.web.pages.RowView` is made
(and scrubbed) once, rendered once by the template's ``row`` macro and as JSON, and kept in
a bounded :class:`Fragments` while its status row stays the same. A row in flight keeps
its HTML in three parts around its elapsed time and deadline, written anew each time (the
JSON has neither: the script counts them). A full memo is emptied and refilled.

The table comes in chunks of :data:`CHUNK` rows (one ``<tbody>`` each): the stylesheet
lets the browser skip the layout of the chunks out of sight (``content-visibility``), which
is what makes 10,000 rows a quick page.
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import jinja2
from markupsafe import Markup, escape

from reconciler.model.manifest import ServiceCommand
from reconciler.observe.status import StatusRow
from reconciler.observe.web.pages import RowInput, RowView, moving_texts, row_views

__all__ = ["CHUNK", "Fragments", "Rendered", "etag", "json_body"]

#: rows per ``<tbody>``
CHUNK = 100
#: fragments kept at least (and twice the rows of the largest page)
MIN_KEPT = 2000


def etag(body: bytes) -> str:
    """A strong ETag of ``body``."""
    return '"' + hashlib.sha256(body).hexdigest()[:32] + '"'


def _dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


#: stand-ins for the moving texts of a row in flight in its kept HTML
_ELAPSED, _DEADLINE = "\x00elapsed\x00", "\x00deadline\x00"


@dataclass(frozen=True)
class _Entry:
    view: RowView
    #: the row's HTML; a row in flight: in three parts, around its elapsed time and deadline
    html: tuple[str, ...]
    json: str
    #: held so that the ``id`` in the key stays this manifest's while the entry is kept
    command: ServiceCommand | None


def _key(row: StatusRow, command: ServiceCommand | None, recorded: str | None) -> Hashable:
    """What a row's view is made of, but the moving texts of one in flight. A record's
    error changes only with a transition, which moves ``updated_at``; it is in the key all
    the same."""
    progress = row.progress
    return (row.name, row.state, row.reason, row.service, row.command, row.spec_hash,
            row.attempts, row.operation_id, row.window, row.revision, row.updated_at,
            repr(row.error) if row.error else None, id(command), recorded,
            None if progress is None else (progress.attempt, progress.started_at,
                                           progress.deadline, progress.typical))


class Rendered(list[RowView]):
    """Row views with their HTML (``<tr>…</tr>``) and JSON, in the same order."""

    def __init__(self, views: list[RowView], html: list[str], json: list[str]) -> None:
        super().__init__(views)
        self.html = html
        self.json = json


class Fragments:
    """Each row's view, its HTML and its JSON, made once and kept while the row does not
    change (a row in flight: only its elapsed time and deadline are written anew).
    Thread-safe (pages are built off the event loop)."""

    def __init__(self, env: jinja2.Environment) -> None:
        self._row = env.get_template("macros.html").module.row  # type: ignore[attr-defined]
        self._kept: dict[Hashable, _Entry] = {}
        self._lock = threading.Lock()
        self._limit = MIN_KEPT

    def _html(self, view: RowView) -> str:
        return str(self._row(view))

    def _entry(self, view: RowView, command: ServiceCommand | None) -> _Entry:
        if view.started_at is None and view.deadline_at is None:
            html: tuple[str, ...] = (self._html(view),)
        else:
            marked = self._html(replace(view, elapsed=_ELAPSED, deadline=_DEADLINE))
            before, rest = marked.split(_ELAPSED, 1)
            middle, after = rest.split(_DEADLINE, 1)
            html = (before, middle, after)
        return _Entry(view, html, _dumps(view.as_dict()), command)

    def views(self, items: Sequence[RowInput]) -> Rendered:
        """The views of ``items`` (:func:`~reconciler.observe.web.pages.row_views`), the
        kept ones where their row did not change; the new ones scrubbed together."""
        self._limit = max(self._limit, MIN_KEPT, 2 * len(items))
        keys = [_key(*item) for item in items]
        entries: list[_Entry | None] = [self._kept.get(k) for k in keys]
        fresh = [i for i, e in enumerate(entries) if e is None]
        made = row_views([items[i] for i in fresh])
        with self._lock:
            if len(self._kept) + len(made) > self._limit:
                self._kept.clear()
            for i, view in zip(fresh, made, strict=True):
                entries[i] = self._kept[keys[i]] = self._entry(view, items[i][1])
        views, html, json_ = [], [], []
        for item, entry in zip(items, entries, strict=True):
            assert entry is not None
            if len(entry.html) == 1:
                views.append(entry.view)
                html.append(entry.html[0])
            else:  # in flight: the kept row with its texts as of now
                elapsed, deadline = moving_texts(item[0].progress)
                views.append(replace(entry.view, elapsed=elapsed, deadline=deadline))
                html.append(entry.html[0] + str(escape(elapsed)) + entry.html[1]
                            + str(escape(deadline)) + entry.html[2])
            json_.append(entry.json)
        return Rendered(views, html, json_)

    def _rendered(self, views: Sequence[RowView]) -> Rendered:
        if isinstance(views, Rendered):
            return views
        listed = list(views)
        return Rendered(listed, [self._html(v) for v in listed],
                        [_dumps(v.as_dict()) for v in listed])

    def chunks(self, views: Sequence[RowView]) -> list[Markup]:
        """The rows' HTML in chunks of :data:`CHUNK` rows (rendered by the autoescaping
        template's ``row`` macro)."""
        html = self._rendered(views).html
        return [Markup("".join(html[i:i + CHUNK]))  # noqa: S704
                for i in range(0, len(html), CHUNK)]

    def rows_json(self, views: Sequence[RowView]) -> str:
        return "[" + ",".join(self._rendered(views).json) + "]"


def json_body(fragments: Fragments, rows: Sequence[RowView], rest: Mapping[str, Any]) -> bytes:
    """A live JSON document: ``{"rows": [...], **rest}``, the rows from ``fragments``."""
    tail = _dumps(dict(rest))
    return ('{"rows":' + fragments.rows_json(rows) + ("," + tail[1:] if rest else "}")
            ).encode()
