"""The web view without a browser: the pure page builders (rows, scrubbing, filters, the
dependency-chain layout, one manifest's page, the row memo) and the HTTP answers of a real
daemon (in-process, against the emulator) serving the scene of ``tests/web_support.py``.

The browser tests are ``tests/test_web_view.py``.
"""

from __future__ import annotations

import json
import re
import shlex
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from integration_support import daemon_settings
from starlette.applications import Starlette
from web_support import (
    BEARER,
    SETTLED,
    TOKEN,
    ThreadedDaemon,
    emulator,
    threaded_daemon,
    wait_settled,
    write_scene,
)

from reconciler.ailake.emulator import RunningEmulator
from reconciler.cli import retry as retry_cli
from reconciler.cli.main import build_parser
from reconciler.cli.settings import daemon_settings as cli_daemon_settings
from reconciler.errors import Problem
from reconciler.model import scrub
from reconciler.model.manifest import ServiceCommand, ServiceRef
from reconciler.observe.status import Progress, StatusRow
from reconciler.observe.web import CSP, ManifestFacts, OverviewFacts, WebSurface, web_routes
from reconciler.observe.web.graph import (
    MAX_OVERVIEW_NODES,
    NODE_H,
    NODE_W,
    chain_of,
    layout,
    overview_chains,
)
from reconciler.observe.web.manifest_page import manifest_page
from reconciler.observe.web.pages import Filters, overview_page, row_view, scrubbed
from reconciler.observe.web.render import Fragments, json_body
from reconciler.observe.web.routes import environment

NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
STATIC = Path(__file__).resolve().parents[1] / "reconciler" / "observe" / "web" / "static"


def command(name: str, **fields: Any) -> ServiceCommand:
    return ServiceCommand(name=name, service=ServiceRef(id="svc"), command="reindex", **fields)


@pytest.fixture
def registered_secret() -> Iterator[str]:
    """A secret registered with the scrubber for one test (the registry is restored)."""
    before = scrub.registered()
    scrub.register("web-secret-9d8e7f")
    yield "web-secret-9d8e7f"
    scrub.clear()
    scrub.register(*before)


# ---------------------------------------------------------------- rows


def test_rows_say_state_outcome_attempt_and_progress_in_words() -> None:
    pending = StatusRow(
        "reindex", "pending", service="svc", command="reindex", spec_hash="h1", attempts=2,
        operation_id="op-2", revision="a" * 40,
        progress=Progress(2, NOW - timedelta(seconds=75), 75.0,
                          NOW + timedelta(minutes=45), 2700.0, None))
    view = row_view(pending, command("reindex"), "pending")
    assert (view.state, view.attempt, view.elapsed, view.deadline) == ("pending", "2",
                                                                       "1m15s", "in 45m")
    assert view.outcome == "attempt 1 failed"
    assert view.revision == "a" * 12 and view.revision_full == "a" * 40
    assert view.started_at == (NOW - timedelta(seconds=75)).isoformat()
    # the live JSON leaves the moving texts to the script (an unchanged state: same ETag)
    assert view.as_dict()["elapsed"] == "" and view.as_dict()["deadline"] == ""

    done = row_view(StatusRow("a", "in_sync", spec_hash="h", attempts=1), None, "in_sync")
    assert done.outcome == "succeeded" and done.attempt == "1"
    timed_out = row_view(StatusRow("b", "stalled", spec_hash="h", attempts=1,
                                   error={"title": "Timed out", "detail": "30m"}),
                         None, "stalled")
    assert (timed_out.outcome, timed_out.error, timed_out.error_detail) == (
        "timed out", "Timed out", "30m")
    never = row_view(StatusRow("c", "waiting", "waiting for dependency 'a' (pending)"),
                     command("c", labels={"team": "data"}), None)
    assert (never.attempt, never.outcome, never.elapsed) == ("—", "—", "—")
    assert never.labels == ("team=data",) and never.policy == "once"
    assert never.reason == "waiting for dependency 'a' (pending)"


