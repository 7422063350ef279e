"""Every example output in README.md and docs/*.md is produced here, so none can drift.

An example is a fenced block right after a ``<!-- example: NAME -->`` line; every
```` ```text ```` block must be one. Each test produces its example (the real ``reconciler``
binary, or ``main()`` in-process where a fixed clock makes the output stable) and compares
it with the block, byte for byte. Volatile parts (a free port, a temporary folder, the uid
of the test run) are replaced by the stable values the documents show, and nothing else.

To rewrite the documents after a deliberate change of an output::

    UPDATE_DOC_EXAMPLES=1 pytest tests/test_docs_examples.py
"""

from __future__ import annotations

import importlib
import json
import os
import re
import shutil
import socket
import textwrap
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import httpx
import pytest
from integration_support import reconciler

from reconciler.ailake.client import ClientSettings
from reconciler.ailake.emulator import EmulatorConfig, load_config, start_background
from reconciler.cli.check import (
    Check,
    api_checks,
    listen_check,
    render_checks,
    source_checks,
    store_check,
)
from reconciler.model.lifecycle import (
    Accepted,
    Claimed,
    Event,
    ObservedFailed,
    ObservedSucceeded,
    Retired,
    transition,
)
from reconciler.planning.windows import Desired, desired_intent
from reconciler.source.loader import clear_cache, load_manifests
from reconciler.store import Store

#: the module (``reconciler.cli.main`` the attribute is the function of that name)
cli_main = importlib.import_module("reconciler.cli.main")

REPO = Path(__file__).resolve().parents[1]
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- example: ([a-z0-9-]+) -->\n```([a-z]*)\n(.*?)```\n", re.S)
FENCE = re.compile(r"^```([a-z]*)\s*$", re.M)
MARKS = ("✓", "✗", "-")
#: the URL the documents show for a local emulator, and for an organisation
EMULATOR_URL = "http://127.0.0.1:8765"
ORG_URL = "https://example.cloud.gooddata.com"
#: the fixed "now" of the plan, status and history examples
NOW = datetime(2026, 3, 2, 9, 0, tzinfo=UTC)
REVISION = "4b825dc642cb6eb9a060e54bf8d69288fbee4904"


def documented() -> dict[str, tuple[Path, str]]:
    """Every example in the documents: name -> (document, the block's text)."""
    found: dict[str, tuple[Path, str]] = {}
    for doc in DOCUMENTS:
        for match in MARKER.finditer(doc.read_text(encoding="utf-8")):
            assert match.group(1) not in found, f"example {match.group(1)} twice"
            found[match.group(1)] = (doc, match.group(3))
    return found


def rewrite(name: str, text: str) -> None:
    doc, _ = documented()[name]
    content = doc.read_text(encoding="utf-8")

    def block(match: re.Match[str]) -> str:
        if match.group(1) != name:
            return match.group(0)
        return f"<!-- example: {name} -->\n```{match.group(2)}\n{text}```\n"

    doc.write_text(MARKER.sub(block, content), encoding="utf-8")


PRODUCERS: dict[str, Callable[[Path], str]] = {}


def example(name: str) -> Callable[[Callable[[Path], str]], Callable[[Path], str]]:
    def register(produce: Callable[[Path], str]) -> Callable[[Path], str]:
        PRODUCERS[name] = produce
        return produce
    return register


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def replace_all(text: str, replacements: dict[str, str]) -> str:
    for old in sorted(replacements, key=len, reverse=True):  # longest first
        text = text.replace(old, replacements[old])
    return text


def endpoint_of(url: str) -> str:
    return url.split("://", 1)[1]


@pytest.fixture(autouse=True)
def _fresh_loader() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


# ---------------------------------------------------------------------------- check


def _bundled_emulator() -> Any:
    return start_background(load_config(None), host="127.0.0.1", port=0)


@example("check")
def _check_all_pass(tmp: Path) -> str:
    """README: ``reconciler check`` on the sample manifests against the emulator."""
    shutil.copytree(REPO / "manifests", tmp / "manifests")
    port = free_port()
    with _bundled_emulator() as emu:
        done = reconciler("check", "--manifests", "manifests", "--api-url", emu.url,
                          "--listen", f":{port}", cwd=tmp)
    assert done.returncode == 0, done.stdout + done.stderr
    return replace_all(done.stdout, {emu.url: EMULATOR_URL,
                                     endpoint_of(emu.url): endpoint_of(EMULATOR_URL),
                                     f"0.0.0.0:{port}": "0.0.0.0:8080"})


