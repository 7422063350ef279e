"""JSON Schema validation of one document, with every error said in plain words.

A document the schema rejects is also judged by the semantic rules
(:func:`reconciler.source.semantics.semantic_problems`) wherever the schema found nothing
wrong, so one run tells every problem of the document. A duration written as a bare number
(``timeout: 600``) is told that it lacks a unit.
"""

from __future__ import annotations

import difflib
import json
from collections.abc import Mapping, Sequence
from functools import cache
from importlib import resources
from typing import Any, TypeGuard

import jsonschema

from reconciler.errors import Problem
from reconciler.model.durations import format_duration
from reconciler.source.composer import RawDocument, dotted, place, show
from reconciler.source.semantics import semantic_problems

__all__ = ["load_schema", "schema_problems", "unknown_field"]


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


def schema_problems(doc: RawDocument, name: str) -> list[Problem]:
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
    problems = [p for err in errors for p in _error_problems(err, doc, name)]
    if errors and not identity:
        seen = {(p.line, p.message) for p in problems}
        problems += [p for p in semantic_problems(doc, name, [_taint(e) for e in errors])
                     if (p.line, p.message) not in seen]
    return problems


def _taint(err: jsonschema.ValidationError) -> tuple[str | int, ...]:
    """Where the schema error ``err`` is: the semantic rules leave that part alone (a
    missing field: the field; an unknown one: the field itself, not its mapping)."""
    path = tuple(err.absolute_path)
    if err.validator == "required":
        return (*path, _missing_field(err))
    if err.validator == "additionalProperties":
        instance = err.instance if isinstance(err.instance, Mapping) else {}
        schema = err.schema if isinstance(err.schema, Mapping) else {}
        extras = sorted(set(instance) - set(schema.get("properties", {})))
        return (*path, extras[0]) if extras else path
    return path


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
    err: jsonschema.ValidationError, doc: RawDocument, name: str
) -> list[Problem]:
    """One schema error in plain words, at the line of the offending node."""
    path = list(err.absolute_path)
    where = place(path)
    line = doc.located.line_of(path)
    v = err.validator
    if v == "additionalProperties":
        schema = err.schema if isinstance(err.schema, Mapping) else {}
        allowed = sorted(schema.get("properties", {}))
        instance = err.instance if isinstance(err.instance, Mapping) else {}
        extras = sorted(set(instance) - set(allowed))
        return [Problem(doc.file, doc.located.line_of([*path, extra], key=True), name,
                        f"{dotted([*path, extra])}: {unknown_field(extra, allowed)}")
                for extra in extras]
    if v == "oneOf" and path and path[-1] == "policy":
        return _policy_problems(err, doc, name)
    if v == "required":
        field_name = _missing_field(err)
        if path:
            line = doc.located.line_of(path, key=True)
        msg = f"{where}: missing required field {field_name!r}"
    elif v == "type" and _is_duration(path) and _is_number(number := err.instance):
        msg = f"{where}: {show(number)} {_unitless(float(number))}"
    elif v == "type":
        msg = f"{where}: must be {_type_name(err.validator_value)}, got {show(err.instance)}"
    elif (v == "pattern" and _is_duration(path) and isinstance(err.instance, str)
          and err.instance.isdigit()):
        msg = f"{where}: {show(err.instance)} {_unitless(int(err.instance))}"
    elif v == "const":
        msg = f"{where}: must be {err.validator_value!r}, got {show(err.instance)}"
    elif v == "pattern":
        msg = f"{where}: {show(err.instance)} {_pattern_hint(path)}"
    elif v in ("minimum", "maximum"):
        op = ">=" if v == "minimum" else "<="
        msg = f"{where}: must be {op} {err.validator_value}, got {show(err.instance)}"
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
    err: jsonschema.ValidationError, doc: RawDocument, name: str
) -> list[Problem]:
    """``policy`` failed every form: explain it against the form the author meant."""
    path = list(err.absolute_path)
    where = place(path)
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
                            f"{dotted([*path, key])}: unknown field {key!r}; "
                            f"policy must be {_POLICY_FORMS}")
                    for key in sorted(policy)]
    return [Problem(doc.file, doc.located.line_of(path), name,
                    f"{where}: must be {_POLICY_FORMS}, got {show(policy)}")]


#: the fields that hold a duration
_DURATIONS = frozenset({"timeout", "interval", "startingDeadline", "backoff", "maxBackoff"})


def _is_duration(path: Sequence[str | int]) -> bool:
    return bool(path) and path[-1] in _DURATIONS and path[0] == "spec"


def _is_number(value: object) -> TypeGuard[float]:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _unitless(number: float) -> str:
    """The hint for a duration written without a unit: ``600 has no unit...``."""
    seconds = f"{number:g}s"
    readable = format_duration(float(number)) if number >= 0 else seconds
    also = f" (or {readable})" if readable != seconds else ""
    return f"has no unit: write a duration with a unit, e.g. {seconds}{also}"


def unknown_field(field_name: str, allowed: Sequence[str]) -> str:
    close = difflib.get_close_matches(field_name, allowed, n=1, cutoff=0.75)
    if close:
        return f"unknown field {field_name!r} (did you mean {close[0]!r}?)"
    return f"unknown field {field_name!r} (allowed: {', '.join(allowed)})"


def _pattern_hint(path: Sequence[str | int]) -> str:
    last = next((p for p in reversed(path) if isinstance(p, str)), "")
    if last == "name" or "dependsOn" in path:
        return ("is not a valid name: use a DNS-1123 label (lowercase letters, digits and "
                "'-', starting and ending with a letter or digit, at most 63)")
    if last == "command":
        return "is not a valid command name (letters, digits, '.', '_' and '-')"
    return "is not a valid duration: use a number with a unit, e.g. 90s, 10m, 1h30m"
