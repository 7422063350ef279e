"""The sample manifests the demo runs: valid, served by the bundled emulator config, and
shipped unchanged inside the package (for ``reconciler demo`` outside a checkout)."""

from __future__ import annotations

import filecmp
from pathlib import Path

from reconciler.ailake.emulator import load_config
from reconciler.cli.demo import bundled_manifests
from reconciler.model.manifest import Interval, Once, Schedule
from reconciler.source.loader import load_manifests

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "manifests"


def test_sample_manifests_are_valid() -> None:
    result = load_manifests(SAMPLES)
    assert result.problems == ()
    assert 6 <= len(result.commands) <= 10


def test_samples_cover_every_policy_a_dependency_chain_retries_and_suspend() -> None:
    commands = load_manifests(SAMPLES).commands
    kinds = {type(c.policy) for c in commands}
    assert {Once, Interval, Schedule} <= kinds
    by_name = {c.name: c for c in commands}
    chains = [c for c in commands if any(by_name[d].depends_on for d in c.depends_on)]
    assert chains, "expected a dependsOn chain at least two deep"
    assert any(c.suspend for c in commands)
    assert any(c.retry.limit > 0 and c.retry.backoff.total_seconds() <= 5 for c in commands)


def test_every_sample_service_and_command_exists_in_the_bundled_emulator_config() -> None:
    config = load_config(None)
    by_id = {s.id: s for s in config.services}
    by_name = {s.name: s for s in config.services}
    for command in load_manifests(SAMPLES).commands:
        ref = command.service
        service = by_id.get(ref.id or "") if ref.id else by_name.get(ref.name or "")
        assert service is not None, f"{command.name}: no service {ref.label!r} in the config"
        assert command.command in service.commands, (
            f"{command.name}: service {service.name} has no command {command.command!r}"
        )


def test_the_bundled_copy_equals_the_repository_samples() -> None:
    bundled = bundled_manifests()
    repo_files = sorted(p.relative_to(SAMPLES) for p in SAMPLES.rglob("*") if p.is_file())
    bundled_files = sorted(p.relative_to(bundled) for p in bundled.rglob("*") if p.is_file())
    assert repo_files == bundled_files
    for rel in repo_files:
        assert filecmp.cmp(SAMPLES / rel, bundled / rel, shallow=False), rel


def test_the_packaged_schema_equals_the_published_one() -> None:
    published = ROOT / "schemas" / "servicecommand.schema.json"
    packaged = ROOT / "reconciler" / "data" / "servicecommand.schema.json"
    assert published.read_bytes() == packaged.read_bytes()


def test_readme_quickstart_has_exactly_the_two_commands() -> None:
    readme = (ROOT / "README.md").read_text()
    quickstart = readme.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    block = quickstart.split("```sh", 1)[1].split("```", 1)[0]
    commands = [line for line in block.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 2
    assert "reconciler demo" in commands[0]
    assert commands[1] == "bash .ci/run"


def test_readme_cli_reference_lists_every_command_and_run_flag() -> None:
    import argparse

    from reconciler.cli.main import build_parser

    readme = (ROOT / "README.md").read_text()
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, command in sub.choices.items():
        assert f"`reconciler {name}" in readme, f"README lacks the {name} command"
        if name == "run":
            for action in command._actions:
                for flag in action.option_strings:
                    if flag.startswith("--") and flag != "--help":
                        assert flag in readme, f"README lacks run's {flag}"
