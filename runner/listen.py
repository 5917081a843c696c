"""Whether the HTTP server can listen where it is asked to: checked before a replica
spends minutes loading its model, so that a port in use or an address that is not this
machine's is reported at once, naming the option to change."""

from __future__ import annotations

import errno
import socket

from .errors import RunnerError

PORT_MAX = 65535


def check_port(port: int) -> None:
    """``port`` is a TCP port number (0: one the system picks)."""
    if not 0 <= port <= PORT_MAX:
        raise RunnerError(f"--port {port} is not a TCP port: give one from 1 to {PORT_MAX}")


def check_listen_address(host: str, port: int) -> None:
    """Bind ``host``:``port`` once and let go: raises :class:`RunnerError` naming the
    fix when the name does not resolve, the address is not this machine's, the port is
    taken or needs privileges."""
    check_port(port)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as exc:
        reason = exc.strerror if isinstance(exc, socket.gaierror) else str(exc)
        raise RunnerError(
            f"--host {host}: not an address or a host name that resolves ({reason}): give "
            "an address of this machine, e.g. 127.0.0.1 (this machine only) or 0.0.0.0 "
            "(every interface)"
        ) from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as sock:
        # as the server's own socket: a port in TIME_WAIT is free, one listened on is not
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(address)
        except OSError as exc:
            raise RunnerError(_bind_error(host, port, exc)) from None


def _bind_error(host: str, port: int, exc: OSError) -> str:
    if exc.errno == errno.EADDRINUSE:
        return (
            f"port {port} on {host} is in use (another server, or an earlier exegpt serve "
            "still running): stop it, or choose another --port"
        )
    if exc.errno == errno.EADDRNOTAVAIL:
        return (
            f"--host {host} is not an address of this machine: give one of its addresses, "
            "e.g. 127.0.0.1 (this machine only) or 0.0.0.0 (every interface)"
        )
    if exc.errno == errno.EACCES:
        return f"port {port} needs privileges on this machine: choose --port 1024 or above"
    return f"cannot listen on {host}:{port}: {exc.strerror or exc}"
