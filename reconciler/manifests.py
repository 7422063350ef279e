"""Manifests: load ``ServiceCommand`` YAML documents into typed, immutable objects.

Loading is safe and bounded: YAML is composed into nodes (no Python tags), converted by
hand so that duplicate keys, non-string keys, unknown tags and alias bombs are errors,
and every value keeps the line it came from. Every problem is reported as a
:class:`~reconciler.errors.Problem` (``FILE:LINE: NAME: message``); an invalid document
is skipped and never hides the problems of the others or blocks the valid ones.
"""

from __future__ import annotations

import difflib
import hashlib
import itertools
import json
import math
import os
import re
import subprocess
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import cache
from importlib import resources
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError, available_timezones

import jsonschema
import yaml
from croniter import croniter

from reconciler.durations import parse_duration
from reconciler.errors import Problem
from reconciler.identity import canonical_intent, canonical_json, spec_hash

__all__ = [
    "API_VERSION",
    "KIND",
    "MAX_DEPTH",
    "MAX_FILE_BYTES",
    "MAX_NODES",
    "MAX_PAYLOAD_CHARS",
    "Interval",
    "LoadResult",
    "Once",
    "Policy",
    "RetryPolicy",
    "Schedule",
    "ServiceCommand",
    "ServiceRef",
    "load_manifests",
    "load_schema",
    "parse_documents",
]

API_VERSION = "ailake.reconciler/v1"
KIND = "ServiceCommand"
MAX_FILE_BYTES = 1024 * 1024
MAX_NODES = 100_000
#: deepest nesting of mappings/lists accepted in one document
MAX_DEPTH = 100
MAX_PAYLOAD_CHARS = 15_000
YAML_SUFFIXES = (".yaml", ".yml")
UNNAMED = "-"

#: longest duration accepted anywhere in a manifest
MAX_DURATION = timedelta(days=3650)
MAX_DURATION_TEXT = "87600h"

DEFAULT_TIMEOUT = timedelta(hours=1)
DEFAULT_STARTING_DEADLINE = timedelta(hours=1)


# ---------------------------------------------------------------------------- model


@dataclass(frozen=True)
class Once:
    """Run exactly once for the spec."""

    kind: Literal["once"] = "once"


@dataclass(frozen=True)
class Interval:
    """Run once in every window of ``every``, windows aligned to the Unix epoch."""

    every: timedelta
    kind: Literal["interval"] = "interval"


@dataclass(frozen=True)
class Schedule:
    """Run once per cron tick, read in ``timezone``; late ticks start within a deadline."""

    cron: str
    timezone: str = "UTC"
    starting_deadline: timedelta = DEFAULT_STARTING_DEADLINE
    kind: Literal["schedule"] = "schedule"


Policy = Once | Interval | Schedule


@dataclass(frozen=True)
class RetryPolicy:
    """Retries after a failed attempt: ``limit`` more, waiting backoff * 2**n, capped."""

    limit: int = 3
    backoff: timedelta = timedelta(seconds=30)
    max_backoff: timedelta = timedelta(minutes=10)

    def delay(self, failed_attempts: int) -> timedelta:
        """The wait after the ``failed_attempts``-th failure (1-based)."""
        exponent = max(0, failed_attempts - 1)
        seconds = self.backoff.total_seconds() * (2 ** min(exponent, 32))
        return timedelta(seconds=min(seconds, self.max_backoff.total_seconds()))


@dataclass(frozen=True)
class ServiceRef:
    """The service as the manifest wrote it: an id, or a name resolved through the API."""

    id: str | None = None
    name: str | None = None

    @property
    def as_written(self) -> dict[str, str]:
        """``{"service": id}`` or ``{"serviceName": name}``: the identity's service part."""
        if self.id is not None:
            return {"service": self.id}
        return {"serviceName": self.name or ""}

    @property
    def label(self) -> str:
        """A short human/metric label for the service."""
        return self.id if self.id is not None else (self.name or "")


