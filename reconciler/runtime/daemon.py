"""The daemon: the reconcile loop, its triggers, its signals and the leadership hand-off.

One loop: load manifests (when their files changed, on SIGHUP, on the webhook, or every
interval), plan and execute (:class:`~reconciler.execution.engine.Engine`), update metrics, then
sleep until the earliest of: the next poll or retry due, the next schedule window, the
interval (with jitter), or a trigger. SIGTERM/SIGINT stop submitting, let the current
pass record what it started (within the grace period), and exit.

Its settings are in :mod:`~reconciler.runtime.settings`, its HTTP listener in
:mod:`~reconciler.runtime.listener`, the health rules in :mod:`~reconciler.runtime.readiness`,
the rows of ``/status`` in :mod:`reconciler.observe.status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import httpx
import structlog

from reconciler.ailake.client import AiLakeClient
from reconciler.errors import ConfigError, ReconcilerError
from reconciler.execution.engine import Engine, Transition, utcnow
from reconciler.model.lifecycle import SETTLED_BAD
from reconciler.model.manifest import LoadResult
from reconciler.observe.metrics import Metrics
from reconciler.observe.status import status_document, status_rows
from reconciler.planning.planner import Plan
from reconciler.runtime.leader import LeaderElector, LeaseSettings
from reconciler.runtime.listener import Listening, Surface, create_app, serve
from reconciler.runtime.readiness import ApiProbe, liveness
from reconciler.runtime.settings import DaemonSettings, read_secret
from reconciler.source.loader import load_manifests
from reconciler.source.watcher import SourceWatcher
from reconciler.store.sqlite import Store

__all__ = ["Daemon", "DaemonSettings", "log_transition", "read_secret"]

log = structlog.get_logger("reconciler.runtime.daemon")

#: seconds between passes that have due work but made no progress (API failing)
MIN_RETRY_SLEEP = 1.0
#: consecutive failed passes without any progress after which ``--once`` gives up
ONCE_MAX_FAILING_PASSES = 5


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
    level = "warning" if event.state in SETTLED_BAD else "info"
    getattr(log, level)("transition", **fields)


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
        self._api = ApiProbe()
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
        """``/healthz``: the loop came round recently."""
        return liveness(time.monotonic() - self._heartbeat, interval=self.settings.interval,
                        grace_period=self.settings.grace_period)

    async def ready(self) -> tuple[bool, str]:
        """``/readyz``: the manifests were loaded once and the API answers."""
        if self.load is None:
            return False, "manifests not loaded yet"
        assert self.client is not None
        return await self._api.check(self.client)

    def status_document(self) -> dict[str, Any]:
        """``/status``: every manifest with its state, attempts and last operation."""
        latest = self.store.latest_by_name() if self.store else {}
        rows = status_rows(latest, self.plan.views if self.plan else None)
        load = self.load
        return status_document(rows, revision=load.revision if load else None,
                               problems=load.problems if load else ())

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
        async with AiLakeClient(s.client, transport=self.transport,
                                observer=self.metrics.observe_request) as client:
            self.client = client
            engine = Engine(client, self.store, settings=s.engine, clock=self.clock,
                            listeners=[log_transition, self.metrics.on_transition,
                                       self._count, *self.extra_listeners])
            await self._run_engine(engine)
        return self.exit_code

    async def _run_engine(self, engine: Engine) -> None:
        """The loop with its edges: listener, signals, file watcher, leader election;
        torn down in order once the loop returned (the lease after the last record)."""
        assert self.store is not None
        listening = await self._serve()
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
            if listening is not None:
                await listening.close()
            self.store.close()

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
            if self._stopping or (s.once and self._once_done()):
                return
            await self._sleep(min(next_load - time.monotonic(), self._until_wake()))

    def _once_done(self) -> bool:
        """``--once``: whether to exit now (settled, or the API keeps failing), with
        :attr:`exit_code` set."""
        if self._settled():
            self.exit_code = self._once_exit_code()
            log.info("converged", exit_code=self.exit_code)
            return True
        if self._failing_passes >= ONCE_MAX_FAILING_PASSES:
            self.exit_code = 1
            log.error("giving_up", passes=self._failing_passes,
                      reason="the AI Lake API failed on every pass without progress; "
                      "--once stops instead of waiting forever")
            return True
        return False

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
        bad = any(v.state in SETTLED_BAD for v in self.plan.views)
        return 1 if bad or self.load.problems else 0

    # ------------------------------------------------------------------ edges

    async def _serve(self) -> Listening | None:
        if self.settings.listen is None:
            return None
        assert self.metrics is not None
        app = create_app(
            Surface(metrics=self.metrics.exposition, healthy=self.healthy, ready=self.ready,
                    status=self.status_document, trigger=self.trigger),
            webhook_secret=self.settings.webhook_secret,
        )
        listening = await serve(app, self.settings.listen)
        self.url = listening.url
        log.info("listening", url=self.url, webhook=self.settings.webhook_secret is not None)
        if self.on_listening is not None:
            self.on_listening(self.url)
        return listening

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
