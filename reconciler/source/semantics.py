"""Checks beyond the schema (durations, cron, time zones, dependencies) and the typed result."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
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

__all__ = [
    "build",
    "cross_checks",
    "document_name",
    "raw_depends_on",
    "semantic_problems",
    "unknown_targets",
]

#: a JSON path into a document
Path = tuple[str | int, ...]

#: longest duration accepted anywhere in a manifest
MAX_DURATION = timedelta(days=3650)
MAX_DURATION_TEXT = "87600h"


def document_name(data: Any) -> str:
    if isinstance(data, dict):
        meta = data.get("metadata")
        if isinstance(meta, dict):
            return printable_name(meta.get("name"))
    return UNNAMED


def semantic_problems(doc: RawDocument, name: str,
                      tainted: Iterable[Path]) -> list[Problem]:
    """The semantic problems of a document that failed the schema, in the parts the
    schema did not reject: ``tainted`` are the paths of the schema's errors, and no rule
    reads a value at, above or below one of them. So one run of ``validate`` tells every
    problem of the document, not only the schema's."""
    if not isinstance(doc.data, dict) or not isinstance(doc.data.get("spec"), dict):
        return []
    return _check(doc, name, frozenset(tuple(p) for p in tainted))[1]


def build(doc: RawDocument, name: str) -> tuple[ServiceCommand | None, list[Problem]]:
    """Semantic checks beyond the schema, then the typed object (None if any problem)."""
    return _check(doc, name, None)


def _check(doc: RawDocument, name: str, tainted: frozenset[Path] | None,
           ) -> tuple[ServiceCommand | None, list[Problem]]:
    """The semantic rules, then (``tainted`` None: the schema accepted the document) the
    typed object. With ``tainted``, a rule whose values touch a tainted path is skipped
    and nothing is built."""
    check = _Checker(doc, name, tainted)
    check.service()
    payload = check.payload()
    policy = check.policy()
    timeout = check.timeout()
    retry = check.retry()
    depends_on = check.depends_on()
    if check.problems or tainted is not None:
        return None, check.problems
    return _typed(doc, name, payload=payload, policy=policy, timeout=timeout, retry=retry,
                  depends_on=depends_on), []


