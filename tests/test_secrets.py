"""Secrets never leak: the API token and the webhook secret appear in no log line, metric,
``/status`` answer or state file, whether the API accepts the token or refuses it. Plus the
log configuration itself: JSON lines off a terminal, and the last-line-of-defence scrubber.
"""

from __future__ import annotations

import io
import json
import logging
import socket
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog
from observability_support import (
    Proc,
    daemon_env,
    manifest,
    start_daemon,
    wait_for,
    write_manifests,
)

from reconciler.ailake.emulator import EmulatorConfig, RunningEmulator, start_background
from reconciler.observe import logs
from reconciler.runtime.listener import sign

TOKEN = "tok-7Qz9-SECRET-api-token-e1b4c2"
WRONG_TOKEN = "tok-WRONG-3d8f-never-valid-9a71"
WEBHOOK_SECRET = "whsec-K2v8-SECRET-hook-50c3d1"
SERVICE = "svc-1"
CONFIG = {"services": [{"id": SERVICE, "name": "alpha", "commands": {
    "ok": {"duration": "200ms"},
    "bad": {"duration": "100ms", "fail": True},
}}]}
GOOD, BAD = "good-one", "bad-one"
HOOK_BODY = json.dumps({"ref": "refs/heads/main", "after": "feedbeef"}).encode()


def _emulator(token: str) -> RunningEmulator:
    return start_background(EmulatorConfig.from_dict(CONFIG, source="secrets"), token=token)


def _manifests(tmp_path: Path) -> Path:
    return write_manifests(tmp_path / "manifests", [manifest(GOOD, SERVICE, "ok"),
                                                    manifest(BAD, SERVICE, "bad")])


def _state_bytes(daemon: Proc) -> bytes:
    """The state DB and its WAL/SHM side files, as bytes."""
    state: Path = daemon.extra["state"]
    files = sorted(state.parent.glob(state.name + "*"))
    assert files, "no state file written"
    return b"".join(f.read_bytes() for f in files)


def _assert_absent(secrets: dict[str, str], where: dict[str, str | bytes]) -> None:
    for label, secret in secrets.items():
        for place, content in where.items():
            needle: str | bytes = secret.encode() if isinstance(content, bytes) else secret
            assert needle not in content, f"the {label} leaked into {place}"


def _reconciles(daemon: Proc) -> float:
    text = httpx.get(daemon.url + "/metrics", timeout=5).text
    for line in text.splitlines():
        if line.startswith('ailake_reconciler_reconciles_total{result="success"}'):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError("no reconciles_total{result=success} series")


