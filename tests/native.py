"""Helpers for the native Anthropic / Ollama integration tests (fixtures: tests/native_fixtures.py)."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai

from tests.procs import Proc, free_port, start

ANTHROPIC_KEY = "sk-ant-server-key-0123456789abcdef"
CLIENT_KEY = "sk-client-own-key-fedcba9876543210"


@dataclass
class Fakes:
    anthropic: Proc
    ollama: Proc


def start_fake(module: str, log_dir: Path, ready: str) -> Proc:
    port = free_port()
    return start(["-m", f"tests.fakes.{module}", "--port", str(port)], port=port, log_dir=log_dir,
                 name=module, ready_path=ready)


def wait_for(predicate: Any, timeout: float = 5.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    return predicate()


def native_env(fakes: Fakes, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    env = {
        "ANTHROPIC_BASE_URL": fakes.anthropic.url,
        "ANTHROPIC_API_KEY": ANTHROPIC_KEY,
        "OLLAMA_BASE_URL": fakes.ollama.url,
        "ABSTRACTCORE_DEBUG": "1",
    }
    env.update(extra or {})
    return env


def client(gateway: Proc, **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(base_url=gateway.url + "/v1", api_key="unused", max_retries=0, timeout=20, **kwargs)
