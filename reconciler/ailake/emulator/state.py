"""What the emulator remembers: operations, the executions behind them, and the live faults.

Kept apart from the HTTP layer so the policies (deduplication by ``operation-id``, 409 on a
reused id, ``failTimes`` counting, lazy status) are plain method calls with plain results.
Status is computed on read from a monotonic clock, so no background task has to move an
operation along; ``clock`` and ``wall_clock`` are attributes so tests can substitute them.
A lock guards every mutation because tests and benchmarks may poke the state from another
thread while uvicorn serves requests.
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
        """The ``GET /_emulator/operations`` entry."""
        return {
            "id": self.id,
            "serviceId": self.service_id,
            "command": self.command,
            "body": self.body,
            "status": self.execution.status(now),
            "posts": self.posts,
            "executions": self.executions,
        }


@dataclass(frozen=True)
class RunAccepted:
    """A run POST was accepted (202); ``executed`` says whether an execution started."""

    operation_id: str
    executed: bool


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
    lock: threading.RLock = field(init=False, default_factory=threading.RLock)

    def __post_init__(self) -> None:
        self.faults = self.config.faults
        self.rng = random.Random(self.config.seed)

    def reset(self) -> None:
        """Forget operations and executions; faults and the random seed back to the config."""
        with self.lock:
            self.operations.clear()
            self.executions.clear()
            self.run_counts.clear()
            self.faults = self.config.faults
            self.rng = random.Random(self.config.seed)

    def set_faults(self, changes: object) -> FaultConfig:
        """Apply a partial fault update (config-file keys); raises ``ConfigError``."""
        with self.lock:
            self.faults = self.faults.updated(changes, source="PUT /_emulator/faults")
            return self.faults

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
        """Apply the run policies: dedup on a repeated id, 409 on a conflicting reuse."""
        body_key = json.dumps(body, sort_keys=True, separators=(",", ":"))
        with self.lock:
            op_id = operation_id or str(uuid.uuid4())
            existing = self.operations.get(op_id)
            if existing is not None and self.config.dedup:
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
                return RunAccepted(op_id, executed=False)
            execution = self._start(op_id, service, command, body)
            if existing is not None:
                existing.service_id = service.id
                existing.command = command.name
                existing.body = body
                existing.body_key = body_key
                existing.execution = execution
                existing.posts += 1
                existing.executions += 1
            else:
                self.operations[op_id] = OperationRecord(
                    id=op_id,
                    service_id=service.id,
                    command=command.name,
                    body=body,
                    body_key=body_key,
                    execution=execution,
                )
            return RunAccepted(op_id, executed=True)

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

    def operation(self, operation_id: str) -> dict[str, Any] | None:
        """The API view of one operation, or ``None`` when the id is unknown."""
        with self.lock:
            record = self.operations.get(operation_id)
            return record.api_view(self.clock()) if record is not None else None

    def list_operations(self) -> list[dict[str, Any]]:
        with self.lock:
            now = self.clock()
            return [record.admin_view(now) for record in self.operations.values()]

    def list_executions(self) -> list[dict[str, Any]]:
        with self.lock:
            now = self.clock()
            return [execution.to_dict(now) for execution in self.executions]


def _iso(moment: datetime) -> str:
    return moment.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
