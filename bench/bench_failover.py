"""Leader failover on a PostgreSQL store: kill -9 of the leader -> the first run POST of the
new leader, over N kills.

Two (``--replicas``) long-running daemons (``reconciler run``, each a process of its own)
share a throwaway PostgreSQL server (``tests/pg_support.py``: initdb + pg_ctl on loopback)
and elect their leader by its advisory lock. They converge ``--manifests`` commands of
``--duration`` (2 s) each against the emulator (``dedup: false``; in this process, where it
timestamps every request it receives), 16 in flight, so a backlog of commands waits for
every slot a finished one frees: the leader always has something to send, and the figure
is the failover, not the absence of work. The store's epoch is backdated (adopted long
ago: a running installation), so no adoption pass delays the first leader.

Each round: wait until the current leader is sending, wait a random 0.3 to 1.5 s, SIGKILL it
and start a fresh replica (the pod's restart). From the moment the killed process was
reaped: (a) the successor's ``leader_acquired`` (its log), (b) its first request to the API
(a run POST or a poll), (c) its first run POST (it first follows the operations in flight,
and POSTs as soon as one of them is seen finished: (c) - (b) is the command's remaining
time and the poll schedule, not the election). Afterwards every operation id must have
executed at most once (asserted). Prints a table, then one JSON line (for ``run_all.py``).

    python bench/bench_failover.py [--kills 10] [--replicas 2] [--manifests 600]
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

from benchlib import COMMANDS, backdated_epoch, emulator_services, manifest_docs, write_manifests

from reconciler.ailake.emulator import EmulatorConfig, start_background
from reconciler.store import PostgresStore

TESTS = Path(__file__).resolve().parent.parent / "tests"
sys.path[:0] = [str(TESTS), str(TESTS / "chaos")]

from chaos_support import Replica, RequestLog, replica_argv, wait_for  # noqa: E402
from pg_support import PASSWORD, PgServer, skip_reason  # noqa: E402

POST = ("POST /api/v1/ailake/services/",)


def summary(values: list[float]) -> tuple[float, float, float]:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return statistics.median(values), p90, max(values)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=10)
    parser.add_argument("--replicas", type=int, default=2)
    parser.add_argument("--manifests", type=int, default=600)
    parser.add_argument("--duration", default="2s", help="each command's duration")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    reason = skip_reason()
    if reason is not None:
        print(json.dumps({"error": f"no PostgreSQL: {reason}"}))
        return 0
    rng = random.Random(args.seed)
    server = PgServer()
    root = Path(tempfile.mkdtemp(prefix="bench-failover-"))
    config = EmulatorConfig.from_dict(
        {"dedup": False, "services": emulator_services(default=args.duration)},
        source="bench-failover.yaml")
    replicas: list[Replica] = []
    everyone: list[Replica] = []
    rounds: list[dict[str, float]] = []
    emu = start_background(config)
    requests = RequestLog(emu.state)
    try:
        database = server.create_database()
        dsn = server.url(database)
        with PostgresStore(dsn) as store:  # migrated, and steady: its epoch adopted long ago
            backdated_epoch(store)
        folder = write_manifests(root, manifest_docs(args.manifests, seed=args.seed,
                                                     policies=False, chains=False,
                                                     commands=COMMANDS))
        flags = ("--rate-limit", "0")

        def start() -> None:
            name = f"replica-{len(everyone):02d}"
            replica = Replica(name, replica_argv(folder, emu.url, flags),
                              {"RECONCILER_STATE": dsn, "POD_NAME": name},
                              root / f"{name}.log")
            replicas.append(replica)
            everyone.append(replica)

        def leader() -> Replica | None:
            return next((r for r in replicas if r.leading()), None)

        def first(after: float, kinds: tuple[str, ...] | None = None) -> float | None:
            found = requests.first_after(after, **({"kinds": kinds} if kinds else {}))
            return found[0] if found else None

        for _ in range(args.replicas):
            start()
        while len(rounds) < args.kills:
            wait_for(lambda: leader() is not None, 60, "a leader")
            current = leader()
            assert current is not None
            acquired = current.acquired_at()
            assert acquired is not None
            wait_for(lambda at=acquired: first(at, POST) is not None, 60,
                     "the leader to send")
            time.sleep(rng.uniform(0.3, 1.5))
            if len(emu.state.list_executions()) >= args.manifests - 40:
                print("the backlog ran out: raise --manifests", file=sys.stderr)
                break
            killed = current.kill()
            replicas.remove(current)
            start()
            wait_for(lambda: leader() is not None, 60, "a new leader")
            successor = leader()
            assert successor is not None
            took = successor.acquired_at()
            assert took is not None
            wait_for(lambda at=took: first(at, POST) is not None, 60,
                     "the new leader's first POST")
            request, post = first(took), first(took, POST)
            assert request is not None and post is not None
            rounds.append({"elected": took - killed, "first_request": request - killed,
                           "first_post": post - killed,
                           "fresh_won": float(successor is replicas[-1])})
        executions = emu.state.list_executions()
        for replica in replicas:
            replica.stop()
    finally:
        for replica in replicas:
            if replica.alive():
                replica.kill()
        emu.stop()
        server.close()
    per_id = Counter(e["operationId"] for e in executions)
    doubles = {op: n for op, n in per_id.items() if n > 1}
    assert not doubles, f"operations executed twice: {doubles}"
    leaks = [str(r.log) for r in everyone if PASSWORD in r.log.read_text(errors="replace")]
    assert not leaks, f"the database password is in {leaks}"
    crashed = [str(r.log) for r in everyone if r.crashed()]
    assert not crashed, f"replicas crashed: {crashed}"

    figures = {key: summary([r[key] for r in rounds])
               for key in ("elected", "first_request", "first_post")}
    won = sum(r["fresh_won"] for r in rounds)
    print(f"PostgreSQL advisory-lock failover, {args.replicas} replicas, {len(rounds)} kills "
          f"of the leader (kill -9; a fresh replica started in its place), commands of "
          f"{args.duration}, {len(executions)} executions, 0 double")
    print(f"{'from the kill to the new leader':<44}{'median':>9}{'p90':>9}{'max':>9}")
    for key, label in (("elected", "leader_acquired"),
                       ("first_request", "first API request (POST or poll)"),
                       ("first_post", "first run POST")):
        p50, p90, top = figures[key]
        print(f"{label:<44}{p50:>8.2f}s{p90:>8.2f}s{top:>8.2f}s")
    print(f"the freshly started replica won the lock in {won:.0f} of {len(rounds)} rounds")
    print(json.dumps({"kills": len(rounds), "replicas": args.replicas,
                      "duration": args.duration, "executions": len(executions),
                      "double_runs": 0,
                      **{f"{key}_{stat}": value for key, (p50, p90, top) in figures.items()
                         for stat, value in (("p50", p50), ("p90", p90), ("max", top))},
                      "fresh_won": won, "rounds": rounds}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
