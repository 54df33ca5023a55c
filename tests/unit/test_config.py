"""gateway.config: precedence flag > environment > config file > default, and clean errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from gateway.config import ConfigError, GatewayConfig, Limits, WorkerSpec, load_config


def write(tmp_path: Path, text: str) -> str:
    path = tmp_path / "acore.toml"
    path.write_text(text)
    return str(path)


def test_defaults() -> None:
    config = load_config(env={})
    assert (config.host, config.port, config.debug) == ("127.0.0.1", 8000, False)
    assert config.auth_keys == ()
    assert config.limits == Limits()
    assert config.limits.max_body_bytes == 32 * 1024 * 1024
    assert config.providers["lmstudio"].base_url is None  # the preset supplies localhost:1234
    assert config.providers["openai"].api_key_env == "OPENAI_API_KEY"


def test_seed_environment_names() -> None:
    config = load_config(env={
        "OPENAI_BASE_URL": "http://127.0.0.1:1/v1", "LMSTUDIO_BASE_URL": "http://127.0.0.1:2/v1",
        "VLLM_BASE_URL": "http://127.0.0.1:3/v1", "OPENAI_COMPATIBLE_BASE_URL": "http://127.0.0.1:4/v1",
        "OPENROUTER_API_KEY": "k", "ABSTRACTCORE_DEFAULT_PROVIDER": "openai", "ABSTRACTCORE_DEFAULT_MODEL": "gpt-x",
        "ABSTRACTCORE_DEBUG": "true", "OLLAMA_HOST": "127.0.0.1:11434",
    })
    assert config.providers["openai"].base_url == "http://127.0.0.1:1/v1"
    assert config.providers["lmstudio"].base_url == "http://127.0.0.1:2/v1"
    assert config.providers["vllm"].base_url == "http://127.0.0.1:3/v1"
    assert config.providers["openai-compatible"].base_url == "http://127.0.0.1:4/v1"
    assert config.env_value(config.providers["openrouter"].api_key_env) == "k"
    assert (config.default_provider, config.default_model, config.debug) == ("openai", "gpt-x", True)
    assert config.providers["ollama"].base_url == "http://127.0.0.1:11434"


@pytest.mark.parametrize("variable", ["ACORE_API_KEY", "ABSTRACTCORE_API_KEY", "ABSTRACTCORE_AUTH_TOKEN"])
def test_gateway_key_aliases(variable: str) -> None:
    assert load_config(env={variable: "secret"}).auth_keys == ("secret",)


def test_acore_api_key_wins_over_aliases() -> None:
    config = load_config(env={"ACORE_API_KEY": "a", "ABSTRACTCORE_API_KEY": "b", "ABSTRACTCORE_AUTH_TOKEN": "c"})
    assert config.auth_keys == ("a",)


def test_precedence_flag_env_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 9001\ndebug = false\ndefault_provider = "vllm"\n'
                           '[providers.openai]\nbase_url = "http://file/v1"\n[limits]\nfirst_byte_timeout_s = 1\n')
    from_file = load_config(env={}, config_file=path)
    assert from_file.port == 9001 and from_file.default_provider == "vllm"
    assert from_file.providers["openai"].base_url == "http://file/v1"
    assert from_file.limits.first_byte_timeout_s == 1
    from_env = load_config(env={"OPENAI_BASE_URL": "http://env/v1", "ABSTRACTCORE_DEFAULT_PROVIDER": "openai"},
                           config_file=path)
    assert from_env.providers["openai"].base_url == "http://env/v1" and from_env.default_provider == "openai"
    from_flag = load_config(env={}, config_file=path, overrides={"port": 9002, "host": None})
    assert from_flag.port == 9002 and from_flag.host == "127.0.0.1"


def test_config_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_config(env={}, config_file=str(tmp_path / "missing.toml"))
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(env={}, config_file=write(tmp_path, "[limits\n"))
    with pytest.raises(ConfigError, match="bogus"):
        load_config(env={}, config_file=write(tmp_path, "[limits]\nbogus = 1\n"))
    with pytest.raises(ConfigError, match="replicas"):
        load_config(env={}, config_file=write(tmp_path, '[[workers]]\nprovider = "llamacpp"\nmodel = "m"\nreplicas = 0\n'))


def test_limit_types_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="first_byte_timeout_s"):
        load_config(env={}, config_file=write(tmp_path, '[limits]\nfirst_byte_timeout_s = "soon"\n'))
    with pytest.raises(ConfigError, match="max_body_bytes"):
        load_config(env={}, config_file=write(tmp_path, "[limits]\nmax_body_bytes = -1\n"))


def test_workers_from_file_and_flags(tmp_path: Path) -> None:
    path = write(tmp_path, '[[workers]]\nprovider = "llamacpp"\nmodel = "a.gguf"\nname = "a"\nreplicas = 2\n')
    config = load_config(env={}, config_file=path, overrides={"workers": [WorkerSpec.parse("mlx:DIR")]})
    assert config.workers == (WorkerSpec("llamacpp", "a.gguf", "a", 2), WorkerSpec("mlx", "DIR"))
    with pytest.raises(ConfigError):
        WorkerSpec.parse("no-colon")


def test_list_settings_are_comma_separated() -> None:
    config = load_config(env={"ACORE_BASE_URL_ALLOWLIST": "http://a/v1, http://b/v1,", "ACORE_MEDIA_ROOTS": "/x,/y"})
    assert config.base_url_allowlist == ("http://a/v1", "http://b/v1")
    assert config.media.roots == ("/x", "/y")


def test_config_is_immutable() -> None:
    config = GatewayConfig()
    with pytest.raises(AttributeError):
        config.port = 1  # type: ignore[misc]


def test_endpoint_takes_the_gateway_log_flags(tmp_path: Path) -> None:
    from gateway.cli import endpoint, gateway

    flags = ["--log-format", "text", "--log-file", str(tmp_path / "access.log"), "--log-dir", str(tmp_path),
             "--no-access-log", "--no-metrics", "--debug"]
    for config in (endpoint.build_config(endpoint.parse_args(["--provider", "llamacpp", "--model", "m.gguf", *flags],
                                                             env={}), env={}),
                   gateway.build_config(gateway.parse_args(flags))):
        assert (config.log_format, config.log_file, config.log_dir) == ("text", str(tmp_path / "access.log"),
                                                                        str(tmp_path))
        assert (config.access_log, config.metrics, config.debug) == (False, False, True)


def test_stream_usage_per_provider(tmp_path: Path) -> None:
    path = tmp_path / "gateway.toml"
    path.write_text('[providers.vllm]\nbase_url = "http://127.0.0.1:9/v1"\nstream_usage = false\n')
    config = load_config(config_file=str(path), env={})
    assert config.provider_settings("vllm").stream_usage is False
    assert config.provider_settings("vllm").base_url == "http://127.0.0.1:9/v1"
    assert config.provider_settings("openai").stream_usage is None  # the preset decides
