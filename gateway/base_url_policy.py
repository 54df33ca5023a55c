"""The request-level ``base_url`` policy, as a CallHook.

LiteLLM's CVE-2024-6587 came from honouring a client ``api_base`` with the
operator's key. Rules here:
  (a) the server's key goes only to the provider's configured URL or to a URL on
      ACORE_BASE_URL_ALLOWLIST (``call.base_url_trusted``);
  (b) without the allowlist only loopback URLs are accepted; link-local,
      metadata and unspecified addresses are refused always, in every spelling
      (decimal, octal, hex, IPv4-mapped IPv6);
  (c) redirects are never followed (``open_upstream``).
The URL handed to the provider is rebuilt from the validated parts, so the
connection goes to exactly the address that was checked (no parser differential).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from aiohttp import web
from yarl import URL

from gateway.chat import CALL_HOOKS
from gateway.config import GatewayConfig
from gateway.errors import GatewayError, bad_request
from gateway.keys import CONFIG, PROVIDERS
from gateway.providers.base import ChatCall
from gateway.providers.openai_compat import OpenAICompatibleProvider

SETTING = "ACORE_BASE_URL_ALLOWLIST"
_METADATA_NAMES = {"metadata.google.internal", "metadata", "metadata.goog", "instance-data",
                   "instance-data.ec2.internal"}
_ALWAYS_REFUSED = [ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32",
    "::/128", "fe80::/10", "ff00::/8", "fd00:ec2::254/128",
)]

Address = ipaddress.IPv4Address | ipaddress.IPv6Address


def refused(message: str) -> GatewayError:
    return GatewayError(403, message, param="base_url", code="base_url_not_allowed")


def parse_ipv4_loose(host: str) -> ipaddress.IPv4Address | None:
    """inet_aton's reading of a host (what the resolver would connect to): 2130706433, 0177.0.0.1,
    0x7f.1, 127.1. None when the host is not such a number."""
    parts = host.split(".")
    if not 1 <= len(parts) <= 4 or not all(parts):
        return None
    values = []
    for part in parts:
        text = part.lower()
        try:
            if text.startswith("0x"):
                values.append(int(text[2:], 16))
            elif len(text) > 1 and text.startswith("0"):
                values.append(int(text[1:], 8))
            elif text.isdigit():
                values.append(int(text))
            else:
                return None
        except ValueError:
            return None
    *head, last = values
    if any(v > 255 for v in head) or last >= 256 ** (4 - len(head)):
        return None
    number = last
    for index, value in enumerate(head):
        number += value << (8 * (3 - index))
    return ipaddress.IPv4Address(number)


def host_address(host: str) -> Address | None:
    """The IP a host names, normalised (IPv4-mapped/compatible IPv6 -> IPv4); None for a DNS name."""
    host = host.strip("[]").rstrip(".")
    try:
        address: Address = ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return parse_ipv4_loose(host)
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return address.ipv4_mapped
        if int(address) >> 32 == 0 and int(address) > 1:  # deprecated IPv4-compatible ::a.b.c.d
            return ipaddress.IPv4Address(int(address))
    return address


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
    if host in _METADATA_NAMES or (address is not None and any(address in net for net in _ALWAYS_REFUSED
                                                                 if net.version == address.version)):
        raise refused(f"base_url host {host} is a link-local, metadata or unspecified address and is always "
                      f"refused (even with {SETTING}).")
    trusted = _allowlisted(url, config.base_url_allowlist)
    loopback = (address is not None and address.is_loopback) or host == "localhost" or host.endswith(".localhost")
    if not trusted and not loopback:
        raise refused(f"base_url {url} is not allowed: only loopback URLs are accepted unless the operator lists "
                      f"the URL in {SETTING}.")
    return CheckedURL(str(url), trusted)


def provider_traits(provider: object) -> tuple[bool, bool]:
    """(takes a base URL, requires a key). OpenAI-compatible presets say so in their data."""
    if isinstance(provider, OpenAICompatibleProvider):
        return True, provider.preset.requires_key
    return bool(getattr(provider, "takes_base_url", False)), bool(getattr(provider, "requires_key", False))


class BaseURLPolicyHook:
    async def before(self, app: web.Application, call: ChatCall) -> None:
        if not call.base_url:
            return
        takes, requires_key = provider_traits(app[PROVIDERS].provider_for(call.provider))
        if not takes:
            raise bad_request(f"Provider {call.provider} runs local workers and takes no base_url.", param="base_url")
        checked = check_base_url(app[CONFIG], call.base_url)
        if requires_key and not call.api_key and not checked.trusted:
            raise bad_request(
                f"base_url needs your own api_key for provider {call.provider}: the server's key is never sent to "
                f"a client-supplied URL (unless the operator lists it in {SETTING}).", param="api_key")
        call.base_url = checked.url
        call.base_url_trusted = checked.trusted

    async def after(self, app: web.Application, call: ChatCall) -> None:
        return None


def setup(app: web.Application) -> None:
    app[CALL_HOOKS].append(BaseURLPolicyHook())
