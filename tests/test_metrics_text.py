"""The per-manifest families are written as text directly (``prometheus_client``'s sample
objects cost tens of MB at 10,000 manifests): the text is byte for byte what
``prometheus_client`` writes for the same families, escaping included."""

from __future__ import annotations

from dataclasses import replace

import prometheus_client
from plan_support import T0, command, failed, in_sync, minutes, stalled
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from reconciler.model.records import IntentRecord
from reconciler.observe.metrics import _PER_MANIFEST_HELP, PREFIX, _Known, per_manifest_text


class Records:
    def __init__(self, *records: IntentRecord) -> None:
        self.records = {r.spec_hash: r for r in records}

    def intents(self, *, include_retired: bool = False) -> dict[str, IntentRecord]:
        return dict(self.records)


class Reference(Collector):
    """The same families through prometheus_client."""

    def __init__(self, rows: list[tuple[str, str, str, float, float, float, float | None]]):
        self.rows = rows

    def collect(self):  # type: ignore[no-untyped-def]
        names = list(_PER_MANIFEST_HELP)
        families = [GaugeMetricFamily(PREFIX + n, _PER_MANIFEST_HELP[n],
                                      labels=["name", "service", "command"] if i < 3
                                      else ["name"]) for i, n in enumerate(names)]
        for name, service, cmd, is_failed, is_stalled, is_lost, stamp in self.rows:
            families[0].add_metric([name, service, cmd], is_failed)
            families[1].add_metric([name, service, cmd], is_stalled)
            families[2].add_metric([name, service, cmd], is_lost)
            if stamp is not None:
                families[3].add_metric([name], stamp)
        yield from families


def test_the_text_is_what_prometheus_client_writes() -> None:
    ok, bad, stuck = command("ok"), command("bad"), command("stuck")
    records = Records(replace(in_sync(ok, at=T0), succeeded_at=T0),
                      failed(bad, at=T0, retry_at=T0 + minutes(1)), stalled(stuck, at=T0))
    known = {"ok": _Known('we"ird\\svc', "re\nindex"), "bad": _Known("svc", "reindex"),
             "stuck": _Known("svc", "reindex"), "never": _Known("svc", "reindex")}
    reference = prometheus_client.CollectorRegistry(auto_describe=False)
    reference.register(Reference([
        ("bad", "svc", "reindex", 1.0, 0.0, 0.0, None),
        ("never", "svc", "reindex", 0.0, 0.0, 0.0, None),
        ("ok", 'we"ird\\svc', "re\nindex", 0.0, 0.0, 0.0, T0.timestamp()),
        ("stuck", "svc", "reindex", 1.0, 1.0, 0.0, None),
    ]))
    assert per_manifest_text(known, records) == prometheus_client.generate_latest(reference)


def test_no_manifest_loaded_writes_the_families_without_samples() -> None:
    text = per_manifest_text({}, Records()).decode()
    assert text.count("# TYPE ") == 4
    assert "} " not in text
