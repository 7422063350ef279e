"""``reconciler run --git-url`` against real git and a real emulator: a bare repository in
tmp_path (``file://`` and ``git daemon`` on loopback), commits, reverts and force-pushes made
by the tests, the daemon as a real subprocess, ``/_emulator/executions`` as the proof of what
ran.

- the daemon follows the ref; a revert runs nothing again; a force-push to an older tree is
  followed and nothing runs twice;
- a typo in a stalled manifest keeps it (not orphaned, ``invalid`` with FILE:LINE, its
  ``command_failed``/``command_stalled`` stay 1, ``manifest_invalid`` 1);
- an empty tree orphans nothing without ``--allow-empty`` (also after a restart) and does
  with it;
- an unreachable remote keeps the last tree: ``source_errors_total`` grows, ``/readyz``
  stays ready; ``/readyz`` is not ready before the first tree;
- a signed webhook right after a push reaches the run POST within about one fetch (with
  ``--git-interval 1h``, so only the webhook can explain it);
- ``--manifests https://.../x.git`` fails with the "use --git-url" hint.
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from git_support import GitDaemon, Remote, free_port
from integration_support import (
    cli_env,
    executions,
    manifest,
    parse_time,
    reconciler,
    running_emulator,
    stop_process,
    wait_for,
)

from reconciler.ailake.emulator import RunningEmulator
from reconciler.model.lifecycle import IntentState as S
from reconciler.runtime.listener import sign

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="needs the git CLI")

SECRET = "hook-secret-for-tests"


def doc(name: str, command: str = "quick", **spec: Any) -> str:
    """One manifest file's text; the payload names the manifest (to count executions)."""
    spec.setdefault("payload", {"name": name})
    return yaml.safe_dump(manifest(name, command, **spec), sort_keys=False)


def ran(url: str) -> dict[str, int]:
    """Executions by manifest name (from the payload)."""
    counts: dict[str, int] = {}
    for e in executions(url):
        name = (e.get("payload") or {}).get("name", "?")
        counts[name] = counts.get(name, 0) + 1
    return counts


@pytest.fixture
def emulator() -> Iterator[RunningEmulator]:
    with running_emulator() as emu:
        yield emu


@pytest.fixture
def remote(tmp_path: Path) -> Remote:
    r = Remote(tmp_path / "srv")
    r.commit({"manifests/README.md": "manifests live here\n",
              "manifests/a.yaml": doc("a")}, "first")
    return r


class Running:
    """A ``reconciler run --git-url`` subprocess and its HTTP surface."""

    def __init__(self, proc: subprocess.Popen[str], url: str, log: Path,
                 api_url: str) -> None:
        self.proc = proc
        self.url = url
        self.log = log
        self.api_url = api_url

    def get(self, path: str) -> httpx.Response:
        return httpx.get(self.url + path, timeout=5)

    def status(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.get("/status").json()
        return answer

    def states(self) -> dict[str, str]:
        return {i["name"]: i["state"] for i in self.status()["intents"]}

    def metrics(self) -> str:
        return self.get("/metrics").text

    def metric(self, metric: str, /, **labels: str) -> float | None:
        """The value of one series of ``ailake_reconciler_<metric>`` (None: absent)."""
        for line in self.metrics().splitlines():
            if not line.startswith(f"ailake_reconciler_{metric}"):
                continue
            match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
            if match is None or match.group(1) != f"ailake_reconciler_{metric}":
                continue
            found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(2) or ""))
            if all(found.get(k) == v for k, v in labels.items()):
                return float(match.group(3))
        return None

    def listening(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return self.get("/healthz").status_code == 200
        return False

    def ready(self) -> bool:
        with contextlib.suppress(httpx.HTTPError):
            return self.get("/readyz").status_code == 200
        return False

    def revision(self) -> str | None:
        with contextlib.suppress(httpx.HTTPError, ValueError):
            rev: str | None = self.status()["source"]["revision"]
            return rev
        return None

    def settled_at(self, sha: str, timeout: float = 15) -> None:
        """Wait until the daemon serves ``sha`` and a pass has planned it (every view
        is settled: nothing in flight, nothing due)."""
        def done() -> bool:
            document = self.status()
            return (document["revision"] == sha and document["source"]["revision"] == sha
                    and all(i["state"] not in (S.SUBMITTING, S.PENDING)
                            for i in document["intents"]))
        wait_for(done, timeout=timeout, step=0.1, what=f"the daemon at {sha[:12]}")

    def logs(self) -> list[dict[str, Any]]:
        lines = []
        for line in self.log.read_text(encoding="utf-8").splitlines():
            with contextlib.suppress(ValueError):
                lines.append(json.loads(line))
        return lines


@contextlib.contextmanager
def daemon(tmp_path: Path, git_url: str, api_url: str, *extra: str,
           env: dict[str, str] | None = None, name: str = "daemon",
           wait_ready: bool = True) -> Iterator[Running]:
    """``reconciler run --git-url GIT_URL --git-path manifests`` on a free port, fast."""
    port = free_port()
    log = tmp_path / f"{name}.log"
    with open(log, "w", encoding="utf-8") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "reconciler", "run", "--git-url", git_url,
             "--git-path", "manifests", "--api-url", api_url,
             "--state", str(tmp_path / "state.db"), "--listen", f"127.0.0.1:{port}",
             "--interval", "1s", "--git-interval", "1s", "--git-timeout", "10s",
             "--request-timeout", "2s", "--settle-window", "3s", "--log-format", "json",
             *extra],
            stdout=out, stderr=subprocess.STDOUT, text=True, env=cli_env(env))
    running = Running(proc, f"http://127.0.0.1:{port}", log, api_url)
    try:
        wait_for(lambda: proc.poll() is not None or (running.ready() if wait_ready
                                                      else running.listening()),
                 timeout=20, what="/readyz" if wait_ready else "the listener")
        assert proc.poll() is None, log.read_text()
        yield running
    finally:
        stop_process(proc)


