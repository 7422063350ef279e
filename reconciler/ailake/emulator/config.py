"""The emulator's configuration: services, commands, faults, and the YAML file they come from.

The emulator is only as useful as its configuration is trustworthy, so the file is checked
strictly: an unknown key, a malformed duration or a rate outside 0..1 is a ``ConfigError``
that names the file and the field (``emulator.yaml: services[0].commands.reindex.duration:
...``), never a silently ignored typo. Durations use Go's syntax (``500ms``, ``2s``,
``1m30s``, ``1.5h``), which is what the DESIGN document and the manifests use, parsed by the
manifests' own parser (:mod:`reconciler.model.durations`); this module only adds bare numbers
(seconds) and leaves ``never`` to the fields that allow it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from reconciler.errors import ConfigError
from reconciler.model.durations import duration_seconds

__all__ = [
    "CommandConfig",
    "EmulatorConfig",
    "FaultConfig",
    "ServiceConfig",
    "default_config_path",
    "format_duration",
    "load_config",
    "parse_duration",
]

NEVER = "never"


def parse_duration(value: object) -> float:
    """Parse a Go-style duration (``1h30m``, ``1.5s``, ``.5s``, ``250ms``, ``0``) into seconds.

    A bare number (int or float, not bool) is taken as seconds; a string is stripped and
    parsed by :func:`reconciler.model.durations.duration_seconds` (with Go's ``.5s`` and
    ``5.s`` spellings). Raises ``ValueError`` for anything else, including negative values
    and the word ``never`` (callers that allow ``never`` check for it first).
    """
    if isinstance(value, bool):
        raise ValueError(f"invalid duration {value!r}")
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str):
        try:
            seconds = duration_seconds(value.strip(), go_numbers=True)
        except ValueError:
            raise ValueError(f"invalid duration {value!r}") from None
    else:
        raise ValueError(f"invalid duration {value!r}")
    if not math.isfinite(seconds) or seconds < 0:
        raise ValueError(f"invalid duration {value!r}")
    return seconds


def format_duration(seconds: float) -> str:
    """Render seconds back as a short Go-style duration (``0s``, ``250ms``, ``2s``, ``1.5s``)."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        millis = seconds * 1000
        return f"{millis:g}ms"
    return f"{seconds:g}s"


@dataclass(frozen=True)
class CommandConfig:
    """How one command behaves: how long it stays pending, and whether it fails.

    ``duration`` is in seconds, ``None`` meaning ``never`` (pending forever). ``fail``
    makes every execution fail; ``fail_times`` makes the first N executions fail.
    """

    name: str
    duration: float | None = 0.0
    fail: bool = False
    fail_times: int = 0


@dataclass(frozen=True)
class ServiceConfig:
    """One AI Lake service: its path id (== ``attributes.serviceId``), name, status, commands."""

    id: str
    name: str
    status: Mapping[str, Any] | None = None
    commands: Mapping[str, CommandConfig] = field(default_factory=dict)


SPEC_STATUSES = ("pending", "succeeded", "failed")


