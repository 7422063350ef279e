"""The flags the commands share, each with its ``RECONCILER_<FLAG>`` environment default
(an explicit flag wins), their value types, and the exit statuses."""

from __future__ import annotations

import argparse
import os

from reconciler.ailake.ratelimit import AIMD_DEFAULT_START
from reconciler.model.durations import parse_duration
from reconciler.source.git import DEFAULT_TOKEN_USER

__all__ = [
    "EXIT_CHANGES",
    "EXIT_FAILED",
    "EXIT_OK",
    "Formatter",
    "SubParsers",
    "add_api",
    "add_logging",
    "add_output",
    "add_run_flags",
    "add_source",
    "add_state",
    "env",
    "positive_int",
    "truthy",
]

EXIT_OK, EXIT_FAILED, EXIT_CHANGES = 0, 1, 2


def env(name: str, default: str | None = None) -> str | None:
    """The value of ``RECONCILER_<NAME>``, else ``default``."""
    return os.environ.get(f"RECONCILER_{name}", default)


class Formatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Show defaults and keep hand-wrapped epilogs."""


def add_state(p: argparse.ArgumentParser) -> None:
    p.add_argument("--state", default=env("STATE", "./reconciler-state.db"),
                   metavar="PATH|URL",
                   help="the state store: a SQLite file, or postgresql://USER@HOST/DB "
                   "shared by replicas (its password in the URL or in the file "
                   "RECONCILER_STATE_PASSWORD_FILE names; never shown) (env "
                   "RECONCILER_STATE)")


def add_source(p: argparse.ArgumentParser, *, daemon: bool = True) -> None:
    """``--manifests`` or the ``--git-*`` flags (exactly one source, checked by
    :func:`reconciler.cli.settings.manifest_source`), and ``--allow-empty``. ``daemon``:
    ``run`` (with the git cache)."""
    p.add_argument("--manifests", default=env("MANIFESTS"), metavar="DIR",
                   help="manifest directory or file: a plain folder, a git checkout, a "
                   "git-sync link or a ConfigMap mount; or use --git-url "
                   "(env RECONCILER_MANIFESTS)")
    git = p.add_argument_group(
        "built-in git follower", "follow a repository with the git CLI instead of "
        "--manifests: a shallow fetch every --git-interval and on a signed webhook, an "
        "atomic switch to the new tree; a failed fetch keeps serving the last good tree")
    git.add_argument("--git-url", default=env("GIT_URL"), metavar="URL",
                     help="repository to follow: https://, ssh://, git://, file:// or "
                     "host:path; never with a password in it (env RECONCILER_GIT_URL)")
    git.add_argument("--git-ref", default=env("GIT_REF", "main"), metavar="REF",
                     help="branch, tag or commit to follow (env RECONCILER_GIT_REF)")
    git.add_argument("--git-path", default=env("GIT_PATH", ""), metavar="DIR",
                     help="folder of the manifests inside the repository; empty: its root "
                     "(env RECONCILER_GIT_PATH)")
    git.add_argument("--git-interval", type=_seconds, default=env("GIT_INTERVAL", "60s"),
                     metavar="DURATION",
                     help="time between fetches, with +-10%% jitter; a signed webhook "
                     "fetches at once (env RECONCILER_GIT_INTERVAL)")
    if daemon:
        git.add_argument("--git-cache", default=env("GIT_CACHE"), metavar="DIR",
                         help="cache of the fetched repository and trees (default: "
                         ".reconciler-git/ beside the SQLite state file, else under "
                         "$TMPDIR); a restart serves its last tree at once "
                         "(env RECONCILER_GIT_CACHE)")
    git.add_argument("--git-token-file", default=env("GIT_TOKEN_FILE"), metavar="FILE",
                     help="file holding an HTTPS access token, read at every fetch (a "
                     "rotated Secret is picked up); sent as Basic USER:TOKEN, never "
                     "logged (env RECONCILER_GIT_TOKEN_FILE)")
    git.add_argument("--git-token-user", default=env("GIT_TOKEN_USER", DEFAULT_TOKEN_USER),
                     metavar="USER", help="user name sent with the token: x-access-token "
                     "(GitHub; GitLab and Gitea take any), x-token-auth (Bitbucket) "
                     "(env RECONCILER_GIT_TOKEN_USER)")
    git.add_argument("--git-ssh-key-file", default=env("GIT_SSH_KEY_FILE"), metavar="FILE",
                     help="SSH private key (a deploy key) for an ssh:// or host:path URL; "
                     "needs --git-known-hosts-file (env RECONCILER_GIT_SSH_KEY_FILE)")
    git.add_argument("--git-known-hosts-file", default=env("GIT_KNOWN_HOSTS_FILE"),
                     metavar="FILE", help="known_hosts with the server's host key, always "
                     "checked (env RECONCILER_GIT_KNOWN_HOSTS_FILE)")
    git.add_argument("--git-timeout", type=_seconds, default=env("GIT_TIMEOUT", "120s"),
                     metavar="DURATION",
                     help="time allowed to every git call; past it the call is killed and "
                     "the last tree kept (env RECONCILER_GIT_TIMEOUT)")
    p.add_argument("--allow-empty", action="store_true",
                   default=truthy(env("ALLOW_EMPTY")),
                   help="accept a source with no manifests where the last good one had "
                   "some, and orphan them all; without it nothing is orphaned, the source "
                   "is reported and alerts (env RECONCILER_ALLOW_EMPTY)")


def truthy(value: str | None) -> bool:
    return (value or "").lower() in ("1", "true", "yes")


class _Switch(argparse.Action):
    """An on/off flag written ``--X``, ``--X=true|false`` or ``--no-X``; not given: None
    (the caller's default)."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs="?", const=True,
                         **kwargs)  # type: ignore[arg-type]

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace,
                 values: object, option_string: str | None = None) -> None:
        if option_string is not None and option_string.startswith("--no-"):
            if values is not True:
                parser.error(f"{option_string} takes no value")
            values = False
        setattr(namespace, self.dest, values)


