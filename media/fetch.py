"""Fetching attachments by URL without SSRF, and decoding data URLs.

- http(s) only; every host goes through one resolver seam (``Resolver``, which
  tests replace); every address it returns must be public unless the host or the
  address is on the operator's allowlist.
- The connection goes to the address that was checked: aiohttp gets a resolver
  pinned to it (Host header and TLS SNI keep the name), so a second DNS answer
  (rebinding) is never consulted.
- Redirects are followed by hand, each hop re-checked, at most ``max_redirects``.
- The body is capped while streaming and the whole fetch has one deadline.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import urllib.parse
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from media.errors import MediaError, bad, forbidden, too_large
from media.netpolicy import METADATA_NAMES
from media.policy import MediaPolicy

Resolver = Callable[[str, int], Awaitable[list[str]]]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Anything made only of digits, dots and hex markers is an IP spelling; only canonical dotted quads pass.
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|\d+)(\.(0x[0-9a-f]*|\d+))*\.?$", re.I)
_CANONICAL_V4 = re.compile(r"^(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)(\.(25[0-5]|2[0-4]\d|1\d\d|[1-9]?\d)){3}$")
_REDIRECTS = {301, 302, 303, 307, 308}


async def system_resolver(host: str, port: int) -> list[str]:
    """The default seam: the OS resolver, TCP addresses only."""
    loop = asyncio.get_running_loop()
    infos = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


def ip_is_forbidden(ip: IPAddress) -> bool:
    """Loopback, private, link-local (metadata), unspecified, multicast, reserved, ULA, non-global."""
    if isinstance(ip, ipaddress.IPv6Address):
        mapped = ip.ipv4_mapped or ip.sixtofour
        if mapped is not None:
            return ip_is_forbidden(mapped)
        if ip.teredo is not None:
            return True
    return (
        ip.is_loopback or ip.is_private or ip.is_link_local or ip.is_unspecified or ip.is_multicast
        or ip.is_reserved or not ip.is_global
    )


@dataclass(frozen=True, slots=True)
class Fetched:
    data: bytes
    content_type: str
    name: str


class PinnedResolver(AbstractResolver):
    """Answers only with the address that was validated for this fetch."""

    def __init__(self, host: str, address: str) -> None:
        self.host = host
        self.address = address

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[ResolveResult]:
        if host.lower().rstrip(".") != self.host:
            raise OSError(f"unexpected host {host!r} for a pinned fetch")
        ip = ipaddress.ip_address(self.address)
        fam = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        return [{"hostname": host, "host": self.address, "port": port, "family": fam, "proto": 0,
                 "flags": socket.AI_NUMERICHOST}]

    async def close(self) -> None:
        return None


class Fetcher:
    """Fetches http(s) URLs under a MediaPolicy. One per gateway; holds no connections between fetches."""

    def __init__(self, policy: MediaPolicy, resolver: Resolver | None = None) -> None:
        self.policy = policy
        self.resolver: Resolver = resolver or system_resolver
        self._allow_names: set[str] = set()
        self._allow_nets: list[ipaddress.IPv4Network | ipaddress.IPv6Network] = []
        for entry in policy.url_allowlist:
            try:
                self._allow_nets.append(ipaddress.ip_network(entry.strip(), strict=False))
            except ValueError:
                self._allow_names.add(entry.strip().lower().rstrip("."))

    def _address_allowed(self, address: str) -> bool:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
        if any(ip in net for net in self._allow_nets):
            return True
        return not ip_is_forbidden(ip)

    async def check_url(self, url: str) -> tuple[urllib.parse.SplitResult, str, int, str]:
        """Validate one hop: returns (parts, host, port, the address to connect to)."""
        try:
            parts = urllib.parse.urlsplit(url)
            port = parts.port
        except ValueError:
            raise bad("Malformed URL.") from None
        if parts.scheme not in ("http", "https"):
            raise bad(f"URL scheme {parts.scheme or '(none)'!r} is not allowed; use http or https.")
        host = (parts.hostname or "").lower().rstrip(".")
        if not host:
            raise bad("URL has no host.")
        try:
            # The name aiohttp will send (punycode), so the pinned resolver recognises it.
            host = host.encode("idna").decode("ascii")
        except UnicodeError:
            raise bad("URL host is not a valid name.") from None
        if parts.username or parts.password:
            raise bad("URLs with credentials are not allowed.")
        port = port or (443 if parts.scheme == "https" else 80)
        allowed_by_name = host in self._allow_names
        literal: IPAddress | None
        try:
            literal = ipaddress.ip_address(host)
        except ValueError:
            literal = None
        if literal is None and _NUMERIC_HOST.match(host) and not allowed_by_name:
            # 2130706433, 0177.0.0.1, 0x7f.1: spellings the OS resolver turns into loopback.
            raise forbidden("URL host is a non-canonical IP address spelling.", code="url_forbidden")
        if literal is not None and literal.version == 4 and not _CANONICAL_V4.match(host):
            raise forbidden("URL host is a non-canonical IP address spelling.", code="url_forbidden")
        if not allowed_by_name and (host in METADATA_NAMES or host.endswith((".internal", ".localhost"))
                                    or host == "localhost"):
            raise forbidden("URL host is not allowed.", code="url_forbidden")
        if literal is not None:
            addresses = [str(literal)]
        else:
            try:
                addresses = await self.resolver(host, port)
            except (OSError, UnicodeError):
                raise bad("URL host could not be resolved.") from None
            if not addresses:
                raise bad("URL host could not be resolved.")
        if not allowed_by_name:
            # Every answer must be public: an attacker's name may return one public and one private address.
            for address in addresses:
                if not self._address_allowed(address):
                    raise forbidden("URL resolves to an address that is not allowed.", code="url_forbidden")
        return parts, host, port, addresses[0]

    def _session(self, host: str, address: str) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(resolver=PinnedResolver(host, address), use_dns_cache=False,
                                         force_close=True, limit=1)
        return aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False,
                                     cookie_jar=aiohttp.DummyCookieJar())

    async def fetch(self, url: str) -> Fetched:
        try:
            async with asyncio.timeout(self.policy.fetch_timeout_s):
                return await self._fetch(url)
        except TimeoutError:
            raise MediaError(408, f"Fetching the URL took longer than {self.policy.fetch_timeout_s:g}s.",
                             code="fetch_timeout") from None

    async def _fetch(self, url: str) -> Fetched:
        limit = self.policy.max_file_bytes
        for _hop in range(self.policy.max_redirects + 1):
            parts, host, _port, address = await self.check_url(url)
            async with self._session(host, address) as session:
                try:
                    async with session.get(url, allow_redirects=False,
                                           headers={"Accept-Encoding": "identity", "User-Agent": "acore-media/1"}
                                           ) as response:
                        if response.status in _REDIRECTS:
                            location = response.headers.get("Location")
                            if not location:
                                raise bad("URL redirect without a Location.")
                            url = urllib.parse.urljoin(url, location)
                            continue
                        if response.status >= 400:
                            raise bad(f"Fetching the URL failed with HTTP {response.status}.", code="fetch_failed")
                        declared = response.content_length
                        if declared is not None and declared > limit:
                            raise too_large(f"URL content is larger than {limit} bytes.")
                        chunks: list[bytes] = []
                        total = 0
                        async for chunk in response.content.iter_chunked(1 << 16):
                            total += len(chunk)
                            if total > limit:  # cut while streaming: a lying or absent length changes nothing
                                raise too_large(f"URL content is larger than {limit} bytes.")
                            chunks.append(chunk)
                        ctype = response.headers.get("Content-Type", "").split(";", 1)[0].strip().lower()
                        name = urllib.parse.unquote(parts.path.rsplit("/", 1)[-1]) or host
                        return Fetched(b"".join(chunks), ctype, name)
                except aiohttp.ClientError:
                    raise bad("Fetching the URL failed.", code="fetch_failed") from None
        raise bad(f"Too many redirects (more than {self.policy.max_redirects}).", code="too_many_redirects")

    async def close(self) -> None:
        return None  # sessions live for one fetch each (pinned per hop); nothing pooled to close