@dataclass(frozen=True)
class FaultConfig:
    """Fault injection on the AI Lake paths; rates are fractions of requests, 0..1.

    The first five are the classic faults (503, 429, drops, latency). The rest are the
    adversary modes, all off by default: a server that breaks the API's promises (operations
    invisible after the 202 or forgotten later, requests held past the client's timeout, an
    ``operation-id`` answer that is not the one sent, wrong ids or unknown statuses in GET
    answers, the ``Authorization`` header echoed into error bodies). A duration of ``0``
    and ``false``/``null`` mean off; each ``...Rate`` is the fraction of the affected
    requests a mode hits once it is on (default 1: all of them).
    """

    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after: int = 1
    drop_rate: float = 0.0
    latency: float = 0.0
    not_found_after_accept: float = 0.0
    not_found_after_accept_rate: float = 1.0
    hold_before_execute: float = 0.0
    hold_before_execute_rate: float = 1.0
    forget_after: float = 0.0
    same_operation_id: bool = False
    same_operation_id_rate: float = 1.0
    fresh_operation_id: bool = False
    fresh_operation_id_rate: float = 1.0
    wrong_id_in_get: bool = False
    wrong_id_in_get_rate: float = 1.0
    unknown_status: str | None = None
    unknown_status_rate: float = 1.0
    echo_authorization: bool = False

    def to_full_dict(self) -> dict[str, Any]:
        """Every fault key, classic and adversary, with the config-file spelling."""
        return {
            "errorRate": self.error_rate,
            "throttleRate": self.throttle_rate,
            "retryAfter": self.retry_after,
            "dropRate": self.drop_rate,
            "latency": format_duration(self.latency),
            "notFoundAfterAccept": format_duration(self.not_found_after_accept),
            "notFoundAfterAcceptRate": self.not_found_after_accept_rate,
            "holdBeforeExecute": format_duration(self.hold_before_execute),
            "holdBeforeExecuteRate": self.hold_before_execute_rate,
            "forgetAfter": format_duration(self.forget_after),
            "sameOperationId": self.same_operation_id,
            "sameOperationIdRate": self.same_operation_id_rate,
            "freshOperationId": self.fresh_operation_id,
            "freshOperationIdRate": self.fresh_operation_id_rate,
            "wrongIdInGet": self.wrong_id_in_get,
            "wrongIdInGetRate": self.wrong_id_in_get_rate,
            "unknownStatus": self.unknown_status,
            "unknownStatusRate": self.unknown_status_rate,
            "echoAuthorization": self.echo_authorization,
        }

    def to_dict(self) -> dict[str, Any]:
        """The faults as ``GET``/``PUT /_emulator/faults`` answer them.

        The five classic keys always; an adversary key only when it differs from its
        default, so an emulator without adversary modes answers exactly what it always did.
        """
        full = self.to_full_dict()
        defaults = _DEFAULT_FULL
        return {
            key: value
            for key, value in full.items()
            if key in _CLASSIC_KEYS or value != defaults[key]
        }

    def updated(self, changes: object, *, source: str) -> FaultConfig:
        """A copy with ``changes`` (a mapping of fault keys) applied; raises ``ConfigError``."""
        if not isinstance(changes, Mapping):
            raise ConfigError(f"{source}: faults: must be a mapping of fault keys")
        current = self.to_full_dict()
        for key, value in changes.items():
            if key not in _FAULT_KEYS:
                raise ConfigError(
                    f"{source}: faults.{key}: unknown key (allowed: {', '.join(_FAULT_KEYS)})"
                )
            current[key] = value

        def rate(key: str) -> float:
            return _rate(current[key], f"{source}: faults.{key}")

        def duration(key: str) -> float:
            return _duration(current[key], f"{source}: faults.{key}")

        def flag(key: str) -> bool:
            return _bool(current[key], f"{source}: faults.{key}")

        return FaultConfig(
            error_rate=rate("errorRate"),
            throttle_rate=rate("throttleRate"),
            retry_after=_non_negative_int(current["retryAfter"], f"{source}: faults.retryAfter"),
            drop_rate=rate("dropRate"),
            latency=duration("latency"),
            not_found_after_accept=duration("notFoundAfterAccept"),
            not_found_after_accept_rate=rate("notFoundAfterAcceptRate"),
            hold_before_execute=duration("holdBeforeExecute"),
            hold_before_execute_rate=rate("holdBeforeExecuteRate"),
            forget_after=duration("forgetAfter"),
            same_operation_id=flag("sameOperationId"),
            same_operation_id_rate=rate("sameOperationIdRate"),
            fresh_operation_id=flag("freshOperationId"),
            fresh_operation_id_rate=rate("freshOperationIdRate"),
            wrong_id_in_get=flag("wrongIdInGet"),
            wrong_id_in_get_rate=rate("wrongIdInGetRate"),
            unknown_status=_unknown_status(current["unknownStatus"], source),
            unknown_status_rate=rate("unknownStatusRate"),
            echo_authorization=flag("echoAuthorization"),
        )


_CLASSIC_KEYS = ("errorRate", "throttleRate", "retryAfter", "dropRate", "latency")
_DEFAULT_FULL = FaultConfig().to_full_dict()
_FAULT_KEYS = tuple(_DEFAULT_FULL)
_TOP_KEYS = ("token", "dedup", "seed", "services", "faults")
_SERVICE_KEYS = ("id", "name", "status", "commands")
_COMMAND_KEYS = ("duration", "fail", "failTimes")


@dataclass(frozen=True)
class EmulatorConfig:
    """The whole emulator configuration, validated; build it with ``from_dict``/``load_config``."""

    services: tuple[ServiceConfig, ...] = ()
    token: str | None = None
    dedup: bool = True
    seed: int | None = None
    faults: FaultConfig = field(default_factory=FaultConfig)
    source: str = "<config>"

    @classmethod
    def from_dict(cls, data: object, source: str = "<config>") -> EmulatorConfig:
        """Validate a parsed YAML document; every error names ``source`` and the field."""
        if data is None:
            data = {}
        if not isinstance(data, Mapping):
            raise ConfigError(f"{source}: the top level must be a mapping")
        _check_keys(data, _TOP_KEYS, source, "")
        token = data.get("token")
        if token is not None and (not isinstance(token, str) or not token):
            raise ConfigError(f"{source}: token: must be a non-empty string")
        dedup = data.get("dedup", True)
        if not isinstance(dedup, bool):
            raise ConfigError(f"{source}: dedup: must be true or false")
        seed = data.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ConfigError(f"{source}: seed: must be an integer")
        faults = FaultConfig().updated(data.get("faults") or {}, source=source)
        services = _services(data.get("services"), source)
        return cls(
            services=services,
            token=token,
            dedup=dedup,
            seed=seed,
            faults=faults,
            source=source,
        )

    def service(self, service_id: str) -> ServiceConfig | None:
        """The service whose path id is ``service_id``, or ``None``."""
        for service in self.services:
            if service.id == service_id:
                return service
        return None


