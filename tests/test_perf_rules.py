"""The performance rules are correct, not merely fast (nothing here is timed but the watcher):

- the load cache: an unchanged tree returns the previous result itself; a changed file is
  read and validated again, an unchanged one is not (and, its stat trusted, not even read);
  a deleted file's manifests disappear; problems still carry FILE:LINE;
- the fast path (libyaml straight to values, a strict schema pre-check) gives exactly what
  the full path gives, and its pre-check never accepts what the JSON Schema refuses;
- the canonical intent and spec hash are computed once per window;
- the adaptive rate limiter halves on a 429 (honouring Retry-After), grows on fast answers;
- the watcher sees a new file within 0.25 s (inotify), and falls back to polling.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import os
import time
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from reconciler.ailake.client import AiLakeClient, ClientSettings
from reconciler.ailake.ratelimit import AdaptiveLimiter, TokenBucket
from reconciler.model import manifest as manifest_module
from reconciler.model.identity import canonical_intent, spec_hash
from reconciler.model.manifest import Interval, ServiceCommand, ServiceRef
from reconciler.planning.windows import desired_intent
from reconciler.source import load_cache, loader, watcher
from reconciler.source.loader import load_manifests, parse_documents
from reconciler.source.schema import _validator
from reconciler.source.watcher import SourceWatcher

ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "corpus"
PAST = time.time() - 3600  # an mtime old enough for the stat to be trusted


def manifest(name: str, extra: str = "", service: str = "serviceName: sales") -> str:
    return ("apiVersion: ailake.reconciler/v1\nkind: ServiceCommand\n"
            f"metadata:\n  name: {name}\n  labels: {{team: a}}\nspec:\n  {service}\n"
            f"  command: reindex\n  payload: {{tables: [a, b], size: 10}}\n{extra}")


def write(path: Path, text: str, *, old: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    if old:
        os.utime(path, (PAST, PAST))
    return path


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    loader.clear_cache()
    yield
    loader.clear_cache()


@pytest.fixture
def trusted(monkeypatch: pytest.MonkeyPatch) -> None:
    """Files written by the test are trusted at once (not only 2 s after their ctime)."""
    monkeypatch.setattr(loader, "_RACY_NS", 0)
    monkeypatch.setattr(watcher, "_RACY_NS", 0)


class Counter:
    def __init__(self, monkeypatch: pytest.MonkeyPatch, module: Any, name: str) -> None:
        self.calls: list[Any] = []
        real = getattr(module, name)

        def counted(*args: Any, **kwargs: Any) -> Any:
            self.calls.append(args[0] if args else None)
            return real(*args, **kwargs)

        monkeypatch.setattr(module, name, counted)


# ------------------------------------------------------------------ the load cache


def test_an_unchanged_tree_returns_the_previous_result_itself(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(3):
        write(tmp_path / f"m{i}.yaml", manifest(f"m{i}"))
    first = load_manifests(tmp_path)
    parsed = Counter(monkeypatch, loader, "_parse_file")
    assembled = Counter(monkeypatch, loader, "cross_checks")
    again = load_manifests(tmp_path)
    assert again is first
    assert parsed.calls == [] and assembled.calls == []


def test_a_changed_file_is_validated_again_and_the_others_are_not_even_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted: None) -> None:
    for i in range(3):
        write(tmp_path / f"m{i}.yaml", manifest(f"m{i}"))
    first = load_manifests(tmp_path)
    write(tmp_path / "m1.yaml", manifest("m1", "  rerun: '2'\n"))
    parsed = Counter(monkeypatch, loader, "_parse_file")
    read = Counter(monkeypatch, loader, "read_bounded")
    second = load_manifests(tmp_path)
    assert parsed.calls == [str(tmp_path / "m1.yaml")]
    assert [entry.display for entry in read.calls] == [str(tmp_path / "m1.yaml")]
    assert second is not first and second.revision != first.revision
    assert second.by_name["m1"].rerun == "2"
    assert second.by_name["m0"] is first.by_name["m0"]  # the same validated document


def test_a_rewrite_that_keeps_size_and_mtime_is_still_seen(tmp_path: Path,
                                                           trusted: None) -> None:
    path = write(tmp_path / "a.yaml", manifest("a", "  rerun: '1'\n"))
    assert load_manifests(tmp_path).by_name["a"].rerun == "1"
    write(path, manifest("a", "  rerun: '2'\n"))  # same size, mtime set back: ctime moved
    assert load_manifests(tmp_path).by_name["a"].rerun == "2"


def test_a_racy_file_is_read_again_even_with_the_same_stat(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "a.yaml", manifest("a"), old=False)  # modified just now
    load_manifests(tmp_path)
    read = Counter(monkeypatch, loader, "read_bounded")
    parsed = Counter(monkeypatch, loader, "_parse_file")
    load_manifests(tmp_path)
    assert len(read.calls) == 1  # its stat is not trusted yet...
    assert parsed.calls == []  # ...but its digest did not move: not validated again


def test_same_content_elsewhere_reuses_the_validated_documents(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A git source's next tree: other paths, same content shown under the same names."""
    write(tmp_path / "t1" / "m" / "a.yaml", manifest("a"))
    write(tmp_path / "t2" / "m" / "a.yaml", manifest("a"))
    first = load_manifests(tmp_path / "t1" / "m", revision="1" * 40, shown_as="m")
    parsed = Counter(monkeypatch, loader, "_parse_file")
    second = load_manifests(tmp_path / "t2" / "m", revision="2" * 40, shown_as="m")
    assert parsed.calls == []
    assert second.revision == "2" * 40 and second.commands == first.commands
    assert second.commands[0].file == "m/a.yaml"