#: an emulator whose services are not as the manifests expect
_TROUBLED = {
    "services": [
        {"id": "6f1c2a4e-0000-4000-8000-000000000001", "name": "sales-vectors",
         "status": {"ready": False, "commands": ["reindex", "backfill"]},
         "commands": {"reindex": {"duration": "1s"}, "backfill": {"duration": "1s"}}},
    ],
}
_TROUBLED_MANIFESTS = {
    "vectors.yaml": """\
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata: {name: reindex-sales-vectors}
spec: {serviceName: sales-vectors, command: reindx}
""",
    "tickets.yaml": """\
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata: {name: export-tickets}
spec: {serviceName: support-tickets, command: export}
""",
}


def _store_not_writable(tmp: Path) -> str:
    """The store check in a folder this user may not write, as ``check`` says it (the
    permission is refused by ``os.access``: no mode stops root, who runs these tests in
    containers; tests/test_check.py refuses it for real where it can)."""
    data = tmp / "ro" / "data"
    data.mkdir(parents=True)
    real = os.access

    def access(path: Any, mode: int, **kwargs: Any) -> bool:
        if Path(path) == data and mode & os.W_OK:
            return False
        return real(path, mode, **kwargs)

    with mock.patch.object(os, "access", access):
        check = store_check(str(data / "reconciler-state.db"))
    assert check.failed
    return render_checks([check], marks=MARKS, summary=False)


@example("troubleshooting")
def _troubleshooting(tmp: Path) -> str:
    """README's Troubleshooting: what ``check`` says for each usual misconfiguration."""
    import asyncio

    failed: list[Check] = []

    def keep(checks: list[Check], *names: str) -> None:
        failed.extend(c for c in checks if c.name in names and c.failed)

    closed = free_port()
    keep(asyncio.run(api_checks(ClientSettings(base_url=f"http://127.0.0.1:{closed}"),
                                services=False)), "api")
    keep(asyncio.run(api_checks(ClientSettings(base_url=f"{ORG_URL}/api/v1"),
                                services=False)), "api")
    with start_background(load_config(None), host="127.0.0.1", port=0, token="s3cret") as emu:
        keep(asyncio.run(api_checks(ClientSettings(base_url=emu.url + "/gooddata"),
                                    services=False)), "api")
        keep(asyncio.run(api_checks(ClientSettings(base_url=emu.url), services=False)),
             "token")
        keep(asyncio.run(api_checks(ClientSettings(base_url=emu.url, token="not-the-token"),
                                    services=False)), "token")
        urls = {emu.url: ORG_URL, endpoint_of(emu.url): "example.cloud.gooddata.com:443"}

    def forbidden(request: httpx.Request) -> httpx.Response:
        return httpx.Response(403, json={"title": "Forbidden", "status": 403})

    keep(asyncio.run(api_checks(ClientSettings(base_url=ORG_URL, token="t"), services=False,
                                transport=httpx.MockTransport(forbidden))), "token")
    manifests = tmp / "manifests"
    manifests.mkdir()
    for file, text in _TROUBLED_MANIFESTS.items():
        (manifests / file).write_text(text)
    commands = load_manifests(manifests).commands
    troubled = EmulatorConfig.from_dict(_TROUBLED, source="troubled.yaml")
    with start_background(troubled, host="127.0.0.1", port=0) as emu:
        keep(asyncio.run(api_checks(ClientSettings(base_url=emu.url), commands)),
             "services", "commands", "ready")
        urls[emu.url] = ORG_URL
    (tmp / "state-file").write_text("")
    failed.append(store_check(str(tmp / "state-file" / "reconciler-state.db")))
    keep(source_checks(tmp / "nowhere", None)[0], "source")
    (manifests / "embed.yaml").write_text(textwrap.dedent("""\
        apiVersion: ailake.reconciler/v1
        kind: ServiceCommand
        metadata: {name: embed-tickets}
        spec:
          serviceName: support-tickets
          command: embed
          timeout: 600
        """))
    keep(source_checks(manifests, None)[0], "manifests")
    with socket.socket() as taken:
        taken.bind(("0.0.0.0", 0))
        taken.listen(1)
        busy = taken.getsockname()[1]
        failed.append(listen_check(f":{busy}"))
    assert all(c.failed for c in failed)
    order = ["api", "token", "services", "commands", "ready", "store", "source",
             "manifests", "listen"]
    failed.sort(key=lambda c: order.index(c.name))
    text = render_checks(failed, marks=MARKS, summary=False)
    text = replace_all(text, {
        **urls, f"127.0.0.1:{closed}": "example.cloud.gooddata.com:443",
        "http://example.cloud.gooddata.com:443": ORG_URL,
        f"0.0.0.0:{busy}": "0.0.0.0:8080", str(tmp / "state-file"): "/data/state",
        str(tmp / "nowhere"): "/manifests", str(manifests): "manifests"})
    store = replace_all(_store_not_writable(tmp), {
        str(tmp / "ro" / "data"): "/data", f"uid {os.geteuid()}": "uid 10001"})
    # the store lines go with the other store line, aligned as check aligns them
    width = max(len(c.title) for c in failed)
    store = store.replace("✗ state store  ", f"✗ {'state store':<{width}}  ", 1).replace(
        "\n  " + " " * len("state store") + "  →", "\n  " + " " * width + "  →")
    lines = text.splitlines()
    at = next(i for i, line in enumerate(lines) if "state store" in line)
    lines[at:at] = store.splitlines()
    return "\n".join(lines) + "\n"