@pytest.mark.parametrize("via", ["env-token+secret-file", "token-file+env-secret"])
def test_token_and_webhook_secret_never_leak(tmp_path: Path, via: str) -> None:
    env: dict[str, str] = {"RECONCILER_LOG_LEVEL": "debug"}
    args: list[str] = []
    if via == "env-token+secret-file":
        env["RECONCILER_API_TOKEN"] = TOKEN
        secret_file = tmp_path / "webhook-secret"
        secret_file.write_text(WEBHOOK_SECRET + "\n", encoding="utf-8")  # as a Secret mounts
        args += ["--webhook-secret-file", str(secret_file)]
    else:
        token_file = tmp_path / "token"
        token_file.write_text(TOKEN + "\n", encoding="utf-8")
        args += ["--token-file", str(token_file)]
        env["RECONCILER_WEBHOOK_SECRET"] = WEBHOOK_SECRET

    with _emulator(TOKEN) as emulator:
        daemon = start_daemon(tmp_path / "daemon", manifests=_manifests(tmp_path),
                              api_url=emulator.url, env=daemon_env(**env), args=args,
                              interval="60s")
        try:
            def settled() -> bool:
                status = httpx.get(daemon.url + "/status", timeout=5).json()
                return {i["name"]: i["state"] for i in status["intents"]} == {
                    GOOD: "in_sync", BAD: "stalled"}

            wait_for(settled, timeout=20, what="the token to be accepted and both settled",
                     diagnose=daemon.tail)
            assert httpx.get(daemon.url + "/readyz", timeout=5).status_code == 200

            # settled and the interval is 60s: only the webhook makes the next pass
            before = _reconciles(daemon)
            good_sig = sign(HOOK_BODY, WEBHOOK_SECRET)
            bad_sig = sign(HOOK_BODY, "not-" + WEBHOOK_SECRET)
            hook = daemon.url + "/hooks/reconcile"
            refused = httpx.post(hook, content=HOOK_BODY, timeout=5, headers={
                "x-hub-signature-256": bad_sig, "x-github-delivery": "d-bad"})
            assert refused.status_code == 401
            accepted = httpx.post(hook, content=HOOK_BODY, timeout=5, headers={
                "x-hub-signature-256": good_sig, "x-github-delivery": "d-good"})
            assert accepted.status_code == 202
            wait_for(lambda: _reconciles(daemon) > before, timeout=10,
                     what="a reconcile pass triggered by the webhook", diagnose=daemon.tail)

            places: dict[str, str | bytes] = {
                "/metrics": httpx.get(daemon.url + "/metrics", timeout=5).text,
                "/status": httpx.get(daemon.url + "/status", timeout=5).text,
                "/readyz": httpx.get(daemon.url + "/readyz", timeout=5).text,
                "/healthz": httpx.get(daemon.url + "/healthz", timeout=5).text,
                "the 401 answer": refused.text, "the 202 answer": accepted.text,
            }
            for page in ("/", f"/manifests/{GOOD}", f"/manifests/{BAD}",  # the web view
                         "/ui/overview.json", f"/ui/manifests/{BAD}.json"):
                answer = httpx.get(daemon.url + page, timeout=5)
                assert answer.status_code == 200, page
                places[page] = answer.text
        finally:
            daemon.stop()
        executed = httpx.get(emulator.url + "/_emulator/executions", timeout=5).json()
    assert {x["command"] for x in executed} == {"ok", "bad"}, "the token really worked"
    places["daemon output"] = daemon.output()
    places["state files"] = _state_bytes(daemon)
    assert daemon.json_lines(), "the daemon logged"
    # not even the scrubber had work to do: no code path tried to log a secret
    assert logs.REDACTED not in daemon.output()
    _assert_absent({"API token": TOKEN, "webhook secret": WEBHOOK_SECRET,
                    "expected webhook signature": good_sig.removeprefix("sha256=")},
                   {k: v for k, v in places.items() if k != "the 202 answer"})


def test_a_refused_token_is_logged_as_401_but_never_shown(tmp_path: Path) -> None:
    with _emulator(TOKEN) as emulator:
        daemon = start_daemon(tmp_path / "daemon", manifests=_manifests(tmp_path),
                              api_url=emulator.url, interval="1s",
                              env=daemon_env(RECONCILER_API_TOKEN=WRONG_TOKEN,
                                             RECONCILER_LOG_LEVEL="debug"))
        try:
            def refused_logged() -> list[dict[str, Any]] | None:
                found = [e for e in daemon.json_lines()
                         if 401 in (e.get("status"), e.get("error_status"))]
                return found or None

            events = wait_for(refused_logged, timeout=20, what="a 401 in the logs",
                              diagnose=daemon.tail)
            ready = httpx.get(daemon.url + "/readyz", timeout=5)
            assert ready.status_code == 503
            metrics = httpx.get(daemon.url + "/metrics", timeout=5).text
            assert any(line.startswith("ailake_reconciler_api_requests_total")
                       and 'code="401"' in line and not line.endswith(" 0.0")
                       for line in metrics.splitlines()), "401s are counted"
            assert any(line.startswith('ailake_reconciler_reconciles_total{result="error"}')
                       and not line.endswith(" 0.0")
                       for line in metrics.splitlines()), "refused passes count as errors"
            status = httpx.get(daemon.url + "/status", timeout=5).text
        finally:
            daemon.stop()
        executed = httpx.get(emulator.url + "/_emulator/executions", timeout=5).json()
    assert executed == [], "nothing ran with a refused token"
    assert all(e["level"] in ("warning", "error") for e in events)
    assert logs.REDACTED not in daemon.output()
    _assert_absent({"wrong API token": WRONG_TOKEN, "emulator's token": TOKEN}, {
        "daemon output": daemon.output(), "/metrics": metrics, "/status": status,
        "/readyz": ready.text, "state files": _state_bytes(daemon)})


# ---------------------------------------------------------------- log configuration


class _Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


@pytest.fixture
def restore_structlog() -> Any:
    yield
    structlog.reset_defaults()


