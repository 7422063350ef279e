"""A local emulator of the GoodData Cloud AI Lake "Services & Operations" API.

It serves the four paths of ``schemas/ailake-openapi.json`` from a YAML file of services and
commands, follows the policies of ``spec/NOTES.md`` (deduplication by ``operation-id``,
problem+json errors), injects faults on demand (503, 429, dropped connections, latency),
turns hostile on demand (adversary modes: operations invisible after the 202 or forgotten,
requests held past the client's timeout, wrong or substituted operation ids, statuses outside
the spec, the ``Authorization`` header echoed into errors) and exposes ``/_emulator/`` admin
endpoints (operations, executions, request counts) that let tests prove each command ran
exactly once.
The demo, the tests and the benchmarks run against it; users run it before touching their
organisation. See ``docs/emulator.md``.
"""

from __future__ import annotations

from reconciler.ailake.emulator.app import create_app
from reconciler.ailake.emulator.config import EmulatorConfig, default_config_path, load_config
from reconciler.ailake.emulator.server import RunningEmulator, start_background

__all__ = [
    "EmulatorConfig",
    "RunningEmulator",
    "create_app",
    "default_config_path",
    "load_config",
    "start_background",
]
