"""The Docker files install what scripts/setup installs: the same pinned versions."""

from __future__ import annotations

import re
import tomllib

from tests.procs import REPO


def dockerfile_arg(name: str) -> str:
    match = re.search(rf"^ARG {name}=(\S+)$", (REPO / "Dockerfile").read_text(), re.M)
    assert match, f"Dockerfile has no ARG {name}"
    return match.group(1)


def test_dockerfile_pins_agree_with_setup_and_pyproject() -> None:
    setup = (REPO / "scripts" / "setup").read_text()
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    extras = pyproject["project"]["optional-dependencies"]
    llama = dockerfile_arg("LLAMA_CPP_PYTHON_VERSION")
    torch = dockerfile_arg("TORCH_VERSION")
    assert f"llama-cpp-python=={llama}" in extras["llamacpp"]
    assert f'"llama-cpp-python=={llama}"' in setup and f"llama_cpp_python-{llama}-" in setup
    assert f"torch=={torch}" in extras["embeddings"] and f'"torch=={torch}"' in setup
    python = dockerfile_arg("PYTHON_VERSION")
    assert pyproject["project"]["requires-python"] == f">={python}"


def test_dockerfile_runs_as_a_user_with_a_healthcheck() -> None:
    text = (REPO / "Dockerfile").read_text()
    assert text.count("FROM ") == 2  # build stage, slim runtime
    assert re.search(r"^USER acore$", text, re.M) and "HEALTHCHECK" in text and "/health" in text


def test_compose_has_gateway_worker_and_redis() -> None:
    text = (REPO / "compose.yaml").read_text()
    for service in ("gateway:", "worker:", "redis:", "keys:"):
        assert f"\n  {service}" in text
    assert "ACORE_REDIS_URL: redis://redis:6379/0" in text and "--worker-keys" in text
    assert "--gateway-key" in text and "OPENAI_API_KEY" in text