def test_scrubbed_views_are_what_scrubbing_each_text_alone_gives(registered_secret: str) -> None:
    leaky = row_view(StatusRow("leaky", "stalled", spec_hash="h", attempts=1, error={
        "title": "Refused", "detail": f"Authorization: {BEARER} and {registered_secret}"}),
        None, "stalled")
    reason = row_view(StatusRow("why", "failed", f"token {registered_secret} rejected"), None)
    clean = row_view(StatusRow("clean", "in_sync", spec_hash="h", attempts=1), None, "in_sync")
    out = scrubbed([leaky, reason, clean])
    assert out[2] is clean  # nothing to scrub: the same view
    for before, after in zip((leaky, reason), out[:2], strict=True):
        for field, value in vars(before).items():
            expected = scrub.text(value) if isinstance(value, str) else value
            if field != "labels":
                assert getattr(after, field) == expected, field
    assert registered_secret not in out[0].error_detail and "abc123def456" not in \
        out[0].error_detail
    assert scrub.REDACTED in out[0].error_detail and scrub.REDACTED in out[1].reason
    assert all(a is b for a, b in zip(scrubbed([clean, clean]), [clean, clean], strict=True))


def test_filters_by_state_label_and_name() -> None:
    rows = [StatusRow("provision-db", "in_sync"), StatusRow("flaky-refresh", "failed"),
            StatusRow("gone", "orphaned")]
    commands = {"provision-db": command("provision-db", labels={"team": "data"}),
                "flaky-refresh": command("flaky-refresh", labels={"team": "ops"})}

    def kept(**query: str) -> list[str]:
        f = Filters.of(query)
        return [r.name for r in rows if f.keeps(r, commands.get(r.name))]

    assert kept() == ["provision-db", "flaky-refresh", "gone"]
    assert kept(state="failed") == ["flaky-refresh"]
    assert kept(state="no-such-state") == kept()  # an unknown state filters nothing
    assert kept(label="team=data") == ["provision-db"]
    assert kept(label="team") == ["provision-db", "flaky-refresh"]
    assert kept(label="team=nobody") == []
    assert kept(name="REFRESH") == ["flaky-refresh"]
    assert Filters.of({"state": "failed", "label": "team=ops"}).query(state="") == \
        "?label=team%3Dops"


def test_the_overview_page_counts_filters_and_shows_the_banners() -> None:
    rows = [StatusRow("a", "in_sync", spec_hash="h", attempts=1),
            StatusRow("b", "failed", "waiting to retry", spec_hash="h2", attempts=1,
                      error={"title": "Command failed"}),
            StatusRow("c", "waiting", "waiting for dependency 'b' (failed)")]
    commands = {"a": command("a", labels={"team": "x"}), "b": command("b"),
                "c": command("c", depends_on=("b",))}
    facts = OverviewFacts(
        now=NOW, rows=rows, commands=commands, recorded={"a": "in_sync", "b": "failed"},
        problems=(Problem("m/bad.yaml", 7, "bad", "spec.timeout: 'x' is not a duration"),),
        revision="b" * 40, withheld="the source did not load cleanly",
        source={"kind": "git", "location": "https://example.test/repo.git", "revision": "b" * 40,
                "lastSuccess": NOW.isoformat(), "errors": 2,
                "lastError": "fetch https://bot:hunter2pw@example.test/repo.git failed"})
    page = overview_page(facts)
    assert [r.name for r in page.rows] == ["a", "b", "c"] and page.total == 3
    assert [(c.state, c.count) for c in page.counts] == [("failed", 1), ("waiting", 1),
                                                        ("in_sync", 1)]
    assert page.invalid == ("m/bad.yaml:7: bad: spec.timeout: 'x' is not a duration",)
    assert page.source is not None and "hunter2pw" not in page.source.last_error
    assert page.source.revision == "b" * 12 and page.source.last_fetch == \
        "2026-03-02 12:00:00 UTC"
    assert page.withheld == "the source did not load cleanly"
    assert [{n.name for n in c.nodes} for c in page.chains] == [{"b", "c"}]
    failed = overview_page(facts, Filters.of({"state": "failed"}))
    assert [r.name for r in failed.rows] == ["b"] and failed.total == 3
    assert next(c for c in failed.counts if c.state == "failed").selected
    assert "rows" not in page.live() and page.live()["counts"] == {
        "failed": 1, "waiting": 1, "in_sync": 1}


