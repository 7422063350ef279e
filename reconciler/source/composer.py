"""YAML to plain values, safely: nodes converted by hand, every value with its line.

Duplicate keys, non-string keys, unknown tags, merge keys and alias bombs are errors; a syntax
error ends only its own document (composing resumes at the next ``---``).
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from reconciler.errors import Problem

__all__ = [
    "MAX_DEPTH",
    "MAX_NODES",
    "UNNAMED",
    "Located",
    "RawDocument",
    "compose",
    "dotted",
    "place",
    "printable_name",
    "show",
]

MAX_NODES = 100_000
#: deepest nesting of mappings/lists accepted in one document
MAX_DEPTH = 100
UNNAMED = "-"


class Located:
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
#: one scalar constructor per tag, called directly: ``construct_object`` would remember every
#: node it built in the constructor's caches (``constructed_objects``), so a module-level
#: constructor kept every scalar of every reload alive (a leak of about 1 MB per reload of
#: 100 manifests). The scalar constructors keep nothing.
_SCALAR_CONSTRUCTORS = {
    tag: yaml.constructor.SafeConstructor.yaml_constructors[tag]
    for tag in _SCALAR_TAGS if tag != "tag:yaml.org,2002:timestamp"
}
_constructor = yaml.constructor.SafeConstructor()


def _scalar(node: yaml.ScalarNode) -> Any:
    """The plain value of one scalar node; nothing is cached anywhere."""
    return _SCALAR_CONSTRUCTORS[node.tag](_constructor, node)


def _convert(node: yaml.Node, located: Located) -> Any:
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
                line, f"{place(path[:2])}: nested more than {MAX_DEPTH} levels deep"
            )
        if id(n) in open_nodes:
            raise _DocumentError(
                line, f"{place(path)}: recursive YAML alias (a value that contains itself)"
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
                        key_line, f"{place(path)}: YAML merge keys (<<) are not supported"
                    )
                key = walk(key_node, (*path, "<key>"), line)
                if not isinstance(key, str):
                    raise _DocumentError(key_line, _key_message(path, key_node, key))
                if key in out:
                    raise _DocumentError(
                        key_line,
                        f"{dotted((*path, key))}: duplicate key {key!r} "
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
        value = _scalar(n)
        if isinstance(value, float) and not math.isfinite(value):
            raise _DocumentError(line, f"{place(path)}: {n.value!r} is not a finite number")
        return value

    return walk(node, ())


def place(path: Sequence[str | int]) -> str:
    return dotted(path) or "document"


def show(value: Any) -> str:
    text = json.dumps(value, ensure_ascii=False) if not isinstance(value, str) else repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _tag_message(path: Sequence[str | int], tag: str) -> str:
    return (f"{place(path)}: YAML tag {_tag(tag)} is not allowed "
            "(only plain mappings, lists, strings, numbers, booleans and null)")


def _key_message(path: Sequence[str | int], key_node: yaml.Node, key: Any) -> str:
    where = place(path)
    if isinstance(key_node, yaml.ScalarNode) and key_node.value:
        kind = {bool: "a boolean", int: "an integer", float: "a number",
                type(None): "null"}.get(type(key), "a non-string")
        return (f"{where}: key {key_node.value} is read by YAML as {kind}; quote it "
                f"(\"{key_node.value}\") to use it as a text key")
    return f"{where}: mapping keys must be strings, got {show(key)}"


def _node_name(node: yaml.Node) -> str:
    """``metadata.name`` read straight from the nodes, for documents that fail to convert."""
    if isinstance(node, yaml.MappingNode):
        for key, value in node.value:
            if getattr(key, "value", None) == "metadata" and isinstance(value, yaml.MappingNode):
                for k, v in value.value:
                    if getattr(k, "value", None) == "name" and isinstance(v, yaml.ScalarNode):
                        return printable_name(v.value)
    return UNNAMED


def _tag(tag: str) -> str:
    return tag.replace("tag:yaml.org,2002:", "!!")


def dotted(path: Sequence[str | int]) -> str:
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


def printable_name(value: object) -> str:
    if isinstance(value, str) and _PRINTABLE_NAME.fullmatch(value) and value.isprintable():
        return value
    return UNNAMED


@dataclass(frozen=True)
class RawDocument:
    file: str
    line: int
    data: Any
    located: Located


_DOCUMENT_START = re.compile(r"---(\s|$)")
#: problems that PyYAML finds only where the text ends: the start of the construct
#: (its context mark) is where the author must look
_RUNAWAY = ("'<stream end>'", "'<document start>'", "'<document end>'", "end of stream")


#: more flow openers ('[', '{') than this and the C parser is not trusted with the
#: nesting (its composer recurses on the C stack); the pure-Python path bounds it
_FAST_PATH_MAX_FLOW = 1000


def _compose_fast(text: str, file: str) -> list[RawDocument | Problem] | None:
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


def _document(node: yaml.Node, file: str) -> RawDocument | Problem:
    """One composed document as plain values with lines, or the problem converting it."""
    located = Located()
    try:
        data = _convert(node, located)
    except _DocumentError as exc:
        return Problem(file, exc.line, _node_name(node), exc.message)
    return RawDocument(file, node.start_mark.line + 1, data, located)


def compose(text: str, file: str) -> Iterator[RawDocument | Problem]:
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
