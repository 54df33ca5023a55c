"""URL fetching: SSRF spellings, pinned connections (no DNS rebinding), redirects, caps, data URLs."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from media.data_url import decode_base64, decode_data_url
from media.errors import MediaError
from media.fetch import Fetcher, PinnedResolver
from media.policy import MediaPolicy

ServerFactory = Callable[..., Awaitable[TestServer]]


def resolver_for(table: dict[str, list[list[str]]], calls: list[str]) -> Callable[[str, int], Awaitable[list[str]]]:
    """A resolver seam answering from ``table``; each host's answers are consumed in order (rebinding)."""

    async def resolve(host: str, port: int) -> list[str]:
        calls.append(host)
        answers = table[host]
        return answers.pop(0) if len(answers) > 1 else answers[0]

    return resolve


async def refused(fetcher: Fetcher, url: str) -> MediaError:
    with pytest.raises(MediaError) as info:
        await fetcher.fetch(url)
    return info.value


@pytest.mark.parametrize("url", [
    "http://127.0.0.1:9/x", "http://[::1]/x", "http://0.0.0.0/x", "http://[::ffff:127.0.0.1]/x",
    "http://169.254.169.254/latest/meta-data/", "http://metadata.google.internal/x", "http://2130706433/x",
    "http://0177.0.0.1/x", "http://0x7f.1/x", "http://127.1/x", "http://10.0.0.1/", "http://192.168.1.1/",
    "http://172.16.0.1/", "http://[fd00::1]/", "http://[fe80::1]/", "http://[::]/", "http://localhost/",
    "http://100.64.0.1/", "http://[2002:7f00:1::]/",
])
async def test_forbidden_addresses_never_resolved_or_fetched(url: str) -> None:
    calls: list[str] = []
    fetcher = Fetcher(MediaPolicy(), resolver=resolver_for({}, calls))
    error = await refused(fetcher, url)
    assert error.status in (400, 403), error.message
    assert calls == []  # literal or name-based refusals never reach DNS


@pytest.mark.parametrize("url", ["file:///etc/passwd", "gopher://example.com/", "ftp://example.com/x", "javascript:1"])
async def test_other_schemes_refused(url: str) -> None:
    error = await refused(Fetcher(MediaPolicy()), url)
    assert error.status == 400


async def test_name_resolving_to_private_is_refused() -> None:
    calls: list[str] = []
    fetcher = Fetcher(MediaPolicy(), resolver=resolver_for({"evil.test": [["8.8.8.8", "127.0.0.1"]]}, calls))
    error = await refused(fetcher, "http://evil.test/x")
    assert error.status == 403 and calls == ["evil.test"]


async def test_dns_rebinding_connects_to_first_validated_address() -> None:
    """The resolver answers public first, loopback second: the connection is pinned to the first answer."""
    calls: list[str] = []
    seen: list[tuple[str, str]] = []

    class Probe(Fetcher):
        def _session(self, host: str, address: str) -> aiohttp.ClientSession:
            seen.append((host, address))
            raise MediaError(599, "probe stop")  # stop before any packet leaves the machine

    fetcher = Probe(MediaPolicy(), resolver=resolver_for({"rebind.test": [["8.8.8.8"], ["127.0.0.1"]]}, calls))
    error = await refused(fetcher, "http://rebind.test/x")
    assert error.status == 599
    assert calls == ["rebind.test"] and seen == [("rebind.test", "8.8.8.8")]
    # And the pinned resolver aiohttp gets never asks DNS again: it only knows the validated address.
    pinned = PinnedResolver("rebind.test", "8.8.8.8")
    answers = await pinned.resolve("rebind.test", 80)
    assert [a["host"] for a in answers] == ["8.8.8.8"]
    with pytest.raises(OSError):
        await pinned.resolve("other.test", 80)