def test_a_deleted_file_disappears(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", manifest("a"))
    write(tmp_path / "b.yaml", manifest("b"))
    assert [c.name for c in load_manifests(tmp_path).commands] == ["a", "b"]
    (tmp_path / "b.yaml").unlink()
    result = load_manifests(tmp_path)
    assert [c.name for c in result.commands] == ["a"] and result.files == 1


def test_a_new_file_appears(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", manifest("a"))
    load_manifests(tmp_path)
    write(tmp_path / "b.yaml", manifest("b"))
    assert [c.name for c in load_manifests(tmp_path).commands] == ["a", "b"]


def test_cached_files_still_report_file_and_line(tmp_path: Path) -> None:
    """Lines are computed only for problems, also in a file that did not change: its
    dependency vanished, its name is now a duplicate."""
    write(tmp_path / "a.yaml", manifest("a"))
    write(tmp_path / "b.yaml", manifest("b", "  dependsOn: [a]\n"))
    assert load_manifests(tmp_path).problems == ()
    (tmp_path / "a.yaml").unlink()
    write(tmp_path / "c.yaml", manifest("b"))
    shown = [str(p) for p in load_manifests(tmp_path).problems]
    assert shown == [
        f"{tmp_path}/b.yaml:10: b: spec.dependsOn[0]: no manifest is named 'a'",
        f"{tmp_path}/c.yaml:4: b: metadata.name: duplicate name (first defined at "
        f"{tmp_path}/b.yaml:4)",
    ]


def test_a_loaded_file_keeps_no_text_for_its_lines(tmp_path: Path) -> None:
    """The lines of a file that did not change are computed from its text read again,
    not from a copy kept since its load (4 MiB at 10,000 manifests)."""
    write(tmp_path / "b.yaml", manifest("b", "  dependsOn: [a]\n"))
    load_manifests(tmp_path)
    memo = next(f for m in load_cache._memos.values() for k, f in m.files.items()
                if k.startswith(os.fspath(tmp_path)))
    assert not any(isinstance(s, str) for d in memo.parsed.docs
                   for s in (d.located._source or ())[:1])  # type: ignore[attr-defined]


def test_a_line_asked_for_after_the_file_changed_on_disk_is_not_made_up(
        tmp_path: Path) -> None:
    write(tmp_path / "b.yaml", manifest("b", "  dependsOn: [a]\n"))
    (entry,) = loader.list_files(tmp_path).entries
    result = loader._parse_file("b.yaml", (tmp_path / "b.yaml").read_text(),
                                loader._rereader(entry, b"other digest"))
    assert result.docs[0].located.line_of(["spec", "dependsOn", 0]) == 1


def test_a_semantic_problem_of_a_fast_file_has_its_line() -> None:
    text = manifest("a") + "---\n" + manifest("b", "  policy: {schedule: '0 0 30 2 *'}\n")
    fast = loader._parse_fast("m.yaml", text)
    assert fast is not None  # the fast path took it: lines were computed on demand
    assert [str(p) for p in parse_documents([("m.yaml", text)]).problems] == [
        "m.yaml:20: b: spec.policy.schedule: '0 0 30 2 *' never fires (no such date, "
        "e.g. February 30)"]
    assert fast.docs[1].built == loader._parse_full("m.yaml", text).docs[1].built


# ------------------------------------------------------------------ fast path = full path


def _corpus_texts() -> list[tuple[str, str]]:
    found = []
    for folder in ("good", "mixed", "bad"):
        for path in sorted((CORPUS / folder).glob("*.y*ml")):
            try:
                found.append((f"{folder}/{path.name}", path.read_text(encoding="utf-8")))
            except UnicodeDecodeError:
                continue
    found.append(("samples", "---\n".join(
        p.read_text(encoding="utf-8") for p in sorted((ROOT / "manifests").rglob("*.yaml")))))
    return found


def _same(file: str, text: str) -> bool:
    """Whether the fast path (when it takes the file) agrees with the full path."""
    fast = loader._parse_fast(file, text)
    if fast is None:
        return False
    full = loader._parse_full(file, text)
    assert fast.problems == full.problems
    assert [(d.name, d.problems, d.built) for d in fast.docs] == [
        (d.name, d.problems, d.built) for d in full.docs]
    for a, b in zip(fast.docs, full.docs, strict=True):
        assert a.name_line() == b.name_line()
    return True


def test_the_fast_path_gives_what_the_full_path_gives_on_the_corpus() -> None:
    taken = [file for file, text in _corpus_texts() if _same(file, text)]
    assert "good/full.yaml" in taken and "samples" in taken


def test_the_fast_path_gives_what_the_full_path_gives_on_generated_manifests() -> None:
    import sys

    sys.path.insert(0, str(ROOT / "bench"))
    from benchlib import manifest_docs, sources

    for file, text in sources(manifest_docs(200)):
        assert _same(file, text), file


@pytest.mark.parametrize("text", [
    "a: &x 1\nb: *x\n",                      # anchors and aliases
    "a: !!binary aGk=\n",                    # tags
    "a: {<<: {b: 1}}\n",                      # merge keys
    "a: 1\na: 2\n",                           # duplicate keys
    "yes: 1\n",                               # a key that is not text
    "a: .inf\n",                              # not finite
    "a: [\n",                                 # a syntax error
])
def test_the_fast_path_leaves_the_unusual_to_the_full_path(text: str) -> None:
    assert loader._parse_fast("m.yaml", manifest("a") + text.replace("a:", "  x:")) is None


@functools.cache
def _documents() -> list[Any]:
    docs = []
    for _, text in _corpus_texts():
        if "&" in text:  # aliases (an alias bomb among them): the fast path never sees them
            continue
        try:
            docs += [d for d in yaml.safe_load_all(text) if d is not None]
        except yaml.YAMLError:
            continue
    return docs


_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 200) | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.sampled_from(["once", "24h", "1m30s", "x", "", "a\n", "A", "0"]),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner,
                                                                max_size=3),
    max_leaves=6)
