"""The ``reconciler`` command line: argument parsing and exit codes, nothing else.

Every flag also reads an environment variable (``RECONCILER_<FLAG>``), so the Helm chart
and scripts can configure the daemon either way; an explicit flag wins.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from reconciler import __version__
from reconciler.ailake.client import AiLakeClient, ClientSettings
from reconciler.cli.render import (
    history_rows,
    plan_document,
    plan_text,
    status_json,
    status_table,
)
from reconciler.errors import ReconcilerError
from reconciler.execution.engine import Engine, EngineSettings, retry, utcnow
from reconciler.model.durations import parse_duration
from reconciler.observe import logs
from reconciler.observe.status import status_rows
from reconciler.planning.planner import Limits, Plan, plan
from reconciler.runtime.daemon import Daemon, DaemonSettings, read_secret
from reconciler.source.loader import load_manifests
from reconciler.store.sqlite import Store

__all__ = ["build_parser", "main"]

EXIT_OK, EXIT_FAILED, EXIT_CHANGES = 0, 1, 2


def env(name: str, default: str | None = None) -> str | None:
    """The value of ``RECONCILER_<NAME>``, else ``default``."""
    return os.environ.get(f"RECONCILER_{name}", default)


class _Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep hand-wrapped epilogs."""


def _cmd_validate(args: argparse.Namespace) -> int:
    result = load_manifests(*args.paths)
    if args.output == "json":
        print(json.dumps({
            "valid": not result.problems,
            "manifests": len(result.commands),
            "files": result.files,
            "problems": [
                {"file": p.file, "line": p.line, "name": p.name, "message": p.message}
                for p in result.problems
            ],
        }, indent=2))
    else:
        for problem in result.problems:
            print(problem)
        summary = (f"{len(result.commands)} valid manifest(s) in {result.files} file(s)"
                   + (f", {len(result.problems)} problem(s)" if result.problems else ""))
        print(summary, file=sys.stderr)
    return EXIT_FAILED if result.problems else EXIT_OK


def _add_state(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", default=env("STATE", "./reconciler-state.db"), metavar="PATH",
                   help="SQLite state store (env RECONCILER_STATE)")


def _add_source(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    default = env("MANIFESTS")
    p.add_argument("--manifests", default=default, required=required and default is None,
                   metavar="DIR", help="manifest directory or file, e.g. a git checkout "
                   "(env RECONCILER_MANIFESTS)")


def _add_api(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    default = env("API_URL")
    p.add_argument("--api-url", default=default, required=required and default is None,
                   metavar="URL", help="GoodData Cloud organization URL, e.g. "
                   "https://example.cloud.gooddata.com (env RECONCILER_API_URL)")
    p.add_argument("--token-file", default=env("TOKEN_FILE"), metavar="FILE",
                   help="file holding the API token, e.g. a mounted Secret (env "
                   "RECONCILER_TOKEN_FILE); else the token is read from RECONCILER_API_TOKEN")
    p.add_argument("--ca-file", default=env("CA_FILE"), metavar="FILE",
                   help="PEM bundle of a private CA for TLS verification (env RECONCILER_CA_FILE)")


def _add_output(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output", "-o", choices=("text", "json"), default="text",
                   help="text for people, json for machines")


def _add_logging(p: argparse.ArgumentParser) -> None:
    p.add_argument("--log-level", default=env("LOG_LEVEL", "info"),
                   choices=("debug", "info", "warning", "error"),
                   help="log level (env RECONCILER_LOG_LEVEL)")
    p.add_argument("--log-format", default=env("LOG_FORMAT", "auto"),
                   choices=("auto", "json", "console"),
                   help="auto: JSON lines unless stdout is a terminal (env RECONCILER_LOG_FORMAT)")


def _seconds(value: str) -> float:
    try:
        return parse_duration(value).total_seconds()
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value!r}")
    return int(value)


def _token(args: argparse.Namespace) -> str | None:
    return read_secret(os.environ.get("RECONCILER_API_TOKEN"), args.token_file, "API token")


def _client_settings(args: argparse.Namespace) -> ClientSettings:
    """The API client of ``run``: URL, token, CA, rate limit and request timeout."""
    return ClientSettings(base_url=args.api_url, token=_token(args), ca_file=args.ca_file,
                          rate_limit=args.rate_limit or None, timeout=args.request_timeout)


def _engine_settings(args: argparse.Namespace) -> EngineSettings:
    """The engine of ``run``: in-flight limits; a 404 trusted one request timeout after."""
    return EngineSettings(limits=Limits(args.max_in_flight, args.max_per_service),
                          settle=args.request_timeout)


def _settings(args: argparse.Namespace) -> DaemonSettings:
    """Everything ``run`` is configured with, from its flags (each built once)."""
    return DaemonSettings(
        manifests=Path(args.manifests),
        client=_client_settings(args),
        engine=_engine_settings(args),
        state=args.state,
        interval=args.interval,
        listen=args.listen or None,
        once=args.once,
        webhook_secret=read_secret(os.environ.get("RECONCILER_WEBHOOK_SECRET"),
                                   args.webhook_secret_file, "webhook secret"),
        grace_period=args.grace_period,
        retention=args.retention,
    )


def _configure_logs(args: argparse.Namespace, settings: DaemonSettings | None = None,
                    *, level: str | None = None, stream: TextIO | None = None) -> None:
    logs.configure(level=level or args.log_level, fmt=args.log_format,
                   secrets=settings.secrets if settings else (), stream=stream)


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args)
    _configure_logs(args, settings)
    return asyncio.run(Daemon(settings).run())