def test_the_daemon_follows_the_ref_and_a_force_push_to_an_older_tree(
        tmp_path: Path, emulator: RunningEmulator, remote: Remote) -> None:
    first = remote.head()
    with daemon(tmp_path, remote.url, emulator.url) as d:
        wait_for(lambda: ran(emulator.url) == {"a": 1}, timeout=15, what="a executed")
        d.settled_at(first)
        # a new commit's manifest is executed
        second = remote.commit({"manifests/team/b.yaml": doc("b")}, "add b")
        wait_for(lambda: ran(emulator.url) == {"a": 1, "b": 1}, timeout=15, what="b executed")
        d.settled_at(second)
        assert d.states() == {"a": S.IN_SYNC, "b": S.IN_SYNC}
        # a force-push back to the first tree: b is gone (orphaned), nothing runs twice
        remote.force_push(first)
        wait_for(lambda: d.states().get("b") == S.ORPHANED, timeout=15, what="b orphaned")
        d.settled_at(first)
        time.sleep(2)  # a few more passes and fetches
        assert ran(emulator.url) == {"a": 1, "b": 1}
        assert d.states() == {"a": S.IN_SYNC, "b": S.ORPHANED}
        source = d.status()["source"]
        assert (source["kind"], source["revision"], source["errors"]) == ("git", first, 0)
        assert source["location"] == f"{remote.url}@main:manifests"
    switched = [e["revision"] for e in d.logs() if e.get("event") == "git_switched"]
    assert switched == [first, second, first]


def test_a_revert_runs_nothing_again(tmp_path: Path, emulator: RunningEmulator,
                                     remote: Remote) -> None:
    with daemon(tmp_path, remote.url, emulator.url) as d:
        wait_for(lambda: ran(emulator.url) == {"a": 1}, timeout=15, what="a executed")
        rerun = remote.commit({"manifests/a.yaml": doc("a", rerun="2")}, "rerun a")
        wait_for(lambda: ran(emulator.url) == {"a": 2}, timeout=15,
                 what="a's new spec executed")
        d.settled_at(rerun)
        reverted = remote.revert()
        d.settled_at(reverted)
        time.sleep(2)  # a few more passes and fetches
        assert ran(emulator.url) == {"a": 2}
        assert d.states() == {"a": S.IN_SYNC}
        assert d.proc.poll() is None