_PATHS = [("apiVersion",), ("kind",), ("metadata",), ("metadata", "name"),
          ("metadata", "labels"), ("metadata", "extra"), ("spec",), ("spec", "command"),
          ("spec", "service"), ("spec", "serviceName"), ("spec", "payload"),
          ("spec", "context"), ("spec", "policy"), ("spec", "policy", "interval"),
          ("spec", "policy", "schedule"), ("spec", "policy", "timezone"),
          ("spec", "rerun"), ("spec", "timeout"), ("spec", "retry"),
          ("spec", "retry", "limit"), ("spec", "retry", "backoff"), ("spec", "dependsOn"),
          ("spec", "suspend"), ("spec", "unknown")]


def test_the_pre_check_accepts_the_valid_corpus() -> None:
    valid = [d for d in _documents() if _validator().is_valid(d)]
    assert valid and all(loader._surely_valid(d) for d in valid)


@functools.cache
def _surely_valid_documents() -> list[Any]:
    return [d for d in _documents() if isinstance(d, dict) and loader._surely_valid(d)]


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10_000), st.sampled_from(_PATHS), _values)
def test_the_pre_check_never_accepts_what_the_schema_refuses(
        pick: int, path: tuple[str, ...], value: Any) -> None:
    docs = _surely_valid_documents()
    doc = copy.deepcopy(docs[pick % len(docs)])
    node = doc
    for part in path[:-1]:
        if not isinstance(node.get(part), dict):
            node[part] = {}
        node = node[part]
    node[path[-1]] = value
    if loader._surely_valid(doc):
        assert _validator().is_valid(doc), doc


