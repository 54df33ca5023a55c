"""Model aliases and groups (issue 19): fallback order, no retry after the first byte, Retry-After,
the circuit breaker opening and closing, weighted and least-busy splits, the request's own
``models`` list, and bad groups stopping the start.

Three real fake OpenAI upstreams on loopback (tests/fakes/openai_upstream.py: behaviour chosen by
the model name, so ``error-500`` answers 500, ``error-429`` answers 429 + Retry-After, ``slow-MS``
is slow to its first byte and ``flaky-N`` fails its first N requests), one real gateway started with
a config file, and the openai SDK as the client.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest

from tests import http
from tests.procs import REPO, Proc, base_env, free_port, start_fake_openai, start_gateway

SERVER_KEY = "sk-group-server-key-0123456789"
USER = [{"role": "user", "content": "hi"}]


@dataclass
class Fleet:
    a: Proc
    b: Proc
    c: Proc
    gateway: Proc

    def url(self, fake: Proc) -> str:
        return fake.url + "/v1"

    def client(self) -> openai.OpenAI:
        return openai.OpenAI(base_url=self.gateway.url + "/v1", api_key="unused", max_retries=0, timeout=30)


def _target(model: str, fake: Proc, **extra: Any) -> str:
    fields = [f'model = "openai-compatible/{model}"', f'base_url = "{fake.url}/v1"']
    fields += [f"{key} = {value!r}" if isinstance(value, str) else f"{key} = {value}" for key, value in extra.items()]
    return "{ " + ", ".join(fields) + " }"


def _calls(fake: Proc, model: str) -> int:
    return sum(1 for r in http.records(fake) if r.get("path", "").endswith("/chat/completions")
               and (r.get("body") or {}).get("model") == model)


@pytest.fixture(scope="module")
def fleet(log_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    a, b, c = (start_fake_openai(log_dir) for _ in range(3))
    groups = {
        "gpt-5": [_target("error-500", a), _target("error-429", b), _target("echo", c)],
        "no-rewind": [_target("mid-error", a), _target("after-first-byte", c)],
        "patient": [_target("slow-3000", a), _target("quick", c)],
        "breaker": [_target("flaky-4", a), _target("backup", c)],
        "all-down": [_target("error-500", b), _target("error-503", c)],
        "capped": [_target("capped", c, max_tokens=7)],
        "nested": ['"gpt-5"'],
    }
    text = ["[routing]", "breaker_failures = 3", "breaker_cooldown_s = 1.0", "",
            "[providers.openai]", f'api_key = "{SERVER_KEY}"', ""]
    for name, targets in groups.items():
        text += [f'[models."{name}"]', f"targets = [{', '.join(targets)}]"]
        if name == "patient":
            text.append("first_byte_timeout_s = 0.5")
        text.append("")
    text += ['[models."split"]', 'strategy = "weighted"',
             f"targets = [{_target('alpha', a, weight=1)}, {_target('beta', b, weight=3)}]", "",
             '[models."busy"]', 'strategy = "least-busy"',
             f"targets = [{_target('slow-600', a)}, {_target('slow-600', b)}]", "",
             '[models."in-order"]', f"targets = [{_target('slow-600', a)}, {_target('slow-600', b)}]", "",
             '[models."vectors"]',
             f'targets = [{{ model = "openai-compatible/emb", base_url = "http://127.0.0.1:{free_port()}/v1" }}, '
             f"{_target('emb', c)}]", ""]
    config = tmp_path_factory.mktemp("groups") / "gateway.toml"
    config.write_text("\n".join(text))
    gateway = start_gateway(log_dir, {"OPENAI_BASE_URL": a.url + "/v1"}, ["--config", str(config)])
    yield Fleet(a, b, c, gateway)
    for proc in (gateway, a, b, c):
        proc.stop()


def _group(fleet: Fleet, name: str) -> dict[str, Any]:
    body = http.get_json(fleet.gateway.url + "/providers")
    return next(g for g in body["groups"] if g["name"] == name)


# ---------------------------------------------------------------- fallback order, streamed and not


def test_fallback_in_order_and_served_by_header(fleet: Fleet) -> None:
    raw = fleet.client().chat.completions.with_raw_response.create(model="gpt-5", messages=USER)  # type: ignore[arg-type]
    completion = raw.parse()
    assert completion.choices[0].message.content == "echo: hi"
    assert completion.model == "gpt-5"  # what the client asked for
    assert raw.headers["x-acore-served-by"] == "openai-compatible/echo"
    assert (_calls(fleet.a, "error-500"), _calls(fleet.b, "error-429"), _calls(fleet.c, "echo")) == (1, 1, 1)

    # the 429 said Retry-After: 7, so that target is left alone meanwhile; the 500 is tried again
    stream = fleet.client().chat.completions.create(model="gpt-5", messages=USER, stream=True)  # type: ignore[arg-type]
    text = "".join(chunk.choices[0].delta.content or "" for chunk in stream if chunk.choices)
    assert text == "echo: hi"
    assert (_calls(fleet.a, "error-500"), _calls(fleet.b, "error-429"), _calls(fleet.c, "echo")) == (2, 1, 2)


def test_a_nested_alias_runs_the_inner_groups_targets(fleet: Fleet) -> None:
    reply = http.post(fleet.gateway.url + "/v1/chat/completions", {"model": "nested", "messages": USER})
    assert reply.status == 200, reply.text
    assert reply.headers["x-acore-served-by"] == "openai-compatible/echo"
    assert reply.json()["model"] == "nested"


def test_no_retry_once_a_byte_went_to_the_client(fleet: Fleet) -> None:
    stream = fleet.client().chat.completions.create(model="no-rewind", messages=USER, stream=True)  # type: ignore[arg-type]
    received: list[str] = []
    with pytest.raises(openai.APIError):
        for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                received.append(chunk.choices[0].delta.content)
    assert received, "the first target's first chunk reached the client"
    assert _calls(fleet.c, "after-first-byte") == 0  # never retried elsewhere


def test_a_target_slow_to_its_first_byte_is_left_for_the_next(fleet: Fleet) -> None:
    started = time.monotonic()
    completion = fleet.client().chat.completions.create(model="patient", messages=USER)  # type: ignore[arg-type]
    assert completion.choices[0].message.content == "echo: hi"
    stream = fleet.client().chat.completions.create(model="patient", messages=USER, stream=True)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == "echo: hi"
    assert time.monotonic() - started < 2.9  # not the 3 s the slow target takes (a bound, not a timing claim)
    assert _calls(fleet.a, "slow-3000") == 2 and _calls(fleet.c, "quick") == 2


def test_parameter_caps_lower_what_the_request_asks(fleet: Fleet) -> None:
    fleet.client().chat.completions.create(model="capped", messages=USER, max_tokens=500)  # type: ignore[arg-type]
    fleet.client().chat.completions.create(model="capped", messages=USER, max_completion_tokens=3)  # type: ignore[arg-type]
    bodies = [r["body"] for r in http.records(fleet.c) if (r.get("body") or {}).get("model") == "capped"]
    assert bodies[0]["max_tokens"] == 7
    assert bodies[1]["max_completion_tokens"] == 3  # under the cap: unchanged


# ---------------------------------------------------------------- circuit breaker


def test_breaker_opens_skips_then_probes_and_closes(fleet: Fleet) -> None:
    client = fleet.client()
    for _ in range(3):  # flaky-4 fails its first four requests; each of these is served by the backup
        raw = client.chat.completions.with_raw_response.create(model="breaker", messages=USER)  # type: ignore[arg-type]
        assert raw.headers["x-acore-served-by"] == "openai-compatible/backup"
    first = _group(fleet, "breaker")["targets"][0]
    assert first["circuit"] == "open" and first["consecutive_failures"] == 3
    metrics = http.get(fleet.gateway.url + "/metrics").text
    assert 'acore_route_circuit_open{group="breaker",target="openai-compatible/flaky-4@' in metrics

    client.chat.completions.create(model="breaker", messages=USER)  # type: ignore[arg-type]
    assert _calls(fleet.a, "flaky-4") == 3  # skipped while open

    time.sleep(1.1)  # the cooldown (1 s) passed: one probe, which fails (the 4th) and doubles the cooldown
    client.chat.completions.create(model="breaker", messages=USER)  # type: ignore[arg-type]
    assert _calls(fleet.a, "flaky-4") == 4
    first = _group(fleet, "breaker")["targets"][0]
    assert first["circuit"] == "open" and first["open_for_s"] > 1.0

    time.sleep(2.1)
    raw = client.chat.completions.with_raw_response.create(model="breaker", messages=USER)  # type: ignore[arg-type]
    assert raw.headers["x-acore-served-by"] == "openai-compatible/flaky-4"  # the probe succeeded
    first = _group(fleet, "breaker")["targets"][0]
    assert first["circuit"] == "closed" and first["consecutive_failures"] == 0


# ---------------------------------------------------------------- every target failed


def test_every_target_failed_is_503_naming_each_without_secrets(fleet: Fleet) -> None:
    with pytest.raises(openai.InternalServerError) as caught:
        fleet.client().chat.completions.create(model="all-down", messages=USER)  # type: ignore[arg-type]
    error = caught.value
    assert error.status_code == 503
    body = error.body if isinstance(error.body, dict) else {}
    assert body.get("code") == "all_targets_failed"
    message = str(body.get("message"))
    assert "openai-compatible/error-500" in message and "openai-compatible/error-503" in message
    assert SERVER_KEY not in message


# ---------------------------------------------------------------- weighted and least-busy


def test_weighted_split_within_tolerance(fleet: Fleet) -> None:
    before = (_calls(fleet.a, "alpha"), _calls(fleet.b, "beta"))
    for _ in range(300):
        reply = http.post(fleet.gateway.url + "/v1/chat/completions", {"model": "split", "messages": USER})
        assert reply.status == 200
    alpha, beta = _calls(fleet.a, "alpha") - before[0], _calls(fleet.b, "beta") - before[1]
    assert alpha + beta == 300
    assert 40 <= alpha <= 110, (alpha, beta)  # expected 75 (weights 1:3); binomial sd 7.5


def _concurrent(fleet: Fleet, model: str, count: int) -> None:
    errors: list[BaseException] = []

    def one() -> None:
        try:
            reply = http.post(fleet.gateway.url + "/v1/chat/completions", {"model": model, "messages": USER})
            assert reply.status == 200, reply.text
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=one) for _ in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors


def test_least_busy_spreads_concurrent_requests_where_fallback_does_not(fleet: Fleet) -> None:
    http.clear_records(fleet.a)
    http.clear_records(fleet.b)
    _concurrent(fleet, "busy", 8)
    busy_a, busy_b = _calls(fleet.a, "slow-600"), _calls(fleet.b, "slow-600")
    assert busy_a + busy_b == 8 and abs(busy_a - busy_b) <= 2, (busy_a, busy_b)
    _concurrent(fleet, "in-order", 8)
    assert _calls(fleet.a, "slow-600") - busy_a == 8  # fallback: always the first while it answers


# ---------------------------------------------------------------- the request's own list, other routes


def test_request_models_list_falls_back_and_is_capped(fleet: Fleet) -> None:
    raw = fleet.client().chat.completions.with_raw_response.create(
        model="openai/error-502", messages=USER, extra_body={"models": ["openai/from-list"]})  # type: ignore[arg-type]
    assert raw.headers["x-acore-served-by"] == "openai/from-list"
    assert raw.parse().model == "openai/error-502"
    sent = [r for r in http.records(fleet.a) if (r.get("body") or {}).get("model") == "from-list"]
    assert "models" not in sent[-1]["body"]  # our extension never reaches the upstream
    assert sent[-1]["headers"].get("Authorization") == f"Bearer {SERVER_KEY}"

    too_many = http.post(fleet.gateway.url + "/v1/chat/completions",
                         {"model": "openai/a", "messages": USER, "models": [f"openai/m{i}" for i in range(6)]})
    assert too_many.status == 400 and too_many.json()["error"]["param"] == "models"
    unknown = http.post(fleet.gateway.url + "/v1/chat/completions",
                        {"model": "openai/a", "messages": USER, "models": ["nowhere/x"]})
    assert unknown.status == 404 and unknown.json()["error"]["code"] == "model_not_found"


def test_aliases_listed_and_served_on_responses_and_embeddings(fleet: Fleet) -> None:
    client = fleet.client()
    ids = {m.id for m in client.models.list()}
    assert {"gpt-5", "breaker", "split", "vectors"} <= ids
    one = http.get_json(fleet.gateway.url + "/v1/models/gpt-5")
    assert one["id"] == "gpt-5" and one["targets"][-1] == "openai-compatible/echo"

    response = client.responses.create(model="gpt-5", input="hi")
    assert response.output_text == "echo: hi"
    assert response.model == "gpt-5"

    # the first target's port has nothing listening: the second one embeds
    vectors = client.embeddings.create(model="vectors", input=["a", "b"])
    assert len(vectors.data) == 2 and vectors.model == "vectors"


# ---------------------------------------------------------------- bad groups stop the start


@pytest.mark.parametrize(("toml", "named"), [
    ('[models."a"]\ntargets = ["b"]\n[models."b"]\ntargets = ["a"]\n', "alias cycle: a -> b -> a"),
    ('[models."x"]\ntargets = ["nowhere/model"]\n', "unknown provider 'nowhere'"),
    ('[models."y"]\ntargets = [{ weight = 2 }]\n', "[models.'y'] targets[0] needs model"),
    ('[models."z"]\nstrategy = "random"\ntargets = ["openai/a"]\n', "strategy must be one of"),
])
def test_bad_groups_stop_the_start_naming_the_entry(tmp_path: Path, toml: str, named: str) -> None:
    config = tmp_path / "bad.toml"
    config.write_text(toml)
    done = subprocess.run([sys.executable, "-m", "gateway", "--port", str(free_port()), "--no-default-embeddings",
                           "--config", str(config)], cwd=REPO, env=base_env(), capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2, done.stderr
    assert named in done.stderr


def test_sighup_reloads_groups_and_a_bad_file_keeps_the_old(log_dir: Path, fleet: Fleet, tmp_path: Path) -> None:
    config = tmp_path / "reload.toml"
    config.write_text(f'[models."first"]\ntargets = [{_target("one", fleet.c)}]\n')
    gateway = start_gateway(log_dir, {}, ["--config", str(config)])
    try:
        def served(model: str) -> str | None:
            reply = http.post(gateway.url + "/v1/chat/completions", {"model": model, "messages": USER})
            return reply.headers.get("x-acore-served-by") if reply.status == 200 else None

        assert served("first") == "openai-compatible/one"
        config.write_text(f'[models."first"]\ntargets = [{_target("two", fleet.c)}]\n')
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while served("first") != "openai-compatible/two" and time.monotonic() < deadline:
            time.sleep(0.1)
        assert served("first") == "openai-compatible/two"
        config.write_text('[models."first"]\ntargets = ["nowhere/x"]\n')
        gateway.process.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while "not reloaded" not in gateway.log() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert "unknown provider 'nowhere'" in gateway.log()
        assert served("first") == "openai-compatible/two"
    finally:
        gateway.stop()