def test_a_typo_in_a_stalled_manifest_keeps_its_state_and_alerts(
        tmp_path: Path, emulator: RunningEmulator, remote: Remote) -> None:
    good = doc("doomed", "broken", retry={"limit": 0})
    remote.commit({"manifests/doomed.yaml": good}, "doomed")
    with daemon(tmp_path, remote.url, emulator.url) as d:
        wait_for(lambda: d.states().get("doomed") == S.STALLED, timeout=15, what="stalled")
        labels = {"name": "doomed", "command": "broken"}
        assert d.metric("command_failed", **labels) == 1
        assert d.metric("command_stalled", **labels) == 1
        typo = good.replace("  command: broken", "  comand: broken")
        assert typo != good
        broken = remote.commit({"manifests/doomed.yaml": typo}, "typo")
        wait_for(lambda: d.states().get("doomed") == S.INVALID, timeout=15, what="invalid")
        d.settled_at(broken)
        time.sleep(1.5)  # passes go by: it stays, nothing is orphaned or sent
        item = next(i for i in d.status()["intents"] if i["name"] == "doomed")
        assert item["state"] == S.INVALID
        assert re.search(r"manifests/doomed\.yaml:\d+: doomed: ", item["reason"]), item
        assert item["attempts"] == 1 and item["operationId"], item
        assert d.metric("command_failed", **labels) == 1
        assert d.metric("command_stalled", **labels) == 1
        assert d.metric("manifest_invalid", name="doomed", file="manifests/doomed.yaml") == 1
        assert d.metric("intents", state="invalid") == 1
        assert d.metric("intents", state="orphaned") == 0
        assert ran(emulator.url) == {"a": 1, "doomed": 1}
        assert d.status()["orphaningWithheld"] is None  # the source itself loaded cleanly
        # fixed: stalled again (the same intent), the invalid series vanishes
        fixed = remote.commit({"manifests/doomed.yaml": good}, "fix")
        d.settled_at(fixed)
        wait_for(lambda: d.states().get("doomed") == S.STALLED, timeout=10, what="stalled")
        assert d.metric("manifest_invalid", name="doomed") is None
        assert d.metric("command_stalled", **labels) == 1
        assert ran(emulator.url) == {"a": 1, "doomed": 1}


def test_an_empty_tree_orphans_nothing_without_allow_empty_and_does_with_it(
        tmp_path: Path, emulator: RunningEmulator, remote: Remote) -> None:
    remote.commit({"manifests/b.yaml": doc("b")}, "b")
    with daemon(tmp_path, remote.url, emulator.url) as d:
        wait_for(lambda: ran(emulator.url) == {"a": 1, "b": 1}, timeout=15, what="executed")
        wait_for(lambda: d.states() == {"a": S.IN_SYNC, "b": S.IN_SYNC}, timeout=10,
                 what="in sync")
        empty = remote.commit({"manifests/a.yaml": None, "manifests/b.yaml": None}, "empty")
        d.settled_at(empty)
        time.sleep(1.5)
        assert d.states() == {"a": S.IN_SYNC, "b": S.IN_SYNC}
        assert "nothing is orphaned" in d.status()["orphaningWithheld"]
        assert d.metric("source_empty_withheld") == 1
        assert d.metric("intents", state="orphaned") == 0
        assert any(e.get("event") == "orphaning_withheld" for e in d.logs())
    with daemon(tmp_path, remote.url, emulator.url, name="restarted") as d:  # the store
        d.settled_at(empty)                                 # stands for the last good tree
        time.sleep(1.5)
        assert d.states() == {"a": S.IN_SYNC, "b": S.IN_SYNC}
        assert d.metric("source_empty_withheld") == 1
    with daemon(tmp_path, remote.url, emulator.url, "--allow-empty", name="allowed") as d:
        wait_for(lambda: d.states() == {"a": S.ORPHANED, "b": S.ORPHANED}, timeout=15,
                 what="orphaned with --allow-empty")
        assert d.metric("source_empty_withheld") == 0
        assert d.status()["orphaningWithheld"] is None
    assert ran(emulator.url) == {"a": 1, "b": 1}


