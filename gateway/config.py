"""Typed gateway configuration.

Precedence: command-line flag > environment > config file (TOML) > default.
The environment is read here, once; nothing else in the gateway reads os.environ.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgspec

from gateway.pipeline.groups import GroupError, ModelGroup, RoutingSettings, parse_groups, parse_routing
from gateway.providers.environment import PROVIDER_ENV


class ConfigError(ValueError):
    """A configuration problem the operator must fix; printed without a traceback."""


@dataclass(frozen=True, slots=True)
class ProviderSettings:
    """Where a provider lives and which key it uses (from env, config file or preset)."""

    base_url: str | None = None
    api_key: str | None = None
    api_key_env: str | None = None
    # OpenAI-compatible providers: ask for a usage chunk on every stream, so the access log and /metrics
    # count its tokens even when the client did not ask (the chunk is then not passed on). Default: the
    # preset's; false for a server that refuses stream_options.
    stream_usage: bool | None = None


@dataclass(frozen=True, slots=True)
class WorkerSpec:
    """A local worker the gateway starts and supervises."""

    provider: str
    model: str
    name: str | None = None
    replicas: int = 1
    threads: int | None = None
    n_ctx: int | None = None
    prompt_cache_bytes: int | None = None
    tool_parser: str | None = None  # acore-worker --tool-parser (default: from the chat template)

    @classmethod
    def parse(cls, text: str) -> WorkerSpec:
        """``llamacpp:PATH.gguf``, ``mlx:DIR`` or a Hub id (``llamacpp:ORG/REPO:QUANT``, ``huggingface:ORG/REPO``):
        split at the first colon, so a Hub id's quant tag stays with the model."""
        provider, sep, model = text.partition(":")
        if not sep or not provider or not model:
            raise ConfigError(f"--worker expects PROVIDER:MODEL (e.g. llamacpp:model.gguf), got {text!r}")
        return cls(provider=provider, model=model)


