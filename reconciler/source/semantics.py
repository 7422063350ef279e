"""Checks beyond the schema (durations, cron, time zones, dependencies) and the typed result."""

from __future__ import annotations

import difflib
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from functools import cache
from types import MappingProxyType
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

from croniter import croniter

from reconciler.errors import Problem
from reconciler.model.durations import parse_duration
from reconciler.model.identity import canonical_json
from reconciler.model.manifest import (
    DEFAULT_STARTING_DEADLINE,
    DEFAULT_TIMEOUT,
    MAX_PAYLOAD_CHARS,
    Interval,
    Once,
    Policy,
    RetryPolicy,
    Schedule,
    ServiceCommand,
    ServiceRef,
)
from reconciler.source.composer import UNNAMED, Located, RawDocument, dotted, printable_name

__all__ = ["build", "cross_checks", "document_name"]

#: longest duration accepted anywhere in a manifest
MAX_DURATION = timedelta(days=3650)
MAX_DURATION_TEXT = "87600h"


def document_name(data: Any) -> str:
    if isinstance(data, dict):
        meta = data.get("metadata")
        if isinstance(meta, dict):
            return printable_name(meta.get("name"))
    return UNNAMED


def build(doc: RawDocument, name: str) -> tuple[ServiceCommand | None, list[Problem]]:
    """Semantic checks beyond the schema, then the typed object (None if any problem)."""
    problems: list[Problem] = []
    loc = doc.located

    def problem(path: Sequence[str | int], message: str, *, key: bool = False) -> None:
        problems.append(Problem(doc.file, loc.line_of(path, key=key), name,
                                f"{dotted(path)}: {message}"))

    spec: dict[str, Any] = doc.data["spec"]
    has_id, has_name = "service" in spec, "serviceName" in spec
    if has_id and has_name:
        later = max(loc.line_of(["spec", "service"], key=True),
                    loc.line_of(["spec", "serviceName"], key=True))
        problems.append(Problem(doc.file, later, name, "spec: set either 'service' (an id) "
                                "or 'serviceName', not both"))
    elif not has_id and not has_name:
        problem(["spec"], "missing 'service' (a service id) or 'serviceName' (resolved "
                "through the API); exactly one is required", key=True)

    payload = spec.get("payload")
    if payload is not None:
        size = len(canonical_json(payload))
        if size > MAX_PAYLOAD_CHARS:
            problem(["spec", "payload"],
                    f"is {size} characters as compact JSON; the API accepts at most "
                    f"{MAX_PAYLOAD_CHARS}")

    def duration(path: list[str | int], default: timedelta) -> timedelta:
        node: Any = doc.data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            return default
        try:
            value = parse_duration(node)
        except ValueError as exc:  # schema already caught the pattern; keep the guard
            problem(path, str(exc))
            return default
        except OverflowError:
            value = MAX_DURATION + timedelta(seconds=1)
        if value > MAX_DURATION:
            problem(path, f"{node!r} is too long: at most {MAX_DURATION_TEXT} (10 years)")
            return default
        return value

    policy: Policy = Once()
    raw_policy = spec.get("policy", "once")
    if isinstance(raw_policy, dict) and "interval" in raw_policy:
        reported = len(problems)
        every = duration(["spec", "policy", "interval"], timedelta(0))
        if len(problems) == reported and every < timedelta(seconds=1):
            problem(["spec", "policy", "interval"], "must be at least 1s")
        policy = Interval(every=every)
    elif isinstance(raw_policy, dict) and "schedule" in raw_policy:
        cron = str(raw_policy["schedule"])
        tz = str(raw_policy.get("timezone", "UTC"))
        if len(cron.split()) != 5 or not croniter.is_valid(cron):
            problem(["spec", "policy", "schedule"],
                    f"{cron!r} is not a valid 5-field cron expression (e.g. \"0 3 * * *\")")
        elif not _fires(cron):
            problem(["spec", "policy", "schedule"],
                    f"{cron!r} never fires (no such date, e.g. February 30)")
        if tz not in _time_zones():
            problem(["spec", "policy", "timezone"], f"unknown time zone {tz!r} (use an IANA "
                    "name such as UTC or Europe/Prague)")
        deadline = duration(["spec", "policy", "startingDeadline"], DEFAULT_STARTING_DEADLINE)
        policy = Schedule(cron=cron, timezone=tz, starting_deadline=deadline)

    timeout = duration(["spec", "timeout"], DEFAULT_TIMEOUT)
    if "timeout" in spec and timeout <= timedelta(0):
        problem(["spec", "timeout"], "must be greater than 0")
    raw_retry = spec.get("retry", {})
    retry = RetryPolicy(
        limit=int(raw_retry.get("limit", 3)),
        backoff=duration(["spec", "retry", "backoff"], timedelta(seconds=30)),
        max_backoff=duration(["spec", "retry", "maxBackoff"], timedelta(minutes=10)),
    )
    if retry.max_backoff < retry.backoff:
        problem(["spec", "retry", "maxBackoff"], "must not be smaller than backoff")
    depends_on = tuple(spec.get("dependsOn", ()))
    if name in depends_on:
        problem(["spec", "dependsOn", depends_on.index(name)], "a manifest cannot depend on itself")

    if problems:
        return None, problems
    meta = doc.data["metadata"]
    context = spec.get("context")
    return ServiceCommand(
        name=name,
        service=ServiceRef(id=spec.get("service"), name=spec.get("serviceName")),
        command=spec["command"],
        payload=MappingProxyType(payload) if payload is not None else None,
        context=MappingProxyType(context) if context is not None else None,
        policy=policy,
        rerun=_rerun_text(spec.get("rerun", "")),
        timeout=timeout,
        retry=retry,
        depends_on=depends_on,
        suspend=bool(spec.get("suspend", False)),
        labels=MappingProxyType(dict(meta.get("labels", {}))),
        file=doc.file,
        line=doc.line,
    ), []


