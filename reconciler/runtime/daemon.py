"""The daemon: the reconcile loop, its triggers, its signals and the leadership hand-off.

One loop: load manifests (when the source moved, on SIGHUP, on the webhook, or every
interval), plan and execute (:class:`~reconciler.execution.engine.Engine`), update metrics, then
sleep until the earliest of: the next poll or retry due, the next schedule window, the
interval (with jitter), or a trigger. SIGTERM/SIGINT stop submitting, let the current
pass record what it started (within the grace period), and exit.

The manifests come from a :class:`~reconciler.source.kinds.Source` (a directory, a git-sync
checkout, or the built-in git follower): it is refreshed once before the loop, then followed
by a task that triggers a pass whenever the tree moves; a webhook (or SIGHUP) pokes it to
fetch at once. Every load goes through :func:`~reconciler.source.continuity.continuity`: a
manifest that is invalid now, or whose file cannot be parsed, keeps its last valid intent
(nothing new sent, never orphaned, shown ``invalid``), and orphaning is withheld while the
source did not load cleanly or is suspiciously empty (``--allow-empty`` accepts it). Until
the first tree is there (a git source whose first fetch failed) nothing is reconciled and
``/readyz`` says not ready; afterwards a failing source keeps the last good tree.

Its settings are in :mod:`~reconciler.runtime.settings`, its HTTP listener in
:mod:`~reconciler.runtime.listener`, the health rules in :mod:`~reconciler.runtime.readiness`,
the rows of ``/status`` in :mod:`reconciler.observe.status`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import httpx
import structlog

from reconciler.ailake.client import AiLakeClient
from reconciler.errors import ConfigError, ReconcilerError, StoreError
from reconciler.execution.engine import Engine, Transition, utcnow
from reconciler.model import scrub as scrubber
from reconciler.model.manifest import LoadResult
from reconciler.observe.metrics import Metrics
from reconciler.planning.planner import Plan
from reconciler.runtime.events import log_progress, log_transition
from reconciler.runtime.leader import LeaderElector, LeaseSettings
from reconciler.runtime.listener import Listening, create_app, serve
from reconciler.runtime.loading import load_source, poke_for_a_tree
from reconciler.runtime.once import once_exit_code, settled
from reconciler.runtime.pacing import RECOVERY_SLEEP, Pacer
from reconciler.runtime.readiness import ApiProbe, liveness
from reconciler.runtime.settings import DaemonSettings, read_secret
from reconciler.runtime.signals import install_signals, remove_signals
from reconciler.runtime.startup import database_secrets, open_checked_store, startup_fields
from reconciler.runtime.web_surface import listener_surface
from reconciler.source.continuity import Continuity, SourceMemory
from reconciler.source.kinds import Source, open_source
from reconciler.store import StateStore
from reconciler.store.sqlite import CorruptStoreError

if TYPE_CHECKING:
    from reconciler.runtime.advisory import AdvisoryLeader

__all__ = ["Daemon", "DaemonSettings", "database_secrets", "log_transition", "read_secret"]

log = structlog.get_logger("reconciler.runtime.daemon")

#: consecutive failed passes without any progress after which ``--once`` gives up
ONCE_MAX_FAILING_PASSES = 5
#: seconds between looks for the first tree (a git source whose first fetch failed)
NO_TREE_SLEEP = 1.0
#: the source is asked to fetch again after this, doubling up to its interval, while it
#: has no tree yet
NO_TREE_RETRY = 2.0
#: the trigger reasons that ask the source to fetch now (a push webhook, SIGHUP)
FETCH_REASONS = frozenset({"webhook", "SIGHUP"})
#: seconds between two "still pending" lines of one operation (the first comes once it
#: has run this long)
PROGRESS_EVERY = 300.0
#: seconds between two ``store_unavailable`` lines with the same error
STORE_ERROR_LOG_EVERY = 30.0
#: seconds one pass may go on filling freed slots from its plan and following operations
#: whose next look is near (at most the interval): how stale a plan's queue may get
PASS_BUDGET = 5.0


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
        preflight: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """``preflight``: the start-up checks (``reconciler run``'s are
        :func:`reconciler.cli.check.preflight`), awaited before the store is opened; what
        it raises stops the daemon."""
        self.settings = settings
        self.preflight = preflight
        #: monotonic time of the last "still pending" line, per spec hash
        self._progress_logged: dict[str, float] = {}
        self.clock = clock
        self.extra_listeners = list(listeners)
        self.transport = transport
        self.on_listening = on_listening
        self.load: LoadResult | None = None
        self.plan: Plan | None = None
        #: reconcile passes made since start (one more once a pass recorded its plan)
        self.passes = 0
        self.exit_code = 0
        self.store: StateStore | None = None
        self.metrics: Metrics | None = None
        self.client: AiLakeClient | None = None
        self.engine: Engine | None = None
        self._wake = asyncio.Event()
        self._stopping = False
        self._reasons: list[str] = []
        self._heartbeat = time.monotonic()
        self.api_probe = ApiProbe()
        self.source: Source = open_source(settings.manifests, git=settings.git,
                                          watch_period=settings.watch_period)
        #: what the source held at its last good load (None: none yet; the store's live
        #: names stand for it)
        self._memory: SourceMemory | None = None
        #: the verdict on the last load (held manifests, whether orphaning is withheld)
        self.verdict: Continuity | None = None
        #: the source's last result as it gave it, and the store's generation then
        self._raw_load: LoadResult | None = None
        self._raw_generation: object = None
        self._source_error: str | None = None
        self._no_tree_retry = NO_TREE_RETRY
        self._no_tree_poke_at = 0.0
        self.pacer = Pacer(settings.interval)
        self.url: str | None = None
        self.elector: LeaderElector | AdvisoryLeader | None = None
        self._epoch_due = False
        #: the last state store error of the loop (None: the last use succeeded), and
        #: when it was logged
        self._store_error: tuple[str, float] | None = None

    # ------------------------------------------------------------------ control

    def trigger(self, reason: str) -> None:
        """Reconcile now (debounced: triggers arriving together make one pass). A webhook
        or SIGHUP also asks the source to fetch at once (git: one fetch per burst); the
        follower triggers another pass when the tree moved."""
        if reason in FETCH_REASONS:
            log.info("reconcile_requested", trigger=reason,
                     action="fetching the source now" if self.source.kind == "git"
                     else "reconciling now")
            self.source.poke()
        self._reasons.append(reason)
        self._wake.set()
        self._end_pass()  # the pass ends with its running steps; then a load

    def _end_pass(self) -> None:
        """The running pass starts nothing more; its running steps finish and record."""
        if self.engine is not None:
            self.engine.close_pass()

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
        self._end_pass()

    # ------------------------------------------------------------------ surface

    def healthy(self) -> tuple[bool, str]:
        """``/healthz``: the loop came round recently."""
        return liveness(time.monotonic() - self._heartbeat, interval=self.settings.interval,
                        grace_period=self.settings.grace_period)

    # ------------------------------------------------------------------ progress

    def _log_progress(self, engine: Engine) -> None:
        """The "still pending" lines (:func:`~reconciler.runtime.events.log_progress`),
        every :data:`PROGRESS_EVERY` seconds."""
        log_progress(self, engine, every=PROGRESS_EVERY)

    # ------------------------------------------------------------------ the loop

    async def run(self) -> int:
        """Run until stopped; the exit status (``once``: 0 in sync, 1 failures)."""
        s = self.settings
        scrubber.register(*s.secrets, *database_secrets(s.state))
        if s.manifests is not None and not s.manifests.exists():
            raise ConfigError(f"manifest source {s.manifests} does not exist")
        log.info("starting", **startup_fields(s, self.source))
        if self.preflight is not None:
            await self.preflight()
        self.store = open_checked_store(s)
        self.metrics = Metrics(self.store)
        self.elector = None if s.once else self._elector()
        self.metrics.leader.set(0 if self.elector else 1)
        async with AiLakeClient(s.client, transport=self.transport,
                                observer=self.metrics.observe_request) as client:
            self.client = client
            engine = Engine(client, self.store, settings=s.engine, clock=self.clock,
                            listeners=[log_transition, self.metrics.on_transition,
                                       self.pacer.count, *self.extra_listeners],
                            fence=self._fence)
            self.engine = engine
            if self.elector is None:
                engine.start(self._holder())
            await self._run_engine(engine)
        return self.exit_code

    async def _run_engine(self, engine: Engine) -> None:
        """The loop with its edges: listener, signals, the source's follower, leader
        election; torn down in order once the loop returned (the lease after the last
        record). The source is refreshed once first (git: the first fetch), after the
        listener is up, so ``/healthz`` answers while it runs."""
        assert self.store is not None
        listening = await self._serve()
        install_signals(self.stop, self.trigger)
        follower: asyncio.Task[None] | None = None
        election = asyncio.create_task(self.elector.run()) if self.elector else None
        try:
            await self._refresh_first()
            follower = asyncio.create_task(self.source.follow(self.trigger))
            await self._loop(engine)
        finally:
            if follower is not None:
                follower.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await follower
            if self.elector is not None and election is not None:
                await self.elector.release()  # after the last pass recorded; run() returns
                election.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await election
            remove_signals()
            if listening is not None:
                await listening.close()
            self.store.close()

    async def _refresh_first(self) -> None:
        """Bring the source up to date once before the first load (git: fetch), unless
        told to stop meanwhile."""
        refresh = asyncio.ensure_future(asyncio.to_thread(self.source.refresh))
        stop = asyncio.ensure_future(self._wait_stop())
        try:
            await asyncio.wait({refresh, stop}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
        if refresh.done() and refresh.exception() is not None:  # never let it kill the start
            log.error("source_refresh_failed", source=self.source.describe(),
                      error_type=type(refresh.exception()).__name__)

    async def _loop(self, engine: Engine) -> None:
        s = self.settings
        next_load = 0.0
        while True:
            self._heartbeat = time.monotonic()
            # source changes arrive as a trigger from its follower; no stat pass on every
            # wake-up
            if self.load is None or self._reasons or time.monotonic() >= next_load:
                reasons = self._reasons or (["start"] if self.load is None else ["interval"])
                self._load(reasons)
                next_load = time.monotonic() + s.interval * random.uniform(0.9, 1.1)
            self._reasons = []
            if self.load is None:  # no tree yet: not ready, nothing reconciled
                if self._stopping:
                    return
                if s.once:
                    self.exit_code = 1
                    log.error("giving_up", reason="the manifest source has no tree (its "
                              "first fetch failed); --once stops instead of waiting",
                              source=self.source.describe(), error=self._source_error)
                    return
                poke_for_a_tree(self, first_retry=NO_TREE_RETRY)
                await self._sleep(NO_TREE_SLEEP)
                continue
            if self.elector is not None and not self.elector.is_leader:
                # standby: manifests loaded (so /readyz passes), nothing reconciled
                if self._stopping:
                    return
                await self._sleep(next_load - time.monotonic())
                continue
            if self._epoch_due:  # leadership gained: this replica's store may be stale
                # a shared store is the epoch: continue where the old leader stopped
                try:
                    engine.start(self._holder(), reason=None if self._shared else "leadership")
                except StoreError as exc:  # the database is away: try again after a pause
                    self.store_trouble(exc, "starting the epoch")
                    self.pacer.failed()
                    await self._sleep(self.pacer.recovery or RECOVERY_SLEEP)
                    continue
                self._epoch_due = False
            await self._pass(engine, self.load)
            self._log_progress(engine)
            if self._stopping or (s.once and self._once_done()):
                return
            await self._sleep(min(next_load - time.monotonic(),
                                  self.pacer.until_wake(self.plan, self.clock())))

    def _once_done(self) -> bool:
        """``--once``: whether to exit now (settled, or the API keeps failing), with
        :attr:`exit_code` set."""
        if settled(self.plan, self.store):
            self.exit_code = once_exit_code(self.plan, self.load, self.verdict)
            log.info("converged", exit_code=self.exit_code)
            return True
        if self.pacer.failing_passes >= ONCE_MAX_FAILING_PASSES:
            self.exit_code = 1
            log.error("giving_up", passes=self.pacer.failing_passes,
                      reason="the AI Lake API failed on every pass without progress; "
                      "--once stops instead of waiting forever")
            return True
        return False

    def _load(self, reasons: Sequence[str]) -> None:
        """Load the source (:func:`~reconciler.runtime.loading.load_source`): what is
        held, the metrics; a source that cannot be read keeps the last load, and so does a
        state store that cannot be read (the next load tries again)."""
        try:
            load_source(self, reasons)
        except StoreError as exc:
            self.store_trouble(exc, "loading the manifests")

    async def _pass(self, engine: Engine, load: LoadResult) -> None:
        assert self.metrics is not None and self.store is not None
        started = time.monotonic()
        transitions, generation = self.pacer.transitions, self.store.generation()
        budget = min(PASS_BUDGET, self.settings.interval)
        task = asyncio.ensure_future(engine.reconcile(load, submit=not self._stopping,
                                                      budget=budget))
        try:
            if self._stopping:
                await asyncio.wait_for(task, self.settings.grace_period)
            else:
                await self._shielded(task)
            before = task.result()
            # Re-plan after executing (pure, no API calls): views and the next wake-up
            # must reflect what this pass just recorded (a pass that recorded nothing
            # gets its plan back: the engine keeps it). A trigger waiting (a webhook, a
            # new file) means a load and a pass at once: their plan replaces this one
            # within moments, so it is not made twice.
            self.plan = before if self._reasons else engine.plan(load)
            ok = engine.failed_actions == 0
        except CorruptStoreError as exc:
            log.error("store_damaged", error=str(exc))
            raise  # fail loudly: nothing is recorded any more; the message says what to do
        except StoreError as exc:
            ok = False
            self.store_trouble(exc, "reconciling")
        except (TimeoutError, ReconcilerError) as exc:
            ok = False
            log.error("reconcile_failed", error=str(exc), error_type=type(exc).__name__)
        self.passes += 1
        # a poll that saw "pending" records its time (no generation: transitions only)
        self.pacer.passed(ok=ok, transitions_before=transitions,
                          recorded=(self.store.generation() != generation if generation
                                    is not None else self.pacer.transitions != transitions))
        try:
            orphaned = len(self.store.names() - {c.name for c in load.commands}
                           - set(load.held)) if ok else 0
            self.metrics.reconciled(self.plan, duration=time.monotonic() - started, ok=ok,
                                    orphaned=orphaned)
            if ok and self.plan is not None:
                self.store.prune()
        except StoreError as exc:
            self.store_trouble(exc, "recording the pass")
            return
        if ok and self._store_error is not None:
            self._store_error = None
            log.info("store_recovered")

    def store_trouble(self, exc: StoreError, doing: str) -> None:
        """Log that the state store failed (its message names the database, never the
        password): when the error changes, else at most every
        :data:`STORE_ERROR_LOG_EVERY` seconds. The loop goes on; nothing is sent while
        the claim before a POST cannot be written."""
        text = str(exc)
        now = time.monotonic()
        last = self._store_error
        if last is not None and last[0] == text and now - last[1] < STORE_ERROR_LOG_EVERY:
            return
        self._store_error = (text, now)
        log.error("store_unavailable", doing=doing, error=text,
                  action="retrying; nothing is sent until the store answers")

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

    def _leadership(self, leader: bool) -> None:
        """The elector's on_change: the gauge, a pass on acquiring, exit on losing."""
        assert self.metrics is not None
        self.metrics.leader.set(1 if leader else 0)
        if leader:
            self._epoch_due = True
            self.trigger("leader")
        elif self._stopping:
            return
        elif self._shared:
            # The advisory lock's session ended (the database restarted, the connection
            # was cut) or its check failed: stand by and try again. Nothing is lost: the
            # store is shared, POSTs are fenced from now on, and whoever leads next
            # continues from the store.
            log.warning("leadership_lost",
                        action="standing by; the advisory lock is tried again")
            self._end_pass()  # nothing more started from its queue
        else:
            log.error("leadership_lost", action="exiting; the pod restarts as a standby")
            self.exit_code = 1
            self.stop()

    @property
    def _shared(self) -> bool:
        """Whether the store is shared by the replicas (PostgreSQL)."""
        return self.store is not None and self.store.shared

    def _elector(self) -> LeaderElector | AdvisoryLeader | None:
        """Leadership: an advisory lock when the store is shared (PostgreSQL), else the
        Kubernetes Lease when ``RECONCILER_LEASE_NAME`` is set, else none (one replica)."""
        if self._shared:
            # psycopg, imported only for a PostgreSQL store
            from reconciler.runtime.advisory import AdvisoryLeader, AdvisorySettings

            identity = os.environ.get("POD_NAME") or socket.gethostname()
            return AdvisoryLeader(AdvisorySettings(url=self.settings.state, identity=identity),
                                  on_change=self._leadership)
        lease = LeaseSettings.from_env()
        return LeaderElector(lease, on_change=self._leadership) if lease else None

    def _fence(self) -> float | None:
        """How long a run POST starting now may take: the time left on the Lease (None:
        no election, no bound). A lost or unrenewed lease stops new POSTs at once."""
        return None if self.elector is None else self.elector.valid_for()

    def _holder(self) -> str:
        identity = self.elector.settings.identity if self.elector else socket.gethostname()
        return f"{identity}/{os.getpid()}"

    async def _sleep(self, seconds: float) -> None:
        seconds = max(0.0, min(seconds, self.settings.interval))
        self._wake.clear()
        if self._reasons or self._stopping:
            return
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._wake.wait(), seconds)

    # ------------------------------------------------------------------ edges

    async def _serve(self) -> Listening | None:
        if self.settings.listen is None:
            return None
        assert self.metrics is not None
        app = create_app(listener_surface(self), webhook_secret=self.settings.webhook_secret)
        listening = await serve(app, self.settings.listen)
        self.url = listening.url
        log.info("listening", url=self.url, webhook=self.settings.webhook_secret is not None)
        if self.on_listening is not None:
            self.on_listening(self.url)
        return listening
