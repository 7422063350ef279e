"""The baseline: a script of our own with GoodData's SDK, against the same emulator.

Each command is run with ``gooddata-api-client`` (``AILakeApi.run_ai_lake_service_command``,
an operation id of its own) and waited for with the SDK's helper
(``GoodDataSdk.catalog_ai_lake.wait_for_operation``: a GET, then one every 2 s) when
``gooddata-sdk`` is installed, else with the same loop written here. Sequentially, and with
a pool of 16 threads. Calls are counted by the emulator. The sequential run is linear in
the number of commands, so it may run on fewer of them (``--sequential``) and be scaled.

    python bench/bench_sdk.py [--manifests 200] [--duration 200ms] [--sequential 30]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from benchlib import (
    COMMANDS,
    ROUTE_OPERATION,
    ROUTE_RUN,
    SERVICE_IDS,
    EmulatorProcess,
    emulator_services,
)

from reconciler.model.durations import parse_duration

POLL_S = 2.0


class Runner:
    """One command at a time: run it, wait for its end."""

    def __init__(self, url: str) -> None:
        import gooddata_api_client
        from gooddata_api_client.api.ai_lake_api import AILakeApi

        self.helper = "own poll loop (every 2 s)"
        self.sdk: Any = None
        try:
            from gooddata_sdk import GoodDataSdk

            self.sdk = GoodDataSdk.create(url, "bench-token")
            self.api = AILakeApi(self.sdk.client._api_client)
            self.helper = "gooddata-sdk wait_for_operation (poll 2 s)"
        except ImportError:
            configuration = gooddata_api_client.Configuration(host=url)
            configuration.connection_pool_maxsize = 32
            self.api = AILakeApi(gooddata_api_client.ApiClient(configuration))

    def run(self, i: int) -> str:
        from gooddata_api_client.model.run_service_command_request import (
            RunServiceCommandRequest,
        )

        op = str(uuid.uuid4())
        request = RunServiceCommandRequest(payload={"index": i}, context={"by": "sdk-bench"})
        self.api.run_ai_lake_service_command(SERVICE_IDS[i % len(SERVICE_IDS)],
                                             COMMANDS[i % len(COMMANDS)], request,
                                             operation_id=op)
        if self.sdk is not None:
            status: str = self.sdk.catalog_ai_lake.wait_for_operation(op, timeout_s=600,
                                                                      poll_s=POLL_S).status
            return status
        while True:
            status = self.api.get_ai_lake_operation(op).to_dict()["status"]
            if status != "pending":
                return status
            time.sleep(POLL_S)


def timed(runner: Runner, count: int, threads: int) -> float:
    started = time.perf_counter()
    if threads == 1:
        statuses = [runner.run(i) for i in range(count)]
    else:
        with ThreadPoolExecutor(threads) as pool:
            statuses = list(pool.map(runner.run, range(count)))
    assert set(statuses) == {"succeeded"}, set(statuses)
    return time.perf_counter() - started


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifests", type=int, default=200)
    parser.add_argument("--duration", default="200ms")
    parser.add_argument("--threads", type=int, default=16)
    parser.add_argument("--sequential", type=int, default=30,
                        help="commands run one by one (the time is scaled to --manifests)")
    args = parser.parse_args()
    import logging

    logging.getLogger("urllib3").setLevel(logging.ERROR)
    out: dict[str, Any] = {"scenario": "sdk", "manifests": args.manifests,
                           "duration": parse_duration(args.duration).total_seconds()}
    with EmulatorProcess(emulator_services(default=args.duration)) as emu:
        runner = Runner(emu.url)
        out["helper"] = runner.helper
        emu.reset_requests()
        out["pool_wall"] = timed(runner, args.manifests, args.threads)
        routes = emu.requests()["routes"]
        out["pool_calls_per_op"] = sum(routes.values()) / args.manifests
        out["pool_gets_per_op"] = routes.get(ROUTE_OPERATION, 0) / args.manifests
        assert routes.get(ROUTE_RUN, 0) == args.manifests
        emu.reset_requests()
        seq = min(args.sequential, args.manifests)
        wall = timed(runner, seq, 1)
        out["sequential_commands"] = seq
        out["sequential_wall_measured"] = wall
        out["sequential_wall"] = wall * args.manifests / seq
        routes = emu.requests()["routes"]
        out["sequential_calls_per_op"] = sum(routes.values()) / seq
    out["threads"] = args.threads
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
