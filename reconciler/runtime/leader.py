"""Leader election over a ``coordination.k8s.io/v1`` Lease, so only one replica reconciles.

The semantics follow client-go's ``leaderelection`` package (DESIGN section 9): every
``retry_period`` the elector GETs the Lease and

- creates it (holder = this identity) when it does not exist;
- leaves it alone while another identity holds it and it has not expired
  (``renewTime + leaseDurationSeconds > now``);
- otherwise (expired, empty holder, or already ours) PUTs it back with this identity and
  a fresh ``renewTime``, carrying the ``resourceVersion`` it read: a concurrent writer makes
  the API answer 409 Conflict, and the elector is not leader for that round.

A leader that cannot renew (API errors, timeouts) keeps leading only until
``renew_deadline`` has passed since its last successful renew, which is shorter than
``lease_duration``: it steps down before any other replica can consider the Lease expired.
:meth:`LeaderElector.release` hands the Lease over on shutdown (empty holder,
``leaseDurationSeconds: 1``) so a successor takes over at its next retry.

Plain httpx against the API server: the ServiceAccount token is re-read from its file on
every request (projected tokens rotate) and is never logged.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import socket
import ssl
import time
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import structlog

from reconciler.errors import (
    ApiError,
    ConfigError,
    CredentialsError,
    OutcomeKind,
    PermanentError,
    TemporaryError,
    classify_status,
)
from reconciler.runtime.leadership import Leadership

__all__ = [
    "LeaderElector",
    "LeaseSettings",
    "format_microtime",
    "parse_microtime",
]

log = structlog.get_logger("reconciler.runtime.leader")

SERVICE_ACCOUNT = "/var/run/secrets/kubernetes.io/serviceaccount"
#: acquire attempts (not renewals) wait retry_period * uniform(1, JITTER), like client-go
JITTER = 1.2
#: a failing API is logged when the error changes, or at most this often
ERROR_LOG_EVERY = 30.0


def _utcnow() -> datetime:
    return datetime.now(UTC)


def format_microtime(moment: datetime) -> str:
    """A Kubernetes ``MicroTime``: ``2026-11-28T15:04:05.000000Z`` (UTC, microseconds)."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_microtime(value: str) -> datetime:
    """A ``MicroTime`` or RFC 3339 ``Time`` to an aware datetime (ValueError if neither)."""
    moment = datetime.fromisoformat(value)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


@dataclass(frozen=True)
class LeaseSettings:
    """Which Lease to hold, as whom, and how fast to fail over (seconds)."""

    name: str
    namespace: str
    identity: str
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    api_url: str = "https://kubernetes.default.svc"
    token_file: str = f"{SERVICE_ACCOUNT}/token"
    ca_file: str | None = f"{SERVICE_ACCOUNT}/ca.crt"

    def __post_init__(self) -> None:
        for what in ("name", "namespace", "identity"):
            if not getattr(self, what):
                raise ConfigError(f"leader election: the Lease {what} must not be empty")
        if not self.lease_duration >= 1.0:
            raise ConfigError("leader election: lease_duration must be at least 1 second "
                              "(leaseDurationSeconds is a whole number)")
        if not self.lease_duration > self.renew_deadline > self.retry_period > 0:
            raise ConfigError(
                "leader election: need lease_duration > renew_deadline > retry_period > 0, "
                f"got {self.lease_duration}, {self.renew_deadline}, {self.retry_period}")

    @property
    def lease_seconds(self) -> int:
        """``leaseDurationSeconds`` as written (rounded up: others wait at least as long)."""
        return math.ceil(self.lease_duration)

    @property
    def path(self) -> str:
        return (f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}"
                f"/leases/{self.name}")

    @property
    def collection_path(self) -> str:
        return f"/apis/coordination.k8s.io/v1/namespaces/{self.namespace}/leases"

    @classmethod
    def from_env(cls, environ: Mapping[str, str] = os.environ) -> LeaseSettings | None:
        """Settings from the pod's environment (the Helm chart sets these), or None when
        leader election is off (``RECONCILER_LEASE_NAME`` unset or empty).

        ``RECONCILER_LEASE_NAMESPACE`` (else ``POD_NAMESPACE``) is the Lease's namespace;
        the identity is ``POD_NAME`` (else the hostname, which is the pod name in
        Kubernetes); the API server is the in-cluster one from ``KUBERNETES_SERVICE_HOST``
        and ``KUBERNETES_SERVICE_PORT``.
        """
        name = environ.get("RECONCILER_LEASE_NAME", "").strip()
        if not name:
            return None
        namespace = (environ.get("RECONCILER_LEASE_NAMESPACE", "").strip()
                     or environ.get("POD_NAMESPACE", "").strip())
        if not namespace:
            raise ConfigError("RECONCILER_LEASE_NAME is set but neither "
                              "RECONCILER_LEASE_NAMESPACE nor POD_NAMESPACE is")
        identity = environ.get("POD_NAME", "").strip() or socket.gethostname()
        host = environ.get("KUBERNETES_SERVICE_HOST", "").strip()
        if host:
            port = environ.get("KUBERNETES_SERVICE_PORT", "").strip() or "443"
            shown = f"[{host}]" if ":" in host else host
            return cls(name=name, namespace=namespace, identity=identity,
                       api_url=f"https://{shown}:{port}")
        return cls(name=name, namespace=namespace, identity=identity)


