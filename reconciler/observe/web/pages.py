"""The overview page as values: pure functions from the status rows to what a person sees.

:func:`overview_page` turns :class:`~reconciler.observe.web.data.OverviewFacts` into an
:class:`OverviewPage` (rows, counts, filters, banners, dependency chains) that the template
renders and ``/ui/overview.json`` serves for the live updates. Every text that came from
outside (error titles, source errors, problems, labels) goes through the one scrubber: a
row starts as the ``/status`` item of its status row (:func:`~reconciler.observe.status.
status_item`), scrubbed as ``/status`` scrubs it.

Times are shown in UTC; moments the browser keeps current (elapsed time, the deadline) are
also given as ISO 8601 so the page's script can recount them without asking the daemon.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

from reconciler.model import scrub
from reconciler.model.durations import format_duration
from reconciler.model.manifest import Interval, Schedule, ServiceCommand
from reconciler.model.states import IntentState
from reconciler.observe.status import Progress, StatusRow, approx, status_item
from reconciler.observe.web.data import Leadership, OverviewFacts
from reconciler.observe.web.graph import Layout, overview_chains

__all__ = [
    "STATES",
    "Filters",
    "OverviewPage",
    "RowInput",
    "RowView",
    "SourceBanner",
    "leadership_text",
    "moment",
    "moving_texts",
    "overview_page",
    "policy_text",
    "row_view",
    "row_views",
    "scrubbed",
    "short_revision",
]

#: every state, in the order the page lists them (the bad ones first)
STATES: tuple[str, ...] = tuple(s.value for s in (
    IntentState.FAILED, IntentState.STALLED, IntentState.LOST, IntentState.INVALID,
    IntentState.PENDING, IntentState.SUBMITTING, IntentState.WAITING,
    IntentState.SUSPENDED, IntentState.IN_SYNC, IntentState.ORPHANED))
_DASH = "—"
#: the longest reason shown in a table cell (the cell's title holds all of it)
REASON_CHARS = 90


def moment(value: datetime | None) -> str:
    """A moment for people: ``2026-03-02 02:00:00 UTC`` (``—`` for none)."""
    if value is None:
        return _DASH
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat() if value is not None else None


def short_revision(revision: str | None) -> str:
    """A git commit's first 12 hex digits, a content hash as it is, ``—`` for none."""
    if not revision:
        return _DASH
    if len(revision) == 40 and all(c in "0123456789abcdef" for c in revision):
        return revision[:12]
    return revision


def policy_text(command: ServiceCommand | None) -> str:
    """``once``, ``every 24h``, ``0 3 * * * (UTC)``; ``—`` without a loaded manifest."""
    if command is None:
        return _DASH
    policy = command.policy
    if isinstance(policy, Interval):
        return f"every {format_duration(policy.every)}"
    if isinstance(policy, Schedule):
        return f"{policy.cron} ({policy.timezone})"
    return "once"


def leadership_text(leadership: Leadership) -> str:
    return {
        Leadership.SINGLE: "This replica acts alone (no leader election).",
        Leadership.LEADER: "This replica leads: it submits and follows the commands.",
        Leadership.STANDBY: "This replica stands by: another one leads; this one submits "
                            "nothing and shows the shared state.",
    }[leadership]


@dataclass(frozen=True)
class RowView:
    """One line of the overview table (and of ``/ui/overview.json``): texts, scrubbed."""

    name: str
    href: str
    state: str
    #: the planner's reason, shortened for the table (``reason_full``: all of it)
    reason: str
    reason_full: str
    service: str
    command: str
    policy: str
    labels: tuple[str, ...]
    #: the current attempt, 1-based (``—`` before the first)
    attempt: str
    #: while in flight: when this attempt was sent (ISO), how long it has run, the deadline
    started_at: str | None
    elapsed: str
    deadline_at: str | None
    deadline: str
    outcome: str
    revision: str
    revision_full: str
    error: str
    error_detail: str

    def as_dict(self) -> dict[str, Any]:
        """For ``/ui/overview.json``: the texts that change every second (elapsed time,
        deadline) are left empty where their moment is given; the script counts them."""
        data: dict[str, Any] = {f: getattr(self, f) for f in _FIELDS}
        data["labels"] = list(self.labels)
        if self.started_at:
            data["elapsed"] = ""
        if self.deadline_at:
            data["deadline"] = ""
        return data