@example("run-once-refused-token")
def _run_once_refused_token(tmp: Path) -> str:
    """README: ``run --once`` with a refused token stops at once, with one line."""
    (tmp / "manifests").mkdir()
    (tmp / "manifests" / "a.yaml").write_text(_TROUBLED_MANIFESTS["tickets.yaml"])
    with start_background(load_config(None), host="127.0.0.1", port=0, token="s3cret") as emu:
        done = reconciler("run", "--once", "--manifests", "manifests", "--api-url", emu.url,
                          "--listen", "", "--log-format", "json", cwd=tmp,
                          env={"RECONCILER_API_TOKEN": "an-old-token"})
    assert done.returncode == 1
    return replace_all(done.stderr, {emu.url: ORG_URL})


# ---------------------------------------------------------------------------- plan, status, history

_FIXTURE_MANIFESTS = {
    "sales/vectors.yaml": """\
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata: {name: reindex-sales-vectors}
spec:
  serviceName: sales-vectors
  command: reindex
  payload: {schemaVersion: 8, tables: [orders]}
---
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata: {name: backfill-sales-vectors}
spec:
  serviceName: sales-vectors
  command: backfill
  rerun: "3"
  timeout: 1h
---
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata: {name: compact-sales-vectors}
spec:
  serviceName: sales-vectors
  command: compact
  dependsOn: [backfill-sales-vectors]
""",
    "sales/database.yaml": """\
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata: {name: migrate-sales-db}
spec: {serviceName: sales-db, command: migrate}
""",
    "support/tickets.yaml": """\
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata: {name: export-tickets}
spec:
  serviceName: support-tickets
  command: export
  retry: {limit: 3, backoff: 5m}
---
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata: {name: purge-old-tickets}
spec:
  serviceName: support-tickets
  command: purge
  retry: {limit: 1, backoff: 30s}
---
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata: {name: refresh-tickets}
spec: {serviceName: support-tickets, command: refresh, suspend: true}
""",
    "support/embed.yaml": """\
apiVersion: ailake.reconciler/v1
kind: ServiceCommand
metadata: {name: embed-tickets}
spec:
  serviceName: support-tickets
  command: embed
  timeout: 600
""",
}
#: earlier versions of some of them, recorded before "now"
_EARLIER = {
    "v7.yaml": _FIXTURE_MANIFESTS["sales/vectors.yaml"].split("---")[0].replace(
        "schemaVersion: 8", "schemaVersion: 7"),
    "b1.yaml": _FIXTURE_MANIFESTS["sales/vectors.yaml"].split("---")[1].replace(
        'rerun: "3"', 'rerun: "1"'),
    "b2.yaml": _FIXTURE_MANIFESTS["sales/vectors.yaml"].split("---")[1].replace(
        'rerun: "3"', 'rerun: "2"'),
    "embed.yaml": _FIXTURE_MANIFESTS["support/embed.yaml"].replace("timeout: 600", "timeout: 10m"),
}


