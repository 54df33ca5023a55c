"""Fixtures for the native Anthropic / Ollama integration tests: the two fake upstreams and a
gateway pointed at them. Test modules load them with ``pytest_plugins = ["tests.native_fixtures"]``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.http import clear_records
from tests.native import Fakes, native_env, start_fake
from tests.procs import Proc, start_gateway


@pytest.fixture(scope="module")
def fakes(log_dir: Path) -> Iterator[Fakes]:
    anthropic = start_fake("anthropic_upstream", log_dir, "/_requests")
    try:
        ollama = start_fake("ollama_upstream", log_dir, "/_requests")
    except BaseException:
        anthropic.stop()
        raise
    yield Fakes(anthropic, ollama)
    anthropic.stop()
    ollama.stop()


@pytest.fixture(scope="module")
def native_gateway(log_dir: Path, fakes: Fakes) -> Iterator[Proc]:
    proc = start_gateway(log_dir, native_env(fakes))
    yield proc
    proc.stop()


@pytest.fixture()
def fresh(fakes: Fakes) -> Fakes:
    clear_records(fakes.anthropic)
    clear_records(fakes.ollama)
    return fakes
