"""Command line of the emulator: ``reconciler emulator`` (and ``python -m`` of this package).

``configure_parser`` adds the flags and the full config-file reference to a parser the caller
owns (the main CLI wires it in as a subcommand); ``run`` serves until SIGTERM or SIGINT and
returns 0. The server runs in a background thread while the main thread waits for a signal,
so a SIGTERM ends the process cleanly with status 0 instead of being re-raised by uvicorn.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from types import FrameType

from reconciler.ailake.emulator.config import load_config
from reconciler.ailake.emulator.server import start_background
from reconciler.errors import ConfigError
from reconciler.listen import parse_listen

__all__ = ["DESCRIPTION", "EPILOG", "configure_parser", "parse_listen", "run"]

DEFAULT_LISTEN = "127.0.0.1:8765"

DESCRIPTION = """\
Serve a local emulator of the GoodData Cloud AI Lake "Services & Operations" API
(GET /api/v1/ailake/services, GET .../services/{serviceId}/status,
POST .../services/{serviceId}/commands/{commandName}/run,
GET /api/v1/ailake/operations/{operationId}) from a YAML file of services and commands,
with optional fault injection. Without --config it serves the bundled default
(reconciler/emulator/default.yaml), which matches the sample manifests.
"""

EPILOG = """\
config file (YAML; every key optional, unknown keys are errors):

  token: s3cret          # then every API call needs "Authorization: Bearer s3cret"
                         # (--token / RECONCILER_EMULATOR_TOKEN override it)
  dedup: true            # a repeated operation-id with the same service, command and
                         # body answers 202 with the same id and does not run again;
                         # the same id with a different one answers 409.
                         # false: every POST executes (a new execution), replacing the
                         # operation record; no 409.
  seed: 42               # seeds the fault and adversary dice, for reproducible runs
  services:
    - id: 6f1c2a4e-0000-4000-8000-000000000001  # path {serviceId}, = attributes.serviceId
      name: sales-vectors                       # attributes.name
      status: {ready: true}   # served as {"status": ...} by GET .../status (default null)
      commands:
        reindex:  {duration: 2s}              # pending 2 s, then succeeded (with result)
        backfill: {duration: 5s, fail: true}  # always fails (with an error object)
        flaky:    {duration: 1s, failTimes: 2}  # first 2 executions fail, then succeed
        hang:     {duration: never}           # pending forever
  faults:                # apply to the four AI Lake paths only, never to /_emulator/*
    errorRate: 0.0       # fraction answered 503 problem+json; nothing executes
    throttleRate: 0.0    # fraction answered 429 {error, message} with Retry-After and
                         # X-RateLimit-Limit/Remaining/Reset; nothing executes
    retryAfter: 1        # Retry-After seconds (integer >= 0)
    dropRate: 0.0        # fraction processed (a run really starts), then the TCP
                         # connection is closed without an answer
    latency: 0s          # delay added before every answer
    # adversary modes (all off by default; each ...Rate: fraction hit, default 1):
    notFoundAfterAccept: 0s      # GET of a new operation answers 404 for this long after
    notFoundAfterAcceptRate: 1   #   its 202 (decided per execution), then normally
    holdBeforeExecute: 0s        # hold a valid run POST open this long, then execute it,
    holdBeforeExecuteRate: 1     #   then answer (also when the client has gone)
    forgetAfter: 0s              # operations older than this answer 404 for good; their
                                 #   id is unknown again, so a re-POST executes again
    sameOperationId: false       # the 202 names the first operation ever accepted
    sameOperationIdRate: 1       #   (the run itself is stored under the sent id)
    freshOperationId: false      # the run is stored under a fresh UUID, which the 202
    freshOperationIdRate: 1      #   names; the sent id answers 404
    wrongIdInGet: false          # GET answers another operation's id (or a random UUID)
    wrongIdInGetRate: 1
    unknownStatus: null          # e.g. cancelled or running: reported instead of pending
    unknownStatusRate: 1
    echoAuthorization: false     # the request's Authorization header, verbatim, in every
                                 #   problem+json detail, 429 message and failure detail

  durations: Go syntax, e.g. 500ms, 2s, 1m30s, 1.5h, 0; a bare number is seconds.
  command settings: duration (default 0s), fail (default false), failTimes (default 0);
  fail and failTimes exclude each other. Rates are fractions 0..1.

API policies: a missing operation-id header gets a uuid4; unknown service, command or
operation -> 404; malformed JSON, non-object body or payload, non-string context value,
payload over 15000 characters as compact JSON -> 400; missing or wrong bearer token -> 401.
Errors are application/problem+json {title, status, detail, traceId} with X-GDC-TRACE-ID.

admin endpoints (no token, never faulted):
  GET  /_emulator/operations   every operation: id, serviceId, command, body, status,
                               posts (POSTs that carried its id), executions
  GET  /_emulator/executions   one entry per execution that really started:
                               operationId, serviceId, command, payload, context, status,
                               startedAt, finishedAt (ISO-8601 UTC; null while pending)
  GET  /_emulator/faults       the faults in force (adversary keys only when not default)
  PUT  /_emulator/faults       JSON object of fault keys to change; answers the new faults
  GET  /_emulator/requests     API requests counted: {total, routes: {"METHOD template": n}}
  DELETE /_emulator/requests   the request counts back to zero
  POST /_emulator/reset        forget operations, executions and request counts; faults
                               back to the config

environment: RECONCILER_EMULATOR_CONFIG (= --config), RECONCILER_EMULATOR_TOKEN (= --token)
"""


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the emulator's flags, description and config reference to ``parser``."""
    parser.description = DESCRIPTION
    parser.epilog = EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=os.environ.get("RECONCILER_EMULATOR_CONFIG"),
        help="emulator config file (env RECONCILER_EMULATOR_CONFIG; default: bundled default)",
    )
    parser.add_argument(
        "--listen",
        metavar="HOST:PORT",
        default=DEFAULT_LISTEN,
        help=f"address to serve on (default {DEFAULT_LISTEN}; port 0 picks a free port)",
    )
    parser.add_argument(
        "--token",
        metavar="T",
        default=os.environ.get("RECONCILER_EMULATOR_TOKEN"),
        help="require 'Authorization: Bearer T' (env RECONCILER_EMULATOR_TOKEN; "
        "overrides the config's token)",
    )


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM or SIGINT; 0 on a clean stop, 2 on a configuration error."""
    try:
        host, port = parse_listen(args.listen)
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"reconciler emulator: error: {exc}", file=sys.stderr)
        return 2
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        try:
            emulator = start_background(config, host=host, port=port, token=args.token)
        except OSError as exc:
            print(
                f"reconciler emulator: error: cannot listen on {args.listen}: {exc}",
                file=sys.stderr,
            )
            return 1
        with emulator:
            print(f"AI Lake emulator listening on {emulator.url}", file=sys.stderr, flush=True)
            while not stop.wait(0.5):
                pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