@dataclass(frozen=True)
class ServiceCommand:
    """One valid manifest document: what must have run, where, and how often."""

    name: str
    service: ServiceRef
    command: str
    payload: Mapping[str, Any] | None = None
    context: Mapping[str, str | None] | None = None
    policy: Policy = field(default_factory=Once)
    rerun: str = ""
    timeout: timedelta = DEFAULT_TIMEOUT
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    depends_on: tuple[str, ...] = ()
    suspend: bool = False
    labels: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    file: str = ""
    line: int = 0

    def canonical_intent(self, window: str = "") -> str:
        """The canonical intent text of this command for ``window`` (DESIGN section 3).

        Only name, service as written, command, payload, context, rerun and the window
        take part: timeout, retry, dependsOn, suspend and labels never re-run a command.
        """
        return canonical_intent(
            name=self.name,
            service=self.service.as_written,
            command=self.command,
            payload=dict(self.payload) if self.payload is not None else None,
            context=dict(self.context) if self.context is not None else None,
            rerun=self.rerun,
            window=window,
        )

    def spec_hash(self, window: str = "") -> str:
        """sha256 of :meth:`canonical_intent` (the key of the intent in the state store)."""
        return spec_hash(self.canonical_intent(window))


@dataclass(frozen=True)
class LoadResult:
    """Every valid command, every problem, and the source revision they came from."""

    commands: tuple[ServiceCommand, ...]
    problems: tuple[Problem, ...]
    revision: str
    files: int = 0
    #: number of documents that were invalid (and skipped)
    invalid: int = 0

    @property
    def by_name(self) -> Mapping[str, ServiceCommand]:
        return {c.name: c for c in self.commands}


# ---------------------------------------------------------------------------- YAML


class _Located:
    """A plain JSON value plus the line of every JSON path in it (1-based)."""

    def __init__(self) -> None:
        self.value_lines: dict[tuple[str | int, ...], int] = {}
        self.key_lines: dict[tuple[str | int, ...], int] = {}

    def line_of(self, path: Sequence[str | int], *, key: bool = False) -> int:
        """The line of ``path`` (its key when ``key``), else of its nearest ancestor."""
        p = tuple(path)
        if key and p in self.key_lines:
            return self.key_lines[p]
        while p not in self.value_lines and p:
            p = p[:-1]
        return self.value_lines.get(p, 1)


class _DocumentError(Exception):
    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


_SCALAR_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:timestamp",
}
_constructor = yaml.constructor.SafeConstructor()


def _convert(node: yaml.Node, located: _Located) -> Any:
    """Turn a composed node into plain JSON values, recording lines; bounded.

    Aliases are expanded here (the composer only links nodes), so the expansion is
    counted against :data:`MAX_NODES` (an alias bomb stops early), nesting against
    :data:`MAX_DEPTH`, and an alias that contains itself is refused.
    """
    budget = [MAX_NODES]
    open_nodes: set[int] = set()

    def walk(n: yaml.Node, path: tuple[str | int, ...], outer: int = 1) -> Any:
        # An alias target starts before the alias that uses it: the line of a value is
        # never before its parent's, so expanded aliases are located where they are used.
        line = max(n.start_mark.line + 1, outer)
        budget[0] -= 1
        if budget[0] < 0:
            raise _DocumentError(
                line,
                f"document too large: more than {MAX_NODES} values after expanding "
                "aliases (refusing a possible alias bomb)",
            )
        if len(path) > MAX_DEPTH:
            raise _DocumentError(
                line, f"{_where(path[:2])}: nested more than {MAX_DEPTH} levels deep"
            )
        if id(n) in open_nodes:
            raise _DocumentError(
                line, f"{_where(path)}: recursive YAML alias (a value that contains itself)"
            )
        located.value_lines.setdefault(path, line)
        if isinstance(n, yaml.MappingNode):
            if n.tag != "tag:yaml.org,2002:map":
                raise _DocumentError(line, _tag_message(path, n.tag))
            open_nodes.add(id(n))
            out: dict[str, Any] = {}
            for key_node, value_node in n.value:
                key_line = max(key_node.start_mark.line + 1, line)
                if key_node.tag == "tag:yaml.org,2002:merge":
                    raise _DocumentError(
                        key_line, f"{_where(path)}: YAML merge keys (<<) are not supported"
                    )
                key = walk(key_node, (*path, "<key>"), line)
                if not isinstance(key, str):
                    raise _DocumentError(key_line, _key_message(path, key_node, key))
                if key in out:
                    raise _DocumentError(
                        key_line,
                        f"{_dotted((*path, key))}: duplicate key {key!r} "
                        f"(first at line {located.key_lines[(*path, key)]})",
                    )
                located.key_lines[(*path, key)] = key_line
                out[key] = walk(value_node, (*path, key), key_line)
            open_nodes.discard(id(n))
            return out
        if isinstance(n, yaml.SequenceNode):
            if n.tag != "tag:yaml.org,2002:seq":
                raise _DocumentError(line, _tag_message(path, n.tag))
            open_nodes.add(id(n))
            items = [walk(item, (*path, i), line) for i, item in enumerate(n.value)]
            open_nodes.discard(id(n))
            return items
        assert isinstance(n, yaml.ScalarNode)
        if n.tag not in _SCALAR_TAGS:
            raise _DocumentError(line, _tag_message(path, n.tag))
        if n.tag == "tag:yaml.org,2002:timestamp":
            return str(n.value)  # dates stay text: JSON has no date type
        value = _constructor.construct_object(n)
        if isinstance(value, float) and not math.isfinite(value):
            raise _DocumentError(line, f"{_where(path)}: {n.value!r} is not a finite number")
        return value

    return walk(node, ())