def default_inflight_bytes() -> int:
    """1/8 of the machine's memory (at least 256 MiB): what request bodies may hold at once."""
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError):
        total = 8 << 30
    return max(256 << 20, total // 8)


@dataclass(frozen=True, slots=True)
class Limits:
    max_body_bytes: int = 32 * 1024 * 1024
    max_messages: int = 10_000
    max_n: int = 16
    max_tools: int = 512
    max_embedding_inputs: int = 2048
    connect_timeout_s: float = 10.0
    # Time to the upstream's response headers / first streamed byte, and between streamed bytes.
    first_byte_timeout_s: float = 120.0
    stream_idle_timeout_s: float = 120.0
    models_timeout_s: float = 3.0
    models_cache_ttl_s: float = 60.0
    queue_depth: int = 64
    # Local workers: after the first token, a stream's next event waits until this long after the
    # previous one, so tokens arriving in between go out as one SSE event (0: every batch at once).
    stream_interval_ms: float = 20.0
    shutdown_timeout_s: float = 5.0
    # One uploaded file (/v1/audio/*, /v1/images/edits, /v1/files): OpenAI's 25 MB.
    max_upload_bytes: int = 25 * 1024 * 1024
    # Connections (gateway/ops/connections.py): the request line and headers must arrive within
    # header_timeout_s (else 408), a whole body within body_timeout_s (total, not between bytes), an idle
    # keep-alive connection closes after keepalive_timeout_s; past max_connections new ones are refused.
    header_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    keepalive_timeout_s: float = 30.0
    max_connections: int = 8192
    # Request bodies and decoded attachments held at once, all requests together (gateway/ops/limits.py):
    # past it a new request gets 503 + Retry-After before its body is read. Default: 1/8 of the RAM.
    max_inflight_bytes: int = field(default_factory=default_inflight_bytes)


@dataclass(frozen=True, slots=True)
class MediaSettings:
    roots: tuple[str, ...] = ()
    url_allowlist: tuple[str, ...] = ()
    max_file_bytes: int = 10 * 1024 * 1024
    max_request_bytes: int = 32 * 1024 * 1024


AUDIO_STRATEGIES = ("auto", "stt", "native", "reject")


@dataclass(frozen=True, slots=True)
class AudioSettings:
    """``[audio]``: what audio in chat messages becomes (ACORE_AUDIO_STRATEGY, ACORE_AUDIO_STT_MODEL).

    stt: transcribed by ``stt_model`` (default: the first whisper/ worker) and inserted as text;
    native: sent as it is to models that take audio; reject: 400; auto: native where the model
    takes audio, else stt."""

    strategy: str = "auto"
    stt_model: str | None = None
    language: str | None = None


@dataclass(frozen=True, slots=True)
class GatewayConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    debug: bool = False
    auth_keys: tuple[str, ...] = ()
    default_provider: str | None = None
    default_model: str | None = None
    providers: Mapping[str, ProviderSettings] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    base_url_allowlist: tuple[str, ...] = ()
    allow_unsafe_unload_after: bool = False
    limits: Limits = Limits()
    media: MediaSettings = MediaSettings()
    audio: AudioSettings = AudioSettings()
    workers: tuple[WorkerSpec, ...] = ()
    worker_bind: str | None = None
    # CurveZMQ for tcp:// worker binds: a directory with gateway.key_secret and authorized/*.key,
    # plus worker public keys written in the config file ([server] authorized_worker_keys).
    worker_keys: str | None = None
    authorized_worker_keys: tuple[str, ...] = ()
    # Service: HTTP front processes sharing the port, and where state between requests lives
    # (ACORE_REDIS_URL: redis://...; unset: in this process's memory).
    processes: int = 1
    front_index: int | None = None  # set in the front processes a --processes N gateway starts
    redis_url: str | None = None
    config_file: str | None = None  # what SIGHUP re-reads
    default_embeddings: bool = True
    # Route key-less requests to the worker that recently saw the longest shared message prefix
    # (ACORE_CACHE_AWARE_ROUTING=0: plain least-loaded, the benchmark's baseline).
    cache_aware_routing: bool = True
    # Observability: an access line per request (stderr, or log_file), GET /metrics, and with debug
    # the seed's files under log_dir (acore_TIMESTAMP.log, YYYYMMDD-payloads.jsonl, verbatim_TIMESTAMP.jsonl).
    access_log: bool = True
    log_format: str = "json"  # json | text, for the access log and the gateway's own log lines
    log_file: str | None = None
    log_dir: str = "logs"
    log_max_bytes: int = 64 * 1024 * 1024  # each log file rotates at this size (5 kept)
    metrics: bool = True
    metrics_key: str | None = None  # also accepted on /metrics (alone guards it when no gateway key is set)
    # Model aliases and groups ([models."name"], gateway/pipeline/groups.py) and how they are run ([routing]).
    models: Mapping[str, ModelGroup] = field(default_factory=dict)
    routing: RoutingSettings = field(default_factory=RoutingSettings)

    @property
    def supervises_workers(self) -> bool:
        """This process starts the configured workers: a single-process gateway (the front processes
        of a --processes N gateway leave that to their parent)."""
        return self.front_index is None

    def secrets(self) -> list[str]:
        """Every key this configuration holds: the log formatter masks them wherever they appear."""
        found = [*self.auth_keys]
        for settings in self.providers.values():
            found.append(settings.api_key or "")
            found.append(self.env_value(settings.api_key_env) or "")
        return [s for s in found if s]

    def provider_settings(self, name: str) -> ProviderSettings:
        return self.providers.get(name, ProviderSettings())

    def env_value(self, name: str | None) -> str | None:
        if not name:
            return None
        value = self.env.get(name)
        return value if value else None


# Limits also settable from the environment (and, in gateway/cli/gateway.py, by flag).
LIMIT_ENV = {
    "ACORE_STREAM_IDLE_TIMEOUT": "stream_idle_timeout_s",
    "ACORE_HEADER_TIMEOUT": "header_timeout_s",
    "ACORE_BODY_TIMEOUT": "body_timeout_s",
    "ACORE_KEEPALIVE_TIMEOUT": "keepalive_timeout_s",
    "ACORE_MAX_CONNECTIONS": "max_connections",
    "ACORE_MAX_INFLIGHT_BYTES": "max_inflight_bytes",
}


def _limit_values(pairs: Mapping[str, Any], origin: str) -> dict[str, Any]:
    """Values for Limits fields from the environment or flags, checked as the [limits] table is."""
    hints = typing.get_type_hints(Limits)
    values: dict[str, Any] = {}
    for key, value in pairs.items():
        try:
            values[key] = msgspec.convert(value, hints[key], strict=False)
        except msgspec.ValidationError:
            raise ConfigError(f"{origin} {key}: expected a number, got {value!r}") from None
        if not values[key] > 0:
            raise ConfigError(f"{origin} {key} must be greater than 0, got {value!r}")
    return values


def _csv(value: str | None) -> tuple[str, ...]:
    if not value:
        return ()
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _truthy(value: str | None) -> bool:
    return (value or "").strip().lower() in {"1", "true", "yes", "on"}


def _load_file(path: str | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        with Path(path).open("rb") as handle:
            return tomllib.load(handle)
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    except OSError as exc:  # a directory, no permission, an I/O error
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None


_MAY_BE_ZERO = frozenset({"stream_interval_ms"})


def _dataclass_from(cls: Any, data: Mapping[str, Any], section: str) -> Any:
    known = set(cls.__dataclass_fields__)
    unknown = set(data) - known
    if unknown:
        raise ConfigError(f"unknown keys in [{section}]: {', '.join(sorted(unknown))}")
    # Check each value against the field's type, so a typo such as first_byte_timeout_s = "soon"
    # stops the start with a message instead of failing on the first request.
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for key, value in data.items():
        try:
            values[key] = msgspec.convert(value, hints[key], strict=False)
        except msgspec.ValidationError as exc:
            raise ConfigError(f"[{section}] {key}: {exc}") from None
    if cls is Limits:
        for key, value in values.items():
            # every limit is a size, a count or a duration: zero or less would disable serving
            if not value > 0 and not (key in _MAY_BE_ZERO and value == 0):
                raise ConfigError(f"[{section}] {key} must be greater than 0, got {value!r}")
    return cls(**values)


def _processes(value: Any) -> int:
    """``--processes N|auto``: a positive count, or the number of cores."""
    if isinstance(value, str) and value.strip().lower() == "auto":
        return max(1, os.cpu_count() or 1)
    try:
        count = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"processes must be a number or auto, got {value!r}") from None
    if count < 1:
        raise ConfigError(f"processes must be at least 1, got {count}")
    return count


def _switch(env_value: str | None, default: Any) -> bool:
    """An on/off setting: the environment's 0/1/true/false/on/off wins over the file's boolean."""
    if env_value is not None and env_value.strip():
        return _truthy(env_value)
    return bool(default)


def _log_format(value: Any) -> str:
    text = str(value).strip().lower()
    if text not in ("json", "text"):
        raise ConfigError(f"log format must be json or text, got {value!r}")
    return text


def _positive_int(name: str, value: Any) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{name} must be a number, got {value!r}") from None
    if number < 1:
        raise ConfigError(f"{name} must be at least 1, got {number}")
    return number


def load_config(
    *,
    env: Mapping[str, str] | None = None,
    config_file: str | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> GatewayConfig:
    """Build the configuration from a config file, the environment and flag overrides."""
    env = dict(os.environ if env is None else env)
    data = _load_file(config_file)
    server = data.get("server", {})

    providers: dict[str, ProviderSettings] = {}
    for name, section in data.get("providers", {}).items():
        providers[name] = _dataclass_from(ProviderSettings, section, f"providers.{name}")
    for name, names in PROVIDER_ENV.items():
        current = providers.get(name, ProviderSettings())
        url = env.get(names.url or "") or env.get(names.legacy_url or "") or current.base_url
        if url and "://" not in url:  # OLLAMA_HOST is often "host:port"
            url = f"http://{url}"
        providers[name] = dataclasses.replace(current, base_url=url, api_key_env=current.api_key_env or names.key)

    limits = _dataclass_from(Limits, data.get("limits", {}), "limits")
    from_env = {field: env[name] for name, field in LIMIT_ENV.items() if env.get(name, "").strip()}
    limits = dataclasses.replace(limits, **_limit_values(from_env, "environment"))
    media_data = dict(data.get("media", {}))
    if env.get("ACORE_MEDIA_ROOTS") is not None:
        media_data["roots"] = _csv(env.get("ACORE_MEDIA_ROOTS"))
    if env.get("ACORE_MEDIA_URL_ALLOWLIST") is not None:
        media_data["url_allowlist"] = _csv(env.get("ACORE_MEDIA_URL_ALLOWLIST"))
    media = _dataclass_from(MediaSettings, media_data, "media")
    audio_data = dict(data.get("audio", {}))
    for key, name in (("strategy", "ACORE_AUDIO_STRATEGY"), ("stt_model", "ACORE_AUDIO_STT_MODEL")):
        if env.get(name):
            audio_data[key] = env[name]
    audio = _dataclass_from(AudioSettings, audio_data, "audio")
    if audio.strategy not in AUDIO_STRATEGIES:
        raise ConfigError(f"[audio] strategy must be one of {', '.join(AUDIO_STRATEGIES)}, got {audio.strategy!r}")

    workers = []
    for index, item in enumerate(data.get("workers", [])):
        spec = _dataclass_from(WorkerSpec, item, f"workers[{index}]")
        if spec.replicas < 1:
            raise ConfigError(f"workers[{index}].replicas must be >= 1")
        workers.append(spec)

    try:
        groups, routing = parse_groups(data.get("models")), parse_routing(data.get("routing"))
    except GroupError as exc:
        raise ConfigError(str(exc)) from None

    auth = env.get("ACORE_API_KEY") or env.get("ABSTRACTCORE_AUTH_TOKEN") or env.get("ABSTRACTCORE_API_KEY")
    values: dict[str, Any] = {
        "host": server.get("host", "127.0.0.1"),
        "port": int(server.get("port", 8000)),
        "debug": bool(server.get("debug", False)) or _truthy(env.get("ABSTRACTCORE_DEBUG")),
        "auth_keys": (auth,) if auth else tuple(server.get("api_keys", ())),
        "default_provider": env.get("ABSTRACTCORE_DEFAULT_PROVIDER") or server.get("default_provider"),
        "default_model": env.get("ABSTRACTCORE_DEFAULT_MODEL") or server.get("default_model"),
        "providers": providers,
        "env": env,
        "base_url_allowlist": _csv(env.get("ACORE_BASE_URL_ALLOWLIST")) or tuple(server.get("base_url_allowlist", ())),
        "allow_unsafe_unload_after": _truthy(env.get("ABSTRACTCORE_ALLOW_UNSAFE_UNLOAD_AFTER")),
        "limits": limits,
        "media": media,
        "audio": audio,
        "workers": tuple(workers),
        "worker_bind": env.get("ACORE_WORKER_BIND") or server.get("worker_bind"),
        "worker_keys": env.get("ACORE_WORKER_KEYS") or server.get("worker_keys"),
        "authorized_worker_keys": tuple(server.get("authorized_worker_keys", ())),
        "processes": _processes(env.get("ACORE_PROCESSES") or server.get("processes", 1)),
        "redis_url": env.get("ACORE_REDIS_URL") or server.get("redis_url"),
        "front_index": int(env["ACORE_FRONT_INDEX"]) if env.get("ACORE_FRONT_INDEX", "").isdigit() else None,
        "config_file": config_file,
        "default_embeddings": server.get("default_embeddings", True),
        "cache_aware_routing": (_truthy(env["ACORE_CACHE_AWARE_ROUTING"]) if env.get("ACORE_CACHE_AWARE_ROUTING")
                                else bool(server.get("cache_aware_routing", True))),
        "access_log": _switch(env.get("ACORE_ACCESS_LOG"), server.get("access_log", True)),
        "log_format": _log_format(env.get("ACORE_LOG_FORMAT") or server.get("log_format", "json")),
        "log_file": env.get("ACORE_LOG_FILE") or server.get("log_file"),
        "log_dir": env.get("ACORE_LOG_DIR") or server.get("log_dir", "logs"),
        "log_max_bytes": _positive_int("log_max_bytes", env.get("ACORE_LOG_MAX_BYTES")
                                       or server.get("log_max_bytes", 64 * 1024 * 1024)),
        "metrics": _switch(env.get("ACORE_METRICS"), server.get("metrics", True)),
        "metrics_key": env.get("ACORE_METRICS_KEY") or server.get("metrics_key"),
        "models": groups,
        "routing": routing,
    }
    for key, value in (overrides or {}).items():
        if value is None:
            continue
        if key == "workers":
            values["workers"] = tuple(values["workers"]) + tuple(value)
        elif key == "processes":
            values["processes"] = _processes(value)
        elif key == "limits":  # flags for Limits fields (--stream-idle-timeout, --max-connections, ...)
            values["limits"] = dataclasses.replace(values["limits"], **_limit_values(
                {k: v for k, v in value.items() if v is not None}, "flag"))
        elif key == "shutdown_timeout_s":
            if not value > 0:
                raise ConfigError(f"--shutdown-timeout must be greater than 0, got {value!r}")
            values["limits"] = dataclasses.replace(values["limits"], shutdown_timeout_s=float(value))
        else:
            values[key] = value
    return GatewayConfig(**values)