class _TokenFileAuth(httpx.Auth):
    """``Authorization: Bearer`` from a file read on every request (tokens rotate).

    A missing file sends no header (e.g. ``kubectl proxy`` during development); the API
    server then answers 401/403, which the elector reports without the token.
    """

    def __init__(self, path: str) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"_TokenFileAuth({str(self.path)!r})"

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        # No local variable holds the token: tracebacks that render locals cannot show it
        # (httpx masks the Authorization header in its own reprs).
        if self._token():
            request.headers["Authorization"] = "Bearer " + self._token()
        yield request

    def _token(self) -> str:
        try:
            return self.path.read_text(encoding="utf-8").strip()
        except OSError:
            return ""


#: The Lease API's answers, by the kind :func:`classify_status` gives them. An unknown
#: outcome (a create POST's 5xx) is only temporary here: the next round reads the Lease
#: again, which is how the elector learns whether the write happened.
_LEASE_ERRORS: dict[OutcomeKind, type[ApiError]] = {
    OutcomeKind.TERMINAL: PermanentError,
    OutcomeKind.CREDENTIALS: CredentialsError,
    OutcomeKind.TRANSIENT: TemporaryError,
    OutcomeKind.UNKNOWN: TemporaryError,
}


def _api_error(response: httpx.Response, method: str, path: str) -> ApiError:
    """A non-2xx answer, classified; the message carries the API's Status message only."""
    detail: str | None = None
    reason: str | None = None
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        detail = str(body.get("message") or "") or None
        reason = str(body.get("reason") or "") or None
    status = response.status_code
    message = f"{method} {path}: HTTP {status}" + (f" {reason}" if reason else "") + (
        f": {detail}" if detail else "")
    kind = _LEASE_ERRORS[classify_status(status, method=method)]
    return kind(message, method=method, endpoint=path, status=status, title=reason,
                detail=detail)