class _Recorder:
    """Records attempts in a real store through the lifecycle, at given moments."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def apply(self, want: Desired, event: Event, at: datetime) -> None:
        self.store.save(transition(self.store.intent(want.spec_hash), event, at))

    def attempt(self, want: Desired, at: datetime) -> str:
        rec = self.store.intent(want.spec_hash)
        n = rec.attempts if rec is not None else 0
        op = want.operation_id(n)
        self.apply(want, Claimed(want.new_intent(), n, op, None, REVISION), at)
        self.apply(want, Accepted(op, at + timedelta(seconds=30)), at)
        return op

    def ran(self, want: Desired, at: datetime, took: timedelta) -> None:
        op = self.attempt(want, at)
        self.apply(want, ObservedSucceeded(op, {"ok": True}), at + took)

    def failed(self, want: Desired, at: datetime, took: timedelta, detail: str,
               retry_at: datetime | None) -> None:
        op = self.attempt(want, at)
        self.apply(want, ObservedFailed(op, {"title": "Command failed", "detail": detail},
                                        retry_at), at + took)


def _fixture(tmp: Path) -> tuple[str, str]:
    """``manifests/`` and ``state.db`` in ``tmp`` (the working folder): a store as the
    daemon leaves it, at :data:`NOW` minus a while. Returns the two relative paths."""
    for rel, text in _FIXTURE_MANIFESTS.items():
        path = tmp / "manifests" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    (tmp / "earlier").mkdir()
    for rel, text in _EARLIER.items():
        (tmp / "earlier" / rel).write_text(text)
    now = {c.name: c for c in load_manifests(tmp / "manifests").commands}
    old = {}
    for file in sorted((tmp / "earlier").iterdir()):  # one at a time: names repeat
        earlier = load_manifests(file)
        assert not earlier.problems, earlier.problems
        old.update({(c.name, c.rerun): c for c in earlier.commands})

    def want(command: Any) -> Desired:
        return desired_intent(command, NOW)

    minute = timedelta(minutes=1)
    at = NOW.replace(hour=6)
    with Store(str(tmp / "state.db")) as store:
        r = _Recorder(store)
        for rerun, start in (("1", at), ("2", at + 60 * minute)):
            backfill = want(old[("backfill-sales-vectors", rerun)])
            r.ran(backfill, start, 10 * minute)
            r.apply(backfill, Retired("superseded"), start + 20 * minute)
        r.ran(want(old[("embed-tickets", "")]), at + 30 * minute, 2 * minute)
        r.ran(want(now["migrate-sales-db"]), NOW - 120 * minute, minute)
        r.ran(want(old[("reindex-sales-vectors", "")]), NOW - 110 * minute, 4 * minute)
        purge = want(now["purge-old-tickets"])
        r.failed(purge, NOW - 60 * minute, minute, "no tickets older than 90d",
                 NOW - 58 * minute)
        r.failed(purge, NOW - 58 * minute, minute, "no tickets older than 90d", None)
        r.failed(want(now["export-tickets"]), NOW - 10 * minute, 3 * minute,
                 "export bucket is read-only", NOW + 2 * minute)
        r.attempt(want(now["backfill-sales-vectors"]), NOW - 12 * minute)
    return "manifests", "state.db"


def _cli(tmp: Path, *argv: str) -> tuple[int, str]:
    """``reconciler ARGV`` in-process at :data:`NOW`, its exit status and stdout."""
    import contextlib
    import io

    out = io.StringIO()
    original = cli_main.utcnow
    cli_main.utcnow = lambda: NOW  # type: ignore[assignment]
    try:
        with contextlib.redirect_stdout(out):
            code = cli_main.main(list(argv))
    finally:
        cli_main.utcnow = original  # type: ignore[assignment]
    return code, out.getvalue()


@example("plan")
def _plan(tmp: Path) -> str:
    """README: a plan with a changed spec, and every manifest that needs no change named."""
    manifests, state = _fixture(tmp)
    code, text = _cli(tmp, "plan", "--manifests", manifests, "--state", state)
    assert code == 1  # the invalid manifest
    return text


@example("plan-json")
def _plan_json(tmp: Path) -> str:
    """README: the same plan's submission and standing in ``-o json``."""
    manifests, state = _fixture(tmp)
    code, text = _cli(tmp, "plan", "--manifests", manifests, "--state", state, "-o", "json")
    assert code == 1
    document = json.loads(text)
    submit = next(a for a in document["actions"] if a["action"] == "submit")
    shown = {"actions": [submit], "standing": document["standing"]}
    return json.dumps(shown, indent=2) + "\n"


