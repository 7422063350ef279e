"""``reconciler check``: will this work? One line per check, ✓ or ✗ with what to do.

Like ``flux check``: run it before deploying (and after, in the pod: ``kubectl exec ...
reconciler check``) with the flags and ``RECONCILER_*`` variables of ``reconciler run``.
It checks, in this order:

========== ==================================================================================
api        the API URL answers, at the organisation's root (not ``.../api/v1``)
token      the token is accepted (no 401) and the organisation has the AiLake entitlement
           (no 403)
services   every service the manifests name exists
commands   every command the manifests use is listed by its service, where
           ``GET /services/{id}/status`` lists commands
ready      every service the manifests use is ready, where its status says so
store      the state store opens and is writable (nothing is created)
source     the manifest source is readable (a git URL: fetched into a scratch folder)
manifests  the manifests are valid
listen     the listener's port is free
========== ==================================================================================

A check that cannot run because an earlier one failed (no API: no services) is skipped
(``-``). The exit status is 0 only when no check failed. ``reconciler run`` runs the same
checks of the store, the listener, the API and the token at start-up
(:func:`preflight`): a store or a port it cannot use stops it at once, and so, with
``--once``, does an API it cannot reach or that refuses its token; everything else is
logged and the daemon goes on.

Every API call here is made once, with short timeouts (a check answers in seconds);
nothing is kept: a folder is proven writable by a temporary file, removed at once, and a
state store is only read.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import structlog

from reconciler.ailake.client import ClientSettings
from reconciler.cli.check_api import api_checks, api_url_problem
from reconciler.cli.check_listen import listen_check
from reconciler.cli.check_source import source_checks
from reconciler.cli.check_store import safe_location, store_check
from reconciler.cli.checks import HINT_STORE, TITLES, Check, failing, skipping
from reconciler.cli.flags import (
    EXIT_FAILED,
    EXIT_OK,
    Formatter,
    SubParsers,
    add_api,
    add_logging,
    add_output,
    add_run_flags,
    add_source,
    add_state,
)
from reconciler.cli.settings import api_token, git_settings, manifest_source
from reconciler.errors import ConfigError, ReconcilerError, StoreError
from reconciler.model.manifest import ServiceCommand
from reconciler.observe import logs
from reconciler.runtime.settings import DaemonSettings, git_secrets
from reconciler.source.git import GitSettings
from reconciler.source.loader import load_manifests

__all__ = [
    "TITLES",
    "Check",
    "CheckSettings",
    "api_checks",
    "api_url_problem",
    "check_settings",
    "checks_document",
    "command",
    "listen_check",
    "preflight",
    "register",
    "render_checks",
    "run_checks",
    "safe_location",
    "source_checks",
    "store_check",
]

log = structlog.get_logger("reconciler.check")


@dataclass(frozen=True)
class CheckSettings:
    """What ``reconciler check`` checks: ``run``'s configuration. ``problems``: check name
    -> why its configuration could not even be built (a bad flag), shown as its failure."""

    client: ClientSettings | None = None
    manifests: Path | None = None
    git: GitSettings | None = None
    state: str = "./reconciler-state.db"
    listen: str | None = "0.0.0.0:8080"
    problems: Mapping[str, str] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------------------- all of them


async def run_checks(settings: CheckSettings, *,
                     transport: httpx.AsyncBaseTransport | None = None) -> list[Check]:
    """Every check of ``reconciler check``, in :data:`TITLES` order."""
    problems = settings.problems
    source, load = source_checks(settings.manifests, settings.git, problems.get("source"))
    commands = load.commands if load is not None else ()
    api = await api_checks(settings.client, commands, transport=transport,
                           problems={k: v for k, v in problems.items()
                                     if k in ("api", "token")})
    if load is None:
        api = [c if c.name not in ("services", "commands", "ready") else
               skipping(c.name, "not checked: no manifests") for c in api]
    store = (failing("store", problems["store"], HINT_STORE, fatal=True)
             if "store" in problems else store_check(settings.state))
    listen = (failing("listen", problems["listen"], "", fatal=True)
              if "listen" in problems else listen_check(settings.listen))
    found = [*api, store, *source, listen]
    return sorted(found, key=lambda c: list(TITLES).index(c.name))


def _marks() -> tuple[str, str, str]:
    encoding = getattr(sys.stdout, "encoding", None) or "ascii"
    try:
        "✓✗".encode(encoding)
    except (UnicodeEncodeError, LookupError):
        return "ok", "X", "-"
    return "✓", "✗", "-"


def render_checks(checks: Sequence[Check], *, marks: tuple[str, str, str] | None = None,
                  summary: bool = True) -> str:
    """The text of ``reconciler check``: one line per check, ``→ hint`` below a failure,
    then (``summary``) a summary line."""
    ok, bad, skipped = marks or _marks()
    width = max(len(c.title) for c in checks)
    lines = []
    for c in checks:
        mark = {"pass": ok, "fail": bad, "skip": skipped}[c.status]
        lines.append(f"{mark} {c.title:<{width}}  {c.message}")
        if c.failed and c.hint:
            lines.append(f"  {'':<{width}}  → {c.hint}")
    if not summary:
        return "\n".join(lines)
    failed = [c.title for c in checks if c.failed]
    skips = sum(1 for c in checks if c.status == "skip")
    lines.append("")
    if failed:
        lines.append(f"{len(failed)} of {len(checks)} checks failed: {', '.join(failed)}.")
    else:
        extra = f" ({skips} not applicable)" if skips else ""
        lines.append(f"All checks passed{extra}.")
    return "\n".join(lines)


def checks_document(checks: Sequence[Check]) -> dict[str, Any]:
    """``reconciler check -o json``."""
    return {"ok": not any(c.failed for c in checks),
            "checks": [c.as_dict() for c in checks]}


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    check = sub.add_parser(
        "check", help="will this work? check the API, token, services, store, source, port",
        description="Check, with run's flags and RECONCILER_* variables, everything 'run' "
        "needs, one line each (✓ or ✗ with what to do): the API URL answers and is the "
        "organisation's root; the token is accepted and the organisation has the AiLake "
        "entitlement; every service the manifests name exists; every command they use is "
        "offered and the service is ready (where GET /services/{id}/status says); the "
        "state store opens and is writable; the source is readable (a git URL: fetched "
        "into a temporary folder); the listener's port is free. Changes nothing. Run it "
        "before deploying, and in the pod after.",
        epilog="exit status: 0 every check passed (or does not apply), 1 any failed",
        formatter_class=Formatter)
    add_source(check, daemon=False)
    add_api(check, required=False)
    add_state(check)
    add_run_flags(check)
    add_logging(check)
    add_output(check)
    check.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    logs.configure(level="error", fmt="console", stream=sys.stderr,
                   secrets=git_secrets(git_settings(args)) if args.git_url else ())
    checks = asyncio.run(run_checks(check_settings(args)))
    if args.output == "json":
        print(json.dumps(checks_document(checks), indent=2))
    else:
        print(render_checks(checks))
    return EXIT_FAILED if any(c.failed for c in checks) else EXIT_OK


def check_settings(args: argparse.Namespace) -> CheckSettings:
    """``run``'s configuration for ``check``: a part that cannot even be built (a bad
    flag, an unreadable token file) becomes that check's failure instead of an error."""
    problems: dict[str, str] = {}
    manifests: Path | None = None
    git: GitSettings | None = None
    try:
        manifests, git = manifest_source(args)
    except ConfigError as exc:
        problems["source"] = str(exc)
    token = None
    try:
        token = api_token(args)
    except ConfigError as exc:
        problems["token"] = str(exc)
    client = None
    if args.api_url:
        try:
            client = ClientSettings(base_url=args.api_url, ca_file=args.ca_file,
                                    timeout=args.request_timeout)
        except ConfigError as exc:
            problems["api"] = str(exc)
        else:
            try:
                client = dataclasses.replace(client, token=token)
            except ConfigError as exc:
                problems["token"] = str(exc)
    return CheckSettings(client=client, manifests=manifests, git=git, state=args.state,
                         listen=args.listen or None, problems=problems)