# ------------------------------------------------------------------ intents per window


def _command() -> ServiceCommand:
    return ServiceCommand(name="a", service=ServiceRef(name="sales"), command="reindex",
                          payload={"x": [1, 2]}, policy=Interval(every=__import__(
                              "datetime").timedelta(hours=1)))


def test_the_spec_hash_is_computed_once_per_window(monkeypatch: pytest.MonkeyPatch) -> None:
    command = _command()
    hashed = Counter(monkeypatch, manifest_module, "spec_hash")
    now = datetime(2026, 1, 1, 10, 30, tzinfo=UTC)
    first = desired_intent(command, now)
    for _ in range(5):
        assert desired_intent(command, now) == first
    assert len(hashed.calls) == 1
    later = desired_intent(command, datetime(2026, 1, 1, 11, 30, tzinfo=UTC))
    assert later.spec_hash != first.spec_hash and len(hashed.calls) == 2
    expected = canonical_intent(name="a", service={"serviceName": "sales"}, command="reindex",
                                payload={"x": [1, 2]}, context=None, rerun="",
                                window=first.window)
    assert first.canonical == expected and first.spec_hash == spec_hash(expected)


def test_the_cache_is_not_part_of_equality_and_replace_starts_afresh() -> None:
    a, b = _command(), _command()
    a.spec_hash("w")
    assert a == b and "_intents" not in repr(a)
    changed = replace(a, command="other")
    assert changed.spec_hash("w") != a.spec_hash("w")
    assert changed.spec_hash("w") == spec_hash(changed.canonical_intent("w"))


def test_only_a_few_windows_are_kept() -> None:
    command = _command()
    for i in range(100):
        command.spec_hash(f"w{i}")
    assert len(command._intents) <= manifest_module._INTENT_CACHE_WINDOWS


# ------------------------------------------------------------------ the adaptive limiter


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


def limiter(clock: FakeClock, **kwargs: Any) -> AdaptiveLimiter:
    return AdaptiveLimiter(kwargs.pop("start", 50.0), sleep=clock.sleep, clock=clock,
                           **kwargs)


def test_the_rate_halves_on_a_429_once_per_cooldown_and_honours_retry_after() -> None:
    clock = FakeClock()
    limit = limiter(clock, ceiling=100.0)
    limit.observe(status=429, latency=0.01, retry_after=3.0)
    assert limit.current_rate == 25.0
    limit.observe(status=429, latency=0.01, retry_after=3.0)  # the same burst
    assert limit.current_rate == 25.0
    assert limit.reserve() == pytest.approx(3.0)  # nothing leaves before Retry-After
    clock.now += 1.5
    limit.observe(status=429, latency=0.01)
    assert limit.current_rate == 12.5 and limit.throttled == 3


def test_the_rate_grows_on_fast_answers_up_to_the_ceiling() -> None:
    clock = FakeClock()
    limit = limiter(clock, start=10.0, ceiling=15.0)
    for _ in range(3):
        limit.observe(status=200, latency=0.05)
    assert limit.current_rate == 13.0
    for _ in range(10):
        limit.observe(status=202, latency=0.05)
    assert limit.current_rate == 15.0


def test_the_rate_holds_when_the_server_budget_is_low_and_backs_off_when_slow() -> None:
    clock = FakeClock()
    limit = limiter(clock, start=20.0)
    limit.observe(status=200, latency=0.05, remaining=5, limit=100)
    assert limit.current_rate == 20.0
    limit.observe(status=200, latency=0.05, remaining=90, limit=100)
    assert limit.current_rate == 21.0
    limit.observe(status=200, latency=5.0)
    assert limit.current_rate == pytest.approx(15.75)
    clock.now += 2
    limit.observe(status=None, latency=30.0)  # no answer at all
    assert limit.current_rate == pytest.approx(11.8125)


def test_the_rate_never_goes_below_its_floor() -> None:
    clock = FakeClock()
    limit = limiter(clock, start=4.0, floor=1.0)
    for _ in range(10):
        clock.now += 2
        limit.observe(status=429, latency=0.01)
    assert limit.current_rate == 1.0


def test_a_fixed_bucket_keeps_its_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, sleep=clock.sleep, clock=clock)
    bucket.observe(status=429, latency=0.01, retry_after=5.0)
    assert bucket.current_rate == 10.0 and bucket.reserve() == 0.0


