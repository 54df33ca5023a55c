"""One background thread that writes the gateway's log files and access lines, off the request path.

A request hands over a small record (``LogWriter.put``: a deque append, no lock, no syscall); the
thread wakes every ``interval`` seconds (or at once when much is waiting), renders each record
with its sink's function (JSON or text, redaction) and writes each sink's lines in one call. The
queue is bounded: when the disk or the terminal cannot keep up, new records are dropped and
counted (``dropped``, in /metrics) rather than blocking a request or growing without limit.
Files rotate by size (``NAME.1`` … ``NAME.N``, like logging's RotatingFileHandler).
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

log = logging.getLogger("acore.gateway")

Render = Callable[[Any], bytes]


class Sink:
    """Where rendered lines go; ``render`` turns a record into bytes (in the writer thread)."""

    def __init__(self, render: Render) -> None:
        self.render = render

    def write(self, data: bytes) -> None:
        raise NotImplementedError

    def close(self) -> None:
        pass


class StreamSink(Sink):
    """stderr (or any binary stream)."""

    def __init__(self, render: Render, stream: BinaryIO | None = None) -> None:
        super().__init__(render)
        self.stream = stream

    def write(self, data: bytes) -> None:
        stream = self.stream
        if stream is None:
            stream = getattr(sys.stderr, "buffer", None)
            if stream is None:  # a text-only stderr (a test harness's capture)
                sys.stderr.write(data.decode("utf-8", "replace"))
                sys.stderr.flush()
                return
        stream.write(data)
        stream.flush()


class FileSink(Sink):
    """An append-only file rotated by size; ``path`` may be a function of the time (a file per day)."""

    def __init__(self, render: Render, path: Path | Callable[[], Path], max_bytes: int, backups: int = 5) -> None:
        super().__init__(render)
        self._path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self._file: BinaryIO | None = None
        self._open_path: Path | None = None
        self._size = 0

    def current_path(self) -> Path:
        return self._path() if callable(self._path) else self._path

    def _open(self, path: Path) -> BinaryIO:
        self.close()
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = path.open("ab")
        self._file, self._open_path, self._size = handle, path, handle.tell()
        return handle

    def _rotate(self, path: Path) -> None:
        self.close()
        for index in range(self.backups - 1, 0, -1):
            older = path.with_name(f"{path.name}.{index}")
            if older.exists():
                os.replace(older, path.with_name(f"{path.name}.{index + 1}"))
        if self.backups > 0 and path.exists():
            os.replace(path, path.with_name(f"{path.name}.1"))
        elif path.exists():
            path.unlink()

    def _moved(self, path: Path, handle: BinaryIO) -> bool:
        """Another process (a second front, logrotate) rotated or removed the file under us."""
        try:
            return os.stat(path).st_ino != os.fstat(handle.fileno()).st_ino
        except OSError:
            return True

    def write(self, data: bytes) -> None:
        path = self.current_path()
        handle = self._file
        if handle is None or self._open_path != path or self._moved(path, handle):
            handle = self._open(path)
        if self._size and self._size + len(data) > self.max_bytes:
            self._rotate(path)
            handle = self._open(path)
        handle.write(data)
        handle.flush()
        self._size += len(data)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
            self._open_path = None


class LogWriter:
    """The thread and its bounded queue of (sink, record) pairs."""

    def __init__(self, max_pending: int = 20_000, interval: float = 0.2) -> None:
        self.max_pending = max_pending
        self.interval = interval
        self.dropped = 0  # records refused because the queue was full
        self.failed = 0  # records that could not be rendered or written
        self._queue: deque[tuple[Sink, Any]] = deque()
        self._wake = threading.Event()
        self._stopping = False
        self._sinks: list[Sink] = []
        self._thread: threading.Thread | None = None

    def add(self, sink: Sink) -> Sink:
        self._sinks.append(sink)
        return sink

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="acore-log-writer", daemon=True)
        self._thread.start()

    def put(self, sink: Sink, record: Any) -> None:
        """Hand a record over (event loop side). Never blocks; drops and counts when full."""
        queue = self._queue
        size = len(queue)
        if size >= self.max_pending:
            self.dropped += 1
            return
        queue.append((sink, record))
        if size == self.max_pending // 4:
            self._wake.set()  # a burst: write now rather than at the next tick

    def stop(self, timeout: float = 5.0) -> None:
        """Write what is waiting and end the thread (also closes the files)."""
        self._stopping = True
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        else:
            self._drain()
        for sink in self._sinks:
            try:
                sink.close()
            except OSError:
                pass

    def flush(self) -> None:
        """Write what is waiting now, from the caller's thread (tests, shutdown without a thread)."""
        self._drain()

    def _run(self) -> None:
        while not self._stopping:
            self._wake.wait(self.interval)
            self._wake.clear()
            self._drain()
        self._drain()

    def _drain(self) -> None:
        queue = self._queue
        batches: dict[Sink, list[bytes]] = {}
        while True:
            try:
                sink, record = queue.popleft()
            except IndexError:
                break
            try:
                line = sink.render(record)
            except Exception:  # a record that cannot be rendered must not stop the others
                self.failed += 1
                continue
            batches.setdefault(sink, []).append(line)
        for sink, lines in batches.items():
            try:
                sink.write(b"".join(lines))
            except (OSError, ValueError) as exc:
                self.failed += len(lines)
                self._report(exc)

    _last_report = 0.0

    def _report(self, exc: BaseException) -> None:
        now = time.monotonic()
        if now - self._last_report > 60:  # a full disk must not turn into a flood of its own
            self._last_report = now
            print(f"acore-gateway: cannot write a log file: {exc}", file=sys.stderr, flush=True)