class _Checker:
    """One document's semantic rules, each a step of :func:`_check`; collects problems."""

    def __init__(self, doc: RawDocument, name: str, tainted: frozenset[Path] | None) -> None:
        self.doc = doc
        self.name = name
        self.tainted = tainted
        self.loc = doc.located
        self.spec: dict[str, Any] = doc.data["spec"]
        self.problems: list[Problem] = []

    def clean(self, *paths: Sequence[str | int]) -> bool:
        """No schema error at, above or below any of ``paths``."""
        if self.tainted is None:
            return True
        for path in map(tuple, paths):
            for bad in self.tainted:
                shorter = min(len(path), len(bad))
                if path[:shorter] == bad[:shorter]:
                    return False
        return True

    def problem(self, path: Sequence[str | int], message: str, *, key: bool = False) -> None:
        self.problems.append(Problem(self.doc.file, self.loc.line_of(path, key=key), self.name,
                                     f"{dotted(path)}: {message}"))

    def duration(self, path: list[str | int], default: timedelta) -> timedelta:
        """The duration at ``path`` (``default`` when absent, tainted or wrong)."""
        node: Any = self.doc.data
        for part in path:
            node = node.get(part) if isinstance(node, dict) else None
        if node is None or not self.clean(path) or not isinstance(node, str):
            return default
        try:
            value = parse_duration(node)
        except ValueError as exc:  # schema already caught the pattern; keep the guard
            self.problem(path, str(exc))
            return default
        except OverflowError:
            value = MAX_DURATION + timedelta(seconds=1)
        if value > MAX_DURATION:
            self.problem(path, f"{node!r} is too long: at most {MAX_DURATION_TEXT} (10 years)")
            return default
        return value

    def service(self) -> None:
        """Exactly one of ``service`` and ``serviceName``."""
        has_id, has_name = "service" in self.spec, "serviceName" in self.spec
        if not self.clean(["spec", "service"], ["spec", "serviceName"]):
            return
        if has_id and has_name:
            later = max(self.loc.line_of(["spec", "service"], key=True),
                        self.loc.line_of(["spec", "serviceName"], key=True))
            self.problems.append(Problem(self.doc.file, later, self.name,
                                         "spec: set either 'service' (an id) "
                                         "or 'serviceName', not both"))
        elif not has_id and not has_name:
            self.problem(["spec"], "missing 'service' (a service id) or 'serviceName' "
                         "(resolved through the API); exactly one is required", key=True)

    def payload(self) -> Any:
        """The payload (None: none or tainted), at most :data:`MAX_PAYLOAD_CHARS` as JSON."""
        payload = self.spec.get("payload") if self.clean(["spec", "payload"]) else None
        if payload is not None:
            size = len(canonical_json(payload))
            if size > MAX_PAYLOAD_CHARS:
                self.problem(["spec", "payload"],
                             f"is {size} characters as compact JSON; the API accepts at most "
                             f"{MAX_PAYLOAD_CHARS}")
        return payload

    def policy(self) -> Policy:
        raw = self.spec.get("policy", "once") if self.clean(["spec", "policy"]) else "once"
        if isinstance(raw, dict) and "interval" in raw:
            return self.interval()
        if isinstance(raw, dict) and "schedule" in raw:
            return self.schedule(raw)
        return Once()

    def interval(self) -> Interval:
        reported = len(self.problems)
        every = self.duration(["spec", "policy", "interval"], timedelta(0))
        if len(self.problems) == reported and every < timedelta(seconds=1):
            self.problem(["spec", "policy", "interval"], "must be at least 1s")
        return Interval(every=every)

    def schedule(self, raw: dict[str, Any]) -> Schedule:
        cron = str(raw["schedule"])
        tz = str(raw.get("timezone", "UTC"))
        if len(cron.split()) != 5 or not croniter.is_valid(cron):
            self.problem(["spec", "policy", "schedule"],
                         f"{cron!r} is not a valid 5-field cron expression (e.g. \"0 3 * * *\")")
        elif not _fires(cron):
            self.problem(["spec", "policy", "schedule"],
                         f"{cron!r} never fires (no such date, e.g. February 30)")
        if tz not in _time_zones():
            self.problem(["spec", "policy", "timezone"], f"unknown time zone {tz!r} (use an "
                         "IANA name such as UTC or Europe/Prague)")
        deadline = self.duration(["spec", "policy", "startingDeadline"],
                                 DEFAULT_STARTING_DEADLINE)
        return Schedule(cron=cron, timezone=tz, starting_deadline=deadline)

    def timeout(self) -> timedelta:
        timeout = self.duration(["spec", "timeout"], DEFAULT_TIMEOUT)
        if "timeout" in self.spec and self.clean(["spec", "timeout"]) \
                and timeout <= timedelta(0):
            self.problem(["spec", "timeout"], "must be greater than 0")
        return timeout

    def retry(self) -> RetryPolicy:
        raw = self.spec.get("retry", {})
        if not isinstance(raw, dict) or not self.clean(["spec", "retry", "limit"]):
            raw = {k: v for k, v in (raw if isinstance(raw, dict) else {}).items()
                   if k != "limit"}
        retry = RetryPolicy(
            limit=int(raw.get("limit", 3)),
            backoff=self.duration(["spec", "retry", "backoff"], timedelta(seconds=30)),
            max_backoff=self.duration(["spec", "retry", "maxBackoff"], timedelta(minutes=10)),
        )
        if (retry.max_backoff < retry.backoff
                and self.clean(["spec", "retry", "backoff"], ["spec", "retry", "maxBackoff"])):
            self.problem(["spec", "retry", "maxBackoff"], "must not be smaller than backoff")
        return retry

    def depends_on(self) -> tuple[str, ...]:
        raw = self.spec.get("dependsOn", ()) if self.clean(["spec", "dependsOn"]) else ()
        depends_on = tuple(raw) if isinstance(raw, list | tuple) else ()
        if self.name in depends_on:
            self.problem(["spec", "dependsOn", depends_on.index(self.name)],
                         "a manifest cannot depend on itself")
        return depends_on


def _typed(doc: RawDocument, name: str, *, payload: Any, policy: Policy, timeout: timedelta,
           retry: RetryPolicy, depends_on: tuple[str, ...]) -> ServiceCommand:
    """The typed command of a document that passed every rule."""
    spec: dict[str, Any] = doc.data["spec"]
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
    )


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
        unknown = unknown_targets(cmd.file, cmd.name, tuple(enumerate(cmd.depends_on)),
                                  located[cmd.name], named)
        if unknown:
            problems.extend(unknown)
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


def raw_depends_on(data: Any) -> tuple[tuple[int, str], ...]:
    """``(index, target)`` of each string in a document's ``spec.dependsOn``, whatever else
    is wrong with the document: a document the schema rejected still names its targets."""
    spec = data.get("spec") if isinstance(data, dict) else None
    raw = spec.get("dependsOn") if isinstance(spec, dict) else None
    if not isinstance(raw, list):
        return ()
    return tuple((i, dep) for i, dep in enumerate(raw) if isinstance(dep, str))


def unknown_targets(file: str, name: str, entries: Sequence[tuple[int, str]],
                    located: Located, named: Mapping[str, object]) -> list[Problem]:
    """A problem (at the entry's line, with a close match as a hint) for each
    ``dependsOn`` entry that names no manifest of the tree."""
    problems: list[Problem] = []
    told: set[str] = set()
    for i, dep in entries:
        if dep in named or dep in told:
            continue
        told.add(dep)
        close = difflib.get_close_matches(dep, list(named), n=1, cutoff=0.75)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(Problem(file, located.line_of(["spec", "dependsOn", i]), name,
                                f"spec.dependsOn[{i}]: no manifest is named {dep!r}{hint}"))
    return problems


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
