"""The [models] groups as parsed, and the router's order and breaker as pure state (no clock)."""

from __future__ import annotations

import random

import pytest

from gateway.config import ConfigError, GatewayConfig
from gateway.pipeline.groups import GroupError, GroupTarget, ModelGroup, RoutingSettings, parse_groups
from gateway.pipeline.routing import Circuit, Router, TargetHealth
from gateway.providers.registry import ProviderRegistry


def test_string_and_table_targets_and_defaults() -> None:
    groups = parse_groups({"gpt-5": {"targets": ["openai/gpt-5", {"model": "lmstudio/qwen3", "weight": 2,
                                                                    "max_tokens": 512}]}})
    group = groups["gpt-5"]
    assert group.strategy == "fallback" and group.attempts is None
    assert group.targets == (GroupTarget("openai/gpt-5"), GroupTarget("lmstudio/qwen3", weight=2.0, max_tokens=512))


def test_aliases_of_aliases_are_flattened_in_place() -> None:
    groups = parse_groups({"a": {"targets": ["openai/x", "b", "openai/z"]}, "b": {"targets": ["ollama/y"]}})
    assert [t.model for t in groups["a"].targets] == ["openai/x", "ollama/y", "openai/z"]


@pytest.mark.parametrize(("data", "message"), [
    ({"a": {"targets": ["b"]}, "b": {"targets": ["c"]}, "c": {"targets": ["a"]}}, "alias cycle: a -> b -> c -> a"),
    ({"a": {"targets": []}}, "needs targets"),
    ({"a": {"targets": [{"model": "openai/x", "weight": 0}]}}, "weight must be greater than 0"),
    ({"a": {"targets": [{"model": "openai/x", "colour": "red"}]}}, "unknown keys: colour"),
    ({"a": {"targets": ["openai/x"], "strategy": "random"}}, "strategy must be one of"),
    ({"a": {"targets": [42]}}, "must be a \"provider/model\" string"),
    ({"a": {"targets": ["openai/x"], "attempts": 1.5}}, "attempts must be a whole number"),
])
def test_malformed_groups_name_the_entry(data: dict[str, object], message: str) -> None:
    with pytest.raises(GroupError) as caught:
        parse_groups(data)
    assert message in str(caught.value)


def test_unknown_provider_is_a_config_error() -> None:
    registry = ProviderRegistry(GatewayConfig())
    with pytest.raises(ConfigError, match="unknown provider 'nowhere'"):
        registry.check_groups(GatewayConfig(models=parse_groups({"g": {"targets": ["nowhere/m"]}})))
    registry.check_groups(GatewayConfig(models=parse_groups({"g": {"targets": ["openai/m", "llamacpp/q", "anthropic/c"]}})))


def test_breaker_opens_after_n_failures_and_doubles_its_cooldown() -> None:
    settings = RoutingSettings(breaker_failures=3, breaker_cooldown_s=5.0, breaker_max_cooldown_s=12.0)
    health = TargetHealth()
    for _ in range(2):
        health.failed(settings, "500", None, now=100.0)
    assert health.circuit(100.0) is Circuit.CLOSED and health.refusal(100.0) is None
    health.failed(settings, "500", None, now=100.0)
    assert health.circuit(104.9) is Circuit.OPEN and health.refusal(104.9) is not None
    assert health.circuit(105.0) is Circuit.HALF_OPEN and health.refusal(105.0) is None
    health.probing = True
    assert "probe" in (health.refusal(105.0) or "")
    health.failed(settings, "500", None, now=105.0)  # the probe failed: 10 s now
    assert health.circuit(114.9) is Circuit.OPEN and health.circuit(115.0) is Circuit.HALF_OPEN
    health.failed(settings, "500", None, now=115.0)  # capped at 12 s
    assert health.circuit(126.9) is Circuit.OPEN and health.circuit(127.0) is Circuit.HALF_OPEN
    health.succeeded(0.2, 0.5)
    assert health.circuit(127.0) is Circuit.CLOSED and health.consecutive_failures == 0


def test_retry_after_keeps_a_target_aside_until_it_passes() -> None:
    health = TargetHealth()
    health.failed(RoutingSettings(), "429", 7.0, now=10.0)
    assert "Retry-After" in (health.refusal(16.9) or "")
    assert health.refusal(17.0) is None


def test_strategies_order_targets() -> None:
    router = Router()
    a, b, c = GroupTarget("openai/a"), GroupTarget("openai/b", weight=3), GroupTarget("openai/c")
    assert router.order(ModelGroup("f", (a, b, c))) == (a, b, c)
    router.health(a).in_flight, router.health(b).in_flight, router.health(c).in_flight = 2, 0, 1
    assert router.order(ModelGroup("l", (a, b, c), "least-busy")) == (b, c, a)
    router.health(a).ttft_s, router.health(b).ttft_s = 0.5, 0.1
    assert router.order(ModelGroup("t", (a, b, c), "latency"))[0] == c  # never measured: tried first
    router.health(c).ttft_s = 0.9
    assert router.order(ModelGroup("t", (a, b, c), "latency")) == (b, a, c)
    random.seed(7)
    firsts = [router.order(ModelGroup("w", (a, b), "weighted"))[0] for _ in range(4000)]
    share = firsts.count(b) / len(firsts)
    assert 0.70 < share < 0.80  # weight 3 of 4


def test_moving_average_of_time_to_first_byte() -> None:
    health = TargetHealth()
    health.succeeded(1.0, 0.25)
    health.succeeded(0.0, 0.25)
    assert health.ttft_s == pytest.approx(0.75)
