"""``reconciler plan``: what ``run`` would do now, changing nothing (the store is only
read, the API only looked up)."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from datetime import datetime

from reconciler.ailake.client import AiLakeClient, ClientSettings
from reconciler.cli.check_api import api_checks, api_url_problem
from reconciler.cli.flags import (
    EXIT_CHANGES,
    EXIT_FAILED,
    EXIT_OK,
    Formatter,
    SubParsers,
    add_api,
    add_output,
    add_source,
    add_state,
    env,
    positive_int,
)
from reconciler.cli.reading import clock, load_source, open_store_for_reading
from reconciler.cli.render import (
    plan_document,
    plan_text,
)
from reconciler.cli.settings import (
    api_token,
    git_settings,
)
from reconciler.errors import ConfigError
from reconciler.execution.engine import Engine
from reconciler.execution.timing import Durations
from reconciler.model.manifest import LoadResult
from reconciler.model.records import IntentRecord
from reconciler.model.states import IntentState
from reconciler.observe import logs
from reconciler.observe.status import Progress, progress
from reconciler.planning.planner import Limits, Plan, plan
from reconciler.runtime.settings import git_secrets
from reconciler.store import StateStore

__all__ = ["command", "register"]


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    plan_p = sub.add_parser(
        "plan", help="show what run would do now, changing nothing",
        description="Compare the manifests with the state store and print what 'run' would "
        "do now, terraform-plan style. Changes nothing: the store is only read, the API "
        "(when --api-url is given) only for lookups of operations that may already exist, "
        "and a --git-url repository is fetched into a temporary folder, removed after.",
        epilog="exit status: 0 no changes, 2 changes pending, 1 error, invalid manifests, "
        "or orphaning withheld for an empty source",
        formatter_class=Formatter)
    add_source(plan_p, daemon=False)
    add_api(plan_p, required=False)
    add_state(plan_p)
    plan_p.add_argument("--max-in-flight", type=positive_int,
                        default=int(env("MAX_IN_FLIGHT", "16") or 16),
                        help="as for run (env RECONCILER_MAX_IN_FLIGHT)")
    plan_p.add_argument("--max-per-service", type=positive_int,
                        default=int(env("MAX_PER_SERVICE", "4") or 4),
                        help="as for run (env RECONCILER_MAX_PER_SERVICE)")
    add_output(plan_p)
    plan_p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    logs.configure(level="error", fmt="console", stream=sys.stderr,
                   secrets=git_secrets(git_settings(args)))
    with open_store_for_reading(args.state) as store, load_source(args, store) as loaded:
        assert loaded is not None
        load, verdict = loaded
        now = clock()
        recorded = store.intents()
        current = plan(load.commands, recorded, now,
                       limits=Limits(args.max_in_flight, args.max_per_service),
                       windows=store.latest_windows(), held=load.held)
        adopt = asyncio.run(_adoptable(args, current, store)) if args.api_url else {}
        previous = _previous_specs(current, store.latest_by_name())
        running = _progress_of(current, recorded, load, now, store)
    problems = [str(p) for p in load.problems]
    withheld = verdict.reason if not verdict.may_orphan else None
    if args.output == "json":
        print(json.dumps(plan_document(current, revision=load.revision, problems=problems,
                                       adopt=adopt, withheld=withheld, previous=previous),
                         indent=2))
    else:
        for problem in problems:
            print(problem, file=sys.stderr)
        if withheld:
            print(f"orphaning withheld: {withheld}", file=sys.stderr)
        print(plan_text(current, revision=load.revision, invalid=load.invalid, adopt=adopt,
                        previous=previous, recorded=recorded, progress=running))
    if load.problems or verdict.suspicious_empty:
        return EXIT_FAILED
    return EXIT_CHANGES if current.changes else EXIT_OK


def _previous_specs(current: Plan, latest: dict[str, IntentRecord]) -> dict[str, str]:
    """name -> the canonical intent last recorded, for every manifest whose desired spec
    differs from it (the plan shows what changed)."""
    return {name: rec.canonical for name, rec in latest.items()
            if name in current.desired and rec.spec_hash != current.desired[name].spec_hash}


def _progress_of(current: Plan, recorded: dict[str, IntentRecord], load: LoadResult,
                 now: datetime, store: StateStore) -> dict[str, Progress]:
    """name -> how far its operation in flight is (what ``plan`` and ``status`` show)."""
    busy = [v for v in current.views if v.state in (IntentState.PENDING,
                                                     IntentState.SUBMITTING)]
    records = [recorded[v.spec_hash] for v in busy if v.spec_hash in recorded]
    if not records:
        return {}
    typical = Durations(store.recent_durations())
    found = {}
    for rec in records:
        command = load.by_name.get(rec.name)
        shown = progress(rec, now, timeout=command.timeout if command else None,
                         typical=typical.typical(rec.service, rec.command))
        if shown is not None:
            found[rec.name] = shown
    return found


async def _adoptable(args: argparse.Namespace, current: Plan,
                     store: StateStore) -> dict[str, str]:
    """Which planned submissions already exist on the server (a lost state store), so the
    plan says 'adopt' instead of 'submit': the engine's own probe, run against a scratch
    copy of the store, so nothing is written. The API is checked first (a wrong URL or
    token is one clear error within seconds, not a plan of submissions)."""
    problem = api_url_problem(args.api_url)
    if problem is not None:
        raise ConfigError(problem)
    settings = ClientSettings(base_url=args.api_url, token=api_token(args), ca_file=args.ca_file)
    failed = next((c for c in await api_checks(settings, services=False) if c.failed), None)
    if failed is not None:
        raise ConfigError(failed.line())
    wants = [current.desired[a.name] for a in current.actions if a.kind == "submit"]
    with store.snapshot() as scratch:
        async with AiLakeClient(settings) as client:
            return await Engine(client, scratch).adopt(wants)
