"""Where the gateway's worker socket lives: a private ipc:// path by default."""

from __future__ import annotations

import os
import socket
import tempfile
from pathlib import Path


def runtime_dir(port: int) -> Path:
    """A 0700 directory private to this user, named after the gateway's HTTP port."""
    base = os.environ.get("XDG_RUNTIME_DIR") or tempfile.gettempdir()
    path = Path(base) / f"acore-{os.getuid()}-{port}"
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    # mkdir's mode is masked by umask and ignored when the directory exists: enforce it.
    os.chmod(path, 0o700)
    return path


def default_worker_endpoint(port: int = 8000) -> str:
    return f"ipc://{runtime_dir(port) / 'workers.sock'}"


def ipc_path(endpoint: str) -> Path | None:
    return Path(endpoint[len("ipc://"):]) if endpoint.startswith("ipc://") else None


def ipc_in_use(path: Path) -> bool:
    """Whether a process accepts on this socket file (a live gateway), not one left by a crashed run."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(str(path))
        except OSError:  # refused (nobody listens), not a socket, gone
            return False
    return True


def remove_ipc(endpoint: str) -> None:
    """Remove an ipc:// socket file this process bound, and its runtime directory once that is empty."""
    path = ipc_path(endpoint)
    if path is None:
        return
    path.unlink(missing_ok=True)
    remove_runtime_dir(path.parent)


def remove_runtime_dir(path: Path) -> None:
    """Remove an ``acore-UID-PORT`` directory if nothing is left in it (another process may still use it)."""
    if path.name.startswith("acore-"):
        try:
            path.rmdir()
        except OSError:
            pass


def is_loopback_tcp(endpoint: str) -> bool:
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    return host in {"127.0.0.1", "localhost", "::1"} or host.startswith("127.")


def front_endpoint(endpoint: str, index: int) -> str:
    """The worker socket of HTTP front ``index`` when a gateway runs several (``--processes N``).

    Front 0 keeps the configured endpoint; the others bind beside it: the next tcp ports, or ipc
    paths with ``-INDEX`` before the extension. Workers connect to every one of them."""
    if index == 0:
        return endpoint
    if endpoint.startswith("tcp://"):
        host, _, port = endpoint[len("tcp://"):].rpartition(":")
        return f"tcp://{host}:{int(port) + index}"
    path = Path(endpoint[len("ipc://"):])
    return f"ipc://{path.with_name(f'{path.stem}-{index}{path.suffix}')}"


def dialable(endpoint: str, dialled: str) -> str:
    """A peer's advertised endpoint as this side can dial it: a tcp:// bind on a wildcard address
    (``*``, 0.0.0.0, ``::``) is reached on the host this side dialled to get the advertisement."""
    if not endpoint.startswith("tcp://") or not dialled.startswith("tcp://"):
        return endpoint
    host, _, port = endpoint[len("tcp://"):].rpartition(":")
    if host.strip("[]") in ("*", "0.0.0.0", "::", ""):
        dialled_host = dialled[len("tcp://"):].rpartition(":")[0]
        return f"tcp://{dialled_host}:{port}"
    return endpoint
