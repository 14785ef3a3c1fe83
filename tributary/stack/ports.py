"""Port checks: is an address free to listen on, who holds it, and a free one to suggest."""

from __future__ import annotations

import errno
import socket
import subprocess
from pathlib import Path

from tributary.settings import Endpoint
from tributary.stack.errors import PortInUseError

# Ports of the default stack (Kafka, Elasticsearch, Airflow); never handed out as "free" so that
# tests and suggestions can't collide with a `make up` stack that is not running right now.
RESERVED_PORTS = frozenset({9092, 9200, 8080, 5432})


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind_host(host: str) -> str:
    return "127.0.0.1" if host == "localhost" else host


def port_is_free(host: str, port: int) -> bool:
    """True when a server could listen on host:port now.

    Binds the way servers do (SO_REUSEADDR), so sockets lingering in TIME_WAIT don't count as
    taken, while a listener on the same address or on the wildcard address does.
    """
    with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((_bind_host(host), port))
        except OSError as exc:
            if exc.errno in {errno.EADDRINUSE, errno.EACCES}:
                return False
            raise
    return True


def free_port(host: str = "127.0.0.1") -> int:
    """A port the kernel considers free on `host` (never one of RESERVED_PORTS)."""
    while True:
        with socket.socket(_family(host), socket.SOCK_STREAM) as sock:
            sock.bind((_bind_host(host), 0))
            port: int = sock.getsockname()[1]
        if port not in RESERVED_PORTS:
            return port


def suggest_port(host: str, taken: int) -> int:
    """A free port near `taken` (taken + 10000 when free), else any free port."""
    candidate = taken + 10000
    if candidate < 65536 and candidate not in RESERVED_PORTS and port_is_free(host, candidate):
        return candidate
    return free_port(host)


def port_holder(port: int) -> str | None:
    """'name (pid N)' of the process listening on `port`, as far as `ss` can tell; else None."""
    try:
        out = subprocess.run(
            ["ss", "-Hltnp", f"sport = :{port}"], capture_output=True, text=True, timeout=5, check=False
        ).stdout
    except FileNotFoundError:
        return None  # no iproute2: the message simply omits the holder
    # users:(("tansu",pid=7891,fd=9))
    marker = 'users:(("'
    if marker not in out:
        return None
    name, _, rest = out.split(marker, 1)[1].partition('",pid=')
    pid = rest.split(",", 1)[0]
    return f"{name} (pid {pid})" if pid.isdigit() else name


def ensure_port_free(component: str, endpoint: Endpoint, log_path: Path) -> None:
    """Raise PortInUseError, naming the setting to change and a free alternative, if taken."""
    if port_is_free(endpoint.host, endpoint.port):
        return
    holder = port_holder(endpoint.port)
    by = f"another process: {holder}" if holder else "another process"
    suggestion = suggest_port(endpoint.host, endpoint.port)
    if endpoint.setting.endswith("_PORT"):
        fix = f"set {endpoint.setting} to a free port (e.g. {suggestion})"
    elif endpoint.setting.endswith("_URL"):
        fix = f"set {endpoint.setting} to a free address (e.g. http://{endpoint.host}:{suggestion})"
    else:
        fix = f"set {endpoint.setting} to a free address (e.g. {endpoint.host}:{suggestion})"
    raise PortInUseError(
        f"{component}: port {endpoint.port} on {endpoint.host} is already in use by {by}; {fix} (log: {log_path})"
    )
