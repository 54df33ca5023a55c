"""/metrics, the access log, Server-Timing and the debug logs, with real traffic through a real gateway.

One gateway (module fixture) with a gateway key, a metrics key, --debug and its debug logs in a
temporary directory, its openai provider pointed at the fake upstream and one supervised echo
worker (tests/fakes/echo_backend.py) for the local path. Metrics are compared as deltas of
/metrics scrapes parsed with prometheus-client's own parser; logs are read as files. Nothing
asserts a timing: the box is shared.
"""

from __future__ import annotations

import base64
import hashlib
import json
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests import http
from tests.procs import Proc, start_gateway

GATEWAY_KEY = "gw-obs-key-4f8a2c9d1e"
METRICS_KEY = "mk-obs-metrics-7b3e91"
SERVER_KEY = "sk-obs-server-0a1b2c3d4e5f"
CLIENT_KEY = "client-provided-key-99x88y"  # not key-shaped: only the request's own masking catches it
BODY_KEY = "body-key-qwerty-556677"
ALL_KEYS = (GATEWAY_KEY, METRICS_KEY, SERVER_KEY, CLIENT_KEY, BODY_KEY)
AUTH = {"Authorization": f"Bearer {GATEWAY_KEY}"}
CHAT = "/v1/chat/completions"
PNG = base64.b64decode("iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNk+M9QDwADhgGAWjR9awAAAABJRU5ErkJggg==")

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def wait_for(predicate: Callable[[], Any], what: str, timeout: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture(scope="module")
def obs_gw(log_dir: Path, fake_openai: Proc, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Proc]:
    base = tmp_path_factory.mktemp("observability")
    config = base / "gateway.toml"
    config.write_text('[[workers]]\nprovider = "echo"\nmodel = "delay=0.001"\nname = "obs"\n')
    env = {"OPENAI_BASE_URL": fake_openai.url + "/v1", "OPENAI_API_KEY": SERVER_KEY, "ACORE_API_KEY": GATEWAY_KEY,
           "ACORE_METRICS_KEY": METRICS_KEY, "ACORE_TEST_BACKENDS": "1", "ACORE_LOG_DIR": str(base / "debug")}
    proc = start_gateway(log_dir, env, ["--debug", "--config", str(config)])
    try:
        wait_for(lambda: scrape(proc).get(("acore_worker_up", _labels(provider="llamacpp", model="obs"))) == 1,
                 "the echo worker to join", 30)
        yield proc
    finally:
        proc.stop()


def debug_dir(gw: Proc) -> Path:
    text = gw.log()
    for line in text.splitlines():
        if line.startswith("{") and "debug logs in" in line:
            return Path(json.loads(line)["msg"].split("debug logs in ", 1)[1])
    raise AssertionError("the gateway did not say where its debug logs are")


def _labels(**labels: str) -> frozenset[tuple[str, str]]:
    return frozenset(labels.items())


def scrape(gw: Proc, headers: dict[str, str] | None = None) -> Samples:
    """/metrics as {(sample name, labels): value}; worker labels are dropped (they carry a pid)."""
    reply = http.get(gw.url + "/metrics", headers=headers or AUTH)
    assert reply.status == 200, reply.text
    assert reply.headers["content-type"].startswith("text/plain")
    samples: Samples = {}
    for family in text_string_to_metric_families(reply.text):
        for sample in family.samples:
            labels = {k: v for k, v in sample.labels.items() if k != "worker"}
            key = (sample.name, frozenset(labels.items()))
            samples[key] = samples.get(key, 0.0) + sample.value
    return samples


def delta(before: Samples, after: Samples, name: str, **labels: str) -> float:
    key = (name, _labels(**labels))
    return after.get(key, 0.0) - before.get(key, 0.0)


def chat(gw: Proc, model: str, content: str = "hello there", *, request_id: str | None = None,
         headers: dict[str, str] | None = None, **extra: Any) -> http.Reply:
    sent = {**AUTH, **({"x-request-id": request_id} if request_id else {}), **(headers or {})}
    return http.post(gw.url + CHAT, {"model": model, "messages": [{"role": "user", "content": content}], **extra},
                     headers=sent)


def content_of(reply: http.Reply) -> str:
    text = []
    for data in reply.sse_data():
        if data == "[DONE]":
            continue
        for choice in json.loads(data).get("choices") or ():
            text.append(choice.get("delta", {}).get("content") or "")
    return "".join(text)


def access_entry(gw: Proc, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for line in gw.log().splitlines():
            if line.startswith("{") and f'"{request_id}"' in line:
                entry = json.loads(line)
                if entry.get("logger") == "acore.access" and entry.get("request_id") == request_id:
                    return entry
        return None

    found: dict[str, Any] = wait_for(find, f"the access line of {request_id}")
    return found


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def entry_in(directory: Path, pattern: str, request_id: str) -> dict[str, Any]:
    def find() -> dict[str, Any] | None:
        for path in directory.glob(pattern):
            for entry in jsonl(path):
                if entry.get("request_id") == request_id:
                    return entry
        return None

    found: dict[str, Any] = wait_for(find, f"{pattern} entry of {request_id}")
    return found


def rid() -> str:
    return "obs-" + uuid.uuid4().hex[:12]


# ---------------------------------------------------------------- /metrics


def test_counters_move_by_the_right_amounts(obs_gw: Proc) -> None:
    before = scrape(obs_gw)
    for _ in range(3):
        assert chat(obs_gw, "openai/echo").status == 200
    for _ in range(2):  # the fake sends usage (5 in, 3 out) in its last chunk only when asked
        streamed = chat(obs_gw, "openai/echo", stream=True, stream_options={"include_usage": True})
        assert streamed.status == 200 and streamed.is_stream
    route = {"route": CHAT, "provider": "openai", "model": "echo"}
    after = wait_for(lambda: (s := scrape(obs_gw)) and delta(before, s, "acore_requests_total", **route,
                                                             status="200") == 5 and s, "5 requests counted")
    assert delta(before, after, "acore_request_duration_seconds_count", **route) == 5
    assert delta(before, after, "acore_gateway_overhead_seconds_count", route=CHAT) == 5
    assert delta(before, after, "acore_time_to_first_token_seconds_count", provider="openai", model="echo") == 2
    assert delta(before, after, "acore_tokens_total", provider="openai", model="echo", kind="input") == 25
    assert delta(before, after, "acore_tokens_total", provider="openai", model="echo", kind="output") == 15
    assert delta(before, after, "acore_request_duration_seconds_sum", **route) > 0


def test_local_stream_tokens_counted_once(obs_gw: Proc) -> None:
    """The worker's Final carries usage; with include_usage the client also gets a usage chunk: once."""
    before = scrape(obs_gw)
    words = "one two three four"
    streamed = chat(obs_gw, "llamacpp/obs", words, stream=True, max_tokens=6,
                    stream_options={"include_usage": True})
    assert streamed.status == 200
    assert content_of(streamed) == " ".join(f"tok{i}" for i in range(6))
    plain = chat(obs_gw, "llamacpp/obs", words, stream=True, max_tokens=2)  # no usage chunk asked for
    assert plain.status == 200 and all('"usage"' not in d for d in plain.sse_data())
    labels = {"provider": "llamacpp", "model": "obs"}
    after = wait_for(lambda: (s := scrape(obs_gw)) and delta(before, s, "acore_requests_total", route=CHAT,
                                                             status="200", **labels) == 2 and s, "2 requests")
    assert delta(before, after, "acore_tokens_total", kind="input", **labels) == 8
    assert delta(before, after, "acore_tokens_total", kind="output", **labels) == 8
    assert delta(before, after, "acore_time_to_first_token_seconds_count", **labels) == 2


def test_responses_tokens_both_ways(obs_gw: Proc) -> None:
    """openai/ passes through to its own /v1/responses (usage from response.completed); a local model goes
    through the chat pipeline (usage from the worker). Streamed and not."""
    before = scrape(obs_gw)
    for stream in (False, True):
        native = http.post(obs_gw.url + "/v1/responses", {"model": "openai/echo", "input": "hi", "stream": stream},
                           headers=AUTH)
        assert native.status == 200, native.text
        local = http.post(obs_gw.url + "/v1/responses", {"model": "llamacpp/obs", "input": "hi you",
                                                         "max_output_tokens": 3, "stream": stream}, headers=AUTH)
        assert local.status == 200, local.text
    route = {"route": "/v1/responses", "status": "200"}
    after = wait_for(lambda: (s := scrape(obs_gw)) and delta(before, s, "acore_requests_total", provider="llamacpp",
                                                             model="obs", **route) == 2 and s, "2 local responses")
    assert delta(before, after, "acore_requests_total", provider="openai", model="echo", **route) == 2
    assert delta(before, after, "acore_tokens_total", provider="openai", model="echo", kind="input") == 10
    assert delta(before, after, "acore_tokens_total", provider="openai", model="echo", kind="output") == 6
    assert delta(before, after, "acore_tokens_total", provider="llamacpp", model="obs", kind="input") == 4
    assert delta(before, after, "acore_tokens_total", provider="llamacpp", model="obs", kind="output") == 6
    assert delta(before, after, "acore_time_to_first_token_seconds_count", provider="openai", model="echo") == 1
    assert delta(before, after, "acore_time_to_first_token_seconds_count", provider="llamacpp", model="obs") == 2


def test_prompt_cache_hits_and_embedding_batches(obs_gw: Proc) -> None:
    before = scrape(obs_gw)
    # The echo worker reports one cached token whenever a prompt_cache_key is given.
    assert chat(obs_gw, "llamacpp/obs", "cache me", max_tokens=2, prompt_cache_key="k1").status == 200
    embedded = http.post(obs_gw.url + "/v1/embeddings", {"model": "llamacpp/obs", "input": ["a b", "c", "d e f"]},
                         headers=AUTH)
    assert embedded.status == 200, embedded.text
    labels = {"provider": "llamacpp", "model": "obs"}
    after = wait_for(lambda: (s := scrape(obs_gw)) and delta(before, s, "acore_embedding_batch_size_count",
                                                             **labels) == 1 and s, "the embeddings request")
    assert delta(before, after, "acore_prompt_cache_hits_total", **labels) == 1
    assert delta(before, after, "acore_prompt_cache_tokens_saved_total", **labels) == 1
    assert delta(before, after, "acore_tokens_total", kind="cached", **labels) == 1
    assert delta(before, after, "acore_embedding_batch_size_sum", **labels) == 3
    assert delta(before, after, "acore_tokens_total", kind="input", **labels) == 2 + 6  # 2 prompt words + 6 embedded


def test_upstream_errors_by_kind(obs_gw: Proc) -> None:
    before = scrape(obs_gw)
    assert chat(obs_gw, "openai/error-503").status == 503
    assert chat(obs_gw, "openai/error-429").status == 429
    assert chat(obs_gw, "openai/error-400").status == 400
    assert chat(obs_gw, "openai/echo", n=10**9).status == 400  # our own check: no upstream error
    after = wait_for(lambda: (s := scrape(obs_gw)) and delta(before, s, "acore_upstream_errors_total",
                                                             provider="openai", kind="rejected") == 1 and s,
                     "the rejected request")
    assert delta(before, after, "acore_upstream_errors_total", provider="openai", kind="server_error") == 1
    assert delta(before, after, "acore_upstream_errors_total", provider="openai", kind="rate_limited") == 1


def test_unknown_model_names_create_no_series(obs_gw: Proc) -> None:
    before = scrape(obs_gw)
    names = [f"nope-{uuid.uuid4().hex[:10]}" for _ in range(5)]
    for name in names:
        assert chat(obs_gw, f"llamacpp/{name}").status == 404
    assert chat(obs_gw, "openai/error-404").status == 404
    assert http.get(obs_gw.url + f"/v1/{names[0]}", headers=AUTH).status == 404
    other = {"route": CHAT, "model": "other", "status": "404"}
    after = wait_for(lambda: (s := scrape(obs_gw)) and delta(before, s, "acore_requests_total", provider="llamacpp",
                                                             **other) == 5 and s, "the 404s counted as model other")
    assert delta(before, after, "acore_requests_total", provider="openai", **other) == 1
    assert delta(before, after, "acore_requests_total", route="other", provider="", model="", status="404") == 1
    text = http.get(obs_gw.url + "/metrics", headers=AUTH).text
    assert not any(name in text for name in names)
    assert "error-404" not in text  # the upstream refused it: never a label


def test_metrics_need_a_key(obs_gw: Proc) -> None:
    assert http.get(obs_gw.url + "/metrics").status == 401
    assert http.get(obs_gw.url + "/metrics", headers={"Authorization": "Bearer wrong-key-000"}).status == 401
    assert scrape(obs_gw, {"Authorization": f"Bearer {METRICS_KEY}"})
    # the metrics key opens /metrics only
    assert http.get(obs_gw.url + "/v1/models", headers={"Authorization": f"Bearer {METRICS_KEY}"}).status == 401


def test_worker_gauges(obs_gw: Proc) -> None:
    samples = scrape(obs_gw)
    labels = _labels(provider="llamacpp", model="obs")
    assert samples[("acore_worker_up", labels)] == 1
    for name in ("acore_worker_active", "acore_worker_queued", "acore_worker_requests"):
        assert (name, labels) in samples
    assert ("acore_worker_restarts_total", frozenset()) in samples
    assert ("acore_worker_dropped_frames_total", frozenset()) in samples
    assert samples[("acore_in_flight_requests", frozenset())] >= 1  # the scrape itself


# ---------------------------------------------------------------- access log and Server-Timing


def test_access_line_of_a_stream_has_its_tokens(obs_gw: Proc) -> None:
    request_id = rid()
    reply = chat(obs_gw, "llamacpp/obs", "a b c", request_id=request_id, stream=True, max_tokens=4)
    assert reply.status == 200
    entry = access_entry(obs_gw, request_id)
    assert (entry["method"], entry["path"], entry["status"]) == ("POST", CHAT, 200)
    assert (entry["provider"], entry["model"], entry["stream"]) == ("llamacpp", "obs", True)
    assert (entry["tokens_in"], entry["tokens_out"], entry["tokens_cached"]) == (3, 4, 0)
    assert entry["ttft_ms"] is not None and entry["duration_ms"] >= entry["ttft_ms"]
    assert entry["upstream_ms"] is not None and entry["client"] == "127.0.0.1"


def test_a_stream_the_client_leaves_counts_the_tokens_made_so_far(obs_gw: Proc) -> None:
    """The worker's own token counts arrive with its chunks: a stream cut short by the client still
    shows what it cost (output tokens; the prompt's count comes only with the worker's Final)."""
    before = scrape(obs_gw)
    request_id = rid()
    from openai import OpenAI

    client = OpenAI(base_url=obs_gw.url + "/v1", api_key=GATEWAY_KEY, max_retries=0)
    stream = client.chat.completions.create(model="llamacpp/obs", stream=True, max_tokens=5000,
                                            messages=[{"role": "user", "content": "go on"}],
                                            extra_headers={"x-request-id": request_id})
    seen = 0
    for chunk in stream:
        if chunk.choices and chunk.choices[0].delta.content:
            seen += 1
            if seen == 5:
                break
    stream.close()  # the client hangs up mid-stream
    entry = access_entry(obs_gw, request_id)
    assert entry["stream"] is True and entry["tokens_in"] == 2  # "go on": the echo worker counts words
    assert 5 <= entry["tokens_out"] < 5000
    after = scrape(obs_gw)
    counted = delta(before, after, "acore_tokens_total", provider="llamacpp", model="obs", kind="output")
    assert counted == entry["tokens_out"]


def test_openai_compatible_stream_counts_tokens_the_client_did_not_ask_for(obs_gw: Proc, fake_openai: Proc) -> None:
    """The gateway asks the upstream for usage on every stream; the client gets exactly what it asked."""
    before = scrape(obs_gw)
    quiet, asked = rid(), rid()
    plain = chat(obs_gw, "openai/echo", "count me", request_id=quiet, stream=True)
    with_usage = chat(obs_gw, "openai/echo", "count me", request_id=asked, stream=True,
                      stream_options={"include_usage": True})
    assert plain.status == with_usage.status == 200
    events = [json.loads(data) for data in plain.sse_data() if data != "[DONE]"]
    assert events and all("usage" not in event and event["choices"] for event in events)
    assert content_of(plain) == "echo: count me"
    usage_chunks = [json.loads(d) for d in with_usage.sse_data() if d != "[DONE]" and not json.loads(d)["choices"]]
    assert [chunk["usage"]["completion_tokens"] for chunk in usage_chunks] == [3]
    for request_id in (quiet, asked):
        entry = access_entry(obs_gw, request_id)
        assert (entry["provider"], entry["tokens_in"], entry["tokens_out"]) == ("openai", 5, 3)
    after = scrape(obs_gw)
    assert delta(before, after, "acore_tokens_total", provider="openai", model="echo", kind="output") == 6
    sent = [r["body"] for r in http.records(fake_openai)
            if isinstance(r.get("body"), dict) and "count me" in json.dumps(r["body"].get("messages"))]
    assert [body["stream_options"] for body in sent] == [{"include_usage": True}] * 2


def test_a_server_that_refuses_stream_options_is_asked_again_without(obs_gw: Proc, fake_openai: Proc) -> None:
    """stream_usage on a strict server (422 for the extra field: nothing was generated): the same stream is
    asked again without stream_options, once, and that server is not asked with it again."""
    http.clear_records(fake_openai)
    for _ in range(2):
        reply = chat(obs_gw, "openai/strict", "strict one", stream=True)
        assert reply.status == 200 and content_of(reply) == "echo: strict one"
    sent = [r["body"] for r in http.records(fake_openai) if r["path"] == "/v1/chat/completions"]
    assert ["stream_options" in body for body in sent] == [True, False, False]
    reply = chat(obs_gw, "openai/strict", "strict one", stream=True, stream_options={"include_usage": True})
    assert reply.status == 422 and "stream_options" in reply.json()["error"]["message"]  # the client's own ask


def test_server_timing_header(obs_gw: Proc) -> None:
    for reply in (chat(obs_gw, "openai/echo"), chat(obs_gw, "openai/echo", stream=True)):
        assert reply.status == 200
        parts = dict(part.strip().split(";dur=") for part in reply.headers["server-timing"].split(","))
        assert set(parts) == {"upstream", "gateway"}
        assert float(parts["upstream"]) >= 0 and float(parts["gateway"]) >= 0


# ---------------------------------------------------------------- debug logs


def test_verbatim_log_of_a_stream_is_what_the_client_received(obs_gw: Proc) -> None:
    request_id = rid()
    reply = chat(obs_gw, "openai/echo", "tell me everything", request_id=request_id, stream=True,
                 stream_options={"include_usage": True})
    received = content_of(reply)
    assert received == "echo: tell me everything"
    entry = entry_in(debug_dir(obs_gw), "verbatim_*.jsonl", request_id)
    assert entry["stream"] is True and entry["provider"] == "openai"
    assert entry["request"]["messages"] == [{"role": "user", "content": "tell me everything"}]
    assert entry["response"]["choices"][0]["message"]["content"] == received
    assert entry["response"]["choices"][0]["finish_reason"] == "stop"
    tokens = entry["metadata"]["tokens"]
    assert tokens["input"] + tokens["output"] == 8  # jq '.metadata.tokens | .input + .output'
    assert entry["metadata"]["success"] is True


def test_payload_and_events_logs(obs_gw: Proc) -> None:
    request_id = rid()
    image = "data:image/png;base64," + base64.b64encode(PNG).decode()
    body = {"model": "openai/echo", "api_key": BODY_KEY,
            "messages": [{"role": "user", "content": [{"type": "text", "text": "look"},
                                                      {"type": "image_url", "image_url": {"url": image}}]}]}
    reply = http.post(obs_gw.url + CHAT, body, headers={**AUTH, "x-request-id": request_id})
    assert reply.status == 200, reply.text
    directory = debug_dir(obs_gw)
    payload = entry_in(directory, "*-payloads.jsonl", request_id)
    assert payload["method"] == "POST" and payload["path"] == CHAT
    assert payload["headers"]["Authorization"] == "[REDACTED]"
    assert payload["payload"]["api_key"] == "[REDACTED]"
    part = payload["payload"]["messages"][0]["content"][1]["image_url"]["url"]
    assert part == {"type": "image/png", "size": len(PNG), "sha256": hashlib.sha256(PNG).hexdigest()}
    events = entry_in(directory, "acore_*.log", request_id)  # the first entry of the request: its chat event
    assert events["logger"].startswith("acore.")
    verbatim = entry_in(directory, "verbatim_*.jsonl", request_id)
    assert "base64" not in json.dumps(verbatim)


def test_no_key_in_any_log_or_metric(obs_gw: Proc) -> None:
    """Keys in every place a client can put one: none reaches a log file, the process log or /metrics."""
    chat(obs_gw, "openai/echo", headers={"X-Provider-API-Key": CLIENT_KEY})
    chat(obs_gw, "openai/echo", stream=True, api_key=BODY_KEY)
    http.get(obs_gw.url + f"/v1/models?api_key={CLIENT_KEY}", headers=AUTH)
    http.get(obs_gw.url + f"/acore/prompt_cache/stats?api_key={BODY_KEY}&model=llamacpp/obs", headers=AUTH)
    chat(obs_gw, "openai/echo", headers={"Authorization": f"Bearer {CLIENT_KEY}"})  # a wrong gateway key: 401
    metrics = http.get(obs_gw.url + "/metrics", headers={"Authorization": f"Bearer {METRICS_KEY}"}).text
    request_id = rid()
    assert chat(obs_gw, "openai/echo", request_id=request_id).status == 200
    directory = debug_dir(obs_gw)
    entry_in(directory, "verbatim_*.jsonl", request_id)  # everything before it has been written too
    access_entry(obs_gw, request_id)
    files = [p for p in directory.iterdir() if p.is_file()]
    assert {p.name.split("_")[0] for p in files if not p.name.endswith("-payloads.jsonl")} == {"acore", "verbatim"}
    assert any(p.name.endswith("-payloads.jsonl") for p in files)
    texts = {str(p): p.read_text() for p in files}
    texts["process log"] = obs_gw.log()
    texts["/metrics"] = metrics
    for where, text in texts.items():
        for key in ALL_KEYS:
            assert key not in text, f"{key} in {where}"


# ---------------------------------------------------------------- formats and switches


def test_text_access_log_to_a_file(log_dir: Path, fake_openai: Proc, tmp_path: Path) -> None:
    access = tmp_path / "access.log"
    gw = start_gateway(log_dir, {"OPENAI_BASE_URL": fake_openai.url + "/v1", "OPENAI_API_KEY": SERVER_KEY},
                       ["--log-format", "text", "--log-file", str(access)])
    try:
        request_id = rid()
        reply = http.post(gw.url + CHAT, {"model": "openai/echo", "messages": [{"role": "user", "content": "x"}],
                                          "stream": True, "stream_options": {"include_usage": True}},
                          headers={"x-request-id": request_id})
        assert reply.status == 200
        line = wait_for(lambda: next((x for x in (access.read_text().splitlines() if access.exists() else [])
                                      if request_id in x), None), "the text access line")
    finally:
        gw.stop()
    assert f"acore.access: {request_id} POST {CHAT} 200" in line
    for part in ("provider=openai", "model=echo", "stream=true", "tokens_in=5", "tokens_out=3", "ttft_ms=",
                 "duration_ms=", "upstream_ms=", "client=127.0.0.1"):
        assert part in line
    assert request_id not in gw.log()  # the access log went to the file, not stderr
    assert not line.startswith("{")


def test_switched_off(log_dir: Path, fake_openai: Proc) -> None:
    gw = start_gateway(log_dir, {"OPENAI_BASE_URL": fake_openai.url + "/v1", "OPENAI_API_KEY": SERVER_KEY,
                                 "ACORE_METRICS": "0"},
                       ["--no-access-log"])
    try:
        request_id = rid()
        reply = http.post(gw.url + CHAT, {"model": "openai/echo", "messages": [{"role": "user", "content": "x"}]},
                          headers={"x-request-id": request_id})
        assert reply.status == 200 and "server-timing" in reply.headers
        assert http.get(gw.url + "/metrics").status == 404
    finally:
        assert gw.stop() == 0  # a clean stop writes whatever the log writer still holds
    assert request_id not in gw.log()
