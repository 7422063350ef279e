"""What ``--git-*`` configure (:class:`GitSettings`), validated on creation, and where a
repository's cache lives by default (:func:`default_cache_dir`); see
:mod:`reconciler.source.git`."""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from reconciler.errors import ConfigError

__all__ = ["DEFAULT_TOKEN_USER", "GitSettings", "default_cache_dir", "safe_url"]

DEFAULT_TOKEN_USER = "x-access-token"  # noqa: S105 - a user name, not a secret
_SCP_LIKE = re.compile(r"(?P<user>[A-Za-z0-9._-]+@)?(?P<host>[A-Za-z0-9.-]+):(?P<path>.+)")
_SCHEMES = {"https": "https", "http": "http", "ssh": "ssh", "git": "git", "file": "file",
            "git+ssh": "ssh", "ssh+git": "ssh"}
_REF = re.compile(r"[A-Za-z0-9._/@+-]+")
_LOOPBACK = {"127.0.0.1", "localhost", "::1", "[::1]"}


def safe_url(url: str) -> str:
    """``url`` as it may be shown: any user info (``user:secret@``) removed."""
    if "://" in url:
        parts = urlsplit(url)
        if parts.username is not None or parts.password is not None:
            host = parts.hostname or ""
            if ":" in host:
                host = f"[{host}]"
            netloc = host + (f":{parts.port}" if parts.port else "")
            return urlunsplit((parts.scheme, netloc, parts.path, parts.query, ""))
        return urlunsplit((parts.scheme, parts.netloc, parts.path, parts.query, ""))
    return url


def _scheme(url: str) -> str:
    """The protocol git speaks for ``url`` (``https``, ``ssh``, ``file``, ...); ConfigError
    for anything else (``ext::`` would run a command, a leading ``-`` is an option)."""
    if url.startswith("-") or any(c.isspace() or not c.isprintable() for c in url):
        raise ConfigError("--git-url: not a URL (it starts with '-' or holds spaces or "
                          "control characters)")
    if "::" in url.split("/", 1)[0]:
        raise ConfigError("--git-url: git remote helpers (TRANSPORT::ADDRESS) are refused; "
                          "use https://, ssh://, git://, file:// or host:path")
    if "://" in url:
        scheme = url.split("://", 1)[0].lower()
        if scheme not in _SCHEMES:
            raise ConfigError(f"--git-url: unsupported scheme {scheme!r}; use https://, "
                              "ssh://, git://, file:// or host:path")
        return _SCHEMES[scheme]
    if _SCP_LIKE.fullmatch(url):
        return "ssh"
    raise ConfigError(f"--git-url: {safe_url(url)!r} is not a git URL (https://host/x.git, "
                      "ssh://git@host/x.git, git@host:x.git, file:///path/x.git)")


@dataclass(frozen=True)
class GitSettings:
    """What ``--git-*`` configure. Validated on creation (ConfigError)."""

    url: str
    ref: str = "main"
    #: a folder inside the repository ('' = its root)
    path: str = ""
    #: seconds between fetches (with +-10% jitter); a webhook fetches at once
    interval: float = 60.0
    #: the cache directory; None: :func:`default_cache_dir` under ``state``
    cache_dir: Path | None = None
    #: the SQLite state path (or a URL), only to place the default cache
    state: str = "./reconciler-state.db"
    token_file: Path | None = None
    token_user: str = DEFAULT_TOKEN_USER
    ssh_key_file: Path | None = None
    known_hosts_file: Path | None = None
    #: seconds allowed to every git call
    timeout: float = 120.0
    #: seconds a webhook waits for more webhooks before fetching. 0: fetch at once; hooks
    #: that arrive while a fetch runs still make one more fetch, not one each
    debounce: float = 0.0
    #: trees kept on disk: the current one and the previous one
    keep_trees: int = 2
    git: str = "git"
    #: extra environment for git (tests), merged last
    env: Mapping[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        scheme = _scheme(self.url)
        if "://" in self.url and urlsplit(self.url).password is not None:
            raise ConfigError("--git-url holds a password; put the token in "
                              "--git-token-file instead (never in the URL)")
        _check_ref(self.ref)
        _check_path(self.path)
        if self.token_file is not None and self.ssh_key_file is not None:
            raise ConfigError("--git-token-file and --git-ssh-key-file exclude each other")
        if self.token_file is not None:
            _check_token(self, scheme)
        if self.ssh_key_file is not None:
            _check_ssh_key(self, scheme)
        if self.interval <= 0 or self.timeout <= 0 or self.debounce < 0:
            raise ConfigError("--git-interval and the git timeout must be > 0")
        if self.keep_trees < 2:
            raise ConfigError("keep_trees must be at least 2 (the current and the previous)")

    @property
    def scheme(self) -> str:
        return _scheme(self.url)

    @property
    def subpath(self) -> str:
        return self.path.strip("/")

    @property
    def location(self) -> str:
        """What logs, errors and metrics may show: the URL without user info, ref, path."""
        where = f"{safe_url(self.url)}@{self.ref}"
        return f"{where}:{self.subpath}" if self.subpath else where


def _check_ref(ref: str) -> None:
    if (not _REF.fullmatch(ref) or ref.startswith("-") or ".." in ref
            or ref.endswith((".lock", "/")) or "@{" in ref):
        raise ConfigError(f"--git-ref: {ref!r} is not a branch, tag or commit name")


def _check_path(given: str) -> None:
    path = given.strip("/")
    if path and (path.startswith("-") or any(p in ("", ".", "..") for p in path.split("/"))
                 or not path.isprintable()):
        raise ConfigError(f"--git-path: {given!r} must be a relative folder inside "
                          "the repository, without '..'")


def _check_token(settings: GitSettings, scheme: str) -> None:
    if scheme not in ("https", "http"):
        raise ConfigError("--git-token-file needs an https:// --git-url")
    host = (urlsplit(settings.url).hostname or "").lower()
    if scheme == "http" and host not in _LOOPBACK:
        raise ConfigError("--git-token-file over plain http:// would send the token "
                          "in clear; use https://")
    if ":" in settings.token_user or not settings.token_user:
        raise ConfigError("--git-token-user must be a non-empty name without ':'")


def _check_ssh_key(settings: GitSettings, scheme: str) -> None:
    if scheme != "ssh":
        raise ConfigError("--git-ssh-key-file needs an ssh:// or host:path --git-url")
    if settings.known_hosts_file is None:
        raise ConfigError("--git-ssh-key-file needs --git-known-hosts-file (the "
                          "server's host key is always checked)")


def default_cache_dir(state: str, url: str, ref: str = "", path: str = "") -> Path:
    """Where a repository's cache lives when ``--git-cache`` is not given (module doc)."""
    key = hashlib.sha256(f"{safe_url(url)}\0{ref}\0{path.strip('/')}".encode()).hexdigest()[:16]
    if state and "://" not in state and state != ":memory:":
        return Path(state).resolve().parent / ".reconciler-git" / key
    return Path(tempfile.gettempdir()) / f"reconciler-git-{os.getuid()}" / key
