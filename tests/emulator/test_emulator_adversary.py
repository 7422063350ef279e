"""The emulator's adversary modes over a real socket, and its request counts.

The controller promises "exactly once" against a server that may be hostile: operations
invisible for a while after the 202 or forgotten later, requests held past the client's
read timeout (and executed anyway), 202s naming an id that is not the one sent, GET
answers with a wrong id or a status outside the spec, and secrets echoed into error bodies.
Each test turns one mode on in a real emulator (``start_background``) and proves, over
real HTTP, what the mode does and that ``/_emulator/`` still tells the truth.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from emulator_support import (
    SERVICE_ID,
    SPEC_OPERATION,
    SpecValidator,
    assert_problem,
    base_config_dict,
)

from reconciler.ailake.emulator import (
    EmulatorConfig,
    RunningEmulator,
    load_config,
    start_background,
)

RUN_ROUTE = "/api/v1/ailake/services/{serviceId}/commands/{commandName}/run"
OPERATION_ROUTE = "/api/v1/ailake/operations/{operationId}"
CLASSIC_KEYS = {"errorRate", "throttleRate", "retryAfter", "dropRate", "latency"}

Start = Callable[..., RunningEmulator]


def run_url(command: str = "reindex") -> str:
    return f"/api/v1/ailake/services/{SERVICE_ID}/commands/{command}/run"


def op_url(operation_id: str) -> str:
    return f"/api/v1/ailake/operations/{operation_id}"


def config_dict(**overrides: Any) -> dict[str, Any]:
    """The shared test config with fast commands; ``overrides`` replace top-level keys."""
    data = base_config_dict()
    commands = data["services"][0]["commands"]
    commands["reindex"] = {"duration": "200ms"}
    commands["broken"] = {"duration": "0s", "fail": True}
    data.update(overrides)
    return data


@pytest.fixture
def start() -> Iterator[Start]:
    """Starts real emulators (``faults=...``, other top-level keys) and stops them after."""
    with ExitStack() as stack:

        def factory(faults: dict[str, Any] | None = None, **overrides: Any) -> RunningEmulator:
            data = config_dict(faults=faults or {}, **overrides)
            config = EmulatorConfig.from_dict(data, source="adversary.yaml")
            return stack.enter_context(start_background(config))

        yield factory


@pytest.fixture
def http_for() -> Iterator[Callable[..., httpx.Client]]:
    with ExitStack() as stack:

        def factory(emulator: RunningEmulator, timeout: float = 5.0) -> httpx.Client:
            return stack.enter_context(httpx.Client(base_url=emulator.url, timeout=timeout))

        yield factory


def post_run(
    http: httpx.Client, operation_id: str | None = None, command: str = "reindex", **kw: Any
) -> httpx.Response:
    headers = {"operation-id": operation_id} if operation_id else {}
    headers.update(kw.pop("headers", {}))
    return http.post(run_url(command), json=kw.pop("body", {}), headers=headers, **kw)


def accepted_id(response: httpx.Response) -> str:
    assert response.status_code == 202, response.text
    answered = response.headers["operation-id"]
    assert response.headers["operation-location"] == f"/api/v1/ailake/operations/{answered}"
    return answered


def executions(http: httpx.Client) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = http.get("/_emulator/executions").json()
    return result


def operations(http: httpx.Client) -> dict[str, dict[str, Any]]:
    return {op["id"]: op for op in http.get("/_emulator/operations").json()}


def put_faults(http: httpx.Client, **faults: Any) -> dict[str, Any]:
    response = http.put("/_emulator/faults", json=faults)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


def eventually(check: Callable[[], bool], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "condition not reached in time"
        time.sleep(0.02)


# --- notFoundAfterAccept ----------------------------------------------------------------


def test_not_found_after_accept_answers_404_then_the_operation(
    start: Start, http_for: Callable[..., httpx.Client], spec_validator: SpecValidator
) -> None:
    http = http_for(start({"notFoundAfterAccept": "500ms"}))
    op_id = str(uuid.uuid4())
    assert accepted_id(post_run(http, op_id)) == op_id
    assert_problem(http.get(op_url(op_id)), 404)
    assert op_id in operations(http)  # the server knows it; only its reads lag
    assert len(executions(http)) == 1
    eventually(lambda: http.get(op_url(op_id)).status_code == 200)
    body = spec_validator.body(SPEC_OPERATION, "get", http.get(op_url(op_id)))
    assert body["id"] == op_id


def test_not_found_after_accept_still_deduplicates_a_repeated_id(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start({"notFoundAfterAccept": "500ms"}))
    op_id = str(uuid.uuid4())
    accepted_id(post_run(http, op_id))
    assert_problem(http.get(op_url(op_id)), 404)
    accepted_id(post_run(http, op_id))
    assert len(executions(http)) == 1
    assert operations(http)[op_id]["posts"] == 2


# --- holdBeforeExecute ------------------------------------------------------------------


def test_a_held_request_executes_after_the_client_gave_up(
    start: Start, http_for: Callable[..., httpx.Client], spec_validator: SpecValidator
) -> None:
    emulator = start({"holdBeforeExecute": "400ms"})
    impatient = http_for(emulator, timeout=0.1)
    http = http_for(emulator)
    op_id = str(uuid.uuid4())
    posted = datetime.now(UTC)
    with pytest.raises(httpx.ReadTimeout):
        post_run(impatient, op_id, body={"payload": {"n": 1}})
    assert_problem(http.get(op_url(op_id)), 404)  # not executing yet
    assert executions(http) == []
    eventually(lambda: len(executions(http)) == 1)
    [execution] = executions(http)
    assert execution["operationId"] == op_id and execution["payload"] == {"n": 1}
    started = datetime.fromisoformat(execution["startedAt"].replace("Z", "+00:00"))
    assert (started - posted).total_seconds() >= 0.35
    body = spec_validator.body(SPEC_OPERATION, "get", http.get(op_url(op_id)))
    assert body["id"] == op_id
    # The answer went into a closed connection; the server kept serving.
    assert http.get("/api/v1/ailake/services").status_code == 200


def test_a_held_request_answers_202_to_a_patient_client_after_executing(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start({"holdBeforeExecute": "300ms"}))
    op_id = str(uuid.uuid4())
    started = time.monotonic()
    assert accepted_id(post_run(http, op_id)) == op_id
    assert time.monotonic() - started >= 0.3
    assert [e["operationId"] for e in executions(http)] == [op_id]


# --- forgetAfter ------------------------------------------------------------------------


def test_forgotten_operations_answer_404(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start({"forgetAfter": "300ms"}))
    op_id = str(uuid.uuid4())
    accepted_id(post_run(http, op_id))
    assert http.get(op_url(op_id)).status_code == 200
    eventually(lambda: http.get(op_url(op_id)).status_code == 404)
    assert_problem(http.get(op_url(op_id)), 404)
    listed = operations(http)[op_id]
    assert listed["forgotten"] is True and listed["executions"] == 1
    assert len(executions(http)) == 1


def test_a_forgotten_operation_id_executes_again(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start({"forgetAfter": "200ms"}))
    op_id = str(uuid.uuid4())
    accepted_id(post_run(http, op_id))
    eventually(lambda: http.get(op_url(op_id)).status_code == 404)
    accepted_id(post_run(http, op_id))  # the server forgot the id, so it is new to it
    assert [e["operationId"] for e in executions(http)] == [op_id, op_id]
    listed = operations(http)[op_id]
    assert listed["posts"] == 2 and listed["executions"] == 2
    assert "forgotten" not in listed
    assert http.get(op_url(op_id)).status_code == 200


# --- sameOperationId / freshOperationId -------------------------------------------------


def test_same_operation_id_names_one_id_for_every_run(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start({"sameOperationId": True}))
    sent = [str(uuid.uuid4()) for _ in range(3)]
    answered = {accepted_id(post_run(http, op_id)) for op_id in sent}
    assert answered == {sent[0]}  # the first operation ever accepted
    assert [e["operationId"] for e in executions(http)] == sent
    assert set(operations(http)) == set(sent)  # each stored under the id it was sent with


def test_fresh_operation_id_is_not_the_sent_one(
    start: Start, http_for: Callable[..., httpx.Client], spec_validator: SpecValidator
) -> None:
    http = http_for(start({"freshOperationId": True}))
    sent = str(uuid.uuid4())
    fresh = accepted_id(post_run(http, sent))
    assert fresh != sent and uuid.UUID(fresh).version == 4
    assert_problem(http.get(op_url(sent)), 404)
    body = spec_validator.body(SPEC_OPERATION, "get", http.get(op_url(fresh)))
    assert body["id"] == fresh
    assert operations(http)[fresh]["sentId"] == sent
    assert [e["operationId"] for e in executions(http)] == [fresh]


def test_fresh_operation_id_executes_a_repeated_sent_id_again(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start({"freshOperationId": True}))
    sent = str(uuid.uuid4())
    first, second = accepted_id(post_run(http, sent)), accepted_id(post_run(http, sent))
    assert first != second
    assert len(executions(http)) == 2


# --- wrongIdInGet / unknownStatus -------------------------------------------------------


def test_wrong_id_in_get_answers_another_id(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start({"wrongIdInGet": True}))
    lonely = accepted_id(post_run(http, str(uuid.uuid4()), command="hang"))
    alone = http.get(op_url(lonely)).json()
    assert alone["id"] != lonely and uuid.UUID(alone["id"])  # no other: a random UUID
    assert alone["status"] == "pending"
    other = accepted_id(post_run(http, str(uuid.uuid4()), command="hang"))
    assert http.get(op_url(lonely)).json()["id"] == other
    assert http.get(op_url(other)).json()["id"] == lonely


def test_unknown_status_is_reported_verbatim(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start({"unknownStatus": "cancelled"}))
    pending = accepted_id(post_run(http, str(uuid.uuid4()), command="hang"))
    done = accepted_id(post_run(http, str(uuid.uuid4()), command="instant"))
    answer = http.get(op_url(pending))
    assert answer.status_code == 200
    assert answer.json() == {"id": pending, "kind": "run-service-command", "status": "cancelled"}
    assert http.get(op_url(done)).json()["status"] == "succeeded"  # pending ones only
    assert operations(http)[pending]["status"] == "pending"  # the admin view tells the truth


# --- echoAuthorization ------------------------------------------------------------------


def test_echo_authorization_puts_the_header_in_error_bodies_and_failures(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start({"echoAuthorization": True}, token="s3cret"))
    good = {"Authorization": "Bearer s3cret"}
    missing = assert_problem(http.get(op_url("nope"), headers=good), 404)
    assert "Bearer s3cret" in missing["detail"]
    wrong = assert_problem(http.get(op_url("nope"), headers={"Authorization": "Bearer x1"}), 401)
    assert "Bearer x1" in wrong["detail"]
    bad = assert_problem(http.post(run_url(), content=b"{", headers=good), 400)
    assert "Bearer s3cret" in bad["detail"]
    failed = accepted_id(post_run(http, str(uuid.uuid4()), command="broken", headers=good))
    body = http.get(op_url(failed), headers=good).json()
    assert body["status"] == "failed" and "Bearer s3cret" in body["error"]["detail"]
    put_faults(http, errorRate=1)
    unavailable = assert_problem(http.get("/api/v1/ailake/services", headers=good), 503)
    assert "Bearer s3cret" in unavailable["detail"]


def test_echo_authorization_off_keeps_the_header_out_of_error_bodies(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start(token="s3cret"))
    good = {"Authorization": "Bearer s3cret"}
    assert "s3cret" not in http.get(op_url("nope"), headers=good).text
    failed = accepted_id(post_run(http, str(uuid.uuid4()), command="broken", headers=good))
    assert "s3cret" not in http.get(op_url(failed), headers=good).text


# --- /_emulator/requests ----------------------------------------------------------------


def test_requests_are_counted_per_route_and_reset(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start())
    op_id = accepted_id(post_run(http, str(uuid.uuid4())))
    accepted_id(post_run(http, str(uuid.uuid4())))
    for _ in range(3):
        http.get(op_url(op_id))
    http.get(op_url("unknown"))  # a 404 is a request too
    http.get("/api/v1/ailake/services")
    http.get(f"/api/v1/ailake/services/{SERVICE_ID}/status")
    http.delete("/api/v1/ailake/services")  # 405, counted under its route
    http.get("/nowhere")
    http.get("/_emulator/operations")  # never counted
    assert http.get("/_emulator/requests").json() == {
        "total": 10,
        "routes": {
            "DELETE /api/v1/ailake/services": 1,
            f"GET {OPERATION_ROUTE}": 4,
            "GET /api/v1/ailake/services": 1,
            "GET /api/v1/ailake/services/{serviceId}/status": 1,
            "GET (unmatched)": 1,
            f"POST {RUN_ROUTE}": 2,
        },
    }
    assert http.delete("/_emulator/requests").status_code == 204
    assert http.get("/_emulator/requests").json() == {"total": 0, "routes": {}}


def test_faulted_requests_are_counted_and_admin_paths_never_are(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start({"errorRate": 1, "echoAuthorization": True}))
    assert_problem(http.get("/api/v1/ailake/services"), 503)
    secret = {"Authorization": "Bearer top"}
    admin_404 = assert_problem(http.get("/_emulator/nothing", headers=secret), 404)
    assert "top" not in admin_404["detail"]  # admin paths: no faults, no echo
    http.get("/_emulator/faults")
    assert http.get("/_emulator/requests").json() == {
        "total": 1,
        "routes": {"GET /api/v1/ailake/services": 1},
    }
    assert http.post("/_emulator/reset").status_code == 204
    assert http.get("/_emulator/requests").json()["total"] == 0


# --- run-time changes, config file, seeds -------------------------------------------------


def test_modes_change_at_run_time_through_put_faults(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start())
    assert set(http.get("/_emulator/faults").json()) == CLASSIC_KEYS
    answer = put_faults(http, freshOperationId=True, unknownStatus="running", forgetAfter="2s")
    assert answer["freshOperationId"] is True and answer["unknownStatus"] == "running"
    assert answer["forgetAfter"] == "2s"
    assert set(answer) == CLASSIC_KEYS | {"freshOperationId", "unknownStatus", "forgetAfter"}
    sent = str(uuid.uuid4())
    fresh = accepted_id(post_run(http, sent, command="hang"))
    assert fresh != sent and http.get(op_url(fresh)).json()["status"] == "running"
    answer = put_faults(http, freshOperationId=False, unknownStatus=None, forgetAfter=0)
    assert set(answer) == CLASSIC_KEYS
    again = str(uuid.uuid4())
    assert accepted_id(post_run(http, again, command="hang")) == again
    assert http.get(op_url(again)).json()["status"] == "pending"


@pytest.mark.parametrize(
    "body",
    [
        {"sameOperationId": "yes"},
        {"notFoundAfterAccept": "soon"},
        {"holdBeforeExecuteRate": 2},
        {"unknownStatus": "pending"},
        {"unknownStatus": 3},
        {"echoAuthorization": 1},
        {"forgetAfter": "never"},
    ],
)
def test_put_faults_rejects_invalid_mode_settings_with_400(
    start: Start, http_for: Callable[..., httpx.Client], body: dict[str, Any]
) -> None:
    http = http_for(start())
    assert_problem(http.put("/_emulator/faults", json=body), 400)
    assert set(http.get("/_emulator/faults").json()) == CLASSIC_KEYS


def test_modes_from_the_config_file_apply_from_the_start(
    tmp_path: Path, http_for: Callable[..., httpx.Client]
) -> None:
    path = tmp_path / "emu.yaml"
    path.write_text(
        f"services:\n"
        f"  - id: {SERVICE_ID}\n"
        f"    name: vectors\n"
        f"    commands: {{hang: {{duration: never}}}}\n"
        f"faults:\n"
        f"  sameOperationId: true\n"
        f"  unknownStatus: cancelled\n"
        f"  unknownStatusRate: 1\n"
        f"  notFoundAfterAccept: 100ms\n",
        encoding="utf-8",
    )
    with start_background(load_config(path)) as emulator:
        http = http_for(emulator)
        first, second = str(uuid.uuid4()), str(uuid.uuid4())
        accepted_id(post_run(http, first, command="hang"))
        assert accepted_id(post_run(http, second, command="hang")) == first
        assert_problem(http.get(op_url(second)), 404)
        eventually(lambda: http.get(op_url(second)).status_code == 200)
        assert http.get(op_url(second)).json()["status"] == "cancelled"
        assert http.get("/_emulator/faults").json()["notFoundAfterAccept"] == "100ms"


def test_the_dice_are_seeded(start: Start, http_for: Callable[..., httpx.Client]) -> None:
    faults = {
        "sameOperationId": True,
        "sameOperationIdRate": 0.5,
        "freshOperationId": True,
        "freshOperationIdRate": 0.5,
        "notFoundAfterAccept": "10s",
        "notFoundAfterAcceptRate": 0.5,
        "wrongIdInGet": True,
        "wrongIdInGetRate": 0.5,
        "unknownStatus": "cancelled",
        "unknownStatusRate": 0.5,
    }

    def decisions(emulator: RunningEmulator) -> list[tuple[Any, ...]]:
        http = http_for(emulator)
        seen: list[tuple[Any, ...]] = []
        for index in range(16):
            sent = f"00000000-0000-4000-8000-{index:012d}"
            answered = accepted_id(post_run(http, sent, command="hang"))
            stored = [op["id"] for op in http.get("/_emulator/operations").json()][-1]
            got = http.get(op_url(stored))
            body = got.json() if got.status_code == 200 else {}
            seen.append((answered, stored, got.status_code, body.get("id"), body.get("status")))
        return seen

    first = decisions(start(faults, seed=7))
    second = decisions(start(faults, seed=7))
    assert first == second
    # Every mode really went both ways over these 16 requests.
    assert {answered == first[0][0] for answered, *_ in first} == {True, False}
    assert {stored.startswith("00000000-0000-4000-8000-") for _, stored, *_ in first} == {
        True,
        False,
    }
    assert {code for _, _, code, *_ in first} == {200, 404}
    visible = [row for row in first if row[2] == 200]
    assert {row[3] == row[1] for row in visible} == {True, False}
    assert {row[4] for row in visible} == {"pending", "cancelled"}
    different = decisions(start(faults, seed=8))
    assert different != first


# --- dedup: false under every mode ------------------------------------------------------


@pytest.mark.parametrize(
    "faults",
    [
        {"notFoundAfterAccept": "100ms"},
        {"holdBeforeExecute": "100ms"},
        {"forgetAfter": "5s"},
        {"sameOperationId": True},
        {"freshOperationId": True},
        {"wrongIdInGet": True},
        {"unknownStatus": "cancelled"},
        {"echoAuthorization": True},
    ],
    ids=lambda faults: next(iter(faults)),
)
def test_dedup_false_executes_a_repeated_id_again_under_every_mode(
    start: Start, http_for: Callable[..., httpx.Client], faults: dict[str, Any]
) -> None:
    http = http_for(start(faults, dedup=False))
    sent = str(uuid.uuid4())
    accepted_id(post_run(http, sent))
    accepted_id(post_run(http, sent, body={"payload": {"other": True}}))  # no 409 either
    assert len(executions(http)) == 2
    listed = operations(http).values()
    assert sum(op["posts"] for op in listed) == 2
    assert sum(op["executions"] for op in listed) == 2


def test_dedup_true_with_same_operation_id_still_runs_a_repeated_id_once(
    start: Start, http_for: Callable[..., httpx.Client]
) -> None:
    http = http_for(start({"sameOperationId": True}))
    first, repeated = str(uuid.uuid4()), str(uuid.uuid4())
    accepted_id(post_run(http, first))
    assert accepted_id(post_run(http, repeated)) == first
    assert accepted_id(post_run(http, repeated)) == first
    assert [e["operationId"] for e in executions(http)] == [first, repeated]
    assert operations(http)[repeated]["posts"] == 2
    assert operations(http)[repeated]["executions"] == 1


def test_every_mode_key_is_in_the_help_text_and_the_docs() -> None:
    from reconciler.ailake.emulator.cli import EPILOG
    from reconciler.ailake.emulator.config import FaultConfig

    docs = (Path(__file__).resolve().parents[2] / "docs" / "emulator.md").read_text("utf-8")
    for key in FaultConfig().to_full_dict():
        assert f"{key}:" in EPILOG, key
        assert key in docs, key
    for endpoint in ("GET  /_emulator/requests", "DELETE /_emulator/requests"):
        assert endpoint in EPILOG
    assert "`DELETE /_emulator/requests`" in docs
