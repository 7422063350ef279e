"""The dependency chains, laid out for a server-side SVG: pure, no I/O.

A chain is a connected group of manifests linked by ``dependsOn``. :func:`layout` places
one: a manifest's column is the length of the longest ``dependsOn`` path before it (the
ones that depend on nothing on the left), its row within the column follows the rows of
what it depends on (fewer crossings); every edge goes from a dependency to its dependent,
left to right. The template draws the boxes, the state in words and colour, and a link to
each manifest's page.

:func:`overview_chains` picks the chains of the overview (those with something to look at
first, bounded so 10,000 manifests stay a quick page); :func:`chain_of` is the chain of one
manifest (what it depends on and what depends on it, transitively, bounded).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "MAX_CHAIN_NODES",
    "MAX_OVERVIEW_NODES",
    "Edge",
    "Layout",
    "Node",
    "chain_of",
    "layout",
    "overview_chains",
]

NODE_W, NODE_H, GAP_X, GAP_Y, PAD = 200, 46, 56, 14, 6
#: the longest name drawn in full in a box (longer ones end in an ellipsis)
LABEL_CHARS = 26
#: boxes of one drawn chain at most (a larger chain is left to the manifests' pages)
MAX_CHAIN_NODES = 80
#: boxes drawn on the overview at most, over all chains
MAX_OVERVIEW_NODES = 240
#: states that put a chain first on the overview
ATTENTION = frozenset({"failed", "stalled", "lost", "invalid"})

Deps = Mapping[str, Sequence[str]]


@dataclass(frozen=True)
class Node:
    name: str
    state: str
    label: str
    x: int
    y: int
    #: the manifest the page is about
    current: bool = False

    @property
    def href(self) -> str:
        return f"/manifests/{self.name}"


@dataclass(frozen=True)
class Edge:
    """From a dependency to the manifest that depends on it."""

    source: str
    target: str
    #: the SVG path
    d: str
    #: whether the dependency is satisfied (in sync)
    met: bool


@dataclass(frozen=True)
class Layout:
    """One chain: its boxes and arrows, its size, and its caption."""

    key: str
    width: int
    height: int
    nodes: tuple[Node, ...]
    edges: tuple[Edge, ...]
    caption: str

    node_w: int = NODE_W
    node_h: int = NODE_H


def _label(name: str) -> str:
    return name if len(name) <= LABEL_CHARS else name[: LABEL_CHARS - 1] + "…"


def _columns(names: Collection[str], deps: Deps) -> dict[str, int]:
    """Each name's column: the longest dependsOn path within ``names`` before it (a name
    caught in a cycle, which validation refuses, goes after the others)."""
    inside = {n: [d for d in deps.get(n, ()) if d in names and d != n] for n in names}
    waiting = {n: len(ds) for n, ds in inside.items()}
    after: dict[str, list[str]] = {n: [] for n in names}
    for n, ds in inside.items():
        for d in ds:
            after[d].append(n)
    column = {n: 0 for n in names}
    queue = deque(sorted(n for n, k in waiting.items() if k == 0))
    placed: set[str] = set()
    while queue:
        n = queue.popleft()
        placed.add(n)
        for m in after[n]:
            column[m] = max(column[m], column[n] + 1)
            waiting[m] -= 1
            if waiting[m] == 0:
                queue.append(m)
    last = max((column[n] for n in placed), default=-1)
    for n in sorted(set(names) - placed):
        column[n] = last + 1
    return column


def layout(names: Collection[str], deps: Deps, states: Mapping[str, str], *,
           current: str | None = None, key: str = "chain") -> Layout:
    """Boxes and arrows of the manifests ``names`` (their ``deps`` within ``names``)."""
    column = _columns(names, deps)
    by_column: dict[int, list[str]] = {}
    for n in sorted(names):
        by_column.setdefault(column[n], []).append(n)
    row: dict[str, float] = {}
    for c in sorted(by_column):
        def weight(n: str) -> tuple[float, str]:
            placed = [row[d] for d in deps.get(n, ()) if d in row]
            return (sum(placed) / len(placed) if placed else float("inf"), n)

        ordered = sorted(by_column[c], key=weight) if c else by_column[c]
        for i, n in enumerate(ordered):
            row[n] = float(i)
    nodes = {n: Node(n, states.get(n, "unknown"), _label(n), PAD + column[n] * (NODE_W + GAP_X),
                     PAD + int(row[n]) * (NODE_H + GAP_Y), current=n == current)
             for n in names}
    edges = tuple(_edge(nodes[d], nodes[n], states) for n in sorted(names)
                  for d in deps.get(n, ()) if d in nodes and d != n)
    cols = max(column.values(), default=0) + 1
    rows = max((len(v) for v in by_column.values()), default=1)
    roots = [n for n in sorted(names) if column[n] == 0]
    caption = "chain from " + ", ".join(roots[:3]) + (" and more" if len(roots) > 3 else "")
    return Layout(key=key, width=2 * PAD + cols * NODE_W + (cols - 1) * GAP_X,
                  height=2 * PAD + rows * NODE_H + (rows - 1) * GAP_Y,
                  nodes=tuple(nodes[n] for n in sorted(nodes)), edges=edges,
                  caption=caption)


def _edge(source: Node, target: Node, states: Mapping[str, str]) -> Edge:
    x1, y1 = source.x + NODE_W, source.y + NODE_H // 2
    x2, y2 = target.x - 2, target.y + NODE_H // 2
    bend = max(20, (x2 - x1) // 2)
    d = f"M{x1},{y1} C{x1 + bend},{y1} {x2 - bend},{y2} {x2},{y2}"
    return Edge(source.name, target.name, d, met=states.get(source.name) == "in_sync")


def _linked(deps: Deps) -> dict[str, set[str]]:
    """Every manifest in a dependency, with its neighbours either way."""
    links: dict[str, set[str]] = {}
    for n, ds in deps.items():
        for d in ds:
            if d != n:
                links.setdefault(n, set()).add(d)
                links.setdefault(d, set()).add(n)
    return links


def _groups(links: Mapping[str, set[str]]) -> list[list[str]]:
    seen: set[str] = set()
    groups = []
    for start in sorted(links):
        if start in seen:
            continue
        group, queue = [], deque([start])
        seen.add(start)
        while queue:
            n = queue.popleft()
            group.append(n)
            for m in links[n] - seen:
                seen.add(m)
                queue.append(m)
        groups.append(sorted(group))
    return groups


def overview_chains(deps: Deps, states: Mapping[str, str], *,
                    shown: Collection[str] | None = None) -> tuple[tuple[Layout, ...], int]:
    """The chains to draw on the overview and how many were left out: those with a
    manifest of ``shown`` (the filtered rows; None: all), failing ones first, at most
    :data:`MAX_CHAIN_NODES` boxes each and :data:`MAX_OVERVIEW_NODES` in all."""
    groups = [g for g in _groups(_linked(deps))
              if shown is None or any(n in shown for n in g)]
    groups.sort(key=lambda g: (not any(states.get(n) in ATTENTION for n in g), g[0]))
    drawn: list[Layout] = []
    budget = MAX_OVERVIEW_NODES
    for group in groups:
        if len(group) > MAX_CHAIN_NODES or len(group) > budget:
            continue
        budget -= len(group)
        drawn.append(layout(group, deps, states, key=f"chain-{len(drawn) + 1}"))
    return tuple(drawn), len(groups) - len(drawn)


def chain_of(name: str, deps: Deps, states: Mapping[str, str]) -> Layout | None:
    """The chain through ``name``: what it depends on and what depends on it,
    transitively, nearest first, at most :data:`MAX_CHAIN_NODES` boxes (None: it is in no
    dependency)."""
    dependents: dict[str, list[str]] = {}
    for n, ds in deps.items():
        for d in ds:
            dependents.setdefault(d, []).append(n)
    picked = {name}
    for links in (deps, dependents):
        queue = deque([name])
        while queue and len(picked) < MAX_CHAIN_NODES:
            for m in sorted(links.get(queue.popleft(), ())):
                if m not in picked and len(picked) < MAX_CHAIN_NODES:
                    picked.add(m)
                    queue.append(m)
    if len(picked) == 1:
        return None
    return layout(picked, deps, states, current=name, key="chain-1")