def _open_store_for_reading(path: str) -> Store:
    """The store as it is, or an empty in-memory one: reading never creates a file."""
    return Store(path, readonly=True) if Path(path).exists() else Store(":memory:")


def _cmd_plan(args: argparse.Namespace) -> int:
    logs.configure(level="error", fmt="console", stream=sys.stderr)
    load = load_manifests(args.manifests)
    with _open_store_for_reading(args.state) as store:
        current = plan(load.commands, store.intents(), utcnow(),
                       limits=Limits(args.max_in_flight, args.max_per_service))
        adopt = asyncio.run(_adoptable(args, current, store)) if args.api_url else {}
    problems = [str(p) for p in load.problems]
    if args.output == "json":
        print(json.dumps(plan_document(current, revision=load.revision, problems=problems,
                                       adopt=adopt), indent=2))
    else:
        for problem in problems:
            print(problem, file=sys.stderr)
        print(plan_text(current, revision=load.revision, invalid=load.invalid, adopt=adopt))
    if load.problems:
        return EXIT_FAILED
    return EXIT_CHANGES if current.changes else EXIT_OK


async def _adoptable(args: argparse.Namespace, current: Plan, store: Store) -> dict[str, str]:
    """Which planned submissions already exist on the server (a lost state store), so the
    plan says 'adopt' instead of 'submit': the engine's own probe, run against a scratch
    copy of the store, so nothing is written."""
    settings = ClientSettings(base_url=args.api_url, token=_token(args), ca_file=args.ca_file)
    wants = [current.desired[a.name] for a in current.actions if a.kind == "submit"]
    with store.snapshot() as scratch:
        async with AiLakeClient(settings) as client:
            return await Engine(client, scratch).adopt(wants)


def _cmd_status(args: argparse.Namespace) -> int:
    with _open_store_for_reading(args.state) as store:
        latest = store.latest_by_name()
        views = None
        if args.manifests:
            load = load_manifests(args.manifests)
            views = plan(load.commands, store.intents(), utcnow()).views
    rows = status_rows(latest, views)
    if args.output == "json":
        print(json.dumps(status_json(rows), indent=2))
    elif not rows:
        print(f"No intents recorded in {args.state}.")
    else:
        print(status_table(rows))
    return EXIT_OK


def _cmd_history(args: argparse.Namespace) -> int:
    with _open_store_for_reading(args.state) as store:
        intents = store.intents_named(args.name)
        operations = store.operations(name=args.name)
    if not intents:
        print(f"reconciler: no manifest named {args.name!r} in {args.state}", file=sys.stderr)
        return EXIT_FAILED
    if args.output == "json":
        print(json.dumps([{
            "operationId": o.operation_id, "specHash": o.spec_hash, "attempt": o.attempt,
            "serviceId": o.service_id, "submittedAt": o.submitted_at.isoformat(),
            "finishedAt": o.finished_at.isoformat() if o.finished_at else None,
            "status": o.status, "error": o.error, "result": o.result, "revision": o.revision,
        } for o in operations], indent=2))
    else:
        print(history_rows(intents, operations) if operations else
              f"{args.name}: recorded, but no operation was sent yet.")
    return EXIT_OK


def _cmd_retry(args: argparse.Namespace) -> int:
    if not Path(args.state).exists():
        print(f"reconciler: no state store at {args.state}", file=sys.stderr)
        return EXIT_FAILED
    with Store(args.state) as store:
        changed = retry(store, args.name, now=utcnow())
    if not changed:
        print(f"reconciler: {args.name!r} has no failed or stalled intent to retry",
              file=sys.stderr)
        return EXIT_FAILED
    print(f"{args.name}: retry scheduled; the running daemon picks it up on its next pass "
          "(send it SIGHUP or POST /hooks/reconcile to make that now).")
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace) -> int:
    from reconciler.cli.demo import run_demo

    return run_demo(args)


_SubParsers = argparse._SubParsersAction  # the type of add_subparsers()'s result