class LeaderElector(Leadership):
    """Acquire and renew one Lease; :attr:`is_leader` says whether this replica may act.

    ``run()`` loops until cancelled (or until :meth:`release`); ``on_change(leader)`` is
    called on every flip of :attr:`is_leader` (first with True when it is acquired).
    ``clock`` gives the wall-clock time written to and compared with the Lease (tests
    inject a fake one); the renew deadline is measured on the monotonic clock.
    """

    def __init__(
        self,
        settings: LeaseSettings,
        *,
        transport: httpx.AsyncBaseTransport | None = None,
        clock: Callable[[], datetime] = _utcnow,
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        super().__init__(on_change)
        self.settings = settings
        self.transport = transport
        self.clock = clock
        self._renewed_at = 0.0  # monotonic start of the last successful renew
        self._renew_failed = False  # the last renewal failed: no new POST until one works
        self._lock = asyncio.Lock()
        self._released = False
        self._last_error: tuple[str, float] | None = None
        self._why = ""  # why the last round did not make us leader
        self._holder: str | None = None  # last holder seen in the Lease

    @property
    def is_leader(self) -> bool:
        return self._leader

    def valid_for(self) -> float:
        """Seconds this replica's hold on the Lease certainly lasts (no other replica can
        take it over before): 0 when not leader, or since a renewal failed."""
        if not self._leader or self._renew_failed:
            return 0.0
        left = self._renewed_at + self.settings.lease_duration - time.monotonic()
        return max(0.0, left)

    # ------------------------------------------------------------------ public

    async def run(self) -> None:
        """Acquire or renew every ``retry_period`` until cancelled or released.

        Never raises for API trouble (that only costs leadership); raises ConfigError when
        the CA file cannot be loaded. Leaving (cancelled or released) drops leadership.
        """
        s = self.settings
        try:
            async with self._client() as client:
                while not self._released:
                    if self._leader and self._remaining() <= 0:
                        self._set(False, "renew deadline passed")
                    started = time.monotonic()
                    budget = self._remaining() if self._leader else s.renew_deadline
                    async with self._lock:
                        if self._released:
                            break
                        outcome = await self._attempt(client, budget)
                    self._renew_failed = outcome is not True
                    if outcome is True:
                        self._renewed_at = started
                        self._set(True, "acquired")
                    elif outcome is False:
                        self._set(False, self._why)
                    elif self._leader and self._remaining() <= 0:
                        self._set(False, "renew deadline passed")
                    await asyncio.sleep(self._pause())
        finally:
            self._set(False, "stopped")

    async def wait_until_leader(self) -> None:
        """Return once this replica is the leader (at once if it already is)."""
        while not self._leader:
            await self._became.wait()

    async def release(self) -> None:
        """Hand the Lease over (holder ``""``, ``leaseDurationSeconds: 1``) if it names us.

        Call on shutdown, after the last reconcile pass; ``run()`` stops acquiring and
        returns. Errors are logged, never raised: the Lease then simply expires.
        """
        s = self.settings
        async with self._lock:
            self._released = True
            self._set(False, "released")
            try:
                async with self._client() as client, asyncio.timeout(s.renew_deadline):
                    lease = await self._get(client)
                    spec = (lease or {}).get("spec") or {}
                    if lease is None or spec.get("holderIdentity") != s.identity:
                        return
                    now = format_microtime(self.clock())
                    spec = {**spec, "holderIdentity": "", "leaseDurationSeconds": 1,
                            "acquireTime": now, "renewTime": now}
                    if await self._put(client, {**lease, "spec": spec}):
                        log.info("lease_released", lease=s.name, namespace=s.namespace,
                                 identity=s.identity)
                    else:
                        log.warning("lease_release_conflict", lease=s.name,
                                    namespace=s.namespace)
            except Exception as exc:
                log.warning("lease_release_failed", lease=s.name, namespace=s.namespace,
                            error=str(exc) or type(exc).__name__,
                            error_type=type(exc).__name__)

    # ------------------------------------------------------------------ one round

    async def _attempt(self, client: httpx.AsyncClient, budget: float) -> bool | None:
        """One try: True leader, False not leader, None failed (logged)."""
        try:
            async with asyncio.timeout(max(budget, 0.0)):
                result = await self._try_acquire_or_renew(client)
        except Exception as exc:
            self._report(exc)
            return None
        self._last_error = None
        return result

    async def _try_acquire_or_renew(self, client: httpx.AsyncClient) -> bool:
        s = self.settings
        now = self.clock()
        stamp = format_microtime(now)
        lease = await self._get(client)
        if lease is None:
            return await self._create(client, {
                "apiVersion": "coordination.k8s.io/v1",
                "kind": "Lease",
                "metadata": {"name": s.name, "namespace": s.namespace},
                "spec": {"holderIdentity": s.identity, "leaseDurationSeconds": s.lease_seconds,
                         "acquireTime": stamp, "renewTime": stamp, "leaseTransitions": 0},
            })
        spec: dict[str, Any] = dict(lease.get("spec") or {})
        holder = str(spec.get("holderIdentity") or "")
        self._observe(holder)
        if holder and holder != s.identity and not self._expired(spec, now):
            self._why = f"the Lease is held by {holder}"
            return False
        transitions = int(spec.get("leaseTransitions") or 0)
        if holder != s.identity:
            transitions += 1
            spec["acquireTime"] = stamp
        elif not spec.get("acquireTime"):
            spec["acquireTime"] = stamp
        spec.update(holderIdentity=s.identity, leaseDurationSeconds=s.lease_seconds,
                    renewTime=stamp, leaseTransitions=transitions)
        return await self._put(client, {**lease, "spec": spec})

    def _expired(self, spec: Mapping[str, Any], now: datetime) -> bool:
        renew = spec.get("renewTime")
        if not renew:
            return True
        duration = spec.get("leaseDurationSeconds")
        seconds = float(duration) if duration else self.settings.lease_duration
        return parse_microtime(str(renew)) + timedelta(seconds=seconds) <= now

    # ------------------------------------------------------------------ HTTP

    def _client(self) -> httpx.AsyncClient:
        s = self.settings
        verify: ssl.SSLContext | bool = True
        if s.ca_file and s.api_url.startswith("https:"):
            try:
                verify = ssl.create_default_context(cafile=s.ca_file)
            except (OSError, ssl.SSLError) as exc:
                raise ConfigError(
                    f"leader election: cannot load the CA file {s.ca_file}: {exc}") from exc
        return httpx.AsyncClient(
            base_url=s.api_url, auth=_TokenFileAuth(s.token_file), verify=verify,
            transport=self.transport, timeout=httpx.Timeout(s.renew_deadline),
            headers={"Accept": "application/json",
                     "User-Agent": "ailake-reconciler (leader-election)"},
            follow_redirects=False,
        )

    async def _get(self, client: httpx.AsyncClient) -> dict[str, Any] | None:
        path = self.settings.path
        response = await client.get(path)
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise _api_error(response, "GET", path)
        return self._lease(response, "GET", path)

    async def _create(self, client: httpx.AsyncClient, lease: dict[str, Any]) -> bool:
        path = self.settings.collection_path
        response = await client.post(path, json=lease)
        if response.status_code == 409:  # another replica created it first
            self._why = "the Lease was created by another replica first (409)"
            return False
        if response.status_code not in (200, 201):
            raise _api_error(response, "POST", path)
        return True

    async def _put(self, client: httpx.AsyncClient, lease: dict[str, Any]) -> bool:
        path = self.settings.path
        response = await client.put(path, json=lease)
        if response.status_code == 409:  # resourceVersion moved on: someone else wrote it
            self._why = "the Lease changed since it was read (409 Conflict)"
            return False
        if response.status_code != 200:
            raise _api_error(response, "PUT", path)
        return True

    @staticmethod
    def _lease(response: httpx.Response, method: str, path: str) -> dict[str, Any]:
        body = response.json()
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise TemporaryError(f"{method} {path}: the answer is not a Lease",
                                 method=method, endpoint=path, status=response.status_code)
        return body

    # ------------------------------------------------------------------ state

    def _remaining(self) -> float:
        return self._renewed_at + self.settings.renew_deadline - time.monotonic()

    def _pause(self) -> float:
        s = self.settings
        if self._leader:
            return max(0.0, min(s.retry_period, self._remaining()))
        return s.retry_period * random.uniform(1.0, JITTER)

    def _set(self, leader: bool, reason: str) -> None:
        if not self._flip(leader):
            return
        s = self.settings
        if leader:
            log.info("leader_acquired", lease=s.name, namespace=s.namespace,
                     identity=s.identity)
        else:
            level = "info" if reason in ("released", "stopped") else "warning"
            getattr(log, level)("leader_lost", lease=s.name, namespace=s.namespace,
                                identity=s.identity, reason=reason)
        self._tell(leader)

    def _observe(self, holder: str) -> None:
        if holder != self._holder:
            self._holder = holder
            if holder != self.settings.identity:
                log.info("lease_holder", lease=self.settings.name, holder=holder or None,
                         identity=self.settings.identity)

    def _report(self, exc: Exception) -> None:
        """Log a failed round: when the error changes, else at most every 30 s."""
        if isinstance(exc, TimeoutError):
            text = "no answer within the renew deadline"
        else:
            text = str(exc) or type(exc).__name__
        now = time.monotonic()
        last = self._last_error
        if last is not None and last[0] == text and now - last[1] < ERROR_LOG_EVERY:
            return
        self._last_error = (text, now)
        expected = (ApiError, httpx.HTTPError, TimeoutError, ValueError)
        fields: dict[str, Any] = {
            "lease": self.settings.name, "namespace": self.settings.namespace,
            "error": text, "error_type": type(exc).__name__, "leader": self._leader,
        }
        if isinstance(exc, ApiError) and exc.status is not None:
            fields["status"] = exc.status
        if isinstance(exc, expected):
            log.warning("lease_error", **fields)
        else:
            log.error("lease_error", exc_info=exc, **fields)
