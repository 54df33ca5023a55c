from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.procs import Proc, start_fake_openai, start_gateway


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def fake_openai(log_dir: Path) -> Iterator[Proc]:
    proc = start_fake_openai(log_dir)
    yield proc
    proc.stop()


@pytest.fixture(scope="session")
def gateway(log_dir: Path, fake_openai: Proc) -> Iterator[Proc]:
    """A gateway whose openai, lmstudio, vllm and openai-compatible providers point at the fake upstream."""
    env = {
        "OPENAI_BASE_URL": fake_openai.url + "/v1",
        "OPENAI_API_KEY": "sk-test-server-key-123456",
        "LMSTUDIO_BASE_URL": fake_openai.url + "/v1",
        "VLLM_BASE_URL": fake_openai.url + "/v1",
        "OPENAI_COMPATIBLE_BASE_URL": fake_openai.url + "/v1",
        "OPENROUTER_BASE_URL": fake_openai.url + "/v1",
        "OPENROUTER_API_KEY": "sk-or-test-key-123456",
        "ABSTRACTCORE_DEBUG": "1",
    }
    proc = start_gateway(log_dir, env)
    yield proc
    proc.stop()
