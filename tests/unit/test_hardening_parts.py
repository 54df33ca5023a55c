"""Issue 21's parts that need no process: the base_url rule by listen address, limits from env and flags,
the byte budget, the connection helpers, and the ordinary files the extractors now accept."""

from __future__ import annotations

import pytest

from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.errors import GatewayError
from gateway.ops.connections import connection_cap, path_of, raw_error
from gateway.ops.limits import ByteBudget, Reservation
from gateway.pipeline.base_url import check_base_url
from gateway.providers.http import structured_error_only
from gateway.providers.upstream import call_timeouts
from media.errors import MediaError
from media.extract import extract
from media.netpolicy import is_loopback_host, listens_on_loopback_only
from media.policy import MediaPolicy
from tests import media_files as files

SPELLINGS = ["127.0.0.1", "127.1", "127.200.0.9", "[::1]", "2130706433", "0x7f000001", "0177.0.0.1",
             "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "localhost", "localhost.", "api.localhost"]


@pytest.mark.parametrize("host", SPELLINGS)
def test_every_loopback_spelling_is_loopback(host: str) -> None:
    assert is_loopback_host(host.strip("[]"))


@pytest.mark.parametrize(("hosts", "local"), [
    ("127.0.0.1", True), ("::1", True), ("localhost", True), ("0.0.0.0", False), ("::", False),
    ("", False), ("192.168.1.5", False), (("127.0.0.1", "10.0.0.2"), False),
])
def test_listens_on_loopback_only(hosts: str | tuple[str, ...], local: bool) -> None:
    assert listens_on_loopback_only(hosts) is local


@pytest.mark.parametrize("config", [GatewayConfig(host="0.0.0.0"), GatewayConfig(host="192.168.1.5"),
                                    GatewayConfig(auth_keys=("k",))])
@pytest.mark.parametrize("host", SPELLINGS)
def test_shared_gateway_refuses_loopback_base_url(config: GatewayConfig, host: str) -> None:
    with pytest.raises(GatewayError) as refused:
        check_base_url(config, f"http://{host}:8080/v1")
    assert refused.value.status == 403 and "ACORE_BASE_URL_ALLOWLIST" in refused.value.message


def test_one_local_user_and_the_allowlist_may_use_loopback() -> None:
    assert not check_base_url(GatewayConfig(), "http://2130706433:8080/v1").trusted
    shared = GatewayConfig(host="0.0.0.0", auth_keys=("k",), base_url_allowlist=("http://localhost:1234",))
    assert check_base_url(shared, "http://localhost:1234/v1").trusted


def test_structured_errors_only_from_client_urls() -> None:
    api_error = b'{"error": {"message": "bad key", "type": "authentication_error"}}'
    assert structured_error_only(api_error) == api_error
    for page in (b"<html>secret</html>", b'{"error": "secret"}', b'{"detail": "secret"}', b"[]"):
        assert structured_error_only(page) == b""


def test_request_timeout_bounds_the_whole_stream() -> None:
    limits = GatewayConfig().limits
    assert call_timeouts(limits, 3) == (3, 3)
    assert call_timeouts(limits, None) == (limits.first_byte_timeout_s, limits.stream_idle_timeout_s)


def test_limits_from_environment_and_flags() -> None:
    config = load_config(env={"ACORE_STREAM_IDLE_TIMEOUT": "7", "ACORE_MAX_INFLIGHT_BYTES": "1000000",
                              "ACORE_HEADER_TIMEOUT": "4"},
                         overrides={"limits": {"max_connections": 50, "header_timeout_s": None}})
    limits = config.limits
    assert (limits.stream_idle_timeout_s, limits.max_inflight_bytes, limits.header_timeout_s,
            limits.max_connections) == (7.0, 1_000_000, 4.0, 50)
    assert GatewayConfig().limits.max_inflight_bytes >= 256 << 20
    with pytest.raises(ConfigError):
        load_config(env={"ACORE_MAX_CONNECTIONS": "0"})
    with pytest.raises(ConfigError):
        load_config(env={"ACORE_STREAM_IDLE_TIMEOUT": "soon"})


def test_byte_budget_gives_back_what_was_taken() -> None:
    budget = ByteBudget(100)
    first = Reservation(budget)
    first.add(60, "a body")
    second = Reservation(budget)
    with pytest.raises(GatewayError) as busy:
        second.add(50, "a body")
    assert busy.value.status == 503 and busy.value.headers["Retry-After"]
    first.release()
    second.add(50, "a body")
    assert budget.held == 50 and budget.refused == 1


def test_connection_helpers() -> None:
    assert connection_cap(8192, 1024) == (1024 - 128) // 2
    assert connection_cap(100, 1 << 20) == 100
    assert path_of(b"POST /v1/messages?beta=true HTTP/1.1\r\nHost") == "/v1/messages"
    assert path_of(b"GARBAGE") == "/"
    answer = raw_error(408, "/v1/messages", "slow", "request_timeout")
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n") and b'"type":"error"' in answer


# ---------------------------------------------------------------- ordinary files


def text_of(data: bytes, name: str, mime: str = "") -> str:
    text = extract(data, name, mime, MediaPolicy()).text
    assert text is not None
    return text


def test_owner_password_pdf_is_read_but_a_user_password_is_not() -> None:
    assert "Owner locked text" in text_of(files.owner_password_pdf(), "o.pdf")
    from fpdf import FPDF

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("helvetica", size=12)
    pdf.cell(0, 10, "private")
    pdf.set_encryption(owner_password="o", user_password="needed")
    with pytest.raises(MediaError) as refused:
        text_of(bytes(pdf.output()), "u.pdf")
    assert refused.value.status == 422 and "password" in refused.value.message


def test_doctype_allowed_entities_still_refused() -> None:
    assert "<string>Zebra</string>" in text_of(files.doctype_plist(), "Info.plist")
    assert "Hello page" in text_of(files.doctype_xhtml(), "p.xhtml")
    laughs = b'<?xml version="1.0"?><!DOCTYPE l [<!ENTITY a "x"><!ENTITY b "&a;&a;">]><l>&b;</l>'
    with pytest.raises(MediaError) as refused:
        text_of(laughs, "l.xml")
    assert refused.value.status == 422


def test_long_csv_cell_is_cut_with_a_notice() -> None:
    text = text_of(files.long_cell_csv(150_000), "e.csv")
    assert "| 2 | short note |" in text and "1 cell(s) longer than 10000 characters were cut" in text


def test_large_jpeg_is_decoded_reduced_and_bombs_are_refused() -> None:
    from media.images import normalise

    url, width, height = normalise(files.gray_jpeg(9000, 6800), 50_000_000, 2048, 400_000_000)
    assert max(width, height) == 2048 and url.startswith("data:image/jpeg;base64,")
    with pytest.raises(MediaError) as bomb:
        normalise(files.pixel_bomb_png(20_000, 20_000), 100_000_000, 2048, 400_000_000)
    assert bomb.value.status == 413
    with pytest.raises(MediaError) as whole:  # a 108 MP PNG would be decoded whole: over its cap
        normalise(files.pixel_bomb_png(12_000, 9_000), 100_000_000, 2048, 400_000_000)
    assert whole.value.status == 413


def test_only_a_request_that_never_left_is_sent_again() -> None:
    import aiohttp

    from gateway.providers.http import never_sent

    never = aiohttp.ClientOSError(None, "Can not write request body for http://u/v1/chat/completions")
    never.__cause__ = aiohttp.ClientConnectionResetError("Cannot write to closing transport")
    assert never_sent(never)
    assert not never_sent(aiohttp.ServerDisconnectedError())  # the upstream may have read it
    assert not never_sent(aiohttp.ClientOSError(104, "Connection reset by peer"))