def _where(path: Sequence[str | int]) -> str:
    return _dotted(path) or "document"


def _tag_message(path: Sequence[str | int], tag: str) -> str:
    return (f"{_where(path)}: YAML tag {_tag(tag)} is not allowed "
            "(only plain mappings, lists, strings, numbers, booleans and null)")


def _key_message(path: Sequence[str | int], key_node: yaml.Node, key: Any) -> str:
    where = _where(path)
    if isinstance(key_node, yaml.ScalarNode) and key_node.value:
        kind = {bool: "a boolean", int: "an integer", float: "a number",
                type(None): "null"}.get(type(key), "a non-string")
        return (f"{where}: key {key_node.value} is read by YAML as {kind}; quote it "
                f"(\"{key_node.value}\") to use it as a text key")
    return f"{where}: mapping keys must be strings, got {_show(key)}"


def _node_name(node: yaml.Node) -> str:
    """``metadata.name`` read straight from the nodes, for documents that fail to convert."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if getattr(key, "value", None) == "metadata" and isinstance(value, yaml.MappingNode):
                for k, v in value.value:
                    if getattr(k, "value", None) == "name" and isinstance(v, yaml.ScalarNode):
                        return _printable_name(v.value)
    return UNNAMED


def _tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


def _dotted(path: Sequence[str | int]) -> str:
    """``spec.payload.tables[0]``; a key with spaces, dots or odd characters is quoted
    (``spec.payload["my key"]``) so one problem always stays on one line."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        elif _PLAIN_KEY.fullmatch(part):
            out += ("." if out else "") + part
        else:
            out += f"[{json.dumps(part, ensure_ascii=False)}]"
    return out


_PLAIN_KEY = re.compile(r"[A-Za-z0-9_<>-]+")
#: a name printable in ``FILE:LINE: NAME: message`` (valid or not, but on one line)
_PRINTABLE_NAME = re.compile(r"[^\s:]{1,253}")


def _printable_name(value: object) -> str:
    if isinstance(value, str) and _PRINTABLE_NAME.fullmatch(value) and value.isprintable():
        return value
    return UNNAMED


@dataclass(frozen=True)
class _RawDocument:
    file: str
    line: int
    data: Any
    located: _Located


_DOCUMENT_START = re.compile(r"---(\s|$)")
#: problems that PyYAML finds only where the text ends: the start of the construct
#: (its context mark) is where the author must look
_RUNAWAY = ("'<stream end>'", "'<document start>'", "'<document end>'", "end of stream")


#: more flow openers ('[', '{') than this and the C parser is not trusted with the
#: nesting (its composer recurses on the C stack); the pure-Python path bounds it
_FAST_PATH_MAX_FLOW = 1000


