"""Where the gateway's worker socket lives: a private ipc:// path by default."""

from __future__ import annotations

import os
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


def is_loopback_tcp(endpoint: str) -> bool:
    if not endpoint.startswith("tcp://"):
        return True
    host = endpoint[len("tcp://") :].rsplit(":", 1)[0].strip("[]")
    return host in {"127.0.0.1", "localhost", "::1"} or host.startswith("127.")
