"""Addresses no request may make the gateway reach, and reading a host as the resolver would.

Shared by the two places that connect where a client points: attachment URL fetches
(media.fetch) and the request-level ``base_url`` (gateway.pipeline.base_url).
"""

from __future__ import annotations

import ipaddress

Address = ipaddress.IPv4Address | ipaddress.IPv6Address

# Names that mean "the cloud metadata service" even before they resolve.
METADATA_NAMES = frozenset({
    "metadata.google.internal", "metadata", "metadata.goog", "metadata.azure.com", "instance-data",
    "instance-data.ec2.internal",
})
# Link-local (cloud metadata), unspecified, multicast and broadcast: never a legitimate upstream.
ALWAYS_REFUSED = tuple(ipaddress.ip_network(n) for n in (
    "0.0.0.0/8", "169.254.0.0/16", "224.0.0.0/4", "255.255.255.255/32",
    "::/128", "fe80::/10", "ff00::/8", "fd00:ec2::254/128",
))


def always_refused(address: Address) -> bool:
    return any(address in net for net in ALWAYS_REFUSED if net.version == address.version)


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


def is_loopback_host(host: str) -> bool:
    """Whether a URL host means this machine, in any spelling: 127.x (also decimal, octal, hex),
    [::1], IPv4-mapped ::ffff:127.0.0.1, ``localhost``, ``localhost.`` and ``*.localhost``."""
    name = host.strip().lower().rstrip(".")
    if name == "localhost" or name.endswith(".localhost"):
        return True
    address = host_address(name)
    return address is not None and address.is_loopback


def listens_on_loopback_only(hosts: tuple[str, ...] | list[str] | str) -> bool:
    """Whether a server bound to these addresses is reachable from this machine only. A wildcard
    (``0.0.0.0``, ``::``, empty) or any other address is reachable from elsewhere."""
    names = [hosts] if isinstance(hosts, str) else list(hosts)
    return bool(names) and all(name and is_loopback_host(name) for name in names)