def _compose_fast(text: str, file: str) -> list[_RawDocument | Problem] | None:
    """The whole file through libyaml's parser (about 10x faster), or None when that is
    unavailable, unsafe for this text, or finds a syntax error: then the pure-Python
    path reports the error precisely."""
    loader_class = getattr(yaml, "CSafeLoader", None)
    if loader_class is None or text.count("[") + text.count("{") > _FAST_PATH_MAX_FLOW:
        return None
    try:
        nodes = list(yaml.compose_all(text, Loader=loader_class))
    except (yaml.YAMLError, RecursionError, ValueError):
        return None
    return [_document(node, file) for node in nodes if node is not None]


def _document(node: yaml.Node, file: str) -> _RawDocument | Problem:
    """One composed document as plain values with lines, or the problem converting it."""
    located = _Located()
    try:
        data = _convert(node, located)
    except _DocumentError as exc:
        return Problem(file, exc.line, _node_name(node), exc.message)
    return _RawDocument(file, node.start_mark.line + 1, data, located)


def _compose(text: str, file: str) -> Iterator[_RawDocument | Problem]:
    """Compose every document of one file.

    A syntax error ends its document; composing resumes at the next ``---`` line after
    the error (line numbers are kept by padding), so one broken document does not hide
    the problems of the documents after it.
    """
    fast = _compose_fast(text, file)
    if fast is not None:
        yield from fast
        return
    lines = text.splitlines(keepends=True)
    start = 0
    while True:
        resume_from: int | None = None
        loader: yaml.SafeLoader | None = None
        try:
            loader = yaml.SafeLoader("\n" * start + "".join(lines[start:]))
            while loader.check_node():
                node = loader.get_node()
                if node is None:  # pragma: no cover - check_node guarantees a node
                    break
                yield _document(node, file)
        except yaml.MarkedYAMLError as exc:
            line, message = _syntax_error(exc)
            line = min(max(line, 1), max(len(lines), 1))
            yield Problem(file, line, UNNAMED, message)
            problem_line = exc.problem_mark.line if exc.problem_mark is not None else start
            resume_from = max(problem_line, start + 1)
        except yaml.reader.ReaderError as exc:
            char = exc.character if isinstance(exc.character, int) else ord(exc.character)
            line = text.count("\n", 0, exc.position) + 1
            yield Problem(file, line, UNNAMED,
                          f"YAML syntax error: character U+{char:04X} is not allowed in YAML")
        except yaml.YAMLError as exc:  # pragma: no cover - every PyYAML error is marked
            yield Problem(file, 1, UNNAMED, f"YAML error: {exc}")
        except RecursionError:
            line = loader.line + 1 if loader is not None else 1
            yield Problem(file, line, UNNAMED, "YAML nesting too deep (refusing to parse it)")
        finally:
            if loader is not None:
                loader.dispose()
        if resume_from is None:
            return
        start = next((i for i in range(resume_from, len(lines))
                      if _DOCUMENT_START.match(lines[i])), len(lines))
        if start >= len(lines):
            return


def _syntax_error(exc: yaml.MarkedYAMLError) -> tuple[int, str]:
    """The line and the message of a YAML syntax error, in plain words."""
    problem = (exc.problem or "").strip()
    context = (exc.context or "").strip()
    pmark, cmark = exc.problem_mark, exc.context_mark
    line = pmark.line + 1 if pmark is not None else 1
    if "'\\t'" in problem:
        return line, "YAML syntax error: a tab character; indent YAML with spaces, not tabs"
    if (cmark is not None and context and any(r in problem for r in _RUNAWAY)):
        what = context.removeprefix("while ").replace("parsing ", "").replace("scanning ", "")
        return cmark.line + 1, f"YAML syntax error: {what} is never closed ({problem})"
    message = problem
    if problem.startswith("expected <block end>"):
        message = "bad indentation: this line does not line up with the lines before it"
    elif problem == "mapping values are not allowed here":
        message = "unexpected ':' (quote a value that contains ': ')"
    if context and cmark is not None and cmark.line != (pmark.line if pmark else -1):
        where = context.replace("while parsing ", "in ").replace("while scanning ", "in ")
        message += f" ({where} started at line {cmark.line + 1})"
    elif context:
        message = f"{context}: {problem}"
    return line, f"YAML syntax error: {message}"


# ---------------------------------------------------------------------------- schema


