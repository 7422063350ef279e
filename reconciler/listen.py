"""Listen addresses (``HOST:PORT``), as ``--listen`` flags of the daemon and emulator take them."""

from __future__ import annotations

from reconciler.errors import ConfigError

__all__ = ["parse_listen"]


def parse_listen(value: str) -> tuple[str, int]:
    """Split ``HOST:PORT`` (``[::1]:8765`` for IPv6) into host and port."""
    host, sep, port_text = value.rpartition(":")
    if not sep or not host or not port_text.isdigit():
        raise ConfigError(f"--listen: expected HOST:PORT, got {value!r}")
    port = int(port_text)
    if port > 65535:
        raise ConfigError(f"--listen: port must be 0..65535, got {port}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, port
