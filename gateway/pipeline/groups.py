"""Model aliases and groups, as the config file writes them (``[models."name"]``) and checked once.

    [models."gpt-5"]
    strategy = "fallback"            # fallback | weighted | least-busy | latency
    targets = ["openai/gpt-5", { model = "lmstudio/qwen3", weight = 2, max_tokens = 4096 }]

A plain string target is ``{ model = "…" }``. A target may name another alias: groups are
flattened here, so a cycle is found at start and names its entry. Whether each target's provider
exists is checked against the registry (``ProviderRegistry.check_groups``), which knows the names.
Nothing here does I/O; the router (``pipeline.routing``) runs the groups.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

STRATEGIES = ("fallback", "weighted", "least-busy", "latency")
# Per-target caps on what a request may ask of that target (the request's value is lowered to the cap).
CAPPED_PARAMS = ("max_tokens",)
_TARGET_KEYS = frozenset({"model", "base_url", "weight", *CAPPED_PARAMS})
_GROUP_KEYS = frozenset({"strategy", "targets", "attempts", "deadline_s", "first_byte_timeout_s"})


class GroupError(ValueError):
    """A malformed ``[models]`` entry; config.py turns it into a ConfigError."""


@dataclass(frozen=True, slots=True)
class GroupTarget:
    model: str  # provider/model
    base_url: str | None = None  # the operator's: trusted like a configured provider URL
    weight: float = 1.0
    max_tokens: int | None = None

    @property
    def key(self) -> str:
        """The target's name in /providers, /metrics and x-acore-served-by."""
        return f"{self.model}@{self.base_url}" if self.base_url else self.model


@dataclass(frozen=True, slots=True)
class ModelGroup:
    name: str
    targets: tuple[GroupTarget, ...]
    strategy: str = "fallback"
    attempts: int | None = None  # targets tried at most (default: every target once)
    deadline_s: float | None = None  # all attempts together, before the first byte
    first_byte_timeout_s: float | None = None  # a target slower than this to answer is left for the next


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    """``[routing]``: the circuit breaker and the request's own ``models`` list."""

    breaker_failures: int = 3  # consecutive failures that open a target's circuit
    breaker_cooldown_s: float = 5.0  # first open period; doubles on each failed probe
    breaker_max_cooldown_s: float = 300.0
    max_request_models: int = 5  # length cap of the request extension ``models: [...]``
    ttft_smoothing: float = 0.2  # weight of the newest sample in the latency strategy's moving average


def _number(label: str, value: Any, *, integer: bool = False) -> Any:
    """A positive number (``label`` names the setting in the error)."""
    if isinstance(value, bool) or not isinstance(value, int | float) or (integer and not isinstance(value, int)):
        raise GroupError(f"{label} must be a {'whole ' if integer else ''}number, got {value!r}")
    if not value > 0:
        raise GroupError(f"{label} must be greater than 0, got {value!r}")
    return value


def _target(entry: str, index: int, raw: Any) -> GroupTarget:
    where = f"[models.{entry!r}] targets[{index}]"
    if isinstance(raw, str):
        raw = {"model": raw}
    if not isinstance(raw, Mapping):
        raise GroupError(f"{where} must be a \"provider/model\" string or a table with model = ..., got {raw!r}")
    unknown = set(raw) - _TARGET_KEYS
    if unknown:
        raise GroupError(f"{where} has unknown keys: {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(sorted(_TARGET_KEYS))})")
    model = raw.get("model")
    if not isinstance(model, str) or not model.strip():
        raise GroupError(f"{where} needs model = \"provider/model\"")
    base_url = raw.get("base_url")
    if base_url is not None and (not isinstance(base_url, str) or "://" not in base_url):
        raise GroupError(f"{where} base_url must be an http(s):// URL, got {base_url!r}")
    weight = _number(f"{where}.weight", raw.get("weight", 1.0))
    max_tokens = raw.get("max_tokens")
    if max_tokens is not None:
        max_tokens = _number(f"{where}.max_tokens", max_tokens, integer=True)
    return GroupTarget(model=model.strip(), base_url=base_url, weight=float(weight), max_tokens=max_tokens)


def _group(name: str, raw: Any) -> ModelGroup:
    if not isinstance(raw, Mapping):
        raise GroupError(f"[models.{name!r}] must be a table with targets = [...]")
    unknown = set(raw) - _GROUP_KEYS
    if unknown:
        raise GroupError(f"[models.{name!r}] has unknown keys: {', '.join(sorted(unknown))}")
    strategy = raw.get("strategy", "fallback")
    if strategy not in STRATEGIES:
        raise GroupError(f"[models.{name!r}] strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}")
    targets = raw.get("targets")
    if not isinstance(targets, list) or not targets:
        raise GroupError(f"[models.{name!r}] needs targets = [\"provider/model\", ...] (at least one)")
    label = f"[models.{name!r}]"
    attempts, deadline, first_byte = (raw.get(k) for k in ("attempts", "deadline_s", "first_byte_timeout_s"))
    return ModelGroup(
        name=name,
        targets=tuple(_target(name, i, t) for i, t in enumerate(targets)),
        strategy=strategy,
        attempts=None if attempts is None else _number(f"{label} attempts", attempts, integer=True),
        deadline_s=None if deadline is None else float(_number(f"{label} deadline_s", deadline)),
        first_byte_timeout_s=None if first_byte is None else float(_number(f"{label} first_byte_timeout_s", first_byte)),
    )


def _flatten(name: str, groups: Mapping[str, ModelGroup], path: tuple[str, ...]) -> tuple[GroupTarget, ...]:
    """A group's targets with aliases among them replaced by their own targets (in place, in order)."""
    if name in path:
        raise GroupError(f"[models.{path[0]!r}] is an alias cycle: {' -> '.join((*path, name))}")
    flat: list[GroupTarget] = []
    for target in groups[name].targets:
        if target.model in groups:
            flat.extend(_flatten(target.model, groups, (*path, name)))
        else:
            flat.append(target)
    return tuple(flat)


def parse_groups(data: Any) -> dict[str, ModelGroup]:
    """The ``[models]`` table: one ModelGroup per entry, aliases of aliases flattened."""
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise GroupError("[models] must be a table of aliases: [models.\"name\"] targets = [...]")
    groups = {str(name): _group(str(name), raw) for name, raw in data.items()}
    out: dict[str, ModelGroup] = {}
    for name, group in groups.items():
        flat = _flatten(name, groups, ())
        out[name] = ModelGroup(name, flat, group.strategy, group.attempts, group.deadline_s, group.first_byte_timeout_s)
    return out


def parse_routing(data: Any) -> RoutingSettings:
    if data is None:
        return RoutingSettings()
    if not isinstance(data, Mapping):
        raise GroupError("[routing] must be a table")
    known = set(RoutingSettings.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise GroupError(f"unknown keys in [routing]: {', '.join(sorted(unknown))}")
    values: dict[str, Any] = {}
    for key, value in data.items():
        integer = key in ("breaker_failures", "max_request_models")
        values[key] = _number(f"[routing] {key}", value, integer=integer)
    settings = RoutingSettings(**values)
    if not 0 < settings.ttft_smoothing <= 1:
        raise GroupError(f"[routing] ttft_smoothing must be in (0, 1], got {settings.ttft_smoothing}")
    return settings