def test_an_unreachable_remote_keeps_the_last_tree_and_reports_it(
        tmp_path: Path, emulator: RunningEmulator, remote: Remote) -> None:
    served = GitDaemon(remote.base).start()
    try:
        with daemon(tmp_path, served.url(), emulator.url) as d:
            wait_for(lambda: ran(emulator.url) == {"a": 1}, timeout=15, what="a executed")
            first = remote.head()
            d.settled_at(first)
            assert d.metric("source_errors_total") == 0
            success = d.metric("source_last_success_timestamp_seconds")
            assert success is not None and success > time.time() - 30
            served.stop()
            remote.commit({"manifests/b.yaml": doc("b")}, "b, never fetched")
            wait_for(lambda: (d.metric("source_errors_total") or 0) >= 2, timeout=15,
                     what="errors counted")
            errors = d.metric("source_errors_total") or 0
            wait_for(lambda: (d.metric("source_errors_total") or 0) > errors, timeout=10,
                     what="errors growing")
            assert d.ready()
            stale = d.metric("source_last_success_timestamp_seconds")
            assert stale is not None and stale <= time.time() - 1
            document = d.status()
            assert document["source"]["revision"] == first
            assert document["source"]["lastError"]
            assert "127.0.0.1" in document["source"]["lastError"]
            assert d.states() == {"a": S.IN_SYNC}
            assert ran(emulator.url) == {"a": 1}
            # reachable again: followed
            served.start()
            wait_for(lambda: ran(emulator.url) == {"a": 1, "b": 1}, timeout=15,
                     what="b executed after the remote came back")
            assert (d.metric("source_last_success_timestamp_seconds") or 0) > stale
            assert d.status()["source"]["lastError"] is None
    finally:
        served.stop()


def test_not_ready_until_the_first_tree(tmp_path: Path, emulator: RunningEmulator,
                                        remote: Remote) -> None:
    served = GitDaemon(remote.base)  # not started yet: nothing listens on its port
    try:
        with daemon(tmp_path, served.url(), emulator.url, wait_ready=False) as d:
            wait_for(lambda: (d.metric("source_errors_total") or 0) >= 1, timeout=15,
                     what="the first fetch failed")
            answer = d.get("/readyz")
            assert answer.status_code == 503 and "not loaded yet" in answer.text
            assert d.status()["source"]["revision"] is None
            assert executions(emulator.url) == []
            served.start()
            wait_for(d.ready, timeout=20, what="ready after the first tree")
            wait_for(lambda: ran(emulator.url) == {"a": 1}, timeout=15, what="a executed")
    finally:
        served.stop()


def _push_and_hook(d: Running, remote: Remote, name: str) -> float:
    """Push a new manifest, POST the signed webhook at once; seconds from the end of the
    push to the start of its execution on the emulator (its run POST)."""
    body = json.dumps({"ref": "refs/heads/main", "after": "x"}).encode()
    remote.commit({f"manifests/{name}.yaml": doc(name, "instant")}, f"add {name}")
    pushed = time.time()
    answer = httpx.post(d.url + "/hooks/reconcile", content=body, timeout=5,
                        headers={"X-Hub-Signature-256": sign(body, SECRET),
                                 "X-GitHub-Event": "push"})
    assert answer.status_code == 202, answer.text
    started = wait_for(lambda: next((parse_time(e["startedAt"]).timestamp()
                                     for e in executions(d.api_url)
                                     if (e.get("payload") or {}).get("name") == name), None),
                       timeout=10, step=0.02, what=f"{name} executed")
    return float(started) - pushed


def _hook_daemon(tmp_path: Path, remote: Remote,
                 api_url: str) -> contextlib.AbstractContextManager[Running]:
    return daemon(tmp_path, remote.url, api_url, "--git-interval", "1h",
                  env={"RECONCILER_WEBHOOK_SECRET": SECRET})


def test_a_signed_webhook_after_a_push_reaches_the_run_post_within_one_fetch(
        tmp_path: Path, emulator: RunningEmulator, remote: Remote) -> None:
    with _hook_daemon(tmp_path, remote, emulator.url) as d:
        wait_for(lambda: ran(emulator.url) == {"a": 1}, timeout=15, what="a executed")
        # without the hook, --git-interval 1h: a push is not seen
        quiet = remote.commit({"manifests/q.yaml": doc("q", "instant")}, "add q")
        time.sleep(3)
        assert "q" not in ran(emulator.url) and d.revision() != quiet
        latency = _push_and_hook(d, remote, "h1")
        assert latency < 5, f"push -> run POST took {latency:.2f}s"
        assert ran(emulator.url)["h1"] == 1
        # an unsigned or wrongly signed hook triggers nothing
        bad = httpx.post(d.url + "/hooks/reconcile", content=b"{}", timeout=5,
                         headers={"X-Hub-Signature-256": sign(b"{}", "wrong")})
        assert bad.status_code == 401


