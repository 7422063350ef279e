"""What the emulator remembers: operations, the executions behind them, and the live faults.

Kept apart from the HTTP layer so the policies (deduplication by ``operation-id``, 409 on a
reused id, ``failTimes`` counting, lazy status) are plain method calls with plain results.
Status is computed on read from a monotonic clock, so no background task has to move an
operation along; ``clock`` and ``wall_clock`` are attributes so tests can substitute them.
A lock guards every mutation because tests and benchmarks may poke the state from another
thread while uvicorn serves requests.

The adversary modes (``FaultConfig``'s non-classic keys) are decided here too, each with
its own seeded dice (``random.Random(f"{seed}:{mode}")``), so turning one mode on does not
shift the decisions of another and two emulators with the same ``seed`` decide alike. The
state also counts the API requests per method and route template (``/_emulator/requests``).
"""

from __future__ import annotations

import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from reconciler.ailake.emulator.config import (
    CommandConfig,
    EmulatorConfig,
    FaultConfig,
    ServiceConfig,
)

__all__ = [
    "Conflict",
    "EmulatorState",
    "Execution",
    "OperationRecord",
    "OperationStatus",
    "RequestCounts",
    "RunAccepted",
]

OperationStatus = Literal["pending", "succeeded", "failed"]
OPERATION_KIND = "run-service-command"


@dataclass
class Execution:
    """One execution that really started (what ``GET /_emulator/executions`` lists)."""

    operation_id: str
    service_id: str
    command: str
    payload: Any
    context: Any
    started_mono: float
    started_at: datetime
    duration: float | None
    fails: bool
    attempt: int

    def status(self, now: float) -> OperationStatus:
        """``pending`` until the duration passed (forever for ``never``), then the outcome."""
        if self.duration is None or now - self.started_mono < self.duration:
            return "pending"
        return "failed" if self.fails else "succeeded"

    def finished_at(self, now: float) -> datetime | None:
        """When the execution finished (start plus duration), ``None`` while pending."""
        if self.status(now) == "pending" or self.duration is None:
            return None
        return self.started_at + timedelta(seconds=self.duration)

    def to_dict(self, now: float) -> dict[str, Any]:
        finished = self.finished_at(now)
        return {
            "operationId": self.operation_id,
            "serviceId": self.service_id,
            "command": self.command,
            "payload": self.payload,
            "context": self.context,
            "status": self.status(now),
            "startedAt": _iso(self.started_at),
            "finishedAt": _iso(finished) if finished is not None else None,
        }


@dataclass
class OperationRecord:
    """One operation id: what it runs, its current execution, how many POSTs carried it."""

    id: str
    service_id: str
    command: str
    body: dict[str, Any]
    body_key: str
    execution: Execution
    posts: int = 1
    executions: int = 1
    hidden_until: float | None = None
    forgotten: bool = False
    sent_id: str | None = None

    def api_view(self, now: float) -> dict[str, Any]:
        """The ``GET /api/v1/ailake/operations/{id}`` body (inside the spec's enums)."""
        status = self.execution.status(now)
        view: dict[str, Any] = {"id": self.id, "kind": OPERATION_KIND, "status": status}
        if status == "succeeded":
            view["result"] = {
                "serviceId": self.service_id,
                "command": self.command,
                "message": f"command {self.command!r} completed",
            }
        elif status == "failed":
            view["error"] = {
                "title": "Command failed",
                "status": 500,
                "detail": (
                    f"command {self.command!r} of service {self.service_id} failed "
                    f"(execution {self.execution.attempt} of this command)"
                ),
            }
        return view

    def admin_view(self, now: float) -> dict[str, Any]:
        """The ``GET /_emulator/operations`` entry.

        ``forgotten`` (``forgetAfter``) and ``sentId`` (``freshOperationId``: the id the
        client sent, when the operation is stored under another) appear only when set, so
        without adversary modes the entry is what it always was.
        """
        view: dict[str, Any] = {
            "id": self.id,
            "serviceId": self.service_id,
            "command": self.command,
            "body": self.body,
            "status": self.execution.status(now),
            "posts": self.posts,
            "executions": self.executions,
        }
        if self.forgotten:
            view["forgotten"] = True
        if self.sent_id is not None and self.sent_id != self.id:
            view["sentId"] = self.sent_id
        return view


@dataclass(frozen=True)
class RunAccepted:
    """A run POST was accepted (202); ``executed`` says whether an execution started.

    ``operation_id`` is the id the operation is stored under; ``answered_id`` the one the
    202 names (``None``: the same; ``sameOperationId`` makes it another one).
    """

    operation_id: str
    executed: bool
    answered_id: str | None = None

    @property
    def header_id(self) -> str:
        """The id for the 202's ``operation-id`` and ``operation-location`` headers."""
        return self.answered_id if self.answered_id is not None else self.operation_id


