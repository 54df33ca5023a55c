"""Every parse runs in its own short-lived process with CPU-time and memory limits.

Why a fresh process per parse rather than a pool: a bomb that trips RLIMIT_CPU
or RLIMIT_AS kills its process, and in a ProcessPoolExecutor that breaks the
whole pool and fails every other parse in flight. Here it costs exactly one
child. Children are forked from a forkserver that has the parsers preloaded,
so a start costs milliseconds, not an interpreter boot. The parent waits on the
result pipe with the event loop (no blocked thread) and kills the child on
timeout or cancellation. The forkserver restarts itself if it ever dies.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import resource
from collections.abc import Callable
from multiprocessing.connection import Connection
from typing import Any

from media.errors import MediaError, too_large, unprocessable

PRELOAD = ["media.extract", "media.images", "media.ooxml", "pypdf", "openpyxl", "docx", "pptx", "PIL.Image",
           "defusedxml.ElementTree"]


def _child(conn: Connection, fn: Callable[..., Any], args: tuple[Any, ...], cpu_s: int, memory_bytes: int) -> None:
    # Limits first, before touching the untrusted bytes. The lower priority keeps the gateway's event loop
    # (and streams in flight) ahead of a parse on a box with few cores.
    with contextlib.suppress(OSError):
        os.nice(10)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_s, cpu_s + 2))  # SIGXCPU at soft, SIGKILL at hard
    if memory_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    try:
        result: tuple[str, Any] = ("ok", fn(*args))
    except MediaError as exc:
        result = ("err", exc)
    except MemoryError:
        result = ("err", too_large("The attachment needs more memory to parse than allowed."))
    except RecursionError:
        result = ("err", unprocessable("The attachment is nested too deeply to parse."))
    except Exception:
        result = ("err", unprocessable("The attachment could not be parsed."))
    try:
        conn.send(result)
    finally:
        conn.close()


class ParseExecutor:
    """Runs ``fn(*args)`` in a limited child process; at most ``workers`` at a time."""

    def __init__(self, workers: int = 2, timeout_s: float = 30.0, cpu_s: int = 20,
                 memory_bytes: int = 1536 * 1024 * 1024) -> None:
        self.workers = max(1, workers)
        self.timeout_s = timeout_s
        self.cpu_s = cpu_s
        self.memory_bytes = memory_bytes
        self._ctx = multiprocessing.get_context("forkserver")
        self._ctx.set_forkserver_preload(PRELOAD)
        self._semaphore: asyncio.Semaphore | None = None
        self._live: set[Any] = set()
        self.children_started = 0
        self.children_killed = 0

    def start(self) -> None:
        """Start the forkserver now (off the request path); safe to call more than once."""
        from multiprocessing import forkserver

        forkserver.ensure_running()

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        if self._semaphore is None:
            self._semaphore = asyncio.Semaphore(self.workers)
        async with self._semaphore:
            return await self._run_one(fn, args)

    async def _run_one(self, fn: Callable[..., Any], args: tuple[Any, ...]) -> Any:
        loop = asyncio.get_running_loop()
        reader, writer = self._ctx.Pipe(duplex=False)
        process = self._ctx.Process(target=_child, args=(writer, fn, args, self.cpu_s, self.memory_bytes), daemon=True)
        # Starting pickles the arguments (up to the file cap) into the forkserver: off the loop.
        try:
            await asyncio.to_thread(process.start)
        except BaseException:
            reader.close()
            raise
        finally:
            writer.close()
        self._live.add(process)
        self.children_started += 1
        ready: asyncio.Future[None] = loop.create_future()

        def on_readable() -> None:
            if not ready.done():
                ready.set_result(None)

        loop.add_reader(reader.fileno(), on_readable)
        try:
            try:
                async with asyncio.timeout(self.timeout_s):
                    await ready
            except TimeoutError:
                raise unprocessable(f"Parsing the attachment took longer than {self.timeout_s:g}s.",
                                    code="parse_timeout") from None
            finally:
                loop.remove_reader(reader.fileno())
                # uvloop switches a watched fd to non-blocking; recv() in a thread needs it blocking again,
                # or a result larger than one pipe write fails half-read with EAGAIN.
                os.set_blocking(reader.fileno(), True)
            try:
                # The child sends its whole result at once; the recv thread never waits on a live-but-idle peer.
                status, value = await asyncio.to_thread(reader.recv)
            except (EOFError, OSError):
                # The child died without answering: killed by its CPU or memory limit.
                raise too_large("The attachment exceeded the resource limits for parsing.",
                                code="parse_limits") from None
        finally:
            reader.close()
            if process.is_alive():
                process.kill()
                self.children_killed += 1
            await asyncio.to_thread(process.join, 5)
            self._live.discard(process)
        if status == "err":
            raise value
        return value

    async def close(self) -> None:
        for process in list(self._live):
            with contextlib.suppress(Exception):
                process.kill()
        self._live.clear()
