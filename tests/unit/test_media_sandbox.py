"""The parse sandbox: limits kill one child, never the executor, and other parses carry on."""

from __future__ import annotations

import asyncio
import time

import pytest

from media.errors import MediaError
from media.sandbox import ParseExecutor


def burn_cpu() -> None:
    while True:
        pass


def eat_memory() -> bytes:
    blocks = []
    while True:
        blocks.append(b"x" * (64 << 20))


def sleep_forever() -> None:
    time.sleep(3600)


def die_hard() -> None:
    import os
    import signal

    os.kill(os.getpid(), signal.SIGKILL)


def echo(value: str) -> str:
    return value


def refuse() -> None:
    raise MediaError(413, "too big")


@pytest.fixture
async def executor() -> ParseExecutor:
    pool = ParseExecutor(workers=2, timeout_s=5.0, cpu_s=1, memory_bytes=512 << 20)
    pool.start()
    yield pool
    await pool.close()


async def test_result_and_media_error_cross_the_boundary(executor: ParseExecutor) -> None:
    assert await executor.run(echo, "hi") == "hi"
    with pytest.raises(MediaError) as info:
        await executor.run(refuse)
    assert info.value.status == 413 and info.value.message == "too big"


@pytest.mark.parametrize("bomb", [burn_cpu, eat_memory, die_hard])
async def test_a_bomb_costs_one_child(executor: ParseExecutor, bomb: object) -> None:
    with pytest.raises(MediaError) as info:
        await executor.run(bomb)
    assert info.value.status == 413
    assert await executor.run(echo, "still here") == "still here"


async def test_wall_clock_timeout_kills_child() -> None:
    pool = ParseExecutor(workers=1, timeout_s=2.0, cpu_s=5)  # room for a child start on a loaded 2-core box
    with pytest.raises(MediaError) as info:
        await pool.run(sleep_forever)
    # ended by the wall-clock limit (not the CPU limit: the child sleeps), and the child was killed
    assert info.value.status == 422 and info.value.code == "parse_timeout"
    assert pool.children_killed == 1
    assert await pool.run(echo, "ok") == "ok"


async def test_other_parses_unaffected_and_loop_responsive(executor: ParseExecutor) -> None:
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            await asyncio.sleep(0.01)
            ticks += 1

    task = asyncio.create_task(ticker())
    bomb = asyncio.create_task(executor.run(burn_cpu))
    assert await executor.run(echo, "fine") == "fine"
    with pytest.raises(MediaError):
        await bomb
    task.cancel()
    assert ticks > 20  # the loop kept running while a child burned its CPU second


async def test_cancellation_kills_child(executor: ParseExecutor) -> None:
    job = asyncio.create_task(executor.run(sleep_forever))
    await asyncio.sleep(0.3)
    job.cancel()
    with pytest.raises(asyncio.CancelledError):
        await job
    assert executor.children_killed == 1


def big_result() -> str:
    return "x" * 5_000_000  # far more than one pipe write


def test_large_result_under_uvloop() -> None:
    """The gateway runs on uvloop, which makes watched fds non-blocking; a large result must still arrive."""
    import uvloop

    async def main() -> str:
        pool = ParseExecutor(workers=1, timeout_s=20)
        try:
            return await pool.run(big_result)
        finally:
            await pool.close()

    assert uvloop.run(main()) == "x" * 5_000_000