# ---------------------------------------------------------------- dependency chains


def test_a_chain_is_laid_out_left_to_right_without_overlaps() -> None:
    deps = {"b": ("a",), "c": ("b", "d"), "d": (), "a": ()}
    states = {"a": "in_sync", "b": "pending", "c": "waiting", "d": "failed"}
    chain = layout(deps, deps, states)
    nodes = {n.name: n for n in chain.nodes}
    assert nodes["a"].x == nodes["d"].x < nodes["b"].x < nodes["c"].x  # longest path
    boxes = {(n.x, n.y) for n in chain.nodes}
    assert len(boxes) == 4
    for n in chain.nodes:
        assert n.x >= 0 and n.x + NODE_W <= chain.width and n.y + NODE_H <= chain.height
        assert n.state == states[n.name] and n.href == f"/manifests/{n.name}"
    edges = {(e.source, e.target): e for e in chain.edges}
    assert set(edges) == {("a", "b"), ("b", "c"), ("d", "c")}
    assert edges[("a", "b")].met and not edges[("d", "c")].met
    a, b = nodes["a"], nodes["b"]
    assert edges[("a", "b")].d.startswith(f"M{a.x + NODE_W},{a.y + NODE_H // 2} ")
    assert edges[("a", "b")].d.endswith(f" {b.x - 2},{b.y + NODE_H // 2}")


def test_a_cycle_still_lays_out_and_long_names_are_shortened() -> None:
    name = "a-very-long-manifest-name-that-does-not-fit"
    chain = layout({"x", name}, {"x": (name,), name: ("x",)}, {})
    assert len(chain.nodes) == 2 and len({(n.x, n.y) for n in chain.nodes}) == 2
    label = next(n.label for n in chain.nodes if n.name == name)
    assert label.endswith("…") and len(label) < len(name)


def test_the_overview_draws_failing_chains_first_within_a_budget() -> None:
    deps: dict[str, tuple[str, ...]] = {}
    states: dict[str, str] = {}
    for c in range(100):
        for i in range(5):
            deps[f"c{c:03d}-{i}"] = (f"c{c:03d}-{i - 1}",) if i else ()
            states[f"c{c:03d}-{i}"] = "in_sync"
    states["c077-3"] = "failed"
    deps["lonely"] = ()
    drawn, omitted = overview_chains(deps, states)
    assert drawn[0].nodes[0].name.startswith("c077")
    assert sum(len(d.nodes) for d in drawn) <= MAX_OVERVIEW_NODES
    assert len(drawn) + omitted == 100  # "lonely" depends on nothing: no chain
    shown, rest = overview_chains(deps, states, shown={"c005-2"})
    assert [{n.name[:4] for n in d.nodes} for d in shown] == [{"c005"}] and rest == 0


def test_the_chain_of_one_manifest_is_what_it_needs_and_what_needs_it() -> None:
    deps = {"a": (), "b": ("a",), "c": ("b",), "x": ("a",), "y": ()}
    chain = chain_of("b", deps, {})
    assert chain is not None
    assert {n.name for n in chain.nodes} == {"a", "b", "c"}
    assert [n.name for n in chain.nodes if n.current] == ["b"]
    assert chain_of("y", deps, {}) is None


