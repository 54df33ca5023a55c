"""Provider name -> provider, and ``provider/model`` -> (provider, model).

Built at app start-up from data (presets.toml) plus the native adapters; local
worker providers register themselves when the pool starts. No if/elif over names.
"""

from __future__ import annotations

import asyncio
import time
import tomllib
from collections.abc import Callable
from importlib import resources
from typing import NamedTuple

import aiohttp

from gateway.config import ConfigError, GatewayConfig
from gateway.errors import GatewayError, bad_request, model_not_found
from gateway.providers.anthropic import AnthropicProvider
from gateway.providers.base import ModelInfo, Provider, ProviderState, ProviderStatus
from gateway.providers.ollama import OllamaProvider
from gateway.providers.openai_compat import OpenAICompatibleProvider, Preset
from protocol.local import LOCAL_PROVIDERS

ProviderFactory = Callable[[GatewayConfig, aiohttp.ClientSession], Provider]


class Target(NamedTuple):
    """Where a model id leads: the provider, the provider's own model id, and the id to echo back."""

    provider: str
    model: str
    requested: str


def load_presets() -> dict[str, Preset]:
    text = resources.files("gateway.providers").joinpath("presets.toml").read_text("utf-8")
    return {name: Preset(name=name, **values) for name, values in tomllib.loads(text).items()}


def native_factories() -> dict[str, ProviderFactory]:
    """Providers that need their own translation code (one module each)."""
    return {"anthropic": AnthropicProvider, "ollama": OllamaProvider}


def _configured_providers(config: GatewayConfig, session: aiohttp.ClientSession) -> list[Provider]:
    """The providers the configuration makes: every preset vendor and every native adapter."""
    providers: list[Provider] = [OpenAICompatibleProvider(preset, config, session) for preset in load_presets().values()]
    providers += [factory(config, session) for factory in native_factories().values()]
    return providers


