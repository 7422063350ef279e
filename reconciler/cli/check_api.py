"""The checks of the API: ``api`` (the URL answers, at the organisation's root), ``token``
(accepted, and the AiLake entitlement), ``services``, ``commands`` and ``ready`` (every
service the manifests use exists, offers their commands and is ready)."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import ssl
from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

from reconciler.ailake.client import AiLakeClient, ClientSettings, ServiceInfo
from reconciler.cli.checks import (
    HINT_NO_CREDENTIAL,
    HINT_URL,
    Check,
    failing,
    passing,
    skipping,
)
from reconciler.errors import (
    ApiError,
    ConfigError,
    CredentialsError,
    PermanentError,
    TransportFailure,
)
from reconciler.model.manifest import ServiceCommand

__all__ = ["api_checks", "api_url_problem", "endpoint", "quick"]

#: seconds a check waits for a connection, and for an answer
CONNECT_TIMEOUT = 3.0
READ_TIMEOUT = 10.0

HINT_REACH = ("check --api-url (RECONCILER_API_URL), DNS and that {where} is reachable "
              "from here (proxy, firewall, the chart's networkPolicy egress)")
HINT_BAD_CREDENTIAL = ("the token is mistyped, expired or of another organisation: create "
                       "a new API token and put it in RECONCILER_API_TOKEN or the "
                       "--token-file (RECONCILER_TOKEN_FILE; the chart's "
                       "token.existingSecret)")
HINT_ENTITLEMENT = ("ask the organisation's administrator to enable the AiLake "
                    "entitlement, or use a token of a user with the MANAGE permission")


def api_url_problem(url: str) -> str | None:
    """Why ``url`` is not an organisation's root URL (None: it may be). The reconciler
    appends ``/api/v1/ailake/...`` itself, so ``https://host/api/v1`` would ask
    ``/api/v1/api/v1/ailake/...``: every lookup answers 404, and ``plan`` would say
    ``submit`` where the operation exists."""
    parts = urlsplit(url)
    segments = [s for s in parts.path.split("/") if s]
    if "api" in (s.lower() for s in segments):
        root = urlunsplit((parts.scheme, parts.netloc, "", "", ""))
        return (f"--api-url {url} is not the organisation's root URL: the reconciler adds "
                f"/api/v1/ailake/... itself; use --api-url {root}")
    return None


def endpoint(url: str) -> str:
    """``host:port`` of a URL (the scheme's default port when none is written)."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    try:
        port = parts.port
    except ValueError:
        port = None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def quick(settings: ClientSettings) -> ClientSettings:
    """``settings`` for a check: one attempt per request, short timeouts, no rate limit."""
    return dataclasses.replace(
        settings, get_retries=0, post_retries=0, rate_limit=None, adaptive_rate=False,
        connect_timeout=min(CONNECT_TIMEOUT, settings.connect_timeout),
        pool_timeout=min(CONNECT_TIMEOUT, settings.pool_timeout),
        timeout=min(READ_TIMEOUT, settings.timeout))


def _causes(exc: BaseException) -> list[BaseException]:
    """``exc``'s causes, outermost first (httpx wraps the socket's error several times)."""
    found: list[BaseException] = []
    current = exc.__cause__ or exc.__context__
    while current is not None and current not in found:
        found.append(current)
        current = current.__cause__ or current.__context__
    return found


def _no_connection(settings: ClientSettings, exc: ApiError) -> Check:
    """A request that never reached the server: why, naming host and port."""
    where = endpoint(settings.base_url)
    causes = _causes(exc)
    text = " ".join(str(causes[0]).split()) if causes else ""
    if any(isinstance(c, ssl.SSLError) for c in causes) or "CERTIFICATE_VERIFY" in text:
        tls = next((c for c in causes if isinstance(c, ssl.SSLError)), None)
        said = " ".join(str(tls).split()) if tls is not None else text
        return failing("api", f"TLS with {where} failed: {said}",
                     "if the API uses a private CA, give its PEM bundle with --ca-file "
                     "(RECONCILER_CA_FILE); if it speaks plain HTTP, use http://", fatal=True)
    if any(isinstance(c, httpx.ConnectTimeout | httpx.PoolTimeout | TimeoutError)
           for c in causes):
        why = f"no connection within {settings.connect_timeout:g}s (connect timeout)"
    elif any(isinstance(c, socket.gaierror) for c in causes):
        why = "the host name does not resolve"
    elif any(isinstance(c, ConnectionRefusedError) for c in causes):
        why = "connection refused (nothing listens on that port)"
    else:
        why = text or "connection failed"
    return failing("api", f"cannot connect to {where}: {why}",
                 HINT_REACH.format(where=where), fatal=True)


def _refused(settings: ClientSettings, exc: ApiError) -> list[Check]:
    """The API answered ``GET /services`` with an error status."""
    where = endpoint(settings.base_url)
    status = exc.status
    title = exc.title or {401: "Unauthorized", 403: "Forbidden", 404: "Not Found"}.get(
        status or 0, "")
    said = f"{status} {title}".strip() + (f": {exc.detail}" if exc.detail else "")
    answers = passing("api", f"{settings.base_url} answers at {where}")
    if isinstance(exc, CredentialsError) and status == 401:
        if settings.token is None:
            return [answers, failing("token", f"no API token is configured, and the API "
                                   f"requires one ({said})", HINT_NO_CREDENTIAL,
                                   http_status=401, fatal=True)]
        return [answers, failing("token", f"the API refused the token ({said})",
                               HINT_BAD_CREDENTIAL, http_status=401, fatal=True)]
    if isinstance(exc, CredentialsError):
        return [answers, failing(
            "token", f"the API answered {said}: the organisation lacks the AiLake "
            "entitlement, or the token lacks the MANAGE permission",
            HINT_ENTITLEMENT, http_status=status, fatal=True)]
    if isinstance(exc, PermanentError) and status == 404:
        return [failing("api", f"{settings.base_url} answers {said} to GET "
                      "/api/v1/ailake/services: it is not a GoodData organisation's root "
                      "URL, or the organisation has no AI Lake", HINT_URL,
                      http_status=404, fatal=True)]
    if status is not None and 200 <= status < 300:  # an answer that is not our JSON
        return [failing("api", f"{settings.base_url} answers {status} to GET "
                      "/api/v1/ailake/services, but not with the AI Lake API's JSON "
                      f"({str(exc).rsplit('(', 1)[-1].rstrip(')')})", HINT_URL,
                      http_status=status, fatal=True)]
    fatal = isinstance(exc, PermanentError)
    hint = (HINT_URL if fatal else "the API is failing or overloaded: try again later; "
            "the daemon retries with backoff")
    return [failing("api", f"{settings.base_url} answers {said} to GET "
                  "/api/v1/ailake/services", hint, http_status=status, fatal=fatal)]


def _api_failure(settings: ClientSettings, exc: ApiError) -> list[Check]:
    if exc.status is not None:
        return _refused(settings, exc)
    if exc.transport is TransportFailure.NOT_SENT:
        return [_no_connection(settings, exc)]
    if exc.transport is TransportFailure.INVALID_REQUEST:
        return [failing("api", f"a request to {settings.base_url} cannot be built: {exc}",
                      HINT_URL, fatal=True)]
    where = endpoint(settings.base_url)
    return [failing("api", f"{where} took the connection but did not answer GET "
                  f"/api/v1/ailake/services within {settings.timeout:g}s",
                  "the API (or a proxy in front of it) is stuck or slow: try again later; "
                  "raise --request-timeout if it is only slow")]


def _service_of(ref_id: str | None, ref_name: str | None,
                services: Sequence[ServiceInfo]) -> ServiceInfo | None:
    for info in services:
        if ref_id is not None and ref_id in (info.id, info.service_id):
            return info
        if ref_id is None and ref_name is not None and info.name == ref_name:
            return info
    return None


def _listed_commands(status: Mapping[str, Any] | None) -> set[str] | None:
    """The commands a service's status lists (None: it lists none)."""
    if not isinstance(status, Mapping):
        return None
    for key in ("commands", "availableCommands"):
        raw = status.get(key)
        if isinstance(raw, list):
            names = {str(c.get("name")) if isinstance(c, Mapping) else str(c) for c in raw}
            return {n for n in names if n and n != "None"}
    return None


def _ready(status: Mapping[str, Any] | None) -> bool | None:
    """Whether a service's status says it is ready (None: it does not say)."""
    if not isinstance(status, Mapping):
        return None
    ready = status.get("ready")
    if isinstance(ready, bool):
        return ready
    state = status.get("state") or status.get("status")
    if isinstance(state, str) and state:
        return state.lower() in ("ready", "running", "ok", "healthy", "available")
    return None


def _users(commands: Iterable[ServiceCommand]) -> str:
    names = sorted({c.name for c in commands})
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


_Used = dict[str, tuple[ServiceInfo, list[ServiceCommand]]]
_Status = Mapping[str, Any] | ApiError | None


async def _service_checks(client: AiLakeClient, services: Sequence[ServiceInfo],
                          commands: Sequence[ServiceCommand]) -> list[Check]:
    """services, commands and ready, from ``GET /services`` and each used service's
    ``GET /services/{id}/status``."""
    if not commands:
        return [skipping(n, "no manifests to check") for n in ("services", "commands", "ready")]
    used, missing = _used_services(services, commands)
    found = [_services_check(services, used, missing)]
    answers = await asyncio.gather(*(_status_of(client, info) for info, _ in used.values()))
    return found + _status_checks(used, answers)


def _used_services(services: Sequence[ServiceInfo], commands: Sequence[ServiceCommand],
                   ) -> tuple[_Used, dict[str, list[ServiceCommand]]]:
    """The services the manifests use (id -> the service and its manifests), and the
    references that name none (label -> the manifests)."""
    used: _Used = {}
    missing: dict[str, list[ServiceCommand]] = {}
    for command in commands:
        ref = command.service
        info = _service_of(ref.id, ref.name, services)
        if info is None:
            missing.setdefault(ref.label, []).append(command)
        else:
            used.setdefault(info.id, (info, []))[1].append(command)
    return used, missing


def _services_check(services: Sequence[ServiceInfo], used: _Used,
                    missing: Mapping[str, list[ServiceCommand]]) -> Check:
    listed = ", ".join(sorted(s.name or s.id for s in services)) or "none"
    if missing:
        return failing("services", "; ".join(
            f"no service {label!r} (used by {_users(cmds)})" for label, cmds in
            sorted(missing.items())) + f"; the API lists: {listed}",
            "fix spec.service (an id) or spec.serviceName in those manifests, or create the "
            "service in the organisation")
    return passing("services", f"all {len(used)} service(s) the manifests name exist "
                  f"({', '.join(sorted(i.name or i.id for i, _ in used.values()))})")


async def _status_of(client: AiLakeClient, info: ServiceInfo) -> _Status:
    try:
        return await client.service_status(info.id)
    except ApiError as exc:
        return exc


def _status_checks(used: _Used, answers: Sequence[_Status]) -> list[Check]:
    """commands and ready, from each used service's status (in ``used``'s order)."""
    lacking: list[str] = []
    unready: list[str] = []
    silent_commands: list[str] = []
    silent_ready: list[str] = []
    for (info, cmds), status in zip(used.values(), answers, strict=True):
        label = info.name or info.id
        if isinstance(status, ApiError):
            silent_commands.append(f"{label} (status: HTTP {status.status or 'no answer'})")
            silent_ready.append(label)
            continue
        offered = _listed_commands(status)
        if offered is None:
            silent_commands.append(label)
        else:
            for name in sorted({c.command for c in cmds} - offered):
                users = [c for c in cmds if c.command == name]
                lacking.append(f"service {label} has no command {name!r} (used by "
                               f"{_users(users)}); it lists: {', '.join(sorted(offered))}")
        ready = _ready(status)
        if ready is None:
            silent_ready.append(label)
        elif not ready:
            shown = json.dumps(dict(status or {}), sort_keys=True, default=str)
            unready.append(f"service {label} is not ready (its status: {shown})")
    return [_commands_check(used, lacking, silent_commands),
            _ready_check(used, unready, silent_ready)]


def _commands_check(used: _Used, lacking: Sequence[str], silent: Sequence[str]) -> Check:
    verified = len(used) - len(silent)
    if lacking:
        return failing("commands", "; ".join(lacking),
                      "fix spec.command in those manifests (GET /services/{id}/status "
                      "lists what a service offers)")
    if not used:
        return skipping("commands", "no service to ask")
    if verified == 0:
        return skipping("commands", "the services do not list their commands "
                       "(GET /services/{id}/status); not verified")
    note = f"; not listed by {', '.join(silent)}" if silent else ""
    return passing("commands", f"every command used is offered, on {verified} of "
                  f"{len(used)} service(s){note}")


def _ready_check(used: _Used, unready: Sequence[str], silent: Sequence[str]) -> Check:
    if unready:
        return failing("ready", "; ".join(unready),
                      "commands sent now may fail: wait until the service is ready, "
                      "or set suspend: true on its manifests meanwhile")
    if not used or len(silent) == len(used):
        return skipping("ready", "the services do not report readiness")
    return passing("ready", f"{len(used) - len(silent)} service(s) report ready")


async def api_checks(settings: ClientSettings | None, commands: Sequence[ServiceCommand] = (),
                     *, transport: httpx.AsyncBaseTransport | None = None,
                     services: bool = True,
                     problems: Mapping[str, str] | None = None) -> list[Check]:
    """api and token (and, with ``services``, services, commands and ready for
    ``commands``): one ``GET /services`` (all pages) and one status per used service.
    ``problems``: why the API's (``api``) or the token's (``token``) configuration is
    wrong (then ``settings`` has no token)."""
    problems = problems or {}
    names = ("api", "token", *(("services", "commands", "ready") if services else ()))
    if settings is None or "api" in problems:
        why = problems.get("api") or ("no API URL: give --api-url URL "
                                      "(RECONCILER_API_URL), the organisation's URL")
        return [failing("api", why, HINT_URL if "api" in problems else "", fatal=True),
                *[skipping(n, "not checked: the API is not configured") for n in names[1:]]]
    checks = await _api_checks(settings, commands, transport=transport, services=services)
    if "token" in problems:
        checks = [failing("token", problems["token"], HINT_NO_CREDENTIAL, fatal=True)
                  if c.name == "token" else c for c in checks]
    return checks


async def _api_checks(settings: ClientSettings, commands: Sequence[ServiceCommand], *,
                      transport: httpx.AsyncBaseTransport | None,
                      services: bool) -> list[Check]:
    names = ("api", "token", *(("services", "commands", "ready") if services else ()))
    url_problem = api_url_problem(settings.base_url)
    if url_problem is not None:
        return [failing("api", url_problem, HINT_URL, fatal=True),
                *[skipping(n, "not checked: the API URL is wrong") for n in names[1:]]]
    checking = quick(settings)
    try:
        client = AiLakeClient(checking, transport=transport)
    except ConfigError as exc:
        return [failing("api", str(exc), HINT_URL, fatal=True),
                *[skipping(n, "not checked") for n in names[1:]]]
    async with client:
        try:
            found = await client.list_services()
        except ApiError as exc:
            checks = _api_failure(checking, exc)
            done = {c.name for c in checks}
            return checks + [skipping(n, "not checked: the API did not answer it")
                             for n in names if n not in done]
        where = endpoint(settings.base_url)
        checks = [passing("api", f"{settings.base_url} answers at {where}: {len(found)} AI "
                        "Lake service(s)")]
        if settings.token is None:
            checks.append(passing("token", "none configured, and the API answers without one"))
        else:
            checks.append(passing("token", "accepted; the organisation has the AiLake "
                                "entitlement"))
        if services:
            checks += await _service_checks(client, found, commands)
    return checks
