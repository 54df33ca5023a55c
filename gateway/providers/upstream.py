"""Where an HTTP provider's call goes, with which key, headers and timeouts: one resolver for all.

The server-key rule lives here and nowhere else: the operator's key goes only to the
provider's configured URL, or to a client ``base_url`` the operator allowlisted
(``trusted``); a client URL otherwise gets only the client's own key. Each provider
builds one ``UpstreamSettings`` at start-up from the configuration and asks
``resolve`` per call.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from gateway.config import GatewayConfig, Limits
from gateway.errors import GatewayError
from gateway.providers.environment import url_setting


class Auth(enum.StrEnum):
    BEARER = "bearer"  # Authorization: Bearer KEY
    X_API_KEY = "x-api-key"  # Anthropic's header
    NONE = "none"


def strip_v1(url: str) -> str:
    """For APIs whose base URL is written without /v1 (Anthropic, Ollama's native API): accept it with /v1 too."""
    url = url.rstrip("/")
    return url[:-3] if url.endswith("/v1") else url


def keep_path(url: str) -> str:
    return url.rstrip("/")


@dataclass(frozen=True, slots=True)
class UpstreamSettings:
    """One provider's configured endpoint, built once from the configuration."""

    provider: str
    base_url: str | None
    server_key: str | None
    key_env: str | None  # named in errors: where the operator puts the key
    url_setting: str  # named in errors: where the operator puts the URL
    requires_key: bool = False
    auth: Auth = Auth.BEARER
    headers: Mapping[str, str] = field(default_factory=dict)  # sent on every request
    normalise: Callable[[str], str] = keep_path

    @classmethod
    def from_config(cls, config: GatewayConfig, provider: str, *, default_url: str | None = None,
                    requires_key: bool = False, auth: Auth = Auth.BEARER, headers: Mapping[str, str] | None = None,
                    normalise: Callable[[str], str] = keep_path) -> UpstreamSettings:
        """The URL and key config.providers[provider] holds (environment > config file), else the default URL."""
        settings = config.provider_settings(provider)
        url = settings.base_url or default_url
        return cls(provider=provider, base_url=normalise(url) if url else None,
                   server_key=settings.api_key or config.env_value(settings.api_key_env),
                   key_env=settings.api_key_env, url_setting=url_setting(provider), requires_key=requires_key,
                   auth=auth, headers=dict(headers or {}), normalise=normalise)

    def auth_headers(self, key: str | None) -> dict[str, str]:
        headers = dict(self.headers)
        if key and self.auth is Auth.BEARER:
            headers["Authorization"] = f"Bearer {key}"
        elif key and self.auth is Auth.X_API_KEY:
            headers["x-api-key"] = key
        return headers

    def missing_key(self) -> GatewayError:
        return GatewayError(401, f"No API key for provider {self.provider}: set {self.key_env} in the gateway's "
                                 "environment or send X-Provider-API-Key.", code="missing_api_key")


@dataclass(frozen=True, slots=True)
class Upstream:
    """One call's resolution."""

    base_url: str
    api_key: str | None
    headers: dict[str, str]
    first_byte_timeout_s: float
    read_timeout_s: float
    client_chosen: bool = False  # the client's base_url: its error bodies are not shown as they are


def call_timeouts(limits: Limits, timeout_s: float | None) -> tuple[float, float]:
    """(time to the first byte, longest wait for the next bytes of a stream). A request's own timeout_s
    bounds both: a stream that stalls midway for that long ends (one error event, then [DONE])."""
    if timeout_s and timeout_s > 0:
        return timeout_s, timeout_s
    return limits.first_byte_timeout_s, limits.stream_idle_timeout_s


def resolve(settings: UpstreamSettings, limits: Limits, *, api_key: str | None = None, base_url: str | None = None,
            trusted: bool = False, timeout_s: float | None = None) -> Upstream:
    """URL, key, headers and timeouts of one call, under the server-key rule."""
    if base_url:
        # The client chose the URL (already checked by the base_url policy).
        url = settings.normalise(base_url)
        key = api_key or (settings.server_key if trusted else None)
    elif settings.base_url:
        url = settings.base_url
        key = api_key or settings.server_key
    else:
        raise GatewayError(400, f"Provider {settings.provider} has no base URL: set {settings.url_setting} or pass "
                                "base_url.", param="model", code="provider_not_configured")
    if not key and settings.requires_key:
        raise settings.missing_key()
    first, read = call_timeouts(limits, timeout_s)
    return Upstream(url, key, settings.auth_headers(key), first, read, client_chosen=bool(base_url))


def probe(settings: UpstreamSettings, limits: Limits) -> Upstream:
    """The configured endpoint with the server key and the short models-listing timeouts."""
    timeout = limits.models_timeout_s
    assert settings.base_url is not None
    return Upstream(settings.base_url, settings.server_key, settings.auth_headers(settings.server_key),
                    timeout, timeout)
