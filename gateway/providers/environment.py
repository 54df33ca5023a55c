"""The environment variables that configure each provider: the seed's names, as data.

``gateway.config`` reads the environment once, through this table; the provider modules then
find their URL and key in ``config.providers[name]``. Kept apart from the provider modules so
the configuration can be loaded without importing any of them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ProviderEnv:
    url: str | None  # base URL variable
    key: str | None = None  # API key variable
    legacy_url: str | None = None  # an older spelling, read when ``url`` is unset


PROVIDER_ENV: dict[str, ProviderEnv] = {
    "openai": ProviderEnv("OPENAI_BASE_URL", "OPENAI_API_KEY"),
    "openrouter": ProviderEnv("OPENROUTER_BASE_URL", "OPENROUTER_API_KEY"),
    "lmstudio": ProviderEnv("LMSTUDIO_BASE_URL"),
    "vllm": ProviderEnv("VLLM_BASE_URL", "VLLM_API_KEY"),
    "openai-compatible": ProviderEnv("OPENAI_COMPATIBLE_BASE_URL", "OPENAI_COMPATIBLE_API_KEY"),
    "anthropic": ProviderEnv("ANTHROPIC_BASE_URL", "ANTHROPIC_API_KEY"),
    # OLLAMA_HOST is often written "host:port", without a scheme.
    "ollama": ProviderEnv("OLLAMA_BASE_URL", legacy_url="OLLAMA_HOST"),
}


def url_setting(provider: str) -> str:
    """Where the operator sets a provider's URL, for error messages."""
    env = PROVIDER_ENV.get(provider)
    return (env.url if env is not None else None) or f"[providers.{provider}].base_url"