def test_logs_are_json_lines_when_stdout_is_not_a_tty(restore_structlog: None) -> None:
    out = io.StringIO()
    logs.configure(level="info", stream=out)
    log = structlog.get_logger("t")
    log.info("transition", name="alpha", attempt=1, duration=1.5)
    log.debug("hidden")
    log.warning("api_error", status=503, trace_id="abc")
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in lines] == ["transition", "api_error"]
    assert lines[0]["name"] == "alpha" and lines[0]["attempt"] == 1
    assert lines[0]["level"] == "info" and lines[0]["timestamp"].endswith("Z")
    assert lines[1] | {"status": 503, "trace_id": "abc", "level": "warning"} == lines[1]


def test_logs_are_readable_lines_on_a_terminal(restore_structlog: None) -> None:
    out = _Tty()
    logs.configure(level="info", stream=out)
    structlog.get_logger("t").info("transition", name="alpha")
    text = out.getvalue()
    assert "transition" in text and "alpha" in text
    with pytest.raises(json.JSONDecodeError):
        json.loads(text.splitlines()[0])
    forced = io.StringIO()
    logs.configure(level="info", fmt="json", stream=_Tty())
    logs.configure(level="info", fmt="json", stream=forced)
    structlog.get_logger("t").info("x")
    assert json.loads(forced.getvalue())["event"] == "x"


def test_the_scrubber_redacts_secrets_wherever_they_hide(restore_structlog: None) -> None:
    out = io.StringIO()
    logs.configure(level="debug", stream=out, secrets=[TOKEN, WEBHOOK_SECRET, "abc"])
    log = structlog.get_logger("t")
    log.debug("plain", header=f"Bearer {TOKEN}")
    log.info("nested", data={"auth": {"token": TOKEN}}, items=[WEBHOOK_SECRET])
    log.warning(f"event text with {WEBHOOK_SECRET}")
    try:
        raise RuntimeError(f"boom {TOKEN}")
    except RuntimeError:
        log.exception("failed")
    log.info("short secrets are not scrubbed", value="abc")  # <= 3 chars: would mangle text
    text = out.getvalue()
    assert TOKEN not in text and WEBHOOK_SECRET not in text
    assert text.count(logs.REDACTED) >= 5
    assert '"value": "abc"' in text
    for line in text.splitlines():
        json.loads(line)


def test_stdlib_logging_is_json_and_scrubbed_too(restore_structlog: None) -> None:
    """Libraries log through ``logging`` (uvicorn, asyncio, httpx): their lines must be
    JSON on the same stream, with the same scrubbing, or a log pipeline breaks on them."""
    out = io.StringIO()
    logs.configure(level="info", stream=out, secrets=[TOKEN])
    try:
        # (not "uvicorn.error": an emulator started in this process configured that one)
        logging.getLogger("a.server").warning("Invalid HTTP request received.")
        logging.getLogger("asyncio").error("Task exception: token %s", TOKEN)
        try:
            raise ValueError(f"bad {TOKEN}")
        except ValueError:
            logging.getLogger("some.lib").exception("failed")
        logging.getLogger("httpx").info("HTTP Request: GET /x")  # below WARNING: dropped
    finally:
        logging.basicConfig(force=True)
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in lines][:1] == ["Invalid HTTP request received."]
    assert len(lines) == 3
    assert all(e["level"] in ("warning", "error") and "timestamp" in e for e in lines)
    assert lines[0]["logger"] == "a.server"
    assert TOKEN not in out.getvalue()
    assert "ValueError" in lines[2]["exception"]


def test_the_daemon_writes_only_json_lines_even_for_its_http_server(tmp_path: Path) -> None:
    """A malformed request makes uvicorn log a warning: it too is a JSON line on stdout,
    and nothing lands on stderr in another format."""
    with _emulator(TOKEN) as emulator:
        daemon = start_daemon(tmp_path / "daemon", manifests=_manifests(tmp_path),
                              api_url=emulator.url, interval="60s",
                              env=daemon_env(RECONCILER_API_TOKEN=TOKEN))
        try:
            port = int(daemon.url.rsplit(":", 1)[1])
            with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
                sock.sendall(b"NOT HTTP AT ALL\r\n\r\n")
                sock.recv(1024)
            wait_for(lambda: any("Invalid HTTP request" in e["event"]
                                 for e in daemon.json_lines()),
                     timeout=5, what="uvicorn's warning as a JSON line", diagnose=daemon.tail)
        finally:
            daemon.stop()
    assert daemon.stderr_path.read_text(encoding="utf-8") == ""
    daemon.json_lines()  # every line parses


# ---------------------------------------------------------------- a server echoing the token


