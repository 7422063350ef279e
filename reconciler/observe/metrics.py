"""Prometheus metrics (prefix ``ailake_reconciler_``): a public interface, DESIGN section 7.

Users' alerts depend on these names and labels; ``tests/test_metrics.py`` pins them.
Per-manifest gauges (``command_failed``, ``command_last_success_timestamp_seconds``) are
built from the state store at scrape time by :class:`StoreCollector`, so a removed
manifest's series vanish instead of going stale. Counters are created at zero for every
label set known in advance, so ``increase()`` sees the first failure. Label values come
from manifests only: never operation ids, payloads or error texts.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import prometheus_client
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.utils import floatToGoString

from reconciler.ailake.client import RequestRecord
from reconciler.execution.engine import Transition
from reconciler.model.lifecycle import SETTLED_BAD, IntentState, OperationStatus
from reconciler.planning.planner import Plan
from reconciler.source.kinds import SourceStatus
from reconciler.store import StateStore as Store
from reconciler.version import __version__

__all__ = ["INTENT_STATES", "PREFIX", "Metrics", "per_manifest_text"]

prometheus_client.disable_created_metrics()  # type: ignore[no-untyped-call]

PREFIX = "ailake_reconciler_"
#: every state of the ``intents`` gauge, in the order its series are created
INTENT_STATES: tuple[IntentState, ...] = (
    IntentState.IN_SYNC, IntentState.WAITING, IntentState.SUBMITTING, IntentState.PENDING,
    IntentState.FAILED, IntentState.STALLED, IntentState.SUSPENDED, IntentState.ORPHANED,
    IntentState.LOST, IntentState.INVALID,
)
OUTCOMES: tuple[OperationStatus, ...] = (
    OperationStatus.SUCCEEDED, OperationStatus.FAILED, OperationStatus.TIMED_OUT,
    OperationStatus.LOST,
)
ENDPOINTS = {
    ("/api/v1/ailake/services", "GET"): ("200",),
    ("/api/v1/ailake/services/{serviceId}/status", "GET"): ("200",),
    ("/api/v1/ailake/services/{serviceId}/commands/{commandName}/run", "POST"): ("202",),
    ("/api/v1/ailake/operations/{operationId}", "GET"): ("200", "404"),
}
#: codes every endpoint starts at zero with, so error-ratio alerts see the first error
PREINIT_CODES = ("429", "500", "503", "error")

#: seconds to hours: AI Lake operations run from seconds (reindex) to hours (backfills)
OPERATION_BUCKETS = (1, 2, 5, 10, 30, 60, 120, 300, 600, 1200, 1800, 3600, 7200, 14400,
                     28800, 86400)
RECONCILE_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
API_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


@dataclass(frozen=True)
class _Known:
    service: str
    command: str


#: the per-manifest families and their help texts
_PER_MANIFEST_HELP = {
    "command_failed": "1 while the manifest's current intent has its last finished attempt "
                      "failed (retrying or stalled); 0 once an attempt succeeds.",
    "command_stalled": "1 while the manifest's current intent is stalled: retries "
                       "exhausted, timed out or refused; nothing more is tried until a "
                       "change or 'reconciler retry'.",
    "command_lost": "1 while the manifest's current intent is lost: the server accepted its "
                    "operation, then stopped showing it past the not-found tolerance; it is "
                    "never sent again without 'reconciler retry'.",
    "command_last_success_timestamp_seconds": "Unix time of the manifest's last succeeded "
                                              "operation (any spec or window).",
}


def _go_float(value: float) -> str:
    text: str = floatToGoString(value)  # type: ignore[no-untyped-call]
    return text


def _label(value: str) -> str:
    """A label value as the text format escapes it (as ``prometheus_client`` does)."""
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r'\"')


def per_manifest_text(known: Mapping[str, _Known], store: Store) -> bytes:
    """``command_failed``, ``command_stalled``, ``command_lost`` and
    ``command_last_success_timestamp_seconds`` of the manifests loaded, from one store
    read, in the text format ``prometheus_client`` writes (written directly: its sample
    objects cost tens of MB at 10,000 manifests, four series each)."""
    flags, stamp = _store_facts(known, store) if known else ({}, {})
    families: dict[str, list[str]] = {family: [] for family in _PER_MANIFEST_HELP}
    failed, stalled, lost, success = families.values()
    for name in sorted(known):
        k = known[name]
        is_failed, state = flags.get(name, (False, None))
        labels = (f'{{command="{_label(k.command)}",name="{_label(name)}",'
                  f'service="{_label(k.service)}"}} ')
        failed.append(f"{PREFIX}command_failed{labels}{1.0 if is_failed else 0.0}\n")
        stalled.append(f"{PREFIX}command_stalled{labels}"
                       f"{1.0 if state == IntentState.STALLED else 0.0}\n")
        lost.append(f"{PREFIX}command_lost{labels}"
                    f"{1.0 if state == IntentState.LOST else 0.0}\n")
        if name in stamp:
            success.append(f'{PREFIX}command_last_success_timestamp_seconds{{name="'
                           f'{_label(name)}"}} {_go_float(stamp[name])}\n')
    out: list[str] = []
    for family, lines in families.items():
        text = _PER_MANIFEST_HELP[family].replace("\\", r"\\").replace("\n", r"\n")
        out.append(f"# HELP {PREFIX}{family} {text}\n# TYPE {PREFIX}{family} gauge\n")
        out.extend(lines)
    return "".join(out).encode()


def _store_facts(known: Mapping[str, _Known], store: Store,
                 ) -> tuple[dict[str, tuple[bool, IntentState]], dict[str, float]]:
    """One store read: (failed, state) of every known name's current intent, and the
    Unix time of its last success (any spec or window)."""
    flags: dict[str, tuple[bool, IntentState]] = {}
    stamp: dict[str, float] = {}
    order: dict[str, float] = {}
    for rec in store.intents(include_retired=True).values():
        if rec.name not in known:
            continue
        if rec.succeeded_at is not None:
            stamp[rec.name] = max(stamp.get(rec.name, 0.0), rec.succeeded_at.timestamp())
        if rec.retired is None and rec.updated_at.timestamp() >= order.get(
                rec.name, float("-inf")):
            order[rec.name] = rec.updated_at.timestamp()
            # A retry in flight does not clear the failure: the alert stays up
            # until an attempt succeeds, instead of flapping with every retry.
            retrying = rec.in_flight and rec.attempts > 1
            flags[rec.name] = (retrying or rec.status in SETTLED_BAD, rec.status)
    return flags, stamp


class Metrics:
    """Every metric of the reconciler, in its own registry."""

    def __init__(self, store: Store | None = None, *,
                 registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.known: Mapping[str, _Known] = {}
        r = self.registry
        self.reconcile_duration = Histogram(
            PREFIX + "reconcile_duration_seconds", "Time one reconcile pass took.",
            buckets=RECONCILE_BUCKETS, registry=r)
        self.reconciles = Counter(
            PREFIX + "reconciles_total", "Reconcile passes, by result.", ["result"], registry=r)
        self.intents = Gauge(
            PREFIX + "intents", "Manifests by state of their current intent.", ["state"],
            registry=r)
        self.invalid_manifests = Gauge(
            PREFIX + "invalid_manifests", "Manifest documents that failed validation.",
            registry=r)
        self.operations = Counter(
            PREFIX + "operations_total", "Operations that reached an end, by outcome.",
            ["service", "command", "outcome"], registry=r)
        self.operation_duration = Histogram(
            PREFIX + "operation_duration_seconds",
            "Time from an operation's submission to its end.", ["service", "command"],
            buckets=OPERATION_BUCKETS, registry=r)
        self.api_requests = Counter(
            PREFIX + "api_requests_total", "AI Lake API requests, by templated endpoint, "
            "method and status code ('error': no response).", ["endpoint", "method", "code"],
            registry=r)
        self.api_duration = Histogram(
            PREFIX + "api_request_duration_seconds", "AI Lake API request latency.",
            ["endpoint"], buckets=API_BUCKETS, registry=r)
        self.last_success = Gauge(
            PREFIX + "last_successful_reconcile_timestamp_seconds",
            "Unix time of the last reconcile pass that completed without error.", registry=r)
        self.source_last_success = Gauge(
            PREFIX + "source_last_success_timestamp_seconds",
            "Unix time the manifest source was last read successfully.", registry=r)
        self.source_revision = Gauge(
            PREFIX + "source_revision_info", "The manifest revision in use (one series).",
            ["revision"], registry=r)
        self.source_errors = Counter(
            PREFIX + "source_errors",
            "Failed reads of the manifest source: git fetches that failed (the last good "
            "tree is kept), or loads of a missing directory.", registry=r)
        self.manifest_invalid = Gauge(
            PREFIX + "manifest_invalid",
            "1 per manifest whose document fails validation (or whose file cannot be "
            "parsed): its last valid intent keeps its state, nothing new is sent for it.",
            ["name", "file"], registry=r)
        self.source_empty_withheld = Gauge(
            PREFIX + "source_empty_withheld",
            "1 while the source has no manifests where the last good one had some, and "
            "orphaning them is withheld (--allow-empty accepts an empty source).",
            registry=r)
        self.leader = Gauge(
            PREFIX + "leader", "1 while this replica reconciles (is the leader).", registry=r)
        self.build_info = Gauge(
            PREFIX + "build_info", "Version of the running reconciler.", ["version"],
            registry=r)
        self._preinit()
        self._revision: str | None = None
        self._source_errors_seen = 0
        self.store = store
        #: the per-manifest families' text is kept (:meth:`exposition`) until the store
        #: or the loaded manifests change
        self._known_changes = 0
        self._rendered: tuple[object, bytes] | None = None

    def _preinit(self) -> None:
        """Every series known in advance, at zero (so ``increase()`` sees the first one)."""
        self.build_info.labels(version=__version__).set(1)
        for result in ("success", "error"):
            self.reconciles.labels(result=result)
        for state in INTENT_STATES:
            self.intents.labels(state=state).set(0)
        for (endpoint, method), codes in ENDPOINTS.items():
            self.api_duration.labels(endpoint=endpoint)
            for code in (*codes, *PREINIT_CODES):
                self.api_requests.labels(endpoint=endpoint, method=method, code=code)

    # ------------------------------------------------------------------ feeds

    def observe_request(self, record: RequestRecord) -> None:
        """The client's observer: one call per HTTP attempt."""
        self.api_requests.labels(endpoint=record.endpoint, method=record.method,
                                 code=record.code).inc()
        self.api_duration.labels(endpoint=record.endpoint).observe(record.duration)

    def on_transition(self, event: Transition) -> None:
        """The engine's listener: count operations that reached an end."""
        if event.outcome is None:
            return
        self.operations.labels(service=event.service, command=event.command,
                               outcome=event.outcome).inc()
        if event.duration is not None:
            self.operation_duration.labels(service=event.service,
                                           command=event.command).observe(event.duration)

    def loaded(self, commands: Iterable[tuple[str, str, str]], *, invalid: int,
               revision: str, now: float | None = None,
               invalid_names: Mapping[str, str] | None = None,
               empty_withheld: bool = False, source: SourceStatus | None = None) -> None:
        """A manifest load finished: (name, service, command) of every manifest whose
        state is reported (the valid ones, and the held ones that have a record).

        ``invalid_names``: name -> file of every manifest shown ``invalid`` (the
        ``manifest_invalid`` series; the others vanish). ``source``: the source's status,
        for its freshness and error count; without it the source counts as read ``now``.
        """
        known = {name: _Known(service, command) for name, service, command in commands}
        if known != self.known:
            self.known = known
            self._known_changes += 1
        for service, command in {(k.service, k.command) for k in self.known.values()}:
            for outcome in OUTCOMES:
                self.operations.labels(service=service, command=command, outcome=outcome)
            self.operation_duration.labels(service=service, command=command)
        self.invalid_manifests.set(invalid)
        self.manifest_invalid.clear()
        for name, file in sorted((invalid_names or {}).items()):
            self.manifest_invalid.labels(name=name, file=file).set(1)
        self.source_empty_withheld.set(1 if empty_withheld else 0)
        if source is None:
            self.source_last_success.set(now if now is not None else time.time())
        else:
            self.source_seen(source)
        if revision != self._revision:
            self.source_revision.clear()
            self.source_revision.labels(revision=revision).set(1)
            self._revision = revision

    def source_seen(self, status: SourceStatus) -> None:
        """The source's status now: its last success (when it had one) and the errors
        counted since the last look (the counter grows by the difference)."""
        if status.last_success is not None:
            self.source_last_success.set(status.last_success)
        if status.errors > self._source_errors_seen:
            self.source_errors.inc(status.errors - self._source_errors_seen)
        self._source_errors_seen = max(self._source_errors_seen, status.errors)

    def reconciled(self, plan: Plan | None, *, duration: float, ok: bool,
                   orphaned: int = 0, now: float | None = None) -> None:
        """A reconcile pass finished (``plan`` None when it failed before planning)."""
        self.reconcile_duration.observe(duration)
        self.reconciles.labels(result="success" if ok else "error").inc()
        if ok:
            self.last_success.set(now if now is not None else time.time())
        if plan is not None:
            counts: dict[str, int] = dict.fromkeys(INTENT_STATES, 0)
            for view in plan.views:
                counts[view.state] += 1
            counts[IntentState.ORPHANED] = max(counts[IntentState.ORPHANED], orphaned)
            for state, count in counts.items():
                self.intents.labels(state=state).set(count)

    def exposition(self) -> bytes:
        """The text of every metric. The per-manifest families (four series per manifest)
        are rendered again only when the store or the loaded manifests changed since."""
        return prometheus_client.generate_latest(self.registry) + self._per_manifest_text()

    def _per_manifest_text(self) -> bytes:
        generation = self.store.generation() if self.store is not None else None
        key = (generation, self._known_changes)
        if generation is not None and self._rendered is not None and self._rendered[0] == key:
            return self._rendered[1]
        if self.store is None:
            return b""
        self._rendered = None  # the old text is not kept while the new one is made
        text = per_manifest_text(self.known, self.store)
        self._rendered = (key, text)
        return text