def _outcome(state: str, recorded: str | None, item: Mapping[str, Any]) -> str:
    """The last attempt's outcome, from the current intent's recorded state."""
    if not item.get("attempts"):
        return _DASH
    title = str((item.get("error") or {}).get("title") or "")
    if recorded == IntentState.IN_SYNC:
        return "succeeded"
    if recorded == IntentState.LOST or title == "Lost":
        return "lost"
    if title == "Timed out":
        return "timed out"
    if recorded in (IntentState.PENDING, IntentState.SUBMITTING):
        return (f"attempt {item['attempts'] - 1} failed" if item["attempts"] > 1
                else "running")
    if recorded in (IntentState.FAILED, IntentState.STALLED) or item.get("error"):
        return "failed"
    return _DASH if state != IntentState.IN_SYNC else "succeeded"


def _deadline_text(left: float | None) -> str:
    if left is None:
        return _DASH
    return f"in {approx(left)}" if left >= 0 else f"passed {approx(-left)} ago"


def _short(text: str, limit: int = REASON_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def moving_texts(progress: Progress | None) -> tuple[str, str]:
    """A row's texts that move with the clock: how long its attempt has run (``1m15s``)
    and its deadline (``in 45m``); ``—`` each when not in flight."""
    elapsed = (approx(progress.elapsed) if progress is not None and progress.elapsed is not None
               else _DASH)
    return elapsed, _deadline_text(progress.deadline_in if progress is not None else None)


def row_view(row: StatusRow, command: ServiceCommand | None,
             recorded: str | None = None) -> RowView:
    """The view of one status row (``command``: its loaded manifest, for the policy and
    labels; ``recorded``: its current intent's recorded state, for the last outcome), from
    its ``/status`` item. Not scrubbed yet: :func:`scrubbed` does that for many at once."""
    item = status_item(row)
    error = item.get("error") or {}
    progress = row.progress
    elapsed, deadline = moving_texts(progress)
    reason = str(item["reason"] or "")
    return RowView(
        name=item["name"], href=f"/manifests/{item['name']}", state=item["state"],
        reason=_short(reason), reason_full=reason,
        service=item["service"] or (command.service.label if command else _DASH),
        command=item["command"] or (command.command if command else _DASH),
        policy=policy_text(command),
        labels=tuple(f"{k}={v}" for k, v in sorted(command.labels.items()))
        if command is not None else (),
        attempt=str(item["attempts"]) if item["attempts"] else _DASH,
        started_at=_iso(progress.started_at) if progress else None, elapsed=elapsed,
        deadline_at=_iso(progress.deadline) if progress else None, deadline=deadline,
        outcome=_outcome(row.state, recorded, item),
        revision=short_revision(item["revision"]), revision_full=item["revision"] or "",
        error=str(error.get("title") or ""), error_detail=str(error.get("detail") or ""),
    )


_FIELDS = tuple(f.name for f in fields(RowView))
#: what a row's view is made of: its status row, its loaded manifest, its recorded state
RowInput = tuple[StatusRow, ServiceCommand | None, str | None]

_TEXTS = tuple(f.name for f in fields(RowView) if f.type == "str")


def _texts(view: RowView) -> list[str]:
    return [*(getattr(view, f) for f in _TEXTS), *view.labels]


def _scrub_view(view: RowView) -> RowView:
    joined = "\x00".join(_texts(view))
    if scrub.text(joined) == joined:
        return view
    changed: dict[str, Any] = {f: scrub.text(getattr(view, f)) for f in _TEXTS}
    return replace(view, labels=tuple(scrub.text(label) for label in view.labels), **changed)


def scrubbed(views: Sequence[RowView]) -> tuple[RowView, ...]:
    """``views`` with every text through the one scrubber (:func:`reconciler.model.scrub.
    text`, as ``/status``). Fast where nothing is to be scrubbed, the usual case: the texts
    are joined (on NUL, which no pattern or secret holds) and scrubbed once; only when that
    changes something is each view (and then each text) scrubbed alone, so the result is
    exactly what scrubbing every text alone gives."""
    joined = "\x00".join(t for v in views for t in _texts(v))
    if scrub.text(joined) == joined:
        return tuple(views)
    return tuple(_scrub_view(v) for v in views)


# ------------------------------------------------------------------ filters


@dataclass(frozen=True)
class Filters:
    """The overview's filters, from the query string (``?state=failed&label=team=a``)."""

    state: str = ""
    #: ``key`` (the label is set) or ``key=value``
    label: str = ""
    #: a part of the name
    name: str = ""

    @classmethod
    def of(cls, query: Mapping[str, str]) -> Filters:
        """The filters of a query string; an unknown state is no filter."""
        state = query.get("state", "").strip()
        return cls(state=state if state in STATES else "",
                   label=query.get("label", "").strip()[:200],
                   name=query.get("name", "").strip()[:200])

    @property
    def active(self) -> bool:
        return bool(self.state or self.label or self.name)

    def keeps(self, row: StatusRow, command: ServiceCommand | None) -> bool:
        if self.state and row.state != self.state:
            return False
        if self.name and self.name.lower() not in row.name.lower():
            return False
        if self.label:
            labels = command.labels if command is not None else {}
            key, sep, value = self.label.partition("=")
            key, value = key.strip(), value.strip()
            if key not in labels or (sep and labels[key] != value):
                return False
        return True

    def query(self, **changed: str) -> str:
        """The query string of these filters with ``changed`` ones replaced."""
        values = {"state": self.state, "label": self.label, "name": self.name, **changed}
        kept = {k: v for k, v in values.items() if v}
        return "?" + urlencode(kept) if kept else ""


# ------------------------------------------------------------------ the page


@dataclass(frozen=True)
class SourceBanner:
    kind: str
    location: str
    revision: str
    revision_full: str
    last_fetch: str
    errors: int
    last_error: str


@dataclass(frozen=True)
class StateCount:
    state: str
    count: int
    href: str
    selected: bool


@dataclass(frozen=True)
class OverviewPage:
    title: str
    generated_at: str
    generated_iso: str
    #: the table (what the ``views`` of :func:`overview_page` made: a tuple, or the
    #: :class:`~reconciler.observe.web.render.Rendered` rows with their HTML and JSON)
    rows: Sequence[RowView]
    total: int
    counts: tuple[StateCount, ...]
    filters: Filters
    invalid: tuple[str, ...]
    source: SourceBanner | None
    withheld: str
    leadership: str
    leadership_kind: str
    revision: str
    chains: tuple[Layout, ...]
    chains_omitted: int

    def live(self) -> dict[str, Any]:
        """``/ui/overview.json`` but its ``rows`` (:func:`reconciler.observe.web.render.
        json_body` adds them: each row's :meth:`RowView.as_dict`): what the script updates.
        No moment of the request in it, so an unchanged state gives an unchanged document
        and ETag."""
        return {
            "total": self.total,
            "counts": {c.state: c.count for c in self.counts},
            "invalid": list(self.invalid), "withheld": self.withheld,
            "leadership": self.leadership, "leadershipKind": self.leadership_kind,
            "revision": self.revision,
            "source": asdict(self.source) if self.source is not None else None,
        }


def _source(source: Mapping[str, Any] | None) -> SourceBanner | None:
    if source is None:
        return None
    item = scrub.value(dict(source))
    last = item.get("lastSuccess")
    return SourceBanner(
        kind=str(item.get("kind") or ""), location=str(item.get("location") or ""),
        revision=short_revision(item.get("revision")),
        revision_full=str(item.get("revision") or ""),
        last_fetch=moment(datetime.fromisoformat(last)) if last else "never",
        errors=int(item.get("errors") or 0), last_error=str(item.get("lastError") or ""))


def _counts(rows: Iterable[StatusRow], filters: Filters) -> tuple[StateCount, ...]:
    found: dict[str, int] = {}
    for row in rows:
        found[row.state] = found.get(row.state, 0) + 1
    return tuple(StateCount(s, found[s], filters.query(state=s), s == filters.state)
                 for s in STATES if s in found)


def row_views(items: Sequence[RowInput]) -> tuple[RowView, ...]:
    """The scrubbed views of ``items`` (what :func:`overview_page` uses unless given a
    memo of them, :class:`reconciler.observe.web.render.Fragments`)."""
    return scrubbed([row_view(*item) for item in items])


def overview_page(facts: OverviewFacts, filters: Filters | None = None, *,
                  views: Callable[[Sequence[RowInput]], Sequence[RowView]] = row_views,
                  ) -> OverviewPage:
    """The overview of ``facts`` with ``filters`` applied to the table and the chains;
    ``views`` makes the rows' views (:func:`row_views`, or a memo of it)."""
    filters = filters or Filters()
    commands, states = facts.commands, facts.recorded
    kept = [r for r in facts.rows if filters.keeps(r, commands.get(r.name))]
    rows = views([(r, commands.get(r.name), states.get(r.name)) for r in kept])
    chains, omitted = overview_chains(
        {n: c.depends_on for n, c in commands.items()},
        {r.name: r.state for r in facts.rows}, shown={r.name for r in kept})
    return OverviewPage(
        title="ailake-reconciler — overview", generated_at=moment(facts.now),
        generated_iso=facts.now.astimezone(UTC).isoformat(), rows=rows,
        total=len(facts.rows), counts=_counts(facts.rows, filters), filters=filters,
        invalid=tuple(scrub.text(str(p)) for p in facts.problems),
        source=_source(facts.source), withheld=scrub.text(facts.withheld or ""),
        leadership=leadership_text(facts.leadership),
        leadership_kind=facts.leadership.value, revision=short_revision(facts.revision),
        chains=chains, chains_omitted=omitted)