# ---------------------------------------------------------------------------- start-up


async def preflight(settings: DaemonSettings, *,
                    transport: httpx.AsyncBaseTransport | None = None) -> None:
    """``reconciler run``'s start-up checks: the store, the listener, the API and the
    token, and (a directory source) the services and commands the manifests use.

    Raises ReconcilerError (one line, with what to do) when the store or the listener
    cannot be used, and with ``once`` when the API cannot be reached or refuses the token
    (a pipeline learns it in seconds instead of after five failed passes); every other
    failure is logged, and the daemon goes on (``/readyz`` tells)."""
    for local in (store_check(settings.state), listen_check(settings.listen)):
        if local.failed:
            log.error("startup_check_failed", check=local.name, message=local.message,
                      hint=local.hint)
            raise (StoreError if local.name == "store" else ConfigError)(local.line())
    commands: Sequence[ServiceCommand] = ()
    if settings.manifests is not None and settings.manifests.exists():
        commands = load_manifests(settings.manifests).commands
    checks = await api_checks(settings.client, commands, transport=transport,
                              services=bool(commands))
    for check in checks:
        if check.failed:
            level = "error" if check.name in ("api", "token") else "warning"
            getattr(log, level)("startup_check_failed", check=check.name,
                                message=check.message, hint=check.hint,
                                status=check.http_status, fatal=check.fatal and settings.once)
    fatal = next((c for c in checks if c.failed and c.fatal), None)
    if fatal is not None and settings.once:
        raise _StartupError(fatal.line())


class _StartupError(ReconcilerError):
    """``run --once`` cannot work with this configuration."""