async def test_the_client_feeds_the_limiter_and_shows_its_rate() -> None:
    answers = iter([
        httpx.Response(429, headers={"Retry-After": "0", "X-RateLimit-Remaining": "0"},
                       json={"error": "Too Many Requests"}),
        httpx.Response(200, headers={"X-RateLimit-Remaining": "99",
                                     "X-RateLimit-Limit": "100"},
                       json={"id": "op", "kind": "run-service-command", "status": "pending"}),
    ])
    transport = httpx.MockTransport(lambda request: next(answers))

    async def no_sleep(_: float) -> None:
        return None

    settings_ = ClientSettings(base_url="http://api", adaptive_rate=True, rate_limit=40.0,
                               backoff_base=0.0)
    async with AiLakeClient(settings_, transport=transport, sleep=no_sleep) as client:
        assert client.rate_limit == 40.0
        assert (await client.get_operation("op")) is not None  # 429, then 200
        assert client.rate_limit == 21.0  # halved, then one fast answer
    fixed = AiLakeClient(ClientSettings(base_url="http://api", rate_limit=10.0))
    unlimited = AiLakeClient(ClientSettings(base_url="http://api"))
    assert (fixed.rate_limit, unlimited.rate_limit) == (10.0, None)
    await fixed.aclose()
    await unlimited.aclose()


# ------------------------------------------------------------------ the watcher


async def _first_change(w: SourceWatcher, period: float) -> str:
    async for reason in w.watch(period):
        if w.changed():
            return reason
    raise AssertionError("unreachable")


@pytest.mark.skipif(not watcher.events_available(), reason="watchfiles is not installed")
async def test_the_watcher_sees_a_new_file_within_a_quarter_second(tmp_path: Path) -> None:
    write(tmp_path / "a.yaml", manifest("a"))
    w = SourceWatcher(tmp_path)
    w.mark()
    task = asyncio.ensure_future(_first_change(w, 30.0))  # polling alone would take 30 s
    await asyncio.sleep(0.3)  # the watch is set up
    started = time.monotonic()
    write(tmp_path / "sub" / "b.yaml", manifest("b"), old=False)
    reason = await asyncio.wait_for(task, 5)
    assert time.monotonic() - started <= 0.25
    assert reason == "event" and w.mode == "events"


@pytest.mark.skipif(not watcher.events_available(), reason="watchfiles is not installed")
async def test_the_watcher_follows_a_swapped_link(tmp_path: Path) -> None:
    write(tmp_path / "t1" / "a.yaml", manifest("a"))
    write(tmp_path / "t2" / "a.yaml", manifest("a", "  rerun: '2'\n"))
    link = tmp_path / "current"
    link.symlink_to(tmp_path / "t1")
    w = SourceWatcher(link)
    w.mark()
    task = asyncio.ensure_future(_first_change(w, 0.1))
    await asyncio.sleep(0.3)
    tmp = tmp_path / "next"
    tmp.symlink_to(tmp_path / "t2")
    os.replace(tmp, link)  # git-sync's atomic swap
    assert await asyncio.wait_for(task, 5) in ("moved", "event")


async def test_without_events_the_watcher_polls(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(watcher, "watchfiles", None)
    write(tmp_path / "a.yaml", manifest("a"))
    w = SourceWatcher(tmp_path)
    w.mark()
    task = asyncio.ensure_future(_first_change(w, 0.05))
    write(tmp_path / "b.yaml", manifest("b"))
    assert await asyncio.wait_for(task, 5) == "poll" and w.mode == "polling"


def test_the_watcher_reads_only_files_whose_stat_moved(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, trusted: None) -> None:
    for i in range(3):
        write(tmp_path / f"m{i}.yaml", manifest(f"m{i}"))
    w = SourceWatcher(tmp_path)
    w.mark()
    read = Counter(monkeypatch, watcher, "read_bounded")
    write(tmp_path / "m2.yaml", manifest("m2", "  rerun: '9'\n"))
    assert w.changed()
    assert [entry.display for entry in read.calls] == [str(tmp_path / "m2.yaml")]


def test_a_fast_rate_grows_by_a_share_of_itself_not_one_request_at_a_time() -> None:
    clock = FakeClock()
    limit = limiter(clock, start=200.0, ceiling=1000.0)
    limit.observe(status=200, latency=0.05)
    assert limit.current_rate == pytest.approx(204.0)
    for _ in range(100):
        limit.observe(status=200, latency=0.05)
    assert limit.current_rate == 1000.0
