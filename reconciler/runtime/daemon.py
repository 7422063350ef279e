"""The daemon: the reconcile loop, its triggers, its HTTP listener and its signals.

One loop: load manifests (when their files changed, on SIGHUP, on the webhook, or every
interval), plan and execute (:class:`~reconciler.execution.engine.Engine`), update metrics, then
sleep until the earliest of: the next poll or retry due, the next schedule window, the
interval (with jitter), or a trigger. SIGTERM/SIGINT stop submitting, let the current
pass record what it started (within the grace period), and exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import socket
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import structlog
import uvicorn

from reconciler import __version__
from reconciler.ailake.client import AiLakeClient, ClientSettings
from reconciler.errors import ApiError, ConfigError, ReconcilerError
from reconciler.execution.engine import Engine, EngineSettings, Transition, utcnow
from reconciler.listen import bind_socket, parse_listen
from reconciler.model.manifest import LoadResult
from reconciler.observe.metrics import Metrics
from reconciler.planning.planner import Limits, Plan, View
from reconciler.runtime.leader import LeaderElector, LeaseSettings
from reconciler.runtime.listener import Surface, create_app
from reconciler.source.loader import load_manifests
from reconciler.source.watcher import SourceWatcher
from reconciler.store.sqlite import Store

__all__ = ["Daemon", "DaemonSettings", "log_transition", "read_secret"]

log = structlog.get_logger("reconciler.runtime.daemon")

SETTLED_FAILED = ("failed", "stalled")
#: seconds between passes that have due work but made no progress (API failing)
MIN_RETRY_SLEEP = 1.0
#: consecutive failed passes without any progress after which ``--once`` gives up
ONCE_MAX_FAILING_PASSES = 5
#: seconds /readyz may spend checking the API (the chart's probe times out after 3 s)
READY_TIMEOUT = 2.5


@dataclass(frozen=True)
class DaemonSettings:
    """Everything ``reconciler run`` is configured with. Secrets never show in repr."""

    manifests: Path
    api_url: str
    state: str = "./reconciler-state.db"
    interval: float = 60.0
    listen: str | None = "0.0.0.0:8080"
    once: bool = False
    token: str | None = field(default=None, repr=False)
    webhook_secret: str | None = field(default=None, repr=False)
    ca_file: str | None = None
    rate_limit: float | None = 10.0
    max_in_flight: int = 16
    max_per_service: int = 4
    grace_period: float = 25.0
    retention: int = 50
    watch_period: float = 2.0
    poll_initial: float = 1.0
    poll_max: float = 30.0
    request_timeout: float = 30.0
    #: retries of a GET inside one call (capped exponential backoff, full jitter)
    api_retries: int = 5

    def client_settings(self) -> ClientSettings:
        return ClientSettings(base_url=self.api_url, token=self.token, ca_file=self.ca_file,
                              rate_limit=self.rate_limit, timeout=self.request_timeout,
                              get_retries=self.api_retries)

    def engine_settings(self) -> EngineSettings:
        return EngineSettings(limits=Limits(self.max_in_flight, self.max_per_service),
                              poll_initial=self.poll_initial, poll_max=self.poll_max,
                              settle=self.request_timeout)


def log_transition(event: Transition) -> None:
    """The engine listener that writes one structured log event per transition."""
    fields: dict[str, Any] = {
        "name": event.name, "service": event.service, "command": event.command,
        "state": event.state, "previous": event.previous,
        "operation_id": event.operation_id, "attempt": event.attempt,
        "revision": event.revision,
    }
    if event.duration is not None:
        fields["duration"] = round(event.duration, 3)
    if event.error:
        fields["error_title"] = event.error.get("title")
        fields["error_detail"] = event.error.get("detail")
        fields["error_status"] = event.error.get("status")
        fields["trace_id"] = event.error.get("traceId")
    if event.reason:
        fields["reason"] = event.reason
    level = "warning" if event.state in SETTLED_FAILED else "info"
    getattr(log, level)("transition", **fields)


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling: the daemon owns SIGTERM/SIGINT/SIGHUP."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


class Daemon:
    """``reconciler run``: reconcile until stopped (or, with ``once``, until settled)."""

    def __init__(
        self,
        settings: DaemonSettings,
        *,
        clock: Callable[[], datetime] = utcnow,
        listeners: Sequence[Callable[[Transition], None]] = (),
        transport: httpx.AsyncBaseTransport | None = None,
        on_listening: Callable[[str], None] | None = None,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.extra_listeners = list(listeners)
        self.transport = transport
        self.on_listening = on_listening
        self.load: LoadResult | None = None
        self.plan: Plan | None = None
        self.exit_code = 0
        self.store: Store | None = None
        self.metrics: Metrics | None = None
        self.client: AiLakeClient | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._reasons: list[str] = []
        self._heartbeat = time.monotonic()
        self._api_ok: tuple[float, bool, str] | None = None
        self._source = SourceWatcher(settings.manifests)
        self._transitions = 0
        self._transitions_seen = 0
        self._failing_passes = 0
        self.url: str | None = None
        self.elector: LeaderElector | None = None

    # ------------------------------------------------------------------ control

    def trigger(self, reason: str) -> None:
        """Reconcile now (debounced: triggers arriving together make one pass)."""
        self._reasons.append(reason)
        self._wake.set()

    @property
    def stopped(self) -> bool:
        """Whether the daemon was told to stop (SIGTERM/SIGINT) rather than converging."""
        return self._stopping

    def stop(self) -> None:
        """Stop submitting, finish recording, exit."""
        if not self._stopping:
            log.info("stopping", grace_period=self.settings.grace_period)
        self._stopping = True
        self._wake.set()

    # ------------------------------------------------------------------ surface

    def healthy(self) -> tuple[bool, str]:
        stuck_after = 3 * max(self.settings.interval, self.settings.grace_period, 10.0)
        age = time.monotonic() - self._heartbeat
        if age > stuck_after:
            return False, f"reconcile loop silent for {age:.0f}s (limit {stuck_after:.0f}s)"
        return True, f"loop alive ({age:.0f}s since last pass)"

    async def ready(self) -> tuple[bool, str]:
        if self.load is None:
            return False, "manifests not loaded yet"
        checked = self._api_ok
        if checked is None or time.monotonic() - checked[0] > 30.0:
            await self._check_api()
            checked = self._api_ok
        assert checked is not None
        return checked[1], checked[2]

    async def _check_api(self) -> None:
        assert self.client is not None
        try:
            # One page (page_size=1 paged through every service, one request each) and
            # bounded below the probe's timeout: a failing API makes the daemon unready
            # instead of hanging /readyz through the client's retries.
            await asyncio.wait_for(self.client.list_services(page_size=500), READY_TIMEOUT)
        except TimeoutError:
            self._api_ok = (time.monotonic(), False,
                            f"AI Lake API did not answer within {READY_TIMEOUT:g}s")
        except ApiError as exc:
            self._api_ok = (time.monotonic(), False, f"AI Lake API not usable: {exc}")
        else:
            self._api_ok = (time.monotonic(), True, "manifests loaded, API reachable")

    def status_document(self) -> dict[str, Any]:
        """``/status``: every manifest with its state, attempts and last operation."""
        records = self.store.latest_by_name() if self.store else {}
        views: Mapping[str, View] = {v.name: v for v in (self.plan.views if self.plan else ())}
        items = []
        for name in sorted(set(views) | set(records)):
            view, rec = views.get(name), records.get(name)
            current = rec if rec and view and rec.spec_hash == view.spec_hash else None
            items.append({
                "name": name,
                "state": view.state if view else ("orphaned" if rec else "unknown"),
                "reason": view.reason if view else "",
                "service": rec.service if rec else None,
                "command": rec.command if rec else None,
                "specHash": view.spec_hash if view else (rec.spec_hash if rec else None),
                "attempts": current.attempts if current else 0,
                "operationId": current.operation_id if current else None,
                "window": current.window if current else None,
                "error": dict(current.last_error) if current and current.last_error else None,
                "revision": current.revision if current else None,
                "updatedAt": current.updated_at.isoformat() if current else None,
            })
        load = self.load
        return {
            "version": __version__,
            "revision": load.revision if load else None,
            "invalidManifests": [str(p) for p in load.problems] if load else [],
            "intents": items,
        }

    # ------------------------------------------------------------------ the loop

    async def run(self) -> int:
        """Run until stopped; the exit status (``once``: 0 in sync, 1 failures)."""
        s = self.settings
        if not s.manifests.exists():
            raise ConfigError(f"manifest source {s.manifests} does not exist")
        self.store = Store(s.state, retention=s.retention)
        self.metrics = Metrics(self.store)
        lease = None if s.once else LeaseSettings.from_env()
        if lease is not None:
            self.elector = LeaderElector(lease, on_change=self._leadership)
        self.metrics.leader.set(0 if self.elector else 1)
        async with AiLakeClient(s.client_settings(), transport=self.transport,
                                observer=self.metrics.observe_request) as client:
            self.client = client
            engine = Engine(client, self.store, settings=s.engine_settings(),
                            clock=self.clock,
                            listeners=[log_transition, self.metrics.on_transition,
                                       self._count, *self.extra_listeners])
            server = await self._serve()
            self._install_signals()
            watcher = asyncio.create_task(self._watch())
            election = asyncio.create_task(self.elector.run()) if self.elector else None
            try:
                await self._loop(engine)
            finally:
                watcher.cancel()
                if self.elector is not None and election is not None:
                    await self.elector.release()  # after the last pass recorded; run() returns
                    election.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await election
                self._remove_signals()
                if server is not None:
                    server.should_exit = True
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(server.shutdown(), 5)
                self.store.close()
        return self.exit_code

    async def _loop(self, engine: Engine) -> None:
        s = self.settings
        next_load = 0.0
        while True:
            self._heartbeat = time.monotonic()
            # file changes arrive as a trigger from _watch; no stat pass on every wake-up
            if self.load is None or self._reasons or time.monotonic() >= next_load:
                reasons = self._reasons or (["start"] if self.load is None else ["interval"])
                self._load(reasons)
                next_load = time.monotonic() + s.interval * random.uniform(0.9, 1.1)
            self._reasons = []
            assert self.load is not None
            if self.elector is not None and not self.elector.is_leader:
                # standby: manifests loaded (so /readyz passes), nothing reconciled
                if self._stopping:
                    return
                await self._sleep(next_load - time.monotonic())
                continue
            await self._pass(engine, self.load)
            if self._stopping:
                return
            if s.once and self._settled():
                self.exit_code = self._once_exit_code()
                log.info("converged", exit_code=self.exit_code)
                return
            if s.once and self._failing_passes >= ONCE_MAX_FAILING_PASSES:
                self.exit_code = 1
                log.error("giving_up", passes=self._failing_passes,
                          reason="the AI Lake API failed on every pass without progress; "
                          "--once stops instead of waiting forever")
                return
            await self._sleep(min(next_load - time.monotonic(), self._until_wake()))

    def _load(self, reasons: Sequence[str]) -> None:
        assert self.metrics is not None and self.store is not None
        self._source.mark()
        load = load_manifests(self.settings.manifests)
        changed = self.load is None or load.revision != self.load.revision
        for problem in load.problems if changed else ():
            log.error("invalid_manifest", file=problem.file, line=problem.line,
                      name=problem.name, message=problem.message)
        self.load = load
        self.metrics.loaded(((c.name, c.service.label, c.command) for c in load.commands),
                            invalid=load.invalid, revision=load.revision)
        if changed:
            log.info("manifests_loaded", revision=load.revision, manifests=len(load.commands),
                     invalid=load.invalid, files=load.files, trigger=",".join(reasons))

    async def _pass(self, engine: Engine, load: LoadResult) -> None:
        assert self.metrics is not None and self.store is not None
        started = time.monotonic()
        transitions = self._transitions
        task = asyncio.ensure_future(engine.reconcile(load, submit=not self._stopping))
        try:
            if self._stopping:
                await asyncio.wait_for(task, self.settings.grace_period)
            else:
                await self._shielded(task)
            task.result()
            # Re-plan after executing (pure, no API calls): views and the next wake-up
            # must reflect what this pass just recorded.
            self.plan = engine.plan(load)
            ok = engine.failed_actions == 0
        except (TimeoutError, ReconcilerError) as exc:
            ok = False
            log.error("reconcile_failed", error=str(exc), error_type=type(exc).__name__)
        stuck = not ok and self._transitions == transitions
        self._failing_passes = self._failing_passes + 1 if stuck else 0
        orphaned = len(self.store.names() - {c.name for c in load.commands})
        self.metrics.reconciled(self.plan,
                                duration=time.monotonic() - started, ok=ok, orphaned=orphaned)
        if ok and self.plan is not None:
            self.store.prune()

    async def _shielded(self, task: asyncio.Future[Plan]) -> None:
        """Wait for a pass; on SIGTERM give it the grace period to record, then cancel."""
        while not task.done():
            stop = asyncio.ensure_future(self._wait_stop())
            waiting: set[asyncio.Future[Any]] = {task, stop}
            done, _ = await asyncio.wait(waiting, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if task not in done:
                try:
                    await asyncio.wait_for(asyncio.shield(task), self.settings.grace_period)
                except TimeoutError:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
                    raise
        task.result()

    async def _wait_stop(self) -> None:
        while not self._stopping:
            self._wake.clear()
            await self._wake.wait()

    def _until_wake(self) -> float:
        """Seconds until the plan has something due: 0 when the pass just made progress
        and more is executable now (a dependency finished), else the plan's wake-up, and
        never a busy loop when a pass made no progress (the API is failing)."""
        if self.plan is None:
            return float("inf")
        progressed = self._transitions != self._transitions_seen
        self._transitions_seen = self._transitions
        if self.plan.executable:
            return 0.0 if progressed else MIN_RETRY_SLEEP
        if self.plan.wake_at is None:
            return float("inf")
        return (self.plan.wake_at - self.clock()).total_seconds()

    def _leadership(self, leader: bool) -> None:
        """The elector's on_change: the gauge, a pass on acquiring, exit on losing."""
        assert self.metrics is not None
        self.metrics.leader.set(1 if leader else 0)
        if leader:
            self.trigger("leader")
        elif not self._stopping:
            log.error("leadership_lost", action="exiting; the pod restarts as a standby")
            self.exit_code = 1
            self.stop()

    def _count(self, _event: Transition) -> None:
        self._transitions += 1

    async def _sleep(self, seconds: float) -> None:
        seconds = max(0.0, min(seconds, self.settings.interval))
        self._wake.clear()
        if self._reasons or self._stopping:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    async def _watch(self) -> None:
        """Trigger a pass as soon as manifest files change."""
        while True:
            await asyncio.sleep(self.settings.watch_period)
            if self._source.content and self._source.changed():
                self.trigger("manifests changed")

    def _settled(self) -> bool:
        if self.plan is None or self.store is None:
            return False
        if any(r.in_flight for r in self.store.intents().values()):
            return False
        if self.plan.changes:
            return False
        return all(v.settled for v in self.plan.views)

    def _once_exit_code(self) -> int:
        assert self.plan is not None and self.load is not None
        bad = any(v.state in SETTLED_FAILED for v in self.plan.views)
        return 1 if bad or self.load.problems else 0

    # ------------------------------------------------------------------ edges

    async def _serve(self) -> uvicorn.Server | None:
        if self.settings.listen is None:
            return None
        assert self.metrics is not None
        metrics = self.metrics
        host, port = parse_listen(self.settings.listen)
        app = create_app(
            Surface(metrics=metrics.exposition, healthy=self.healthy, ready=self.ready,
                    status=self.status_document, trigger=self.trigger),
            webhook_secret=self.settings.webhook_secret,
        )
        try:
            sock = bind_socket(host, port)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {self.settings.listen}: {exc.strerror}") from exc
        sock.setblocking(False)
        # log_config=None: uvicorn's records go through the root handler of logs.configure
        # (JSON, scrubbed) instead of its own plain-text handler on stderr.
        config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off",
                                log_config=None)
        server = _Server(config)
        asyncio.get_running_loop().create_task(server.serve(sockets=[sock]))
        bound = sock.getsockname()
        shown = f"[{bound[0]}]" if sock.family == socket.AF_INET6 else bound[0]
        self.url = f"http://{shown}:{bound[1]}"
        log.info("listening", url=self.url, webhook=self.settings.webhook_secret is not None)
        if self.on_listening is not None:
            self.on_listening(self.url)
        return server

    def _install_signals(self) -> None:
        loop = asyncio.get_running_loop()
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signal.SIGTERM, self.stop)
            loop.add_signal_handler(signal.SIGINT, self.stop)
            loop.add_signal_handler(signal.SIGHUP, self.trigger, "SIGHUP")

    def _remove_signals(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
                loop.remove_signal_handler(sig)


def read_secret(value: str | None, file: str | None, what: str) -> str | None:
    """A secret from a file (a mounted Secret; surrounding whitespace dropped) or a value."""
    if file:
        try:
            text = Path(file).read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise ConfigError(f"cannot read the {what} file {file}: {exc.strerror}") from exc
        if not text:
            raise ConfigError(f"the {what} file {file} is empty")
        return text
    return value or None