def _switch(value: str) -> bool:
    """``true``/``false`` (also 1/0, yes/no, on/off) for a flag such as ``--ui=false``."""
    lowered = value.strip().lower()
    if lowered in ("1", "true", "yes", "on"):
        return True
    if lowered in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def add_api(p: argparse.ArgumentParser, *, required: bool = True) -> None:
    default = env("API_URL")
    p.add_argument("--api-url", default=default, required=required and default is None,
                   metavar="URL", help="GoodData Cloud organization URL, e.g. "
                   "https://example.cloud.gooddata.com (env RECONCILER_API_URL)")
    p.add_argument("--token-file", default=env("TOKEN_FILE"), metavar="FILE",
                   help="file holding the API token, e.g. a mounted Secret (env "
                   "RECONCILER_TOKEN_FILE); else the token is read from RECONCILER_API_TOKEN")
    p.add_argument("--ca-file", default=env("CA_FILE"), metavar="FILE",
                   help="PEM bundle of a private CA for TLS verification (env RECONCILER_CA_FILE)")


def _output_kind(value: str) -> str:
    if value not in ("text", "json"):
        raise argparse.ArgumentTypeError(f"expected text or json, got {value!r}")
    return value


def add_output(p: argparse.ArgumentParser) -> None:
    # ``type`` (not ``choices``) checks RECONCILER_OUTPUT too: argparse converts a string
    # default with it, but never checks a default against ``choices``
    p.add_argument("--output", "-o", type=_output_kind, default=env("OUTPUT", "text"),
                   metavar="{text,json}",
                   help="text for people, json for machines (env RECONCILER_OUTPUT)")


def add_logging(p: argparse.ArgumentParser) -> None:
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


def _rate_limit(value: str) -> str:
    """``auto``, or a number of requests per second >= 0 (0: unlimited)."""
    if value.strip().lower() == "auto":
        return "auto"
    try:
        rate = float(value)
    except ValueError:
        rate = -1.0
    if not rate >= 0 or rate == float("inf"):
        raise argparse.ArgumentTypeError(
            f"must be 'auto' or a number of requests per second >= 0, got {value!r}")
    return f"{rate:g}"


def _positive_int(value: str) -> int:
    if not value.isdigit() or int(value) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {value!r}")
    return int(value)


def add_run_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--interval", type=_seconds, default=env("INTERVAL", "60s"),
                   help="full reconcile period, with +-10%% jitter (env RECONCILER_INTERVAL)")
    p.add_argument("--listen", default=env("LISTEN", "0.0.0.0:8080"), metavar="HOST:PORT",
                   help="HTTP listener for /metrics, /healthz, /readyz, /status, "
                   "/hooks/reconcile and the web view (/); empty to disable "
                   "(env RECONCILER_LISTEN)")
    p.add_argument("--ui", "--no-ui", action=_Switch, type=_switch, default=env("UI"),
                   metavar="true|false",
                   help="serve the read-only web view on the listener (GET / and "
                   "/manifests/NAME; on by default); --ui=false or --no-ui turns it off "
                   "and / answers 404 (env RECONCILER_UI)")
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
    p.add_argument("--rate-limit", type=_rate_limit, default=env("RATE_LIMIT", "auto"),
                   metavar="auto|N",
                   help="API requests per second: 'auto' (default) adapts, starting at "
                   f"{AIMD_DEFAULT_START:g}/s, growing while answers are fast and the "
                   "server's X-RateLimit-Remaining is high, halving on a 429 (after its "
                   "Retry-After) and slowing when answers get slow; N: at most N per "
                   "second, fixed; 0: unlimited (env RECONCILER_RATE_LIMIT)")
    p.add_argument("--grace-period", type=_seconds, default=env("GRACE_PERIOD", "25s"),
                   help="on SIGTERM, how long the current pass may take to record what it "
                   "started (env RECONCILER_GRACE_PERIOD)")
    p.add_argument("--request-timeout", type=_seconds, default=env("REQUEST_TIMEOUT", "30s"),
                   help="read timeout of one API request (env RECONCILER_REQUEST_TIMEOUT)")
    p.add_argument("--settle-window", type=_seconds, default=env("SETTLE_WINDOW", "10m"),
                   help="after a run request whose answer never came (timeout, reset, 5xx), "
                   "how long a lookup's 404 is not yet proof that it never arrived; only "
                   "then is it sent again, with the same operation-id "
                   "(env RECONCILER_SETTLE_WINDOW)")
    p.add_argument("--not-found-tolerance", type=_seconds,
                   default=env("NOT_FOUND_TOLERANCE", "10m"),
                   help="how long an operation the server accepted may answer 404 (not "
                   "visible yet) before its intent is recorded as lost; it is never sent "
                   "again (env RECONCILER_NOT_FOUND_TOLERANCE)")
    p.add_argument("--retention", type=_positive_int,
                   default=int(env("RETENTION", "50") or 50),
                   help="finished intents kept per manifest as history (env RECONCILER_RETENTION)")



#: a whole number >= 1, for a flag of a command's own (the value types keep their private
#: names: a flag's ``type.__name__`` tells what it takes)
positive_int = _positive_int

SubParsers = argparse._SubParsersAction  # the type of add_subparsers()'s result
