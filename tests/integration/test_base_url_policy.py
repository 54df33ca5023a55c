"""The request-level base_url policy: the server key never reaches a client URL; SSRF spellings refused."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from urllib.parse import urlsplit

import openai
import pytest

from tests.http import clear_records, records
from tests.native import (
    ANTHROPIC_KEY,
    CLIENT_KEY,
    Fakes,
    client,
    native_env,
    wait_for,
)
from tests.procs import Proc, start_gateway

# The fake upstreams and gateways (fixtures: fakes, fresh, native_gateway).
pytest_plugins = ["tests.native_fixtures"]

OPENAI_KEY = "sk-openai-server-key-0123456789"
MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def policy_gateway(log_dir: Path, fakes: Fakes, fake_openai: Proc) -> Iterator[Proc]:
    """Default policy: no allowlist. The openai provider is configured with a server key."""
    env = native_env(fakes, {"OPENAI_BASE_URL": fake_openai.url + "/v1", "OPENAI_API_KEY": OPENAI_KEY})
    proc = start_gateway(log_dir, env)
    yield proc
    proc.stop()


@pytest.fixture(scope="module")
def allowlist_gateway(log_dir: Path, fakes: Fakes) -> Iterator[Proc]:
    """The operator allowlists the fake Anthropic under the name localhost."""
    port = urlsplit(fakes.anthropic.url).port
    proc = start_gateway(log_dir, native_env(fakes, {"ACORE_BASE_URL_ALLOWLIST": f"http://localhost:{port}"}))
    yield proc
    proc.stop()


def all_headers(*procs: Proc) -> list[dict[str, str]]:
    return [{k.lower(): v for k, v in r["headers"].items()} for p in procs for r in records(p)]


def test_client_base_url_without_own_key_is_refused(policy_gateway: Proc, fresh: Fakes, fake_openai: Proc) -> None:
    clear_records(fake_openai)
    api = client(policy_gateway)
    for model, url in [("anthropic/claude-text", fresh.anthropic.url), ("openai/echo", fake_openai.url + "/v1")]:
        with pytest.raises(openai.BadRequestError) as refused:
            api.chat.completions.create(model=model, messages=MESSAGES, extra_body={"base_url": url})
        assert refused.value.body["param"] == "api_key"
        assert "never sent to a client-supplied URL" in refused.value.message
    assert records(fresh.anthropic) == [] and records(fake_openai) == []


def test_client_base_url_with_own_key_gets_only_that_key(policy_gateway: Proc, fresh: Fakes,
                                                         fake_openai: Proc) -> None:
    clear_records(fake_openai)
    api = client(policy_gateway)
    result = api.chat.completions.create(model="anthropic/claude-text", messages=MESSAGES,
                                         extra_body={"base_url": fresh.anthropic.url, "api_key": CLIENT_KEY})
    assert result.choices[0].message.content == "echo: hi"
    result = api.chat.completions.create(model="openai/echo", messages=MESSAGES,
                                         extra_body={"base_url": fake_openai.url + "/v1"},
                                         extra_headers={"X-Provider-API-Key": CLIENT_KEY})
    assert result.choices[0].message.content == "echo: hi"
    headers = all_headers(fresh.anthropic, fake_openai)
    assert headers[0]["x-api-key"] == CLIENT_KEY
    assert headers[1]["authorization"] == f"Bearer {CLIENT_KEY}"
    flat = repr(headers)
    assert ANTHROPIC_KEY not in flat and OPENAI_KEY not in flat
    # the access line comes from the log writer's thread: wait for it
    assert wait_for(lambda: "/v1/chat/completions" in policy_gateway.log())
    log = policy_gateway.log()
    assert CLIENT_KEY not in log and ANTHROPIC_KEY not in log and OPENAI_KEY not in log


def test_keyless_provider_base_url_sends_no_key(policy_gateway: Proc, fresh: Fakes) -> None:
    port = urlsplit(fresh.ollama.url).port
    api = client(policy_gateway)
    # Other spellings of loopback are accepted and rebuilt as 127.0.0.1 (the fake listens only there).
    for url in (fresh.ollama.url, f"http://2130706433:{port}", f"http://[::ffff:127.0.0.1]:{port}",
                f"http://0177.0.0.1:{port}/v1"):
        result = api.chat.completions.create(model="ollama/llama-text", messages=MESSAGES, extra_body={"base_url": url})
        assert result.choices[0].message.content == "echo: hi"
    hits = all_headers(fresh.ollama)
    assert len(hits) == 4 and all("authorization" not in h for h in hits)


def test_ssrf_spellings_refused_without_a_hit(policy_gateway: Proc, fresh: Fakes) -> None:
    api = client(policy_gateway)
    port = urlsplit(fresh.ollama.url).port
    forbidden = [
        f"http://0.0.0.0:{port}", f"http://[::]:{port}", f"http://0:{port}",
        "http://169.254.169.254/latest/meta-data/", "http://2852039166/", "http://0251.0376.0251.0376/",
        "http://[::ffff:169.254.169.254]/", "http://[::ffff:a9fe:a9fe]/", "http://[fe80::1]/",
        "http://metadata.google.internal/computeMetadata/v1/", "http://METADATA.google.internal./",
        "https://example.com/v1", "http://10.0.0.1:11434",
    ]
    for url in forbidden:
        with pytest.raises(openai.PermissionDeniedError) as refused:
            api.chat.completions.create(model="ollama/llama-text", messages=MESSAGES, extra_body={"base_url": url})
        assert refused.value.body["param"] == "base_url", url
        if url.startswith(("https://example", "http://10.")):
            assert "ACORE_BASE_URL_ALLOWLIST" in refused.value.message
    for url in ("file:///etc/passwd", "gopher://127.0.0.1:70/", f"http://user:pw@127.0.0.1:{port}/", "not a url"):
        with pytest.raises(openai.BadRequestError):
            api.chat.completions.create(model="ollama/llama-text", messages=MESSAGES, extra_body={"base_url": url})
    assert records(fresh.ollama) == [] and records(fresh.anthropic) == []


def test_local_worker_provider_rejects_base_url(policy_gateway: Proc, fresh: Fakes) -> None:
    with pytest.raises(openai.BadRequestError) as refused:
        client(policy_gateway).chat.completions.create(model="llamacpp/tiny", messages=MESSAGES,
                                                        extra_body={"base_url": fresh.ollama.url})
    assert refused.value.body["param"] == "base_url"


def test_redirects_are_not_followed(policy_gateway: Proc, fake_openai: Proc) -> None:
    with pytest.raises(openai.APIStatusError) as failed:
        client(policy_gateway).chat.completions.create(
            model="openai/redirect", messages=MESSAGES,
            extra_body={"base_url": fake_openai.url + "/v1", "api_key": CLIENT_KEY})
    assert failed.value.status_code == 502 and "redirect" in failed.value.message


def test_allowlisted_url_may_receive_the_server_key(allowlist_gateway: Proc, fresh: Fakes) -> None:
    port = urlsplit(fresh.anthropic.url).port
    result = client(allowlist_gateway).chat.completions.create(
        model="anthropic/claude-text", messages=MESSAGES, extra_body={"base_url": f"http://localhost:{port}"})
    assert result.choices[0].message.content == "echo: hi"
    assert all_headers(fresh.anthropic)[0]["x-api-key"] == ANTHROPIC_KEY
    # A loopback URL not on the list still needs the client's own key.
    with pytest.raises(openai.BadRequestError):
        client(allowlist_gateway).chat.completions.create(
            model="anthropic/claude-text", messages=MESSAGES, extra_body={"base_url": fresh.anthropic.url})
