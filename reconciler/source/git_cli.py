"""Running the git CLI safely for :class:`~reconciler.source.git.GitSource`: the command line
(never a credential on it), the environment (no prompts, no system or global configuration,
credentials only there), a timeout that kills the whole process group, and git's messages
scrubbed of secrets with a hint added; see :mod:`reconciler.source.git`."""

from __future__ import annotations

import base64
import contextlib
import os
import re
import shlex
import signal
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

from reconciler.errors import SourceError
from reconciler.source.git_settings import GitSettings

__all__ = ["argv", "base_env", "remote_env", "run", "scrub", "token_header"]

#: environment variables of the parent that reach git (the rest of ``GIT_*`` never does:
#: traces could print headers, GIT_DIR & co. would point git elsewhere)
_KEPT_GIT_ENV = ("GIT_SSL_CAINFO", "GIT_SSL_CAPATH", "GIT_SSL_NO_VERIFY", "GIT_PROXY_SSL_CAINFO")
_MESSAGE_LIMIT = 600


def scrub(text: str, secrets: Sequence[str]) -> str:
    """``text`` without any of ``secrets``, without the value of an Authorization header and
    without user info in URLs; bounded to one short message."""
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        text = text.replace(secret, "***")
    text = re.sub(r"(?i)(authorization:\s*)(basic|bearer|token)?\s*\S+", r"\1***", text)
    text = re.sub(r"(\w+://)[^/@\s]+@", r"\1", text)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= _MESSAGE_LIMIT else text[:_MESSAGE_LIMIT - 3] + "..."


def token_header(settings: GitSettings, secrets: list[str]) -> str | None:
    """The ``Authorization`` header of ``--git-token-file`` (read again at every call; None
    without a token); the token and its header are added to ``secrets`` (the last 8 kept)."""
    if settings.token_file is None:
        return None
    try:
        token = settings.token_file.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise SourceError(f"cannot read --git-token-file {settings.token_file}: "
                          f"{exc.strerror}") from None
    if not token:
        raise SourceError(f"--git-token-file {settings.token_file} is empty")
    basic = base64.b64encode(f"{settings.token_user}:{token}".encode()).decode()
    for secret in (token, basic):
        if secret not in secrets:
            secrets.append(secret)
    del secrets[:-8]  # a rotated token is still scrubbed for a while
    return f"Authorization: Basic {basic}"


def remote_env(settings: GitSettings, header: str | None) -> dict[str, str]:
    """The credentials' environment for a call that talks to the remote."""
    env: dict[str, str] = {}
    if header is not None:
        env.update(GIT_CONFIG_COUNT="1", GIT_CONFIG_KEY_0="http.extraHeader",
                   GIT_CONFIG_VALUE_0=header)
    if settings.scheme == "ssh":
        ssh = ["ssh", "-F", os.devnull, "-o", "BatchMode=yes",
               "-o", "StrictHostKeyChecking=yes",
               "-o", f"ConnectTimeout={max(1, int(min(settings.timeout, 30)))}"]
        if settings.ssh_key_file is not None:
            ssh += ["-i", str(settings.ssh_key_file), "-o", "IdentitiesOnly=yes"]
        if settings.known_hosts_file is not None:
            ssh += ["-o", f"UserKnownHostsFile={settings.known_hosts_file}"]
        env["GIT_SSH_COMMAND"] = shlex.join(ssh)
        env["GIT_SSH_VARIANT"] = "ssh"
    return env


def base_env() -> dict[str, str]:
    """The environment every git call starts from: the parent's, minus git's own
    variables, plus no prompts and no system/global configuration."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("GIT_") or k in _KEPT_GIT_ENV}
    env.pop("SSH_ASKPASS", None)
    env.update(GIT_TERMINAL_PROMPT="0", GIT_ASKPASS="", SSH_ASKPASS="",
               GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, LC_ALL="C",
               GIT_OPTIONAL_LOCKS="0")
    return env


def argv(settings: GitSettings, *args: str, git_dir: Path | None) -> list[str]:
    """The command line of one git call (never holds a credential)."""
    config = ["credential.helper=", "core.askPass=", "protocol.allow=never",
              f"protocol.{settings.scheme}.allow=always", "gc.autoDetach=false",
              "core.hooksPath=" + os.devnull, "advice.detachedHead=false"]
    if settings.token_file is not None:
        config.append("http.followRedirects=false")
    line = [settings.git]
    for item in config:
        line += ["-c", item]
    if git_dir is not None:
        line += ["--git-dir", str(git_dir)]
    return [*line, *args]


def run(command: Sequence[str], *, settings: GitSettings, env: Mapping[str, str], cwd: Path,
        secrets: Sequence[str], what: str, check: bool = True) -> str:
    """Run one git call within ``settings.timeout``; its output. SourceError (scrubbed, with
    a hint) when it cannot start, times out or (``check``) exits non-zero."""
    timeout = settings.timeout
    try:
        proc = subprocess.Popen(list(command), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, env=dict(env), cwd=cwd,
                                start_new_session=True)
    except OSError as exc:
        raise SourceError(f"cannot run {settings.git!r} for {what}: "
                          f"{exc.strerror}") from None
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        raise SourceError(f"{what} timed out after {timeout:g}s; still serving the "
                          "last tree") from None
    if check and proc.returncode != 0:
        detail = scrub(err.decode("utf-8", "replace"), secrets)
        hint = _hint(detail, settings)
        raise SourceError(f"{what} failed (git exit {proc.returncode}): "
                          f"{hint + '; git said: ' if hint else ''}"
                          f"{detail or 'no message'}")
    return out.decode("utf-8", "replace")


_HINTS = (
    (("could not read Username", "Authentication failed", "returned error: 401",
      "returned error: 403"), "the remote refused the credentials or asked for some: check "
     "--git-token-file (and that the token may read this repository)"),
    (("Host key verification failed",), "the server's SSH host key is not in "
     "--git-known-hosts-file (or does not match it)"),
    (("Permission denied (publickey", "Permission denied, please try again"),
     "the SSH key was refused: check --git-ssh-key-file and the deploy key"),
    (("couldn't find remote ref", "no such ref was fetched"), "the ref is not on the remote: "
     "check --git-ref"),
    (("not appear to be a git repository", "repository not found", "Repository not found",
      "does not exist"), "no repository at this URL (or no access to it)"),
)


def _hint(detail: str, settings: GitSettings) -> str:
    for needles, hint in _HINTS:
        if any(n in detail for n in needles):
            if "credentials" in hint and settings.token_file is None:
                return "the remote asks for credentials: give --git-token-file"
            return hint
    return ""


def _kill(proc: subprocess.Popen[bytes]) -> None:
    """Kill a git call and everything it started (remote helpers, ssh)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(Exception):
        proc.communicate(timeout=5)