def build_parser() -> argparse.ArgumentParser:
    """The whole CLI; sub-commands register their own flags."""
    parser = argparse.ArgumentParser(
        prog="reconciler",
        description="GitOps controller for GoodData Cloud AI Lake service commands: "
        "reads ServiceCommand manifests, runs each missing command exactly once through "
        "the AI Lake API, follows it to its end and exports Prometheus metrics.",
        formatter_class=_Formatter,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for register in (_register_run, _register_plan, _register_validate, _register_status,
                     _register_history, _register_retry, _register_emulator,
                     _register_demo):
        register(sub)
    return parser


def _register_run(sub: _SubParsers[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run", help="the daemon: reconcile continuously (or --once)",
        description="Reconcile the manifests against the AI Lake API: submit every missing "
        "command exactly once, follow it to its end, retry failures per manifest, export "
        "metrics. Reconciles every --interval, as soon as manifest files change, on SIGHUP "
        "and on POST /hooks/reconcile. SIGTERM/SIGINT: stop submitting, record, exit.",
        epilog="exit status (--once): 0 every manifest in sync (or suspended, or waiting "
        "for a future schedule window), 1 any failed, stalled or invalid, or the API "
        "failing on 5 passes in a row without progress\n\n"
        "secrets: the API token comes from RECONCILER_API_TOKEN or --token-file; the "
        "webhook secret from RECONCILER_WEBHOOK_SECRET or --webhook-secret-file. Neither is "
        "ever logged.",
        formatter_class=_Formatter)
    _add_source(run)
    _add_api(run)
    _add_state(run)
    _add_run_flags(run)
    _add_logging(run)
    run.set_defaults(func=_cmd_run)


def _register_plan(sub: _SubParsers[argparse.ArgumentParser]) -> None:
    plan_p = sub.add_parser(
        "plan", help="show what run would do now, changing nothing",
        description="Compare the manifests with the state store and print what 'run' would "
        "do now, terraform-plan style. Changes nothing: the store is only read, and the API "
        "(when --api-url is given) only for lookups of operations that may already exist.",
        epilog="exit status: 0 no changes, 2 changes pending, 1 error or invalid manifests",
        formatter_class=_Formatter)
    _add_source(plan_p)
    _add_api(plan_p, required=False)
    _add_state(plan_p)
    plan_p.add_argument("--max-in-flight", type=_positive_int,
                        default=int(env("MAX_IN_FLIGHT", "16") or 16),
                        help="as for run (env RECONCILER_MAX_IN_FLIGHT)")
    plan_p.add_argument("--max-per-service", type=_positive_int,
                        default=int(env("MAX_PER_SERVICE", "4") or 4),
                        help="as for run (env RECONCILER_MAX_PER_SERVICE)")
    _add_output(plan_p)
    plan_p.set_defaults(func=_cmd_plan)


def _register_validate(sub: _SubParsers[argparse.ArgumentParser]) -> None:
    validate = sub.add_parser(
        "validate",
        help="check manifests offline (schema and semantic rules)",
        description="Check ServiceCommand manifests offline: YAML syntax, the JSON Schema "
        "(schemas/servicecommand.schema.json), unique names, dependsOn targets and cycles, "
        "payload size, durations and cron expressions. One line per problem: "
        "FILE:LINE: NAME: message.",
        epilog="exit status: 0 all valid, 1 any problem",
        formatter_class=_Formatter,
    )
    validate.add_argument("paths", nargs="+", metavar="PATH",
                          help="manifest files or directories (searched recursively for "
                          "*.yaml and *.yml)")
    validate.add_argument("--output", choices=("text", "json"), default="text",
                          help="text: one line per problem; json: a document for machines")
    validate.set_defaults(func=_cmd_validate)


def _register_status(sub: _SubParsers[argparse.ArgumentParser]) -> None:
    status = sub.add_parser(
        "status", help="a table of every manifest and its last operation",
        description="Print every manifest recorded in the state store with its state, "
        "attempts, last operation and error. With --manifests, also manifests not yet "
        "submitted and the planner's view (waiting, suspended).",
        epilog="exit status: 0", formatter_class=_Formatter)
    _add_state(status)
    _add_source(status, required=False)
    _add_output(status)
    status.set_defaults(func=_cmd_status)


def _register_history(sub: _SubParsers[argparse.ArgumentParser]) -> None:
    history = sub.add_parser(
        "history", help="every operation of one manifest",
        description="Print every operation (attempt) ever sent for one manifest, oldest "
        "first, across spec changes and schedule windows.",
        epilog="exit status: 0, 1 unknown name", formatter_class=_Formatter)
    history.add_argument("name", help="metadata.name of the manifest")
    _add_state(history)
    _add_output(history)
    history.set_defaults(func=_cmd_history)


def _register_retry(sub: _SubParsers[argparse.ArgumentParser]) -> None:
    retry_p = sub.add_parser(
        "retry", help="retry a stalled or failed manifest without a commit",
        description="Give a stalled (retries exhausted, timed out, refused) or failed "
        "manifest a fresh retry budget and deadline, due now. The daemon picks it up on its "
        "next pass. To re-run a command that succeeded, change its 'rerun' field instead.",
        epilog="exit status: 0 scheduled, 1 nothing to retry", formatter_class=_Formatter)
    retry_p.add_argument("name", help="metadata.name of the manifest")
    _add_state(retry_p)
    retry_p.set_defaults(func=_cmd_retry)


def _register_demo(sub: _SubParsers[argparse.ArgumentParser]) -> None:
    demo = sub.add_parser(
        "demo", help="the emulator plus the daemon on the sample manifests",
        description="Start the local AI Lake emulator with its bundled config, run the "
        "daemon on the sample manifests with live progress, print the status table, then "
        "keep serving metrics and status until Ctrl-C (or exit with --once).",
        epilog="exit status (--once): as for 'run --once'", formatter_class=_Formatter)
    demo.add_argument("--manifests", default=None, metavar="DIR",
                      help="manifests to run (default: ./manifests, else the bundled samples)")
    demo.add_argument("--config", default=None, metavar="FILE",
                      help="emulator config (default: the bundled one, matching the samples)")
    demo.add_argument("--state", default=None, metavar="PATH",
                      help="state store (default: a fresh temporary one)")
    demo.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT",
                      help="metrics/status listener; a free port is used if it is taken")
    demo.add_argument("--once", action="store_true",
                      help="exit once everything converged, with run --once's status")
    _add_logging(demo)
    demo.set_defaults(func=_cmd_demo, log_level="error")


def _add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=_seconds, default=env("INTERVAL", "60s"),
                   help="full reconcile period, with +-10%% jitter (env RECONCILER_INTERVAL)")
    p.add_argument("--listen", default=env("LISTEN", "0.0.0.0:8080"), metavar="HOST:PORT",
                   help="HTTP listener for /metrics, /healthz, /readyz, /status and "
                   "/hooks/reconcile; empty to disable (env RECONCILER_LISTEN)")
    p.add_argument("--once", action="store_true",
                   default=(env("ONCE") or "").lower() in ("1", "true", "yes"),
                   help="reconcile until every manifest is settled, then exit "
                   "(env RECONCILER_ONCE)")
    p.add_argument("--webhook-secret-file", default=env("WEBHOOK_SECRET_FILE"), metavar="FILE",
                   help="file holding the webhook HMAC secret (env "
                   "RECONCILER_WEBHOOK_SECRET_FILE); else RECONCILER_WEBHOOK_SECRET; "
                   "without one the webhook answers 404")
    p.add_argument("--max-in-flight", type=_positive_int,
                   default=int(env("MAX_IN_FLIGHT", "16") or 16),
                   help="operations running at once, all services (env RECONCILER_MAX_IN_FLIGHT)")
    p.add_argument("--max-per-service", type=_positive_int,
                   default=int(env("MAX_PER_SERVICE", "4") or 4),
                   help="operations running at once on one service "
                   "(env RECONCILER_MAX_PER_SERVICE)")
    p.add_argument("--rate-limit", type=float, default=float(env("RATE_LIMIT", "10") or 10),
                   help="API requests per second at most; 0: unlimited (env RECONCILER_RATE_LIMIT)")
    p.add_argument("--grace-period", type=_seconds, default=env("GRACE_PERIOD", "25s"),
                   help="on SIGTERM, how long the current pass may take to record what it "
                   "started (env RECONCILER_GRACE_PERIOD)")
    p.add_argument("--request-timeout", type=_seconds, default=env("REQUEST_TIMEOUT", "30s"),
                   help="read timeout of one API request; also how long after a run request "
                   "whose answer never came a lookup's 404 is trusted to mean it never "
                   "arrived (env RECONCILER_REQUEST_TIMEOUT)")
    p.add_argument("--retention", type=_positive_int,
                   default=int(env("RETENTION", "50") or 50),
                   help="finished intents kept per manifest as history (env RECONCILER_RETENTION)")


def _register_emulator(sub: _SubParsers[argparse.ArgumentParser]) -> None:
    from reconciler.ailake.emulator import cli as emulator_cli

    emulator = sub.add_parser(
        "emulator",
        help="serve a local AI Lake API (for the demo, tests and trying things out)",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    emulator_cli.configure_parser(emulator)
    emulator.set_defaults(func=emulator_cli.run)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``reconciler`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        code: int = args.func(args)
    except ReconcilerError as exc:
        print(f"reconciler: error: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
    return code


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