@cache
def load_schema() -> Mapping[str, Any]:
    """The ServiceCommand JSON Schema (2020-12) shipped with the package."""
    text = resources.files("reconciler").joinpath("data/servicecommand.schema.json").read_text()
    schema: Mapping[str, Any] = json.loads(text)
    return schema


@cache
def _validator() -> jsonschema.Draft202012Validator:
    schema = load_schema()
    jsonschema.Draft202012Validator.check_schema(schema)
    return jsonschema.Draft202012Validator(schema)


def _type_name(t: Any) -> str:
    names: dict[str, str] = {"object": "a mapping", "array": "a list", "string": "a string",
             "integer": "an integer", "boolean": "true or false", "null": "null",
             "number": "a number"}
    if isinstance(t, list):
        return " or ".join(names.get(str(x), str(x)) for x in t)
    return names.get(t, str(t))


def _schema_problems(doc: _RawDocument, name: str) -> list[Problem]:
    errors = sorted(_validator().iter_errors(doc.data),
                    key=lambda e: [str(p) for p in e.absolute_path])
    # Not a ServiceCommand at all (wrong or missing apiVersion/kind): say only that, the
    # other fields would be judged against the wrong schema.
    identity = [e for e in errors if _is_identity_error(e)]
    if identity:
        errors = identity
    # an empty string fails minLength and usually the pattern too: report it once
    empty = {tuple(e.absolute_path) for e in errors if e.validator == "minLength"}
    errors = [e for e in errors
              if not (e.validator == "pattern" and tuple(e.absolute_path) in empty)]
    return [p for err in errors for p in _error_problems(err, doc, name)]


def _is_identity_error(err: jsonschema.ValidationError) -> bool:
    path = list(err.absolute_path)
    if path in (["apiVersion"], ["kind"]):
        return True
    return (not path and err.validator == "required"
            and _missing_field(err) in ("apiVersion", "kind"))


def _missing_field(err: jsonschema.ValidationError) -> str:
    message = str(err.message)
    return message.split("'")[1] if "'" in message else message


def _error_problems(
    err: jsonschema.ValidationError, doc: _RawDocument, name: str
) -> list[Problem]:
    """One schema error in plain words, at the line of the offending node."""
    path = list(err.absolute_path)
    where = _where(path)
    line = doc.located.line_of(path)
    v = err.validator
    if v == "additionalProperties":
        schema = err.schema if isinstance(err.schema, Mapping) else {}
        allowed = sorted(schema.get("properties", {}))
        instance = err.instance if isinstance(err.instance, Mapping) else {}
        extras = sorted(set(instance) - set(allowed))
        return [Problem(doc.file, doc.located.line_of([*path, extra], key=True), name,
                        f"{_dotted([*path, extra])}: {_unknown_field(extra, allowed)}")
                for extra in extras]
    if v == "oneOf" and path and path[-1] == "policy":
        return _policy_problems(err, doc, name)
    if v == "required":
        field_name = _missing_field(err)
        if path:
            line = doc.located.line_of(path, key=True)
        msg = f"{where}: missing required field {field_name!r}"
    elif v == "type":
        msg = f"{where}: must be {_type_name(err.validator_value)}, got {_show(err.instance)}"
    elif v == "const":
        msg = f"{where}: must be {err.validator_value!r}, got {_show(err.instance)}"
    elif v == "pattern":
        msg = f"{where}: {_show(err.instance)} {_pattern_hint(path)}"
    elif v in ("minimum", "maximum"):
        op = ">=" if v == "minimum" else "<="
        msg = f"{where}: must be {op} {err.validator_value}, got {_show(err.instance)}"
    elif v == "minLength" and err.validator_value == 1:
        msg = f"{where}: must not be empty"
    elif v in ("minLength", "maxLength"):
        op = "at least" if v == "minLength" else "at most"
        msg = f"{where}: must be {op} {err.validator_value} characters long"
    elif v == "uniqueItems":
        msg = f"{where}: items must be unique"
    else:  # pragma: no cover - every keyword the schema uses is handled above
        msg = f"{where}: {err.message}"
    return [Problem(doc.file, line, name, msg)]


_POLICY_FORMS = ("'once', {interval: DURATION} or "
                 "{schedule: CRON, timezone: TZ, startingDeadline: DURATION}")