# ---------------------------------------------------------------- one manifest


def facts(name: str, state: str, **overrides: Any) -> ManifestFacts:
    values: dict[str, Any] = {
        "now": NOW, "name": name, "row": StatusRow(name, state), "command": command(name),
        "hold": None, "intents": (), "operations": (), "states": {name: state},
        "depends_on": {}, "state_path": "/var/lib/reconciler/state.db"}
    values.update(overrides)
    return ManifestFacts(**values)


@pytest.mark.parametrize(("state", "applies"), [
    ("stalled", True), ("failed", True), ("lost", True), ("in_sync", False),
    ("pending", False), ("waiting", False)])
def test_the_retry_command_shown_is_one_the_cli_accepts(state: str, applies: bool) -> None:
    page = manifest_page(facts("nightly-export", state))
    assert page.retry.applies is applies
    args = build_parser().parse_args(shlex.split(page.retry.command)[1:])
    assert args.func is retry_cli.command
    assert (args.name, args.state) == ("nightly-export", "/var/lib/reconciler/state.db")
    on_postgres = manifest_page(facts("n", state, state_path=None)).retry.command
    assert on_postgres == "reconciler retry n"  # no database URL (or password) shown


def test_what_a_manifest_waits_for() -> None:
    cmd = command("backfill", depends_on=("reindex", "provision"))
    page = manifest_page(facts("backfill", "waiting", command=cmd,
                               row=StatusRow("backfill", "waiting",
                                             "waiting for dependency 'reindex' (pending)"),
                               states={"reindex": "pending", "provision": "in_sync"},
                               depends_on={"backfill": ("reindex", "provision"),
                                           "reindex": (), "provision": ()},
                               next_window=NOW + timedelta(hours=15)))
    waits = [(w.kind, w.text, w.met) for w in page.waits]
    assert ("dependsOn", "reindex: pending", False) in waits
    assert ("dependsOn", "provision: in_sync", True) in waits
    assert ("interval", "next window at 2026-03-03 03:00:00 UTC (in 15h)", False) in waits
    assert ("planner", "waiting for dependency 'reindex' (pending)", False) in waits
    assert page.chain is not None and {n.name for n in page.chain.nodes} == {
        "backfill", "reindex", "provision"}
    assert page.title == "backfill — ailake-reconciler"


# ---------------------------------------------------------------- the row memo


def test_unchanged_rows_are_made_once_and_rows_in_flight_rewrite_only_their_clock() -> None:
    fragments = Fragments(environment())
    still = StatusRow("still", "in_sync", spec_hash="h", attempts=1)

    def moving(elapsed: float) -> StatusRow:
        return StatusRow("moving", "pending", spec_hash="p", attempts=1, progress=Progress(
            1, NOW, elapsed, NOW + timedelta(hours=1), 3600 - elapsed, None))

    first = fragments.views([(still, None, "in_sync"), (moving(5), None, "pending")])
    later = fragments.views([(still, None, "in_sync"), (moving(65), None, "pending")])
    assert first[0] is later[0]  # the same view, HTML and JSON: made once
    assert (first[1].elapsed, later[1].elapsed) == ("5s", "1m5s")
    assert (first[1].deadline, later[1].deadline) == ("in 1h", "in 59m")
    assert later[1] == row_view(moving(65), None, "pending")  # as if made anew
    assert '<span data-since="2026-03-02T12:00:00+00:00">1m5s</span>' in later.html[1]
    assert ">in 59m</span>" in later.html[1] and "<tr " in later.html[1]
    assert first.json[1] == later.json[1]  # the script counts: the JSON does not move
    changed = fragments.views([(StatusRow("still", "stalled", spec_hash="h", attempts=1,
                                          error={"title": "Failed"}), None, "stalled")])
    assert changed[0].state == "stalled" and changed[0].error == "Failed"
    body = json.loads(json_body(fragments, later, {"total": 2}))
    assert body["total"] == 2
    assert body["rows"] == [v.as_dict() for v in later]
    html = "".join(fragments.chunks(later))
    assert html.count("<tr ") == 2 and 'data-name="moving"' in html
    assert "".join(fragments.chunks(tuple(later))) == html  # plain views: rendered alike


