"""The metric interface of DESIGN section 7, pinned on a real scrape.

Every assertion reads ``Metrics(store).exposition()`` back through prometheus_client's own
text parser, so what is pinned is what Prometheus would ingest: names, types, label sets,
pre-initialised counters, per-manifest gauges built from the store at scrape time (no stale
series), the single revision series and the histogram buckets.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from observability_support import manifest, write_manifests
from prometheus_client.parser import text_string_to_metric_families

from reconciler.ailake.client import RequestRecord
from reconciler.execution.engine import Transition
from reconciler.model.lifecycle import (
    Accepted,
    Claimed,
    IntentState,
    ObservedFailed,
    ObservedSucceeded,
    Retired,
    transition,
)
from reconciler.model.manifest import LoadResult
from reconciler.observe import metrics as metrics_module
from reconciler.observe.metrics import Metrics
from reconciler.planning.planner import Plan, plan
from reconciler.source.loader import load_manifests
from reconciler.store.sqlite import Store
from reconciler.version import __version__

P = "ailake_reconciler_"

#: DESIGN section 7: metric -> (type, label names). The public interface users alert on.
DESIGN_METRICS: dict[str, tuple[str, frozenset[str]]] = {
    "reconcile_duration_seconds": ("histogram", frozenset()),
    "reconciles_total": ("counter", frozenset({"result"})),
    "intents": ("gauge", frozenset({"state"})),
    "invalid_manifests": ("gauge", frozenset()),
    "operations_total": ("counter", frozenset({"service", "command", "outcome"})),
    "operation_duration_seconds": ("histogram", frozenset({"service", "command"})),
    "command_failed": ("gauge", frozenset({"name", "service", "command"})),
    # beyond DESIGN section 7: lets the stalled alert name the manifest
    "command_stalled": ("gauge", frozenset({"name", "service", "command"})),
    # beyond DESIGN section 7: an accepted operation the server stopped showing
    "command_lost": ("gauge", frozenset({"name", "service", "command"})),
    "command_last_success_timestamp_seconds": ("gauge", frozenset({"name"})),
    "api_requests_total": ("counter", frozenset({"endpoint", "method", "code"})),
    "api_request_duration_seconds": ("histogram", frozenset({"endpoint"})),
    "last_successful_reconcile_timestamp_seconds": ("gauge", frozenset()),
    "source_last_success_timestamp_seconds": ("gauge", frozenset()),
    "source_revision_info": ("gauge", frozenset({"revision"})),
    # beyond DESIGN section 7: the source's health and the manifests that keep their state
    "source_errors_total": ("counter", frozenset()),
    "source_empty_withheld": ("gauge", frozenset()),
    "manifest_invalid": ("gauge", frozenset({"name", "file"})),
    "leader": ("gauge", frozenset()),
    "build_info": ("gauge", frozenset({"version"})),
}
INTENT_STATES = {"in_sync", "waiting", "submitting", "pending", "failed", "stalled",
                 "suspended", "orphaned", "lost", "invalid"}
OUTCOMES = {"succeeded", "failed", "timed_out", "lost"}
#: the four templated paths of the AI Lake API (spec/ailake-openapi.json)
ENDPOINTS = {
    ("/api/v1/ailake/services", "GET"),
    ("/api/v1/ailake/services/{serviceId}/status", "GET"),
    ("/api/v1/ailake/services/{serviceId}/commands/{commandName}/run", "POST"),
    ("/api/v1/ailake/operations/{operationId}", "GET"),
}
SVC_A = "6f1c2a4e-0000-4000-8000-00000000aaaa"
SVC_B = "6f1c2a4e-0000-4000-8000-00000000bbbb"
NOW = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
SECRET_PAYLOAD = "payload-marker-7f3e"
ERROR_TEXT = "disk quota exceeded on shard 17"

Samples = dict[str, list[tuple[dict[str, str], float]]]


# ---------------------------------------------------------------- scrape helpers


def scrape(metrics: Metrics) -> tuple[dict[str, str], Samples]:
    """(family name as exposed -> type, sample name -> [(labels, value)])."""
    text = metrics.exposition().decode()
    types: dict[str, str] = {}
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        exposed = family.name + "_total" if family.type == "counter" else family.name
        types[exposed] = family.type
        for s in family.samples:
            samples.setdefault(s.name, []).append((dict(s.labels), s.value))
    return types, samples


def series(samples: Samples, metric: str, /, **labels: str) -> list[float]:
    return [v for lbl, v in samples.get(P + metric, [])
            if all(lbl.get(k) == want for k, want in labels.items())]


def value(samples: Samples, metric: str, /, **labels: str) -> float:
    found = series(samples, metric, **labels)
    assert len(found) == 1, f"{metric}{labels}: expected one series, got {found}"
    return found[0]


def label_sets(samples: Samples, name: str) -> set[frozenset[str]]:
    base = P + name
    keys = set()
    for sample_name, rows in samples.items():
        if sample_name == base or sample_name in (base + "_bucket", base + "_sum",
                                                  base + "_count"):
            keys |= {frozenset(set(lbl) - {"le"}) for lbl, _ in rows}
    return keys


# ---------------------------------------------------------------- fixtures


def _docs(*names: str) -> list[dict[str, Any]]:
    table = {
        "alpha": manifest("alpha", SVC_A, "reindex", payload={"marker": SECRET_PAYLOAD}),
        "beta": manifest("beta", SVC_A, "backfill"),
        "gamma": manifest("gamma", SVC_B, "compact"),
        "delta": manifest("delta", SVC_B, "analyze"),
        "epsilon": manifest("epsilon", SVC_B, "export"),
    }
    return [table[n] for n in names]


def _load(tmp_path: Path, *names: str, folder: str = "m") -> LoadResult:
    directory = tmp_path / folder
    if directory.exists():
        for f in directory.iterdir():
            f.unlink()
    write_manifests(directory, _docs(*names))
    result = load_manifests(directory)
    assert not result.problems, result.problems
    return result


def _feed_load(metrics: Metrics, load: LoadResult, *, invalid: int = 0) -> None:
    metrics.loaded(((c.name, c.service.label, c.command) for c in load.commands),
                   invalid=invalid, revision=load.revision, now=NOW.timestamp())


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(tmp_path / "state.db")
    yield s
    s.close()


def _record(store: Store, current: Plan, name: str, status: str, *, at: datetime,
            attempt: int = 0) -> str:
    """Put the manifest's current intent in the store in ``status`` through the lifecycle's
    transitions (as the engine records them); its operation id."""
    want = current.desired[name]
    op = want.operation_id(attempt)

    def record(event: Any) -> None:
        store.save(transition(store.intent(want.spec_hash), event, at))

    rec = store.intent(want.spec_hash)
    if rec is None or rec.attempts <= attempt:  # else this attempt is under way already
        record(Claimed(want.new_intent(), attempt, op, want.command.service.label, "r1"))
    if status == "submitting":
        return op
    rec = store.intent(want.spec_hash)
    if rec is not None and rec.status == IntentState.SUBMITTING:
        record(Accepted(op, at + timedelta(seconds=1)))
    if status == "succeeded":
        record(ObservedSucceeded(op, {}))
    elif status in ("failed", "stalled"):
        retry_at = at + timedelta(minutes=1) if status == "failed" else None
        record(ObservedFailed(op, {"title": "Command failed", "detail": ERROR_TEXT}, retry_at))
    return op


def _retire(store: Store, spec_hash: str, *, why: str, at: datetime) -> None:
    """Retire one recorded intent (``orphaned`` or ``superseded``) as the engine does."""
    store.save(transition(store.intent(spec_hash), Retired(why), at))  # type: ignore[arg-type]


# ---------------------------------------------------------------- the interface


def test_every_design_metric_has_its_name_type_and_labels(tmp_path: Path,
                                                          store: Store) -> None:
    metrics = Metrics(store)
    load = _load(tmp_path, "alpha", "beta")
    _feed_load(metrics, load)
    current = plan(load.commands, store.intents(), NOW)
    _record(store, current, "alpha", "succeeded", at=NOW)
    _record(store, current, "beta", "failed", at=NOW)
    metrics.observe_request(RequestRecord("/api/v1/ailake/services", "GET", "200", 0.01))
    metrics.on_transition(Transition(
        name="alpha", service=SVC_A, command="reindex", spec_hash="h", state="succeeded",
        previous="pending", operation_id="op", attempt=0, revision="r1", duration=12.0,
        outcome="succeeded"))
    metrics.reconciled(plan(load.commands, store.intents(), NOW), duration=0.2, ok=True,
                       now=NOW.timestamp())
    metrics.leader.set(1)

    types, samples = scrape(metrics)
    ours = {name.removeprefix(P): kind for name, kind in types.items() if name.startswith(P)}
    assert ours == {name: kind for name, (kind, _) in DESIGN_METRICS.items()}
    assert set(types) == {P + n for n in ours}, "no metric outside the ailake_reconciler_ prefix"
    for name, (_, labels) in DESIGN_METRICS.items():
        if name == "manifest_invalid":  # a series only while a manifest is invalid
            assert label_sets(samples, name) <= {labels}, name
            continue
        assert label_sets(samples, name) == {labels}, name
    assert not any(n.endswith("_created") for n in samples), "created series are disabled"
    assert value(samples, "build_info", version=__version__) == 1
    assert value(samples, "leader") == 1


def test_counters_are_pre_initialised_at_zero(tmp_path: Path, store: Store) -> None:
    metrics = Metrics(store)
    _, samples = scrape(metrics)
    assert value(samples, "reconciles_total", result="success") == 0
    assert value(samples, "reconciles_total", result="error") == 0
    for endpoint, method in ENDPOINTS:
        rows = [(lbl, v) for lbl, v in samples[P + "api_requests_total"]
                if lbl["endpoint"] == endpoint and lbl["method"] == method]
        codes = {lbl["code"] for lbl, _ in rows}
        assert {"429", "503", "500", "error"} <= codes, (endpoint, codes)
        assert any(c.startswith("2") for c in codes), (endpoint, codes)
        assert all(v == 0 for _, v in rows)
    endpoints = {(lbl["endpoint"], lbl["method"]) for lbl, _ in samples[P + "api_requests_total"]}
    assert endpoints == ENDPOINTS
    assert {lbl["state"]: v for lbl, v in samples[P + "intents"]} == dict.fromkeys(
        INTENT_STATES, 0.0)

    load = _load(tmp_path, "alpha", "beta", "gamma")
    _feed_load(metrics, load)
    _, samples = scrape(metrics)
    pairs = {(SVC_A, "reindex"), (SVC_A, "backfill"), (SVC_B, "compact")}
    got = {(lbl["service"], lbl["command"], lbl["outcome"]): v
           for lbl, v in samples[P + "operations_total"]}
    assert got == {(s, c, o): 0.0 for s, c in pairs for o in OUTCOMES}
    # the histogram exists for every pair too, so rate()/histogram_quantile see it start
    assert {(lbl["service"], lbl["command"]) for lbl, _ in
            samples[P + "operation_duration_seconds_count"]} == pairs

    metrics.on_transition(Transition(
        name="beta", service=SVC_A, command="backfill", spec_hash="h", state="failed",
        previous="pending", operation_id="op", attempt=0, duration=30.0, outcome="failed"))
    metrics.on_transition(Transition(  # not terminal: not counted
        name="beta", service=SVC_A, command="backfill", spec_hash="h", state="submitting",
        previous="failed", operation_id="op2", attempt=1))
    _, samples = scrape(metrics)
    assert value(samples, "operations_total", service=SVC_A, command="backfill",
                 outcome="failed") == 1
    assert value(samples, "operations_total", service=SVC_A, command="backfill",
                 outcome="succeeded") == 0
    assert value(samples, "operation_duration_seconds_count", service=SVC_A,
                 command="backfill") == 1


def test_command_failed_and_last_success_come_from_the_store(tmp_path: Path,
                                                             store: Store) -> None:
    metrics = Metrics(store)
    load = _load(tmp_path, "alpha", "beta", "gamma", "delta", "epsilon")
    _feed_load(metrics, load)
    current = plan(load.commands, store.intents(), NOW)
    earlier = NOW - timedelta(hours=2)
    _record(store, current, "alpha", "succeeded", at=earlier)   # in sync
    _record(store, current, "beta", "failed", at=NOW)           # failed, retry scheduled
    _record(store, current, "gamma", "stalled", at=NOW)         # retries exhausted
    _record(store, current, "delta", "pending", at=NOW)         # running
    # epsilon: never recorded

    _, samples = scrape(metrics)
    failed = {lbl["name"]: (lbl["service"], lbl["command"], v)
              for lbl, v in samples[P + "command_failed"]}
    assert failed == {
        "alpha": (SVC_A, "reindex", 0.0),
        "beta": (SVC_A, "backfill", 1.0),
        "gamma": (SVC_B, "compact", 1.0),
        "delta": (SVC_B, "analyze", 0.0),
        "epsilon": (SVC_B, "export", 0.0),
    }
    last = {lbl["name"]: v for lbl, v in samples[P + "command_last_success_timestamp_seconds"]}
    assert last == {"alpha": pytest.approx(earlier.timestamp())}

    # a failed intent retried successfully: back to 0, and the success time moves
    later = NOW + timedelta(minutes=5)
    _record(store, current, "beta", "succeeded", at=later, attempt=1)
    _, samples = scrape(metrics)
    assert value(samples, "command_failed", name="beta") == 0
    assert value(samples, "command_last_success_timestamp_seconds",
                 name="beta") == pytest.approx(later.timestamp())

    # a changed spec supersedes the stalled intent: the old failure is history, not current
    _retire(store, current.desired["gamma"].spec_hash, why="superseded", at=later)
    _, samples = scrape(metrics)
    assert value(samples, "command_failed", name="gamma") == 0


def test_command_stalled_is_one_only_for_stalled_manifests(tmp_path: Path,
                                                           store: Store) -> None:
    metrics = Metrics(store)
    load = _load(tmp_path, "alpha", "beta", "gamma")
    _feed_load(metrics, load)
    current = plan(load.commands, store.intents(), NOW)
    _record(store, current, "alpha", "succeeded", at=NOW)
    _record(store, current, "beta", "failed", at=NOW)   # retry scheduled: not stalled
    _record(store, current, "gamma", "stalled", at=NOW)
    _, samples = scrape(metrics)
    stalled = {lbl["name"]: v for lbl, v in samples[P + "command_stalled"]}
    assert stalled == {"alpha": 0.0, "beta": 0.0, "gamma": 1.0}


def test_command_failed_stays_up_while_a_retry_runs(tmp_path: Path, store: Store) -> None:
    metrics = Metrics(store)
    load = _load(tmp_path, "alpha")
    _feed_load(metrics, load)
    current = plan(load.commands, store.intents(), NOW)
    _record(store, current, "alpha", "failed", at=NOW)
    _record(store, current, "alpha", "pending", at=NOW + timedelta(minutes=1), attempt=1)
    _, samples = scrape(metrics)
    assert value(samples, "command_failed", name="alpha") == 1

    _record(store, current, "alpha", "succeeded", at=NOW + timedelta(minutes=2), attempt=1)
    _, samples = scrape(metrics)
    assert value(samples, "command_failed", name="alpha") == 0


def test_removed_manifest_leaves_no_stale_series(tmp_path: Path, store: Store) -> None:
    metrics = Metrics(store)
    load = _load(tmp_path, "alpha", "beta")
    _feed_load(metrics, load)
    current = plan(load.commands, store.intents(), NOW)
    _record(store, current, "alpha", "succeeded", at=NOW)
    _record(store, current, "beta", "stalled", at=NOW)
    _, samples = scrape(metrics)
    assert {lbl["name"] for lbl, _ in samples[P + "command_failed"]} == {"alpha", "beta"}

    # beta removed from the source (its records are still in the store, not yet orphaned)
    _feed_load(metrics, _load(tmp_path, "alpha"))
    _, samples = scrape(metrics)
    assert {lbl["name"] for lbl, _ in samples[P + "command_failed"]} == {"alpha"}
    assert {lbl["name"] for lbl, _ in
            samples[P + "command_last_success_timestamp_seconds"]} == {"alpha"}

    # alpha removed too, and retired as orphaned: both families are empty
    _retire(store, current.desired["alpha"].spec_hash, why="orphaned", at=NOW)
    metrics.loaded((), invalid=0, revision="empty", now=NOW.timestamp())
    _, samples = scrape(metrics)
    assert P + "command_failed" not in samples
    assert P + "command_last_success_timestamp_seconds" not in samples


def test_source_revision_info_has_exactly_one_series(tmp_path: Path, store: Store) -> None:
    metrics = Metrics(store)
    first = _load(tmp_path, "alpha")
    _feed_load(metrics, first, invalid=2)
    _, samples = scrape(metrics)
    assert samples[P + "source_revision_info"] == [({"revision": first.revision}, 1.0)]
    assert value(samples, "invalid_manifests") == 2
    assert value(samples, "source_last_success_timestamp_seconds") == NOW.timestamp()

    second = _load(tmp_path, "alpha", "beta")
    assert second.revision != first.revision
    _feed_load(metrics, second)
    _feed_load(metrics, second)  # the same revision again: still one series
    _, samples = scrape(metrics)
    assert samples[P + "source_revision_info"] == [({"revision": second.revision}, 1.0)]
    assert value(samples, "invalid_manifests") == 0


def test_intent_states_are_the_enum_in_the_gauges_order() -> None:
    """The ``intents`` gauge's states come from :class:`IntentState` (every member, once),
    in the order its series have always been created (the exposition's order)."""
    assert set(metrics_module.INTENT_STATES) == set(IntentState)
    assert all(isinstance(s, IntentState) for s in metrics_module.INTENT_STATES)
    assert list(metrics_module.INTENT_STATES) == [
        "in_sync", "waiting", "submitting", "pending", "failed", "stalled", "suspended",
        "orphaned", "lost", "invalid"]
    _, samples = scrape(Metrics())
    assert [lbl["state"] for lbl, _ in samples[P + "intents"]] == list(
        metrics_module.INTENT_STATES)


def test_reconciled_sets_state_counts_and_timestamps(tmp_path: Path, store: Store) -> None:
    metrics = Metrics(store)
    load = _load(tmp_path, "alpha", "beta", "gamma")
    _feed_load(metrics, load)
    current = plan(load.commands, store.intents(), NOW)
    _record(store, current, "alpha", "succeeded", at=NOW)
    _record(store, current, "beta", "stalled", at=NOW)
    metrics.reconciled(plan(load.commands, store.intents(), NOW), duration=0.3, ok=True,
                       orphaned=1, now=NOW.timestamp())
    _, samples = scrape(metrics)
    states = {lbl["state"]: v for lbl, v in samples[P + "intents"]}
    assert set(states) == INTENT_STATES
    assert states["in_sync"] == 1 and states["stalled"] == 1 and states["orphaned"] == 1
    assert sum(states.values()) == 4
    assert value(samples, "reconciles_total", result="success") == 1
    assert value(samples, "last_successful_reconcile_timestamp_seconds") == NOW.timestamp()
    assert value(samples, "reconcile_duration_seconds_count") == 1

    metrics.reconciled(None, duration=0.1, ok=False, now=NOW.timestamp() + 60)
    _, samples = scrape(metrics)
    assert value(samples, "reconciles_total", result="error") == 1
    # a failed pass neither moves the success time nor forgets the last known states
    assert value(samples, "last_successful_reconcile_timestamp_seconds") == NOW.timestamp()
    assert value(samples, "intents", state="stalled") == 1


def test_label_values_are_bounded_by_the_manifests(tmp_path: Path, store: Store) -> None:
    """Never an operation id, a payload or an error text as a label value."""
    metrics = Metrics(store)
    load = _load(tmp_path, "alpha", "beta")
    _feed_load(metrics, load)
    current = plan(load.commands, store.intents(), NOW)
    op_ok = _record(store, current, "alpha", "succeeded", at=NOW)
    op_bad = _record(store, current, "beta", "failed", at=NOW)
    for code in ("202", "503", "429", "error"):
        metrics.observe_request(RequestRecord(
            "/api/v1/ailake/services/{serviceId}/commands/{commandName}/run", "POST", code,
            0.05))
    metrics.observe_request(RequestRecord(
        "/api/v1/ailake/operations/{operationId}", "GET", "404", 0.01))
    metrics.on_transition(Transition(
        name="beta", service=SVC_A, command="backfill", spec_hash="h", state="failed",
        previous="pending", operation_id=op_bad, attempt=0, revision=load.revision,
        duration=5.0, outcome="failed",
        error={"title": "Command failed", "detail": ERROR_TEXT, "traceId": "trace-123"},
        reason="retry at 12:01"))
    metrics.reconciled(plan(load.commands, store.intents(), NOW), duration=0.2, ok=True)

    text = metrics.exposition().decode()
    for forbidden in (op_ok, op_bad, SECRET_PAYLOAD, ERROR_TEXT, "trace-123", "retry at"):
        assert forbidden not in text
    allowed = {
        "name": {"alpha", "beta"}, "service": {SVC_A}, "command": {"reindex", "backfill"},
        "outcome": OUTCOMES, "state": INTENT_STATES, "result": {"success", "error"},
        "endpoint": {e for e, _ in ENDPOINTS}, "method": {"GET", "POST"},
        "revision": {load.revision}, "version": {__version__},
        "file": {c.file for c in load.commands},
    }
    _, samples = scrape(metrics)
    for name, rows in samples.items():
        for labels, _ in rows:
            for key, val in labels.items():
                if key == "le":
                    continue
                if key == "code":
                    assert re.fullmatch(r"[1-5][0-9][0-9]|error", val), (name, val)
                    continue
                assert val in allowed[key], (name, key, val)


def test_operation_duration_buckets_span_seconds_to_a_day(store: Store) -> None:
    metrics = Metrics(store)
    metrics.loaded([("alpha", SVC_A, "reindex")], invalid=0, revision="r")
    _, samples = scrape(metrics)
    bounds = sorted(float(lbl["le"]) for lbl, _ in
                    samples[P + "operation_duration_seconds_bucket"]
                    if lbl["le"] != "+Inf")
    assert bounds[0] <= 1.0, bounds
    assert bounds[-1] >= 24 * 3600, bounds
    assert len(bounds) >= 10, "enough resolution between seconds and hours"
    for mark in (10, 60, 600, 3600):  # a boundary within each decade of interest
        assert any(mark / 3.5 <= b <= mark * 3.5 for b in bounds), (mark, bounds)

    # an operation of 3 hours lands in a finite bucket, not only +Inf
    metrics.on_transition(Transition(
        name="alpha", service=SVC_A, command="reindex", spec_hash="h", state="succeeded",
        previous="pending", duration=3 * 3600.0, outcome="succeeded"))
    _, samples = scrape(metrics)
    finite = [v for lbl, v in samples[P + "operation_duration_seconds_bucket"]
              if lbl["le"] != "+Inf" and float(lbl["le"]) < 24 * 3600]
    assert max(finite) == 1


def test_a_scrape_sees_what_another_connection_recorded_since_the_last(
        tmp_path: Path, store: Store) -> None:
    metrics = Metrics(store)
    load = _load(tmp_path, "alpha")
    _feed_load(metrics, load)
    current = plan(load.commands, store.intents(), NOW)
    _, samples = scrape(metrics)
    assert value(samples, "command_failed", name="alpha") == 0
    with Store(tmp_path / "state.db") as other:  # e.g. `reconciler retry`, another process
        _record(other, current, "alpha", "stalled", at=NOW)
    _, samples = scrape(metrics)
    assert value(samples, "command_stalled", name="alpha") == 1


def test_an_unchanged_store_and_load_is_scraped_from_the_kept_text(
        tmp_path: Path, store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    metrics = Metrics(store)
    _feed_load(metrics, _load(tmp_path, "alpha", "beta"))
    first = metrics.exposition()
    monkeypatch.setattr(store, "intents", lambda **_: pytest.fail("read again"))
    _feed_load(metrics, _load(tmp_path, "alpha", "beta"))  # the same manifests again
    assert metrics.exposition() == first
