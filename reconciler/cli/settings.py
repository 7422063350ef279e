"""What the commands are configured with, built from their flags: the manifest source
(a directory or the git follower), the API token and client, and ``run``'s daemon."""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import TextIO

from reconciler.ailake.client import ClientSettings
from reconciler.cli.check_api import api_url_problem
from reconciler.errors import ConfigError
from reconciler.execution.engine import EngineSettings
from reconciler.listen import normalize_listen
from reconciler.observe import logs
from reconciler.planning.planner import Limits
from reconciler.runtime.daemon import DaemonSettings, read_secret
from reconciler.source.git import GitSettings
from reconciler.source.kinds import check_manifests_path

__all__ = [
    "api_token",
    "client_settings",
    "configure_logs",
    "daemon_settings",
    "engine_settings",
    "git_settings",
    "manifest_source",
]


def git_settings(args: argparse.Namespace, *,
                  cache_dir: Path | None = None) -> GitSettings | None:
    """The git follower of ``--git-url`` (None without it); ConfigError when invalid."""
    if not args.git_url:
        return None
    cache = cache_dir or (Path(args.git_cache) if getattr(args, "git_cache", None) else None)
    return GitSettings(
        url=args.git_url, ref=args.git_ref, path=args.git_path or "",
        interval=args.git_interval, cache_dir=cache, state=args.state,
        token_file=Path(args.git_token_file) if args.git_token_file else None,
        token_user=args.git_token_user,
        ssh_key_file=Path(args.git_ssh_key_file) if args.git_ssh_key_file else None,
        known_hosts_file=(Path(args.git_known_hosts_file) if args.git_known_hosts_file
                          else None),
        timeout=args.git_timeout)


def manifest_source(args: argparse.Namespace, *, required: bool = True,
            cache_dir: Path | None = None) -> tuple[Path | None, GitSettings | None]:
    """``--manifests`` (checked on the raw string: a git URL there gets the hint "use
    --git-url") or the git follower; exactly one, or none when not ``required``."""
    if args.manifests and args.git_url:
        raise ConfigError("give either --manifests DIR or --git-url URL, not both "
                          "(check RECONCILER_MANIFESTS and RECONCILER_GIT_URL too)")
    if args.manifests:
        check_manifests_path(args.manifests)
        return Path(args.manifests), None
    if args.git_url:
        return None, git_settings(args, cache_dir=cache_dir)
    if required:
        raise ConfigError("no manifest source: give --manifests DIR (a folder or file of "
                          "manifests) or --git-url URL (a repository to follow)")
    return None, None


def api_token(args: argparse.Namespace) -> str | None:
    return read_secret(os.environ.get("RECONCILER_API_TOKEN"), args.token_file, "API token")


def client_settings(args: argparse.Namespace) -> ClientSettings:
    """The API client of ``run``: URL, token, CA, rate limit and request timeout; a URL
    that is not the organisation's root (``.../api/v1``) is refused."""
    problem = api_url_problem(args.api_url)
    if problem is not None:
        raise ConfigError(problem)
    adaptive = args.rate_limit == "auto"
    fixed = None if adaptive else float(args.rate_limit) or None
    return ClientSettings(base_url=args.api_url, token=api_token(args), ca_file=args.ca_file,
                          rate_limit=fixed, adaptive_rate=adaptive,
                          timeout=args.request_timeout)


def engine_settings(args: argparse.Namespace) -> EngineSettings:
    """The engine of ``run``: in-flight limits, the settle window, the not-found tolerance."""
    return EngineSettings(limits=Limits(args.max_in_flight, args.max_per_service),
                          settle=args.settle_window,
                          not_found_tolerance=args.not_found_tolerance)


def daemon_settings(args: argparse.Namespace) -> DaemonSettings:
    """Everything ``run`` is configured with, from its flags (each built once)."""
    manifests, git = manifest_source(args)
    return DaemonSettings(
        manifests=manifests,
        git=git,
        allow_empty=args.allow_empty,
        client=client_settings(args),
        engine=engine_settings(args),
        state=args.state,
        interval=args.interval,
        listen=normalize_listen(args.listen) if args.listen else None,
        once=args.once,
        webhook_secret=read_secret(os.environ.get("RECONCILER_WEBHOOK_SECRET"),
                                   args.webhook_secret_file, "webhook secret"),
        grace_period=args.grace_period,
        retention=args.retention,
        ui=args.ui is not False,  # not given: on
    )


def configure_logs(args: argparse.Namespace, settings: DaemonSettings | None = None,
                    *, level: str | None = None, stream: TextIO | None = None) -> None:
    logs.configure(level=level or args.log_level, fmt=args.log_format,
                   secrets=settings.secrets if settings else (), stream=stream)
