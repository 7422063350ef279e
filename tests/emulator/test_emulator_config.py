"""Tests of the emulator's config file: strict validation, Go durations, the bundled default.

A typo in an emulator config must fail loudly with the file and the field, not be ignored,
and the bundled default must serve exactly the services the sample manifests name.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from reconciler.ailake.emulator import EmulatorConfig, default_config_path, load_config
from reconciler.ailake.emulator.config import format_duration, parse_duration
from reconciler.errors import ConfigError


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0.0),
        ("0s", 0.0),
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1.5s", 1.5),
        ("1m", 60.0),
        ("1h30m", 5400.0),
        ("1m30s250ms", 90.25),
        (".5s", 0.5),
        (3, 3.0),
        (0.25, 0.25),
    ],
)
def test_parse_duration_accepts_go_syntax(text: object, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


def test_parse_duration_takes_every_manifest_unit_and_surrounding_blanks() -> None:
    # The emulator parses with the manifests' parser, so their units (ns, us, µs) work too.
    assert parse_duration("1500us") == pytest.approx(0.0015)
    assert parse_duration("1ms500µs") == pytest.approx(0.0015)
    assert parse_duration(" 2s\n") == 2.0
    assert parse_duration("5.s") == 5.0


@pytest.mark.parametrize(
    "text",
    ["", " ", "2", "2 s", "s", ".s", "1..5s", "1d", "-1s", "never", "1s-", True, None, -1, [1]],
)
def test_parse_duration_rejects_malformed_values(text: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (0.25, "250ms"), (2, "2s"), (1.5, "1.5s")]
)
def test_format_duration_round_trips(seconds: float, text: str) -> None:
    assert format_duration(seconds) == text
    assert parse_duration(text) == pytest.approx(seconds)


def test_full_config_example_from_design_is_accepted() -> None:
    config = EmulatorConfig.from_dict(
        {
            "token": "s3cret",
            "dedup": True,
            "seed": 3,
            "services": [
                {
                    "id": "6f1c2a4e-0000-4000-8000-000000000001",
                    "name": "sales-vectors",
                    "status": {"ready": True},
                    "commands": {
                        "reindex": {"duration": "2s"},
                        "backfill": {"duration": "5s", "fail": True},
                        "flaky": {"duration": "1s", "failTimes": 2},
                        "hang": {"duration": "never"},
                    },
                }
            ],
            "faults": {
                "errorRate": 0.0,
                "throttleRate": 0.0,
                "retryAfter": 1,
                "dropRate": 0.0,
                "latency": "0s",
            },
        },
        source="x.yaml",
    )
    commands = config.services[0].commands
    assert commands["hang"].duration is None
    assert commands["backfill"].fail and commands["flaky"].fail_times == 2
    assert config.token == "s3cret" and config.seed == 3


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"tokn": "x"}, "tokn"),
        ({"services": [{"id": "a", "name": "n", "colour": 1}]}, "services[0].colour"),
        (
            {"services": [{"id": "a", "name": "n", "commands": {"c": {"duraton": "1s"}}}]},
            "services[0].commands.c.duraton",
        ),
        ({"faults": {"errorrate": 0.1}}, "faults.errorrate"),
    ],
)
def test_unknown_keys_are_errors_naming_file_and_key(data: object, field: str) -> None:
    with pytest.raises(ConfigError, match=r"emu\.yaml: ") as info:
        EmulatorConfig.from_dict(data, source="emu.yaml")
    assert field in str(info.value) and "unknown key" in str(info.value)


def test_malformed_duration_is_an_error_naming_the_field() -> None:
    data = {"services": [{"id": "a", "name": "n", "commands": {"c": {"duration": "2 secs"}}}]}
    with pytest.raises(ConfigError, match=r"emu\.yaml: services\[0\]\.commands\.c\.duration"):
        EmulatorConfig.from_dict(data, source="emu.yaml")


@pytest.mark.parametrize("key", ["errorRate", "throttleRate", "dropRate"])
@pytest.mark.parametrize("value", [-0.1, 1.5, "half", True])
def test_rates_outside_zero_to_one_are_errors(key: str, value: object) -> None:
    with pytest.raises(ConfigError, match=rf"emu\.yaml: faults\.{key}"):
        EmulatorConfig.from_dict({"faults": {key: value}}, source="emu.yaml")


@pytest.mark.parametrize(
    ("data", "field"),
    [
        ({"dedup": "yes"}, "dedup"),
        ({"seed": "x"}, "seed"),
        ({"token": 5}, "token"),
        ({"services": {"a": 1}}, "services"),
        ({"services": [{"name": "n"}]}, "services[0].id"),
        ({"services": [{"id": "a"}]}, "services[0].name"),
        ({"services": [{"id": "a", "name": "n", "status": [1]}]}, "services[0].status"),
        (
            {"services": [{"id": "a", "name": "n"}, {"id": "a", "name": "m"}]},
            "services[1].id",
        ),
        (
            {"services": [{"id": "a", "name": "n"}, {"id": "b", "name": "n"}]},
            "services[1].name",
        ),
        (
            {"services": [{"id": "a", "name": "n", "commands": {"c": {"failTimes": -1}}}]},
            "services[0].commands.c.failTimes",
        ),
        (
            {
                "services": [
                    {"id": "a", "name": "n", "commands": {"c": {"fail": True, "failTimes": 1}}}
                ]
            },
            "services[0].commands.c",
        ),
        ({"faults": {"retryAfter": 1.5}}, "faults.retryAfter"),
        ({"faults": {"latency": "fast"}}, "faults.latency"),
        ([1, 2], "top level"),
    ],
)
def test_invalid_values_are_errors_naming_the_field(data: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        EmulatorConfig.from_dict(data, source="emu.yaml")
    assert str(info.value).startswith("emu.yaml: ")
    assert field in str(info.value)


def test_load_config_reports_invalid_yaml_with_the_file(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("services: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad\.yaml: not valid YAML"):
        load_config(path)


def test_load_config_reports_a_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")


def test_load_config_reads_yaml_with_unquoted_durations(tmp_path: Path) -> None:
    path = tmp_path / "emu.yaml"
    path.write_text(
        "services:\n"
        "  - id: s1\n"
        "    name: one\n"
        "    commands:\n"
        "      go: {duration: 1m30s}\n"
        "      hang: {duration: never}\n"
        "faults: {latency: 250ms}\n",
        encoding="utf-8",
    )
    config = load_config(path)
    assert config.services[0].commands["go"].duration == 90
    assert config.faults.latency == pytest.approx(0.25)
    assert config.source == str(path)


def test_default_config_is_shipped_and_serves_the_sample_services() -> None:
    assert default_config_path().name == "default.yaml"
    assert default_config_path().is_file()
    config = load_config(None)
    expected = {
        "6f1c2a4e-0000-4000-8000-000000000001": (
            "sales-vectors",
            {"reindex": 2, "backfill": 3, "compact": 1},
        ),
        "6f1c2a4e-0000-4000-8000-000000000002": (
            "sales-db",
            {"provision": 2, "migrate": 2, "analyze": 1},
        ),
        "6f1c2a4e-0000-4000-8000-000000000003": (
            "support-tickets",
            {"embed": 2, "refresh": 1, "export": 1, "purge": 1},
        ),
    }
    assert {
        s.id: (s.name, {c: cmd.duration for c, cmd in s.commands.items()}) for s in config.services
    } == expected
    tickets = config.service("6f1c2a4e-0000-4000-8000-000000000003")
    assert tickets is not None
    assert tickets.commands["export"].fail_times == 2
    assert tickets.commands["purge"].fail
    assert config.token is None and config.dedup
    assert config.faults.error_rate == config.faults.drop_rate == 0
    assert all(s.status and s.status.get("ready") is True for s in config.services)