ECHO_CONFIG = {"services": [{"id": SERVICE, "name": "alpha", "commands": {
    "ok": {"duration": "200ms"},
    "bad": {"duration": "100ms", "fail": True},
}}], "faults": {"echoAuthorization": True}}
BIG = "unknown-command"


def _cli(*args: str | Path, env: dict[str, str]) -> tuple[int, str]:
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-m", "reconciler", *map(str, args)],
                          capture_output=True, text=True, timeout=60, env=env, check=False)
    return done.returncode, done.stdout + done.stderr


def test_a_server_echoing_the_authorization_header_leaks_it_nowhere(tmp_path: Path) -> None:
    """The emulator's ``echoAuthorization`` puts ``Bearer <token>`` into every problem
    detail (the 404 of an unknown command's run, every 404 of a probe) and into a failed
    operation's ``error.detail``. None of it may reach the store file, ``/status``,
    ``/metrics``, any CLI output or the logs: the one scrubber runs before anything is
    stored, logged or served."""
    manifests = write_manifests(tmp_path / "manifests", [
        manifest(GOOD, SERVICE, "ok"), manifest(BAD, SERVICE, "bad"),
        manifest(BIG, SERVICE, "missing")])  # the run POST answers 404 problem+json
    state = tmp_path / "daemon" / "state.db"
    env = daemon_env(RECONCILER_API_TOKEN=TOKEN, RECONCILER_WEBHOOK_SECRET=WEBHOOK_SECRET,
                     RECONCILER_LOG_LEVEL="debug")
    emulator = start_background(EmulatorConfig.from_dict(ECHO_CONFIG, source="echo"),
                                token=TOKEN)
    with emulator:
        daemon = start_daemon(tmp_path / "daemon", manifests=manifests, api_url=emulator.url,
                              env=env, interval="60s")
        try:
            def settled() -> bool:
                status = httpx.get(daemon.url + "/status", timeout=5).json()
                return {i["name"]: i["state"] for i in status["intents"]} == {
                    GOOD: "in_sync", BAD: "stalled", BIG: "stalled"}

            wait_for(settled, timeout=30, what="all three settled", diagnose=daemon.tail)
            served = httpx.get(daemon.url + "/status", timeout=5)
            places: dict[str, str | bytes] = {
                "/status": served.text,
                "/metrics": httpx.get(daemon.url + "/metrics", timeout=5).text,
                "/readyz": httpx.get(daemon.url + "/readyz", timeout=5).text,
                "/healthz": httpx.get(daemon.url + "/healthz", timeout=5).text,
            }
        finally:
            daemon.stop()
        # the CLI, reading the store the daemon wrote (and talking to the echoing API)
        cli_env = daemon_env(RECONCILER_API_TOKEN=TOKEN)
        commands: list[tuple[str | Path, ...]] = [
            ("status", "--state", state), ("status", "--state", state, "-o", "json"),
            ("status", "--state", state, "--manifests", manifests, "-o", "json"),
            ("history", BAD, "--state", state), ("history", BAD, "--state", state, "-o", "json"),
            ("history", BIG, "--state", state, "-o", "json"),
            ("plan", "--manifests", manifests, "--state", state, "-o", "json",
             "--api-url", emulator.url),
            ("store", "check", "--state", state),
            ("store", "copy", "--from", state, "--to", tmp_path / "copy.db"),
        ]
        outputs = {" ".join(map(str, c[:2])) + f" #{i}": _cli(*c, env=cli_env)
                   for i, c in enumerate(commands)}
    for name, (code, text) in outputs.items():
        assert code in (0, 1, 2), f"{name}: {text}"
        places[f"reconciler {name}"] = text
    places["daemon output"] = daemon.output()
    places["state files"] = _state_bytes(daemon)
    places["copied store"] = (tmp_path / "copy.db").read_bytes()
    # the echo really happened, and was replaced
    rows = {i["name"]: i for i in served.json()["intents"]}
    assert "request Authorization" in rows[BAD]["error"]["detail"]
    assert logs.REDACTED in rows[BAD]["error"]["detail"]
    assert logs.REDACTED in rows[BIG]["error"]["detail"]
    _assert_absent({"API token": TOKEN, "webhook secret": WEBHOOK_SECRET}, places)
    for place, content in places.items():
        text = content.decode("latin-1") if isinstance(content, bytes) else content
        assert "Bearer tok-" not in text, f"a bearer value leaked into {place}"