@pytest.mark.slow
def test_webhook_latency_over_ten_pushes(tmp_path: Path, emulator: RunningEmulator,
                                         remote: Remote) -> None:
    """Prints p50/p99 of push -> run POST over 10 pushes (``pytest -m slow -s -k latency``)."""
    with _hook_daemon(tmp_path, remote, emulator.url) as d:
        wait_for(lambda: ran(emulator.url) == {"a": 1}, timeout=15, what="a executed")
        samples = sorted(_push_and_hook(d, remote, f"p{i}") for i in range(10))
    p50 = statistics.median(samples)
    p99 = samples[-1]  # 10 samples: the 99th percentile is the maximum
    print(f"\npush -> run POST via the webhook over {len(samples)} pushes: "
          f"p50 {p50:.2f}s, p99 {p99:.2f}s, min {samples[0]:.2f}s")
    assert p99 < 5


def test_run_once_with_git_url_converges_and_exits_0(
        tmp_path: Path, emulator: RunningEmulator, remote: Remote) -> None:
    done = reconciler("run", "--once", "--git-url", remote.url, "--git-path", "manifests",
                      "--api-url", emulator.url, "--state", tmp_path / "state.db",
                      "--listen", "", "--interval", "1s", "--request-timeout", "2s",
                      "--log-format", "json", timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    assert ran(emulator.url) == {"a": 1}
    cache = tmp_path / ".reconciler-git"
    assert cache.is_dir() and oct(next(cache.iterdir()).stat().st_mode & 0o777) == "0o700"


def test_run_once_without_a_first_tree_exits_1(tmp_path: Path,
                                              emulator: RunningEmulator) -> None:
    done = reconciler("run", "--once", "--git-url", (tmp_path / "nowhere.git").as_uri(),
                      "--api-url", emulator.url, "--state", tmp_path / "state.db",
                      "--listen", "", "--log-format", "json", "--git-timeout", "10s",
                      timeout=60)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    assert "giving_up" in done.stdout


@pytest.mark.parametrize("value", ["https://example.invalid/x.git",
                                   "git@example.invalid:team/x.git"])
def test_manifests_given_a_git_url_fails_with_the_use_git_url_hint(value: str) -> None:
    done = reconciler("run", "--manifests", value, "--api-url", "http://127.0.0.1:9")
    assert done.returncode == 1
    assert "use --git-url" in done.stderr
    assert "Traceback" not in done.stderr + done.stdout


def test_manifests_and_git_url_together_are_refused(tmp_path: Path) -> None:
    done = reconciler("run", "--manifests", tmp_path, "--git-url", "https://example.invalid/x",
                      "--api-url", "http://127.0.0.1:9")
    assert done.returncode == 1 and "not both" in done.stderr
    done = reconciler("run", "--api-url", "http://127.0.0.1:9")
    assert done.returncode == 1 and "--git-url" in done.stderr and "--manifests" in done.stderr


def test_the_git_token_never_reaches_the_logs_or_status(tmp_path: Path,
                                                        emulator: RunningEmulator) -> None:
    token = "ghp_SECRETtoken1234567890"
    token_file = tmp_path / "token"
    token_file.write_text(token + "\n")
    url = f"http://127.0.0.1:{free_port()}/x.git"  # nothing listens: every fetch fails
    with daemon(tmp_path, url, emulator.url, "--git-token-file", str(token_file),
                wait_ready=False) as d:
        wait_for(lambda: (d.metric("source_errors_total") or 0) >= 1, timeout=15,
                 what="a failed fetch")
        shown = json.dumps(d.status()) + d.get("/readyz").text + d.metrics()
    text = d.log.read_text() + shown
    assert "127.0.0.1" in text  # the failure is reported...
    assert token not in text  # ...without the token, nor its Basic credentials
    assert base64.b64encode(f"x-access-token:{token}".encode()).decode() not in text
