"""The libyaml fast path of the loader and its strict pre-check of the schema.

A file is read by libyaml straight into values (no line bookkeeping) and checked by
:func:`_surely_valid`, which accepts only what the JSON Schema accepts; line numbers are
computed, by composing the file again, only when a problem must be reported. Anything
unusual makes :func:`_parse_fast` return None: the loader then takes the full path.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import Any

import yaml

from reconciler.model.manifest import API_VERSION, KIND
from reconciler.source.composer import Located, RawDocument, compose
from reconciler.source.parsed import _Doc, _Parsed
from reconciler.source.semantics import build, raw_depends_on

#: longer texts take the full path: below this, a document cannot hold more values than
#: the composer's bound (:data:`reconciler.source.composer.MAX_NODES`)
_FAST_MAX_CHARS = 150_000
#: as the composer's own fast path: more flow openers and libyaml's recursion is not trusted
_FAST_MAX_FLOW = 1000
#: deepest payload the fast path takes (the composer's bound is 100 levels in all)
_FAST_MAX_PAYLOAD_DEPTH = 50


#: the text of a file again, when a line is asked for (None: it changed since)
Reread = Callable[[], str | None]


class _LazyLocated(Located):
    """The lines of one fast-path document, computed (by composing its file again) only
    when a problem asks for one. A file's text is read again then (``reread``) rather
    than kept: at 10,000 manifests the texts are 4 MiB that nothing else needs."""

    def __init__(self, text: str | Reread, file: str, line: int, index: int) -> None:
        super().__init__()
        self._source: tuple[str | Reread, str, int, int] | None = (text, file, line, index)

    def line_of(self, path: Sequence[str | int], *, key: bool = False) -> int:
        if self._source is not None:
            self._resolve()
        return super().line_of(path, key=key)

    def _resolve(self) -> None:
        assert self._source is not None
        source, file, line, index = self._source
        self._source = None
        text = source if isinstance(source, str) else source()
        if text is None:
            return  # the file changed since it was loaded: its lines are not known
        raw = [item for item in compose(text, file) if isinstance(item, RawDocument)]
        found = next((d for d in raw if d.line == line), None)
        if found is None and index < len(raw):  # pragma: no cover - same parser, same lines
            found = raw[index]
        if found is not None:
            self.value_lines = found.located.value_lines
            self.key_lines = found.located.key_lines



class _Unusual(Exception):
    """The fast path met something only the full path may judge."""


def _unusual(*_args: Any) -> Any:
    raise _Unusual


_TAG = "tag:yaml.org,2002:"
_STR_TAG = _TAG + "str"

_FastLoader: type[Any] | None = None
if getattr(yaml, "__with_libyaml__", False):

    class _CFastLoader(yaml.CSafeLoader):
        """libyaml's parser and composer, then plain values: what the composer would make
        of the same nodes, or :class:`_Unusual`."""

        def construct_mapping(self, node: yaml.MappingNode,  # type: ignore[override]
                              deep: bool = False) -> dict[str, Any]:
            out: dict[str, Any] = {}
            for key_node, value_node in node.value:
                if key_node.tag != _STR_TAG or not isinstance(key_node, yaml.ScalarNode):
                    raise _Unusual  # not text, a merge key, a complex key
                key = key_node.value
                if key in out:
                    raise _Unusual  # a duplicate: the full path names both lines
                out[key] = self.construct_object(value_node, deep=deep)
            return out

        def construct_finite_float(self, node: yaml.ScalarNode) -> float:
            value = self.construct_yaml_float(node)
            if not math.isfinite(value):
                raise _Unusual
            return value

        def construct_timestamp_text(self, node: yaml.ScalarNode) -> str:
            return str(node.value)  # dates stay text, as the composer keeps them

    _safe = yaml.constructor.SafeConstructor.yaml_constructors
    _CFastLoader.yaml_constructors = {
        _TAG + "null": _safe[_TAG + "null"],
        _TAG + "bool": _safe[_TAG + "bool"],
        _TAG + "int": _safe[_TAG + "int"],
        _TAG + "float": _CFastLoader.construct_finite_float,
        _TAG + "str": _safe[_TAG + "str"],
        _TAG + "timestamp": _CFastLoader.construct_timestamp_text,
        _TAG + "seq": _safe[_TAG + "seq"],
        _TAG + "map": _safe[_TAG + "map"],
        None: _unusual,
    }
    _CFastLoader.yaml_multi_constructors = {}
    _FastLoader = _CFastLoader


def _parse_fast(file: str, text: str, reread: Reread | None = None) -> _Parsed | None:
    """The file through libyaml straight to values, every document surely valid for the
    schema; None when anything needs the full path. ``reread``: the text again later (for
    a problem's line), instead of keeping it."""
    if (_FastLoader is None or len(text) > _FAST_MAX_CHARS or "&" in text or "!" in text
            or "<<" in text or text.count("[") + text.count("{") > _FAST_MAX_FLOW):
        return None
    found: list[tuple[int, dict[str, Any]]] = []
    loader = _FastLoader(text)
    try:
        while loader.check_node():
            node = loader.get_node()
            data = loader.construct_document(node)
            if data is None:
                continue  # an empty document
            if not _surely_valid(data):
                return None
            found.append((node.start_mark.line + 1, data))
    except Exception:
        return None
    finally:
        loader.dispose()
    docs = []
    for index, (line, data) in enumerate(found):
        name = data["metadata"]["name"]
        located = _LazyLocated(reread or text, file, line, index)
        command, problems = build(RawDocument(file, line, data, located), name)
        docs.append(_Doc(file, name, located, (), (command, tuple(problems)),
                         raw_depends_on(data) if command is None else ()))
    return _Parsed((), tuple(docs))



# ------------------------------------------------------------------ the schema, strictly

_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
_COMMAND = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_DURATION = re.compile(r"0|([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+")
_TOP = frozenset({"apiVersion", "kind", "metadata", "spec"})
_METADATA = frozenset({"name", "labels", "annotations"})
_SPEC = frozenset({"service", "serviceName", "command", "payload", "context", "policy",
                   "rerun", "timeout", "retry", "dependsOn", "suspend"})
_RETRY = frozenset({"limit", "backoff", "maxBackoff"})
_SCHEDULE = frozenset({"schedule", "timezone", "startingDeadline"})


def _text(value: object, pattern: re.Pattern[str] | None = None, *, low: int = 1,
          high: int | None = None) -> bool:
    if type(value) is not str or len(value) < low or (high is not None and len(value) > high):
        return False
    return pattern is None or pattern.fullmatch(value) is not None


def _texts(value: object, *, null: bool = False) -> bool:
    """A mapping of text to text (or null)."""
    return type(value) is dict and all(
        type(v) is str or (null and v is None) for v in value.values())


def _shallow(value: object, depth: int) -> bool:
    if depth > _FAST_MAX_PAYLOAD_DEPTH:
        return False
    if type(value) is dict:
        return all(_shallow(v, depth + 1) for v in value.values())
    if type(value) is list:
        return all(_shallow(v, depth + 1) for v in value)
    return True


def _surely_valid(data: object) -> bool:
    """True only for a document the JSON Schema accepts (stricter where it is cheaper:
    ``$`` does not accept a trailing newline, an integer is an ``int``): what this says
    is valid needs no schema validation; anything else gets it."""
    if type(data) is not dict or data.keys() != _TOP:
        return False
    if data["apiVersion"] != API_VERSION or data["kind"] != KIND:
        return False
    meta, spec = data["metadata"], data["spec"]
    if type(meta) is not dict or not meta.keys() <= _METADATA:
        return False
    if not _text(meta.get("name"), _NAME, high=63):
        return False
    if ("labels" in meta and not _texts(meta["labels"])) or (
            "annotations" in meta and not _texts(meta["annotations"])):
        return False
    if type(spec) is not dict or not spec.keys() <= _SPEC:
        return False
    if not _text(spec.get("command"), _COMMAND, high=255):
        return False
    for key in ("service", "serviceName"):
        if key in spec and not _text(spec[key]):
            return False
    if "payload" in spec and not (type(spec["payload"]) is dict
                                  and _shallow(spec["payload"], 0)):
        return False
    if "context" in spec and not _texts(spec["context"], null=True):
        return False
    if "policy" in spec and not _policy(spec["policy"]):
        return False
    if "rerun" in spec and type(spec["rerun"]) not in (str, int):
        return False
    if "timeout" in spec and not _text(spec["timeout"], _DURATION):
        return False
    if "retry" in spec:
        retry = spec["retry"]
        if type(retry) is not dict or not retry.keys() <= _RETRY:
            return False
        if "limit" in retry and not (type(retry["limit"]) is int and 0 <= retry["limit"] <= 100):
            return False
        for key in ("backoff", "maxBackoff"):
            if key in retry and not _text(retry[key], _DURATION):
                return False
    if "dependsOn" in spec:
        deps = spec["dependsOn"]
        if type(deps) is not list or not all(_text(d, _NAME) for d in deps):
            return False
        if len(set(deps)) != len(deps):
            return False
    return "suspend" not in spec or type(spec["suspend"]) is bool


def _policy(policy: object) -> bool:
    if policy == "once" and type(policy) is str:
        return True
    if type(policy) is not dict:
        return False
    if policy.keys() == {"interval"}:
        return _text(policy["interval"], _DURATION)
    if "schedule" not in policy or not policy.keys() <= _SCHEDULE:
        return False
    if not _text(policy["schedule"]):
        return False
    if "timezone" in policy and not _text(policy["timezone"]):
        return False
    return "startingDeadline" not in policy or _text(policy["startingDeadline"], _DURATION)

