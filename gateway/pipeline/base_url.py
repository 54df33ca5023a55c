"""The request-level ``base_url`` policy, as a CallHook.

LiteLLM's CVE-2024-6587 came from honouring a client ``api_base`` with the
operator's key. Rules here:
  (a) the server's key goes only to the provider's configured URL or to a URL on
      ACORE_BASE_URL_ALLOWLIST (``call.base_url_trusted``);
  (b) without the allowlist only loopback URLs are accepted, and only while the
      gateway serves one local user: it listens on loopback only and has no
      gateway key (conventions.md). A shared gateway (another listen address, or
      a key) refuses every loopback spelling with 403, else a client could reach
      any service on the gateway's host. Link-local, metadata and unspecified
      addresses are refused always, in every spelling (decimal, octal, hex,
      IPv4-mapped IPv6);
  (c) redirects are never followed (``open_upstream``).
The URL handed to the provider is rebuilt from the validated parts, so the
connection goes to exactly the address that was checked (no parser differential).
"""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web
from yarl import URL

from gateway.config import GatewayConfig
from gateway.errors import GatewayError, bad_request
from gateway.keys import CONFIG, PROVIDERS
from gateway.pipeline.hooks import CALL_HOOKS
from gateway.providers.base import Capabilities, ChatCall
from media.netpolicy import (
    METADATA_NAMES,
    Address,
    always_refused,
    host_address,
    is_loopback_host,
    listens_on_loopback_only,
)

SETTING = "ACORE_BASE_URL_ALLOWLIST"


def refused(message: str) -> GatewayError:
    return GatewayError(403, message, param="base_url", code="base_url_not_allowed")


@dataclass(frozen=True, slots=True)
class CheckedURL:
    url: str  # rebuilt from the validated parts
    trusted: bool  # on the operator's allowlist: the server key may go there


def _normalise(raw: str) -> tuple[URL, Address | None]:
    try:
        url = URL(raw.strip())
    except (ValueError, TypeError):
        raise bad_request("base_url is not a valid URL.", param="base_url") from None
    if url.scheme not in ("http", "https") or not url.host:
        raise bad_request("base_url must be an http:// or https:// URL with a host.", param="base_url")
    if url.user or url.password or url.query_string or url.fragment:
        raise bad_request("base_url must not carry credentials, a query or a fragment.", param="base_url")
    host = url.host.lower().rstrip(".")
    address = host_address(host)
    host_text = (f"[{address}]" if address.version == 6 else str(address)) if address is not None else host
    port = url.explicit_port
    path = url.raw_path.rstrip("/")
    rebuilt = URL(f"{url.scheme}://{host_text}{f':{port}' if port else ''}{path}", encoded=True)
    return rebuilt, address


def _allowlisted(url: URL, entries: tuple[str, ...]) -> bool:
    """Entries are URL prefixes (scheme://host[:port][/path]) or bare host[:port]."""
    for entry in entries:
        text = entry.strip()
        if "://" not in text:
            text = f"{url.scheme}://{text}"
        try:
            allowed, _ = _normalise(text)
        except GatewayError:
            continue
        if (allowed.scheme, allowed.host, allowed.port) != (url.scheme, url.host, url.port):
            continue
        if "://" in entry and allowed.explicit_port is None and url.explicit_port is not None:
            continue
        prefix = allowed.raw_path.rstrip("/")
        path = url.raw_path.rstrip("/")
        if not prefix or path == prefix or path.startswith(prefix + "/"):
            return True
    return False


def check_base_url(config: GatewayConfig, raw: str) -> CheckedURL:
    """Validate a client base_url: 400 when malformed, 403 when the policy refuses it."""
    url, address = _normalise(raw)
    host = url.host or ""
    if host in METADATA_NAMES or (address is not None and always_refused(address)):
        raise refused(f"base_url host {host} is a link-local, metadata or unspecified address and is always "
                      f"refused (even with {SETTING}).")
    trusted = _allowlisted(url, config.base_url_allowlist)
    if trusted:
        return CheckedURL(str(url), trusted)
    if not is_loopback_host(host):
        raise refused(f"base_url {url} is not allowed: only loopback URLs are accepted unless the operator lists "
                      f"the URL in {SETTING}.")
    if not single_local_user(config):
        why = "has a gateway key" if config.auth_keys else f"listens on {config.host}, not on loopback only"
        raise refused(f"base_url {url} is a loopback address and this gateway {why}: loopback URLs reach the "
                      f"gateway's own host, so they are refused unless the operator lists the URL in {SETTING}.")
    return CheckedURL(str(url), trusted)


def single_local_user(config: GatewayConfig) -> bool:
    """One local user: the gateway listens on loopback only and has no gateway key. Only then may a
    client base_url point at loopback without the operator's allowlist."""
    return listens_on_loopback_only(config.host) and not config.auth_keys


def check_client_base_url(config: GatewayConfig, provider: str, capabilities: Capabilities, raw: str,
                          api_key: str | None) -> CheckedURL:
    """The base_url rules for one request to one provider (chat, responses and embeddings alike)."""
    if not capabilities.client_base_url:
        raise bad_request(f"Provider {provider} runs local workers and takes no base_url.", param="base_url")
    checked = check_base_url(config, raw)
    if capabilities.requires_key and not api_key and not checked.trusted:
        raise bad_request(
            f"base_url needs your own api_key for provider {provider}: the server's key is never sent to "
            f"a client-supplied URL (unless the operator lists it in {SETTING}).", param="api_key")
    return checked


class BaseURLPolicyHook:
    async def before(self, app: web.Application, call: ChatCall) -> None:
        if not call.base_url or call.base_url_trusted:  # trusted already: a [models] target's own URL
            return
        provider = app[PROVIDERS].provider_for(call.provider)
        checked = check_client_base_url(app[CONFIG], call.provider, provider.capabilities, call.base_url,
                                        call.api_key)
        call.base_url = checked.url
        call.base_url_trusted = checked.trusted

    async def after(self, app: web.Application, call: ChatCall) -> None:
        return None


def setup(app: web.Application) -> None:
    app[CALL_HOOKS].append(BaseURLPolicyHook())
