"""Listen addresses (``HOST:PORT``) and the listening socket, for the daemon and the emulator."""

from __future__ import annotations

import socket

from reconciler.errors import ConfigError

__all__ = ["ANY_HOST", "bind_socket", "normalize_listen", "parse_listen"]

#: the host of a listen address given as ``:PORT`` (every IPv4 interface)
ANY_HOST = "0.0.0.0"


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


def normalize_listen(value: str) -> str:
    """A daemon ``--listen`` value as ``HOST:PORT``: ``:PORT`` (the usual shorthand, as in
    ``--listen :18091``) means every interface, :data:`ANY_HOST`; anything else must be
    what :func:`parse_listen` accepts (ConfigError otherwise)."""
    text = value.strip()
    if text.startswith(":") and text[1:].isdigit():
        text = ANY_HOST + text
    parse_listen(text)
    return text


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (``port=0``: the OS picks a free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(128)
        sock.set_inheritable(True)
    except OSError:
        sock.close()
        raise
    return sock