def _policy_problems(
    err: jsonschema.ValidationError, doc: _RawDocument, name: str
) -> list[Problem]:
    """``policy`` failed every form: explain it against the form the author meant."""
    path = list(err.absolute_path)
    where = _where(path)
    policy = err.instance
    if isinstance(policy, dict):
        has_interval, has_schedule = "interval" in policy, "schedule" in policy
        if has_interval and has_schedule:
            return [Problem(doc.file, doc.located.line_of([*path, "schedule"], key=True), name,
                            f"{where}: set either 'interval' or 'schedule', not both")]
        if has_interval or has_schedule:
            branch = 1 if has_interval else 2
            sub = sorted((e for e in err.context if e.relative_schema_path[0] == branch),
                         key=lambda e: [str(p) for p in e.absolute_path])
            return [p for e in sub for p in _error_problems(e, doc, name)]
        if policy:
            return [Problem(doc.file, doc.located.line_of([*path, key], key=True), name,
                            f"{_dotted([*path, key])}: unknown field {key!r}; "
                            f"policy must be {_POLICY_FORMS}")
                    for key in sorted(policy)]
    return [Problem(doc.file, doc.located.line_of(path), name,
                    f"{where}: must be {_POLICY_FORMS}, got {_show(policy)}")]


def _unknown_field(field_name: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(field_name, allowed, n=1, cutoff=0.75)
    if close:
        return f"unknown field {field_name!r} (did you mean {close[0]!r}?)"
    return f"unknown field {field_name!r} (allowed: {', '.join(allowed)})"


def _show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _pattern_hint(path: Sequence[str | int]) -> str:
    last = next((p for p in reversed(path) if isinstance(p, str)), "")
    if last == "name" or "dependsOn" in path:
        return ("is not a valid name: use a DNS-1123 label (lowercase letters, digits and "
                "'-', starting and ending with a letter or digit, at most 63)")
    if last == "command":
        return "is not a valid command name (letters, digits, '.', '_' and '-')"
    return "is not a valid duration: use a number with a unit, e.g. 90s, 10m, 1h30m"


# ---------------------------------------------------------------------------- semantics


def _document_name(data: Any) -> str:
    if isinstance(data, dict):
        meta = data.get("metadata")
        if isinstance(meta, dict):
            return _printable_name(meta.get("name"))
    return UNNAMED


def _build(doc: _RawDocument, name: str) -> tuple[ServiceCommand | None, list[Problem]]:
    """Semantic checks beyond the schema, then the typed object (None if any problem)."""
    problems: list[Problem] = []
    loc = doc.located

    def problem(path: Sequence[str | int], message: str, *, key: bool = False) -> None:
        problems.append(Problem(doc.file, loc.line_of(path, key=key), name,
                                f"{_dotted(path)}: {message}"))

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


def _cross_checks(
    commands: list[ServiceCommand],
    named: Mapping[str, tuple[str, int]],
    located: Mapping[str, _Located],
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


# ---------------------------------------------------------------------------- loading


def parse_documents(sources: Iterable[tuple[str, str]]) -> LoadResult:
    """Validate ``(file name, text)`` pairs; the pure core of :func:`load_manifests`."""
    problems: list[Problem] = []
    commands: list[ServiceCommand] = []
    named: dict[str, tuple[str, int]] = {}
    located: dict[str, _Located] = {}
    files = 0
    invalid = 0
    digest = hashlib.sha256()
    for file, text in sources:
        files += 1
        encoded = text.encode("utf-8", "surrogatepass")
        digest.update(file.encode() + b"\0" + encoded + b"\0")
        if len(encoded) > MAX_FILE_BYTES:
            problems.append(_too_large(file, len(encoded)))
            invalid += 1
            continue
        for item in _compose(text, file):
            if isinstance(item, Problem):
                problems.append(item)
                invalid += 1
                continue
            if item.data is None:
                continue  # an empty document (e.g. a trailing '---') is not a manifest
            name = _document_name(item.data)
            if not isinstance(item.data, dict):
                problems.append(Problem(
                    file, item.line, name,
                    "document must be a mapping (apiVersion, kind, metadata, spec), "
                    f"got {'a list' if isinstance(item.data, list) else _show(item.data)}"))
                invalid += 1
                continue
            doc_problems = _schema_problems(item, name)
            if name != UNNAMED:
                if name in named:
                    first_file, first_line = named[name]
                    doc_problems.append(Problem(
                        file, item.located.line_of(["metadata", "name"]), name,
                        f"metadata.name: duplicate name (first defined at "
                        f"{first_file}:{first_line})"))
                else:
                    named[name] = (file, item.located.line_of(["metadata", "name"]))
            if not doc_problems:
                command, doc_problems = _build(item, name)
                if command is not None:
                    commands.append(command)
                    located[name] = item.located
            if doc_problems:
                problems.extend(doc_problems)
                invalid += 1
    commands, cross = _cross_checks(commands, named, located)
    problems.extend(cross)
    invalid += len({p.name for p in cross})
    return LoadResult(
        commands=tuple(commands),
        problems=tuple(sorted(problems, key=lambda p: (p.file, p.line, p.name, p.message))),
        revision="sha256:" + digest.hexdigest()[:16],
        files=files,
        invalid=invalid,
    )


def _yaml_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    found = [
        p for p in path.rglob("*")
        if p.suffix in YAML_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    ]
    return sorted(found)


def _too_large(file: str, size: int) -> Problem:
    return Problem(file, 1, UNNAMED, f"file too large: {size} bytes, the limit is "
                   f"{MAX_FILE_BYTES} bytes (1 MiB); not parsed")


def _read(paths: Sequence[Path]) -> Iterator[tuple[str, str] | Problem]:
    for root in paths:
        if not root.exists():
            yield Problem(str(root), 1, UNNAMED, "no such file or directory")
            continue
        for file in _yaml_files(root):
            name = str(file)
            try:
                with file.open("rb") as fh:  # bounded: never more than the limit + 1 byte
                    data = fh.read(MAX_FILE_BYTES + 1)
                if len(data) > MAX_FILE_BYTES:
                    yield _too_large(name, max(file.stat().st_size, len(data)))
                    continue
                yield name, data.decode("utf-8")
            except UnicodeDecodeError as exc:
                line = data.count(b"\n", 0, exc.start) + 1
                yield Problem(name, line, UNNAMED,
                              f"not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
                              f"{exc.start} ({exc.reason}); save the file as UTF-8")
            except OSError as exc:
                yield Problem(name, 1, UNNAMED, f"cannot read: {exc.strerror}")


def load_manifests(*paths: str | os.PathLike[str]) -> LoadResult:
    """Load every ``*.yaml``/``*.yml`` under ``paths`` (recursively, sorted; dot-folders
    such as ``.git`` skipped). The revision is the git commit when the first path is in a
    git work tree, else a content hash."""
    roots = [Path(p) for p in paths]
    read_problems: list[Problem] = []
    sources: list[tuple[str, str]] = []
    for item in _read(roots):
        if isinstance(item, Problem):
            read_problems.append(item)
        else:
            sources.append(item)
    result = parse_documents(sources)
    revision = _git_revision(roots[0]) if roots else None
    return LoadResult(
        commands=result.commands,
        problems=tuple(sorted([*read_problems, *result.problems])),
        revision=revision or result.revision,
        files=result.files + len(read_problems),
        invalid=result.invalid + len(read_problems),
    )


_SHA = re.compile(r"[0-9a-f]{40}|[0-9a-f]{64}")


def _git_revision(path: Path) -> str | None:
    """HEAD's commit when ``path`` is inside a git work tree (git-sync, a checkout).

    Without a git binary (the slim image), a git-sync v4 work tree still tells: its
    folder ``.worktrees/<commit>`` is named for the commit it holds."""
    directory = path if path.is_dir() else path.parent
    parts = directory.resolve().parts
    for name, following in itertools.pairwise(parts):
        if name == ".worktrees" and _SHA.fullmatch(following):
            return following
    try:
        out = subprocess.run(
            ["git", "-C", str(directory), "rev-parse", "HEAD"],
            capture_output=True, text=True, timeout=10, check=False,
            env={**os.environ, "GIT_TERMINAL_PROMPT": "0"},
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    sha = out.stdout.strip()
    return sha if out.returncode == 0 and len(sha) >= 40 else None


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