async def test_a_page_that_cannot_be_built_is_an_error_page_without_a_traceback() -> None:
    def broken() -> OverviewFacts:
        raise RuntimeError("internal detail that must not leak")

    app = Starlette(routes=web_routes(WebSurface(overview=broken, manifest=lambda _: None)))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://daemon.test") as client:
        answer = await client.get("/")
        assert answer.status_code == 500
        assert "internal detail" not in answer.text and "Traceback" not in answer.text
        assert "could not be built" in answer.text
        assert answer.headers["content-security-policy"] == CSP
        missing = await client.get("/manifests/%3Cscript%3Ealert(1)%3C")
        assert missing.status_code == 404 and missing.headers["content-security-policy"] == CSP
        assert "<script>alert(1)" not in missing.text
        assert "&lt;script&gt;alert(1)&lt;" in missing.text


def test_the_static_files_build_the_page_with_the_dom_api_only() -> None:
    script = (STATIC / "app.js").read_text(encoding="utf-8")
    for unsafe in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                   "eval(", "new Function"):
        assert unsafe not in script, unsafe
    style = (STATIC / "app.css").read_text(encoding="utf-8")
    assert "@import" not in style and "url(" not in style  # nothing from elsewhere


# ---------------------------------------------------------------- the flag


def test_the_ui_flag_and_its_environment_variable(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path) -> None:
    base = ["run", "--manifests", str(tmp_path), "--api-url", "http://127.0.0.1:1"]
    monkeypatch.delenv("RECONCILER_UI", raising=False)
    parse = build_parser().parse_args
    assert parse(base).ui is None  # not given: on
    assert cli_daemon_settings(parse(base)).ui is True
    assert parse([*base, "--ui=false"]).ui is False
    assert parse([*base, "--ui", "off"]).ui is False
    assert parse([*base, "--no-ui"]).ui is False
    assert parse([*base, "--ui"]).ui is True
    assert cli_daemon_settings(parse([*base, "--no-ui"])).ui is False
    for wrong in ("--ui=maybe", "--no-ui=false"):
        with pytest.raises(SystemExit):
            parse([*base, wrong])
    monkeypatch.setenv("RECONCILER_UI", "false")
    assert build_parser().parse_args(base).ui is False
    assert cli_daemon_settings(build_parser().parse_args(base)).ui is False
    assert build_parser().parse_args([*base, "--ui=true"]).ui is True


# ---------------------------------------------------------------- a real daemon


@pytest.fixture(scope="module")
def lake() -> Iterator[RunningEmulator]:
    with emulator() as emu:
        yield emu


@pytest.fixture(scope="module")
def served(lake: RunningEmulator, tmp_path_factory: pytest.TempPathFactory,
           ) -> Iterator[ThreadedDaemon]:
    root = tmp_path_factory.mktemp("web-pages")
    settings = daemon_settings(write_scene(root / "manifests"), lake.url, root / "state.db",
                               client={"token": TOKEN}, once=False, listen="127.0.0.1:0",
                               interval=60.0)
    for running in threaded_daemon(settings):
        wait_settled(running.url)
        yield running


def get(url: str, path: str, **kwargs: Any) -> httpx.Response:
    return httpx.get(url + path, timeout=15, **kwargs)