class ProviderRegistry:
    def __init__(self, config: GatewayConfig) -> None:
        self._configured: set[str] = set()  # names that come from the configuration (replaced on reload)
        self._config = config
        self._providers: dict[str, Provider] = {}
        self._status_cache: dict[str, tuple[float, ProviderStatus]] = {}
        self._status_locks: dict[str, asyncio.Lock] = {}
        self._pinned: tuple[str, str] | None = None

    @classmethod
    def build(cls, config: GatewayConfig, session: aiohttp.ClientSession) -> ProviderRegistry:
        registry = cls(config)
        registry.check_groups(config)
        for provider in _configured_providers(config, session):
            registry.register(provider)
            registry._configured.add(provider.name)
        return registry

    def reload(self, config: GatewayConfig, session: aiohttp.ClientSession) -> None:
        """A new configuration (SIGHUP): the configured providers are made again from it; the ones
        registered at run time (local workers) and the single-model pin stay."""
        fresh = {provider.name: provider for provider in _configured_providers(config, session)}
        for name in [n for n in self._providers if n in fresh or n in self._configured]:
            del self._providers[name]
        if self._pinned is None:  # a pinned registry (acore-endpoint) serves its one model only
            self._providers.update(fresh)
        self._configured = set(fresh)
        self._config = config
        self._status_cache.clear()

    def check_groups(self, config: GatewayConfig) -> None:
        """Every ``[models]`` target names a provider this gateway has (the configured ones and
        the local workers'): a ConfigError naming the entry otherwise, at start and on SIGHUP."""
        known = set(load_presets()) | set(native_factories()) | set(LOCAL_PROVIDERS) | set(self._providers)
        for group in config.models.values():
            for index, target in enumerate(group.targets):
                provider, sep, name = target.model.partition("/")
                if not sep or not provider or not name:
                    raise ConfigError(f"[models.{group.name!r}] target {target.model!r} must be provider/model "
                                      f"(or the name of another [models] entry)")
                if provider not in known:
                    raise ConfigError(f"[models.{group.name!r}] targets[{index}] {target.model!r}: unknown provider "
                                      f"{provider!r} (known: {', '.join(sorted(known))})")

    def register(self, provider: Provider, name: str | None = None) -> None:
        self._providers[name or provider.name] = provider
        self._status_cache.pop(name or provider.name, None)

    def get(self, name: str) -> Provider | None:
        return self._providers.get(name)

    def names(self) -> list[str]:
        return sorted(self._providers)

    # ------------------------------------------------------------------ model ids

    def pin(self, provider: str, model: str) -> None:
        """Single-model mode (acore-endpoint): every request goes to this model, whatever it names."""
        self._pinned = (provider, model)

    def resolve(self, model: str | None) -> Target:
        """Resolve a model id once per request; 404 for an unknown provider. An alias
        (``[models."name"]``) resolves to its first target: the doors that run every target in turn
        ask the router (gateway.pipeline.routing) instead."""
        if self._pinned is not None:
            return Target(self._pinned[0], self._pinned[1], model or f"{self._pinned[0]}/{self._pinned[1]}")
        config = self._config
        group = config.models.get(model) if model else None
        if group is not None:
            provider, _, name = group.targets[0].model.partition("/")
            return Target(provider, name, model or group.name)
        if not model:
            if config.default_provider and config.default_model:
                return Target(config.default_provider, config.default_model,
                              f"{config.default_provider}/{config.default_model}")
            raise bad_request(
                "you must provide a model parameter (or set ABSTRACTCORE_DEFAULT_PROVIDER and ABSTRACTCORE_DEFAULT_MODEL).",
                param="model",
            )
        provider, sep, name = model.partition("/")
        if not sep:
            if not config.default_provider:
                raise model_not_found(
                    f"The model '{model}' has no provider prefix (use provider/model) and "
                    "ABSTRACTCORE_DEFAULT_PROVIDER is not set."
                )
            provider, name = config.default_provider, model
        if not provider or not name:
            raise bad_request(f"Invalid model '{model}': expected provider/model.", param="model")
        if provider not in self._providers:
            raise model_not_found(
                f"The model '{model}' does not exist: unknown provider '{provider}'. "
                f"Known providers: {', '.join(self.names())}."
            )
        return Target(provider, name, model)

    def provider_for(self, name: str) -> Provider:
        provider = self._providers.get(name)
        if provider is None:
            raise model_not_found(f"Unknown provider '{name}'.")
        return provider

    # ------------------------------------------------------------------ discovery

    async def status(self, name: str, *, refresh: bool = False) -> ProviderStatus:
        """A provider's probed status, cached for the configured TTL."""
        ttl = self._config.limits.models_cache_ttl_s
        cached = self._status_cache.get(name)
        now = time.monotonic()
        if cached and not refresh and now - cached[0] < ttl:
            return cached[1]
        lock = self._status_locks.setdefault(name, asyncio.Lock())
        async with lock:
            cached = self._status_cache.get(name)
            if cached and not refresh and time.monotonic() - cached[0] < ttl:
                return cached[1]
            provider = self._providers[name]
            try:
                result = await asyncio.wait_for(provider.status(), self._config.limits.models_timeout_s + 0.5)
            except TimeoutError:
                result = ProviderStatus(ProviderState.UNREACHABLE, detail="timed out")
            except GatewayError as exc:
                result = ProviderStatus(ProviderState.UNREACHABLE, detail=exc.message)
            # Local workers change by the second; never cache their status for long.
            if not provider.capabilities.live_status:
                self._status_cache[name] = (time.monotonic(), result)
            return result

    async def all_status(self, only: str | None = None) -> dict[str, ProviderStatus]:
        names = [only] if only else self.names()
        results = await asyncio.gather(*(self.status(n) for n in names if n in self._providers))
        return dict(zip([n for n in names if n in self._providers], results, strict=True))

    async def models(self, only: str | None = None) -> list[tuple[str, ModelInfo]]:
        statuses = await self.all_status(only)
        return [(name, info) for name, status in statuses.items() for info in status.models]

    def invalidate(self, name: str | None = None) -> None:
        if name is None:
            self._status_cache.clear()
        else:
            self._status_cache.pop(name, None)