@pytest.fixture
async def files_server(aiohttp_server: ServerFactory) -> dict[str, Any]:
    hits: list[str] = []

    async def doc(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(body=b"a,b\n1,2\n", content_type="text/csv", headers={"X-Host-Seen": request.host})

    async def redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound(request.query["to"])

    async def loop_redirect(request: web.Request) -> web.Response:
        hits.append(request.path)
        raise web.HTTPFound("/loop")

    async def forever(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        response = web.StreamResponse()
        await response.prepare(request)
        block = b"x" * 65536
        while True:
            await response.write(block)

    async def drip(request: web.Request) -> web.StreamResponse:
        hits.append(request.path)
        response = web.StreamResponse()
        await response.prepare(request)
        while True:
            await response.write(b"x")
            await asyncio.sleep(0.5)

    async def target(request: web.Request) -> web.Response:
        hits.append(request.path)
        return web.Response(text="private")

    app = web.Application()
    app.router.add_get("/doc.csv", doc)
    app.router.add_get("/redirect", redirect)
    app.router.add_get("/loop", loop_redirect)
    app.router.add_get("/forever", forever)
    app.router.add_get("/drip", drip)
    app.router.add_get("/target", target)
    server = await aiohttp_server(app, host="127.0.0.1")
    return {"port": server.port, "hits": hits}


def allowlisted_fetcher(port: int, **limits: Any) -> Fetcher:
    """'files.test' is allowlisted and resolves (through the seam) to the loopback test server."""
    policy = MediaPolicy(url_allowlist=("files.test",), **limits)
    return Fetcher(policy, resolver=resolver_for({"files.test": [["127.0.0.1"]]}, []))


async def test_fetch_allowlisted_name_through_pinned_address(files_server: dict[str, Any]) -> None:
    port = files_server["port"]
    fetched = await allowlisted_fetcher(port).fetch(f"http://files.test:{port}/doc.csv")
    assert fetched.data == b"a,b\n1,2\n" and fetched.content_type == "text/csv" and fetched.name == "doc.csv"


async def test_redirect_to_loopback_blocked_at_the_hop(files_server: dict[str, Any]) -> None:
    port = files_server["port"]
    error = await refused(allowlisted_fetcher(port),
                          f"http://files.test:{port}/redirect?to=http://127.0.0.1:{port}/target")
    assert error.status == 403
    assert files_server["hits"] == ["/redirect"]  # the private target was never contacted


async def test_redirect_limit(files_server: dict[str, Any]) -> None:
    port = files_server["port"]
    error = await refused(allowlisted_fetcher(port), f"http://files.test:{port}/loop")
    assert error.status == 400 and "redirect" in error.message
    assert files_server["hits"] == ["/loop"] * 4  # the first request + 3 redirects, then stop


async def test_stream_cut_at_file_cap(files_server: dict[str, Any]) -> None:
    port = files_server["port"]
    error = await refused(allowlisted_fetcher(port, max_file_bytes=1 << 20), f"http://files.test:{port}/forever")
    assert error.status == 413


async def test_slow_drip_hits_deadline(files_server: dict[str, Any]) -> None:
    port = files_server["port"]
    loop = asyncio.get_running_loop()
    start = loop.time()
    error = await refused(allowlisted_fetcher(port, fetch_timeout_s=1.0), f"http://files.test:{port}/drip")
    assert error.status == 408 and loop.time() - start < 3


def test_data_url_length_checked_before_decoding() -> None:
    cap = 1000
    # Invalid base64 of a too-large length: 413 (not 400) shows the length was checked before any decode.
    with pytest.raises(MediaError) as info:
        decode_data_url("data:image/png;base64," + "!" * 2000, cap)
    assert info.value.status == 413
    with pytest.raises(MediaError) as info:
        decode_data_url("data:image/png;base64,abc", cap)  # bad padding
    assert info.value.status == 400
    data, mime = decode_data_url("data:text/plain;base64," + base64.b64encode(b"hi").decode(), cap)
    assert (data, mime) == (b"hi", "text/plain")
    with pytest.raises(MediaError) as info:
        decode_base64("A" * 5000, cap)
    assert info.value.status == 413
