"""Real git for the source tests: a bare repository on this machine, a work clone that
commits, force-pushes and reverts, and ``git daemon`` on loopback."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

GIT = shutil.which("git") or "/usr/bin/git"

#: an isolated git: no user or system configuration, a fixed identity
ENV = {
    **{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.test",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.test",
    "GIT_TERMINAL_PROMPT": "0",
}


def git(*args: str, cwd: Path | None = None) -> str:
    done = subprocess.run([GIT, *args], cwd=cwd, env=ENV, capture_output=True, text=True,
                          timeout=60, check=False)
    if done.returncode != 0:
        raise AssertionError(f"git {' '.join(args)} failed: {done.stderr}")
    return done.stdout.strip()


def manifest(name: str, command: str = "reindex", extra: str = "") -> str:
    return ("apiVersion: ailake.reconciler/v1\nkind: ServiceCommand\n"
            f"metadata:\n  name: {name}\nspec:\n  serviceName: sales\n"
            f"  command: {command}\n{extra}")


class Remote:
    """``base/repo.git`` (bare, what the follower fetches) and ``base/work`` (a clone the
    test commits in and pushes from)."""

    def __init__(self, base: Path, name: str = "repo.git", branch: str = "main") -> None:
        self.base = base
        self.bare = base / name
        self.work = base / f"work-{name}"
        self.branch = branch
        git("init", "--quiet", "--bare", f"--initial-branch={branch}", str(self.bare))
        git("init", "--quiet", f"--initial-branch={branch}", str(self.work))
        git("-C", str(self.work), "remote", "add", "origin", str(self.bare))

    @property
    def url(self) -> str:
        return self.bare.as_uri()

    def commit(self, files: Mapping[str, str | None], message: str = "change") -> str:
        """Write (or, for None, delete) ``files`` (paths in the repo), commit, push."""
        for rel, text in files.items():
            path = self.work / rel
            if text is None:
                path.unlink()
            else:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text, encoding="utf-8")
        git("-C", str(self.work), "add", "--all")
        git("-C", str(self.work), "commit", "--quiet", "--allow-empty", "-m", message)
        self.push()
        return self.head()

    def head(self) -> str:
        return git("-C", str(self.work), "rev-parse", "HEAD")

    def push(self, *, force: bool = False) -> None:
        git("-C", str(self.work), "push", "--quiet", *(["--force"] if force else []),
            "origin", f"HEAD:refs/heads/{self.branch}")

    def force_push(self, sha: str) -> None:
        """Move the branch back to ``sha`` (history rewritten) and force-push it."""
        git("-C", str(self.work), "reset", "--quiet", "--hard", sha)
        self.push(force=True)

    def revert(self) -> str:
        git("-C", str(self.work), "revert", "--no-edit", "HEAD")
        self.push()
        return self.head()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def wait_listening(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
            return
        time.sleep(0.05)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


class GitDaemon:
    """``git daemon`` serving every repository under ``base`` on 127.0.0.1."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    def url(self, name: str = "repo.git") -> str:
        return f"git://127.0.0.1:{self.port}/{name}"

    def start(self) -> GitDaemon:
        self.proc = subprocess.Popen(
            [GIT, "daemon", "--listen=127.0.0.1", f"--port={self.port}", "--export-all",
             f"--base-path={self.base}", "--reuseaddr", "--informative-errors",
             str(self.base)],
            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_listening(self.port)
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        self.proc = None


@contextlib.contextmanager
def git_daemon(base: Path) -> Iterator[GitDaemon]:
    daemon = GitDaemon(base).start()
    try:
        yield daemon
    finally:
        daemon.stop()


class SmartHttp:
    """``git http-backend`` behind a tiny HTTP server on 127.0.0.1 that demands
    ``Authorization: <expected>`` and records every Authorization header it was sent."""

    def __init__(self, base: Path, expected: str) -> None:
        import http.server
        import threading

        outer = self
        self.base = base
        self.expected = expected
        self.seen: list[str | None] = []

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                pass

            def do_GET(self) -> None:
                self._serve()

            def do_POST(self) -> None:
                self._serve()

            def _serve(self) -> None:
                auth = self.headers.get("Authorization")
                outer.seen.append(auth)
                if auth != outer.expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                path, _, query = self.path.partition("?")
                env = {**ENV, "GIT_PROJECT_ROOT": str(outer.base), "GIT_HTTP_EXPORT_ALL": "1",
                       "PATH_INFO": path, "QUERY_STRING": query,
                       "REQUEST_METHOD": self.command, "REMOTE_ADDR": "127.0.0.1",
                       "CONTENT_TYPE": self.headers.get("Content-Type") or "",
                       "CONTENT_LENGTH": str(len(body))}
                if self.headers.get("Content-Encoding"):
                    env["HTTP_CONTENT_ENCODING"] = self.headers["Content-Encoding"]
                if self.headers.get("Git-Protocol"):
                    env["GIT_PROTOCOL"] = self.headers["Git-Protocol"]
                done = subprocess.run([GIT, "http-backend"], input=body, env=env,
                                      capture_output=True, timeout=60, check=False)
                head, _, payload = done.stdout.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode("latin-1").split("\r\n"):
                    key, _, value = line.partition(":")
                    if key.lower() == "status":
                        status = int(value.strip().split()[0])
                    elif key:
                        headers.append((key, value.strip()))
                self.send_response(status)
                for key, value in headers:
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def url(self, name: str = "repo.git") -> str:
        return f"http://127.0.0.1:{self.port}/{name}"

    def __enter__(self) -> SmartHttp:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)