def _check_keys(data: Mapping[Any, Any], allowed: tuple[str, ...], source: str, where: str) -> None:
    for key in data:
        if key not in allowed:
            prefix = f"{where}." if where else ""
            raise ConfigError(
                f"{source}: {prefix}{key}: unknown key (allowed: {', '.join(allowed)})"
            )


def _rate(value: object, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"{where}: must be a number between 0 and 1, got {value!r}")
    if not 0.0 <= float(value) <= 1.0:
        raise ConfigError(f"{where}: must be between 0 and 1, got {value!r}")
    return float(value)


def _bool(value: object, where: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{where}: must be true or false, got {value!r}")
    return value


def _unknown_status(value: object, source: str) -> str | None:
    where = f"{source}: faults.unknownStatus"
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not value.strip():
        raise ConfigError(f"{where}: must be a status string (e.g. cancelled) or null")
    if value in SPEC_STATUSES:
        raise ConfigError(
            f"{where}: {value!r} is one of the spec's statuses; name one outside "
            f"{', '.join(SPEC_STATUSES)} (e.g. cancelled, running)"
        )
    return value


def _non_negative_int(value: object, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ConfigError(f"{where}: must be a non-negative integer, got {value!r}")
    return value


def _duration(value: object, where: str, *, allow_never: bool = False) -> float:
    try:
        return parse_duration(value)
    except ValueError:
        hint = "e.g. 500ms, 2s, 1m30s" + (" or never" if allow_never else "")
        raise ConfigError(f"{where}: invalid duration {value!r} ({hint})") from None


def _services(raw: object, source: str) -> tuple[ServiceConfig, ...]:
    if raw is None:
        return ()
    if not isinstance(raw, list):
        raise ConfigError(f"{source}: services: must be a list")
    services: list[ServiceConfig] = []
    ids: set[str] = set()
    names: set[str] = set()
    for index, item in enumerate(raw):
        where = f"services[{index}]"
        if not isinstance(item, Mapping):
            raise ConfigError(f"{source}: {where}: must be a mapping")
        _check_keys(item, _SERVICE_KEYS, source, where)
        service_id = item.get("id")
        if not isinstance(service_id, str) or not service_id or "/" in service_id:
            raise ConfigError(f"{source}: {where}.id: must be a non-empty string without '/'")
        name = item.get("name")
        if not isinstance(name, str) or not name:
            raise ConfigError(f"{source}: {where}.name: must be a non-empty string")
        if service_id in ids:
            raise ConfigError(f"{source}: {where}.id: duplicate service id {service_id!r}")
        if name in names:
            raise ConfigError(f"{source}: {where}.name: duplicate service name {name!r}")
        ids.add(service_id)
        names.add(name)
        status = item.get("status")
        if status is not None and not isinstance(status, Mapping):
            raise ConfigError(f"{source}: {where}.status: must be a mapping or null")
        commands = _commands(item.get("commands"), source, where)
        services.append(
            ServiceConfig(
                id=service_id,
                name=name,
                status=dict(status) if status is not None else None,
                commands=commands,
            )
        )
    return tuple(services)


def _commands(raw: object, source: str, where: str) -> dict[str, CommandConfig]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{source}: {where}.commands: must be a mapping of name to settings")
    commands: dict[str, CommandConfig] = {}
    for name, settings in raw.items():
        if not isinstance(name, str) or not name or "/" in name:
            raise ConfigError(
                f"{source}: {where}.commands: command name {name!r} must be a non-empty string "
                "without '/'"
            )
        here = f"{where}.commands.{name}"
        if settings is None:
            settings = {}
        if not isinstance(settings, Mapping):
            raise ConfigError(f"{source}: {here}: must be a mapping (duration, fail, failTimes)")
        _check_keys(settings, _COMMAND_KEYS, source, here)
        raw_duration = settings.get("duration", "0s")
        duration: float | None
        if raw_duration == NEVER:
            duration = None
        else:
            duration = _duration(raw_duration, f"{source}: {here}.duration", allow_never=True)
        fail = settings.get("fail", False)
        if not isinstance(fail, bool):
            raise ConfigError(f"{source}: {here}.fail: must be true or false")
        fail_times = _non_negative_int(settings.get("failTimes", 0), f"{source}: {here}.failTimes")
        if fail and fail_times:
            raise ConfigError(
                f"{source}: {here}: fail and failTimes exclude each other (fail: true always fails)"
            )
        commands[name] = CommandConfig(
            name=name, duration=duration, fail=fail, fail_times=fail_times
        )
    return commands


def default_config_path() -> Path:
    """The bundled default configuration (``reconciler/emulator/default.yaml``)."""
    return Path(__file__).with_name("default.yaml")


def load_config(path: str | Path | None) -> EmulatorConfig:
    """Read and validate a YAML config file; ``None`` loads the bundled default."""
    file = Path(path) if path is not None else default_config_path()
    source = str(file)
    try:
        text = file.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{source}: cannot read emulator config: {exc.strerror or exc}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    return EmulatorConfig.from_dict(data, source=source)
