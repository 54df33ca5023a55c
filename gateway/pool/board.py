"""What the process that starts the workers tells the front processes of a --processes N gateway.

The fronts schedule over every worker but do not start them: their parent does. Why a supervised
worker cannot load (its exit status said so) is known only there, so the parent writes it to a
small JSON file in the gateway's private runtime directory and each front reads it (on change)
to fail requests for that model fast, and to answer /health/ready truthfully. It also carries how
often the parent restarted a worker, which each front reports as ``acore_worker_restarts``.
"""

from __future__ import annotations

import json
import os
from pathlib import Path


class FailureBoard:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._seen: tuple[int, int] | None = None
        self._failures: dict[str, str] = {}
        self._restarts = 0

    def write(self, failures: dict[str, str], restarts: int = 0) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps({"failures": failures, "restarts": restarts}))
        os.replace(temporary, self.path)  # readers see the old or the new file, never half of one

    def read(self) -> dict[str, str]:
        try:
            stat = self.path.stat()
        except OSError:
            return {}
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp != self._seen:
            try:
                data = json.loads(self.path.read_text())
            except (OSError, ValueError):
                return self._failures
            data = data if isinstance(data, dict) else {}
            failures = data.get("failures")
            self._failures = {str(k): str(v) for k, v in failures.items()} if isinstance(failures, dict) else {}
            restarts = data.get("restarts")
            self._restarts = restarts if isinstance(restarts, int) else 0
            self._seen = stamp
        return self._failures

    def get(self, name: str) -> str | None:
        return self.read().get(name)

    def restarts(self) -> int:
        self.read()
        return self._restarts


def board_path(runtime: Path) -> Path:
    return runtime / "worker-failures.json"
