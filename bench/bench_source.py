"""Built-in git follower: the cost of one fetch-and-switch of a 100-manifest repository.

A bare repository in a temporary folder gets 20 commits (each changes one manifest of 100);
after each, :meth:`GitSource.fetch` runs (``git fetch --depth=1``, ``read-tree`` +
``checkout-index`` into ``trees/<sha>``, the ``current`` symlink switch, pruning), then a
load of the new tree. Reported: p50/p99/max of fetch-and-switch and of load, over ``file://``
and over ``git daemon`` on loopback; plus the first (cold) fetch.

    .venv/bin/python bench/bench_source.py [--commits 20] [--manifests 100]
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import structlog
from git_support import Remote, git_daemon, manifest

from reconciler.source.git import GitSettings, GitSource


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def run(url: str, remote: Remote, cache: Path, commits: int, count: int) -> dict[str, float]:
    source = GitSource(GitSettings(url=url, path="manifests", cache_dir=cache, timeout=60))
    started = time.perf_counter()
    source.fetch()
    cold = time.perf_counter() - started
    assert len(source.load().commands) == count
    fetches: list[float] = []
    loads: list[float] = []
    for i in range(commits):
        remote.commit({f"manifests/team-{i % count % 5}/m{i % count}.yaml":
                       manifest(f"m{i % count}", extra=f"  rerun: '{i + 1}'\n")})
        started = time.perf_counter()
        moved = source.fetch()
        fetches.append(time.perf_counter() - started)
        assert moved
        started = time.perf_counter()
        result = source.load()
        loads.append(time.perf_counter() - started)
        assert len(result.commands) == count and result.revision == remote.head()
    return {
        "cold": cold,
        "p50": statistics.median(fetches), "p99": percentile(fetches, 0.99),
        "max": max(fetches),
        "load_p50": statistics.median(loads), "load_p99": percentile(loads, 0.99),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commits", type=int, default=20)
    parser.add_argument("--manifests", type=int, default=100)
    args = parser.parse_args()
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.WARNING))
    with tempfile.TemporaryDirectory() as tmp:
        base = Path(tmp)
        remote = Remote(base / "srv")
        remote.commit({f"manifests/team-{i % 5}/m{i}.yaml": manifest(f"m{i}")
                       for i in range(args.manifests)}, "initial")
        rows = [("file://", run(remote.url, remote, base / "c-file", args.commits,
                                args.manifests))]
        with git_daemon(remote.base) as daemon:
            rows.append(("git daemon", run(daemon.url(), remote, base / "c-daemon",
                                           args.commits, args.manifests)))
    print(f"fetch-and-switch of a {args.manifests}-manifest repo, {args.commits} commits "
          "(milliseconds)")
    print(f"{'transport':<12}{'cold':>8}{'p50':>8}{'p99':>8}{'max':>8}{'load p50':>10}"
          f"{'load p99':>10}")
    for name, r in rows:
        print(f"{name:<12}{r['cold'] * 1000:>8.1f}{r['p50'] * 1000:>8.1f}"
              f"{r['p99'] * 1000:>8.1f}{r['max'] * 1000:>8.1f}{r['load_p50'] * 1000:>10.1f}"
              f"{r['load_p99'] * 1000:>10.1f}")


if __name__ == "__main__":
    main()