@dataclass
class RequestCounts:
    """API requests counted per ``"METHOD /route/{template}"`` (never ``/_emulator/``)."""

    routes: dict[str, int] = field(default_factory=dict)

    def add(self, key: str) -> None:
        self.routes[key] = self.routes.get(key, 0) + 1

    def to_dict(self) -> dict[str, Any]:
        return {"total": sum(self.routes.values()), "routes": dict(sorted(self.routes.items()))}


@dataclass(frozen=True)
class Conflict:
    """A run POST reused an operation id for a different service, command or body (409)."""

    operation_id: str
    detail: str


@dataclass
class EmulatorState:
    """All mutable emulator state; one instance per app (``app.state.emulator``)."""

    config: EmulatorConfig
    token: str | None = None
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))
    faults: FaultConfig = field(init=False)
    rng: random.Random = field(init=False)
    operations: dict[str, OperationRecord] = field(init=False, default_factory=dict)
    executions: list[Execution] = field(init=False, default_factory=list)
    run_counts: dict[tuple[str, str], int] = field(init=False, default_factory=dict)
    requests: RequestCounts = field(init=False, default_factory=RequestCounts)
    first_operation_id: str | None = field(init=False, default=None)
    dice: dict[str, random.Random] = field(init=False, default_factory=dict)
    lock: threading.RLock = field(init=False, default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.faults = self.config.faults
        self.rng = random.Random(self.config.seed)

    def reset(self) -> None:
        """Forget operations, executions and request counts; faults and dice back to config."""
        with self.lock:
            self.operations.clear()
            self.executions.clear()
            self.run_counts.clear()
            self.requests = RequestCounts()
            self.first_operation_id = None
            self.faults = self.config.faults
            self.rng = random.Random(self.config.seed)
            self.dice.clear()

    def set_faults(self, changes: object) -> FaultConfig:
        """Apply a partial fault update (config-file keys); raises ``ConfigError``."""
        with self.lock:
            faults = self.faults.updated(changes, source="PUT /_emulator/faults")
            # Operations already past forgetAfter stay forgotten when the setting changes.
            self._sweep_forgotten(self.clock())
            self.faults = faults
            return self.faults

    def count_request(self, key: str) -> None:
        """Count one API request under ``"METHOD template"``."""
        with self.lock:
            self.requests.add(key)

    def request_counts(self) -> dict[str, Any]:
        """``GET /_emulator/requests``: ``{total, routes: {"METHOD template": n}}``."""
        with self.lock:
            return self.requests.to_dict()

    def reset_requests(self) -> None:
        with self.lock:
            self.requests = RequestCounts()

    def _die(self, mode: str) -> random.Random:
        """The seeded dice of one adversary mode (independent of every other mode's)."""
        die = self.dice.get(mode)
        if die is None:
            seed = self.config.seed
            die = random.Random(f"{seed}:{mode}") if seed is not None else random.Random()
            self.dice[mode] = die
        return die

    def _roll_mode(self, mode: str, rate: float) -> bool:
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        return self._die(mode).random() < rate

    def _random_uuid(self, mode: str) -> str:
        return str(uuid.UUID(int=self._die(mode).getrandbits(128), version=4))

    def hold_seconds(self) -> float:
        """``holdBeforeExecute``: how long to hold this run POST before executing it (0: not)."""
        with self.lock:
            hold = self.faults.hold_before_execute
            if hold <= 0 or not self._roll_mode(
                "holdBeforeExecute", self.faults.hold_before_execute_rate
            ):
                return 0.0
            return hold

    def _is_forgotten(self, record: OperationRecord, now: float) -> bool:
        """``forgetAfter``: sticky once an operation is older than the setting."""
        forget_after = self.faults.forget_after
        if (
            not record.forgotten
            and forget_after > 0
            and now - record.execution.started_mono >= forget_after
        ):
            record.forgotten = True
        return record.forgotten

    def _sweep_forgotten(self, now: float) -> None:
        if self.faults.forget_after > 0:
            for record in self.operations.values():
                self._is_forgotten(record, now)

    def roll(self, rate: float) -> bool:
        """True with probability ``rate`` (seeded, so a run with ``seed`` is reproducible)."""
        if rate <= 0.0:
            return False
        if rate >= 1.0:
            return True
        with self.lock:
            return self.rng.random() < rate

    def run(
        self,
        service: ServiceConfig,
        command: CommandConfig,
        body: dict[str, Any],
        operation_id: str | None,
    ) -> RunAccepted | Conflict:
        """Apply the run policies: dedup on a repeated id, 409 on a conflicting reuse.

        Adversary modes: ``freshOperationId`` stores the operation under a fresh id instead
        of the sent one; a forgotten operation (``forgetAfter``) is unknown, so its id
        executes again; ``notFoundAfterAccept`` hides a new execution from GET for a while;
        ``sameOperationId`` makes the 202 name the first operation ever accepted.
        """
        body_key = json.dumps(body, sort_keys=True, separators=(",", ":"))
        with self.lock:
            faults = self.faults
            now = self.clock()
            fresh = faults.fresh_operation_id and self._roll_mode(
                "freshOperationId", faults.fresh_operation_id_rate
            )
            if fresh:
                op_id = self._random_uuid("freshOperationId")
            else:
                op_id = operation_id or str(uuid.uuid4())
            existing = self.operations.get(op_id)
            known = existing is not None and not self._is_forgotten(existing, now)
            if existing is not None and known and self.config.dedup:
                same = (
                    existing.service_id == service.id
                    and existing.command == command.name
                    and existing.body_key == body_key
                )
                if not same:
                    return Conflict(
                        op_id,
                        f"operation-id {op_id} was already used for command "
                        f"{existing.command!r} of service {existing.service_id} with a "
                        "different service, command or body",
                    )
                existing.posts += 1
                return self._accepted(op_id, executed=False)
            execution = self._start(op_id, service, command, body)
            hidden_until = None
            if faults.not_found_after_accept > 0 and self._roll_mode(
                "notFoundAfterAccept", faults.not_found_after_accept_rate
            ):
                hidden_until = execution.started_mono + faults.not_found_after_accept
            if existing is not None:
                existing.service_id = service.id
                existing.command = command.name
                existing.body = body
                existing.body_key = body_key
                existing.execution = execution
                existing.posts += 1
                existing.executions += 1
                existing.hidden_until = hidden_until
                existing.forgotten = False
            else:
                self.operations[op_id] = OperationRecord(
                    id=op_id,
                    service_id=service.id,
                    command=command.name,
                    body=body,
                    body_key=body_key,
                    execution=execution,
                    hidden_until=hidden_until,
                    sent_id=operation_id if fresh else None,
                )
            return self._accepted(op_id, executed=True)

    def _accepted(self, op_id: str, *, executed: bool) -> RunAccepted:
        if self.first_operation_id is None:
            self.first_operation_id = op_id
        answered = None
        faults = self.faults
        if faults.same_operation_id and self._roll_mode(
            "sameOperationId", faults.same_operation_id_rate
        ):
            answered = self.first_operation_id
        return RunAccepted(op_id, executed=executed, answered_id=answered)

    def _start(
        self, op_id: str, service: ServiceConfig, command: CommandConfig, body: dict[str, Any]
    ) -> Execution:
        key = (service.id, command.name)
        attempt = self.run_counts.get(key, 0) + 1
        self.run_counts[key] = attempt
        execution = Execution(
            operation_id=op_id,
            service_id=service.id,
            command=command.name,
            payload=body.get("payload"),
            context=body.get("context"),
            started_mono=self.clock(),
            started_at=self.wall_clock(),
            duration=command.duration,
            fails=command.fail or attempt <= command.fail_times,
            attempt=attempt,
        )
        self.executions.append(execution)
        return execution

    def operation(
        self, operation_id: str, *, authorization: str | None = None
    ) -> dict[str, Any] | None:
        """The API view of one operation, or ``None`` when the API must answer 404.

        ``None`` also for an operation still hidden by ``notFoundAfterAccept`` or forgotten
        by ``forgetAfter``. ``unknownStatus`` replaces a ``pending`` status, ``wrongIdInGet``
        the ``id``; with ``echoAuthorization`` a failure's ``error.detail`` carries
        ``authorization`` (the reading request's header) verbatim.
        """
        with self.lock:
            record = self.operations.get(operation_id)
            if record is None:
                return None
            now = self.clock()
            if self._is_forgotten(record, now):
                return None
            if record.hidden_until is not None and now < record.hidden_until:
                return None
            view = record.api_view(now)
            faults = self.faults
            if (
                faults.unknown_status is not None
                and view["status"] == "pending"
                and self._roll_mode("unknownStatus", faults.unknown_status_rate)
            ):
                view["status"] = faults.unknown_status
            if faults.wrong_id_in_get and self._roll_mode(
                "wrongIdInGet", faults.wrong_id_in_get_rate
            ):
                view["id"] = self._other_id(record.id)
            if faults.echo_authorization and authorization and "error" in view:
                view["error"]["detail"] += f" (request Authorization: {authorization})"
            return view

    def _other_id(self, operation_id: str) -> str:
        """Another operation's id (seeded choice), or a random UUID when there is none."""
        others = [other for other in self.operations if other != operation_id]
        if others:
            return self._die("wrongIdInGet").choice(others)
        return self._random_uuid("wrongIdInGet")

    def list_operations(self) -> list[dict[str, Any]]:
        with self.lock:
            now = self.clock()
            self._sweep_forgotten(now)
            return [record.admin_view(now) for record in self.operations.values()]

    def list_executions(self) -> list[dict[str, Any]]:
        with self.lock:
            now = self.clock()
            return [execution.to_dict(now) for execution in self.executions]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