def test_the_overview_over_http(served: ThreadedDaemon) -> None:
    answer = get(served.url, "/")
    assert answer.status_code == 200
    assert answer.headers["content-security-policy"] == CSP
    assert answer.headers["x-content-type-options"] == "nosniff"
    assert answer.headers["x-frame-options"] == "DENY"
    html = answer.text
    assert "<title>ailake-reconciler — overview</title>" in html
    for name, state in SETTLED.items():
        assert re.search(rf'data-name="{name}">.*?class="state state-{state}">{state}<', html)
    assert re.search(r"broken-doc\.yaml:\d+: broken-doc: spec\.timeout", html)
    assert "This replica acts alone" in html
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []  # no inline script
    assert " style=" not in html and "<style" not in html  # no inline style
    assert TOKEN not in html


def test_the_live_json_is_the_status_data_and_answers_304_when_unchanged(
        served: ThreadedDaemon) -> None:
    first = get(served.url, "/ui/overview.json")
    assert first.status_code == 200 and first.headers["content-security-policy"] == CSP
    rows = {r["name"]: r for r in first.json()["rows"]}
    status = {i["name"]: i for i in get(served.url, "/status").json()["intents"]}
    assert set(rows) == set(status)
    for name, item in status.items():
        assert rows[name]["state"] == item["state"]
        assert rows[name]["error"] == ((item["error"] or {}).get("title") or "")
    again = get(served.url, "/ui/overview.json",
                headers={"if-none-match": first.headers["etag"]})
    assert again.status_code == 304 and again.content == b""


def test_one_manifest_over_http(served: ThreadedDaemon) -> None:
    assert served.daemon.store is not None
    ops = served.daemon.store.operations(name="nightly-export")
    html = get(served.url, "/manifests/nightly-export").text
    assert "<title>nightly-export — ailake-reconciler</title>" in html
    assert len(ops) == 2 and all(op.operation_id in html for op in ops)
    assert html.count("outcome-failed") == 2 and "Command failed" in html
    assert "reconciler retry nightly-export --state" in html
    waiting = get(served.url, "/manifests/backfill-orders").text
    assert "reindex-vectors: pending" in waiting and "(not met)" in waiting
    schedule = get(served.url, "/manifests/nightly-report").text
    assert "next window at" in schedule and "0 3 * * * (UTC)" in schedule
    secret = get(served.url, "/manifests/paused-compaction").text
    assert TOKEN not in secret and "abc123def456" not in secret
    assert secret.count(scrub.REDACTED) >= 2
    invalid = get(served.url, "/manifests/broken-doc").text
    assert "Invalid now" in invalid and "broken-doc.yaml:" in invalid


def test_unknown_names_filters_and_static_files_over_http(served: ThreadedDaemon) -> None:
    missing = get(served.url, "/manifests/no-such-manifest")
    assert missing.status_code == 404 and "No manifest named" in missing.text
    assert missing.headers["content-security-policy"] == CSP
    assert get(served.url, "/ui/manifests/no-such-manifest.json").status_code == 404
    failed = get(served.url, "/?state=failed").text
    assert re.findall(r'<tr role="row" data-name="([^"]+)"', failed) == ["flaky-refresh"]
    team = get(served.url, "/", params={"label": "team=data"}).text
    assert re.findall(r'<tr role="row" data-name="([^"]+)"', team) == ["provision-db"]
    script = get(served.url, "/ui/static/app.js")
    assert script.status_code == 200 and "javascript" in script.headers["content-type"]
    assert script.headers["x-content-type-options"] == "nosniff"
    assert get(served.url, "/ui/static/../data.py").status_code == 404


def test_with_the_ui_off_the_view_answers_404(lake: RunningEmulator, tmp_path: Path) -> None:
    settings = daemon_settings(write_scene(tmp_path / "manifests"), lake.url,
                               tmp_path / "state.db", client={"token": TOKEN}, once=False,
                               listen="127.0.0.1:0", interval=60.0, ui=False)
    for running in threaded_daemon(settings):
        for path in ("/", "/manifests/provision-db", "/ui/overview.json", "/ui/static/app.js"):
            assert get(running.url, path).status_code == 404, path
        assert get(running.url, "/status").status_code == 200