def cross_checks(
    commands: list[ServiceCommand],
    named: Mapping[str, tuple[str, int]],
    located: Mapping[str, Located],
) -> tuple[list[ServiceCommand], list[Problem]]:
    """dependsOn targets exist and form no cycle; a problem skips the dependent command.

    Each problem is reported at the line of the ``dependsOn`` entry at fault.
    """
    problems: list[Problem] = []
    bad: set[str] = set()
    by_name = {c.name: c for c in commands}

    def entry_line(cmd: ServiceCommand, dep: str) -> int:
        return located[cmd.name].line_of(["spec", "dependsOn", cmd.depends_on.index(dep)])

    for cmd in commands:
        for i, dep in enumerate(cmd.depends_on):
            if dep not in named:
                close = difflib.get_close_matches(dep, list(named), n=1, cutoff=0.75)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(Problem(cmd.file, entry_line(cmd, dep), cmd.name,
                                        f"spec.dependsOn[{i}]: no manifest is named "
                                        f"{dep!r}{hint}"))
                bad.add(cmd.name)
    graph = {c.name: [d for d in c.depends_on if d in by_name] for c in commands}
    for cycle in _cycles(graph):
        members = cycle[:-1]
        for k, member in enumerate(members):
            cmd = by_name[member]
            nxt = members[(k + 1) % len(members)]
            rotated = [*members[k:], *members[:k], member]
            problems.append(Problem(
                cmd.file, entry_line(cmd, nxt), cmd.name,
                f"spec.dependsOn[{cmd.depends_on.index(nxt)}]: dependency cycle "
                f"{' -> '.join(rotated)}"))
            bad.add(member)
    return [c for c in commands if c.name not in bad], problems


def _cycles(graph: Mapping[str, Sequence[str]]) -> list[list[str]]:
    """Each elementary cycle found by a DFS, as a closed path (a -> b -> a), once each."""
    white, grey, black = 0, 1, 2
    color = dict.fromkeys(graph, white)
    stack: list[str] = []
    found: list[list[str]] = []
    seen: set[frozenset[str]] = set()

    def visit(root: str) -> None:
        # An explicit stack of (node, index of the next edge): long dependsOn chains
        # must not hit Python's recursion limit.
        color[root] = grey
        stack.append(root)
        frames: list[tuple[str, int]] = [(root, 0)]
        while frames:
            node, i = frames[-1]
            edges = graph.get(node, ())
            if i == len(edges):
                frames.pop()
                stack.pop()
                color[node] = black
                continue
            frames[-1] = (node, i + 1)
            nxt = edges[i]
            if color.get(nxt, black) == grey:
                cycle = [*stack[stack.index(nxt):], nxt]
                key = frozenset(cycle)
                if key not in seen:
                    seen.add(key)
                    found.append(cycle)
            elif color.get(nxt) == white:
                color[nxt] = grey
                stack.append(nxt)
                frames.append((nxt, 0))

    for node in sorted(graph):
        if color[node] == white:
            visit(node)
    return found


@cache
def _time_zones() -> frozenset[str]:
    """IANA zone names that load (a fixed list: no path tricks such as ``../x``)."""
    names = set()
    for tz in available_timezones():
        try:
            ZoneInfo(tz)
        except (ZoneInfoNotFoundError, ValueError, OSError):  # pragma: no cover
            continue
        names.add(tz)
    return frozenset(names)


def _fires(cron: str) -> bool:
    """Whether the cron expression has any tick at all (``0 0 30 2 *`` has none)."""
    try:
        croniter(cron, datetime(2000, 1, 1, tzinfo=UTC)).get_next(datetime)
    except (ValueError, KeyError, OverflowError):
        return False
    return True


def _rerun_text(value: Any) -> str:
    """``rerun`` as text: ``2``, ``2.0`` (a JSON Schema integer) and ``"2"`` are one value."""
    if isinstance(value, float):
        return str(int(value))
    return str(value)