@example("status")
def _status(tmp: Path) -> str:
    """README: ``status`` with the manifests: revision, progress of what is pending."""
    manifests, state = _fixture(tmp)
    code, text = _cli(tmp, "status", "--state", state, "--manifests", manifests)
    assert code == 0
    return text


@example("status-json")
def _status_json(tmp: Path) -> str:
    """README: one pending row of ``status -o json``."""
    manifests, state = _fixture(tmp)
    code, text = _cli(tmp, "status", "--state", state, "--manifests", manifests, "-o", "json")
    assert code == 0
    row = next(r for r in json.loads(text) if r["name"] == "backfill-sales-vectors")
    return json.dumps(row, indent=2) + "\n"


@example("history")
def _history(tmp: Path) -> str:
    """README: ``history`` of a manifest that failed twice (attempts 1 and 2)."""
    _, state = _fixture(tmp)
    code, text = _cli(tmp, "history", "purge-old-tickets", "--state", state)
    assert code == 0
    return text


# ---------------------------------------------------------------------------- validate


@example("validate")
def _validate(tmp: Path) -> str:
    """docs/manifests.md: ``validate`` tells every problem at once, FILE:LINE first."""
    (tmp / "manifests" / "sales").mkdir(parents=True)
    (tmp / "manifests" / "sales" / "vectors.yaml").write_text(textwrap.dedent("""\
        apiVersion: ailake.reconciler/v1
        kind: ServiceCommand
        metadata:
          name: reindex-sales-vectors
        spec:
          serviceName: sales-vectors
          command: reindex
          timeout: 600
          dependsOn: [reindex-sales-vectors]
          paylod: {tables: [orders]}
        """))
    (tmp / "manifests" / "sales" / "db.yaml").write_text(textwrap.dedent("""\
        apiVersion: ailake.reconciler/v1
        kind: ServiceCommand
        metadata: {name: migrate-sales-db}
        spec: {serviceName: sales-db, command: migrate
        """))
    done = reconciler("validate", "manifests", cwd=tmp)
    assert done.returncode == 1
    return done.stdout + done.stderr


# ---------------------------------------------------------------------------- the emulator


@example("emulator-requests")
def _emulator_requests(tmp: Path) -> str:
    """docs/emulator.md: ``GET /_emulator/requests`` after 1 list, 4 runs and 12 reads."""
    with _bundled_emulator() as emu, httpx.Client(base_url=emu.url, timeout=10) as http:
        services = http.get("/api/v1/ailake/services").json()["data"]
        service = services[0]["id"]
        ids = [f"00000000-0000-4000-8000-00000000000{i}" for i in range(4)]
        for op in ids:
            http.post(f"/api/v1/ailake/services/{service}/commands/reindex/run",
                      json={}, headers={"operation-id": op}).raise_for_status()
        for i in range(12):
            http.get(f"/api/v1/ailake/operations/{ids[i % 4]}").raise_for_status()
        counted = http.get("/_emulator/requests").json()
    return json.dumps(counted, indent=2) + "\n"


# ---------------------------------------------------- the tests (last: after every producer)


@pytest.mark.parametrize("name", sorted(PRODUCERS))
def test_the_documented_example_is_what_the_command_prints(
        name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    produced = PRODUCERS[name](tmp_path)
    assert produced.endswith("\n")
    examples = documented()
    assert name in examples, f"no <!-- example: {name} --> block in the documents"
    if os.environ.get("UPDATE_DOC_EXAMPLES"):
        rewrite(name, produced)
        return
    doc, text = examples[name]
    assert text == produced, f"{doc.name}: example {name} drifted; run UPDATE_DOC_EXAMPLES=1"


def test_every_example_block_is_produced_here_and_every_output_block_is_an_example() -> None:
    examples = documented()
    assert set(examples) == set(PRODUCERS), "an example without its producer (or back)"
    for doc in DOCUMENTS:
        content = doc.read_text(encoding="utf-8")
        marked = {m.start(2) for m in MARKER.finditer(content)}
        fences = list(FENCE.finditer(content))
        for opening in fences[0::2]:  # opening fences: every other one
            if opening.group(1) == "text":
                start = opening.start(1)
                assert start in marked, (
                    f"{doc.name}:{content[:start].count(chr(10)) + 1}: a ```text block "
                    "(an example output) without <!-- example: NAME -->")
