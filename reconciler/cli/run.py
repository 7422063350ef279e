"""``reconciler run``: the daemon, reconciling continuously (or ``--once``)."""

from __future__ import annotations

import argparse
import asyncio

from reconciler.cli.check import preflight
from reconciler.cli.flags import (
    Formatter,
    SubParsers,
    add_api,
    add_logging,
    add_run_flags,
    add_source,
    add_state,
)
from reconciler.cli.settings import (
    configure_logs,
    daemon_settings,
)
from reconciler.runtime.daemon import Daemon

__all__ = ["command", "register"]


def register(sub: SubParsers[argparse.ArgumentParser]) -> None:
    run = sub.add_parser(
        "run", help="the daemon: reconcile continuously (or --once)",
        description="Reconcile the manifests against the AI Lake API: submit every missing "
        "command exactly once, follow it to its end, retry failures per manifest, export "
        "metrics. The manifests come from --manifests (a folder, a git checkout, a git-sync "
        "link, a ConfigMap mount) or from a repository followed with --git-url. Reconciles "
        "every --interval, as soon as the manifests change, on SIGHUP and on POST "
        "/hooks/reconcile (which also fetches at once). A manifest that turns invalid keeps "
        "its state; only one absent from a cleanly loaded source is orphaned, and an empty "
        "source orphans nothing without --allow-empty. SIGTERM/SIGINT: stop submitting, "
        "record, exit.",
        epilog="exit status (--once): 0 every manifest in sync (or suspended, or waiting "
        "for a future schedule window), 1 any failed, stalled or invalid, orphaning "
        "withheld for an empty source, no tree from --git-url, or the API failing on 5 "
        "passes in a row without progress\n\n"
        "secrets: the API token comes from RECONCILER_API_TOKEN or --token-file; the "
        "webhook secret from RECONCILER_WEBHOOK_SECRET or --webhook-secret-file; the git "
        "token from --git-token-file. None is ever logged.",
        formatter_class=Formatter)
    add_source(run)
    add_api(run)
    add_state(run)
    add_run_flags(run)
    add_logging(run)
    run.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    settings = daemon_settings(args)
    configure_logs(args, settings)
    daemon = Daemon(settings, preflight=lambda: preflight(settings))
    return asyncio.run(daemon.run())
