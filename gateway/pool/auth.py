"""CurveZMQ on the worker socket: who may join from another host.

libzmq does the cryptography (CURVE) and asks a ZAP handler whether a client key may connect;
pyzmq's ``zmq.auth`` AsyncioAuthenticator is that handler, fed by a ``KeyRing``: the public keys
in ``<keys dir>/authorized/*.key`` (re-read every ``RELOAD_S``, so adding or removing a file
takes effect without a restart), keys written inline in the config file, and the key of the
gateway's own supervised workers. Every refusal is counted by kind and logged once with the
peer address: an unknown key (ZAP), a peer without CURVE (plaintext) and a peer that used the
wrong gateway key (the handshake fails before ZAP; libzmq reports those on the socket monitor).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq
import zmq.asyncio
from zmq.auth.asyncio import AsyncioAuthenticator
from zmq.utils import z85

from gateway.config import ConfigError
from protocol.curve import (
    AUTHORIZED_DIR,
    GATEWAY_KEY_NAME,
    KeyFileError,
    KeyPair,
    authorized_keys,
    create_key_pair,
    key_id,
    load_pair,
)

log = logging.getLogger("acore.gateway")

LOG_EVERY_S = 60.0  # a peer retrying a refused handshake is logged once a minute, counted every time
RELOAD_S = 2.0  # how often authorized/ is re-read (the conventions promise 5 s at most)
ZAP_DOMAIN = "acore"
SUPERVISED_KEY_NAME = "supervised"
# libzmq's handshake failure codes (zmq.h ZMQ_PROTOCOL_ERROR_*): what a refused peer did wrong.
_CRYPTOGRAPHIC = 0x11000001  # the peer encrypted for another server key: the wrong --gateway-key
_MECHANISM_MISMATCH = 0x11000002  # the peer speaks no CURVE: a plaintext worker


def gateway_key_files(keys_dir: Path) -> tuple[Path, Path]:
    return keys_dir / f"{GATEWAY_KEY_NAME}.key", keys_dir / f"{GATEWAY_KEY_NAME}.key_secret"


def ensure_gateway_keys(keys_dir: Path) -> tuple[KeyPair, bool]:
    """The gateway's key pair in ``keys_dir`` (made when absent) and whether it was just made."""
    public, secret = gateway_key_files(keys_dir)
    made = False
    try:
        if not secret.exists():
            if public.exists():
                raise ConfigError(f"{public} exists without {secret.name}: restore the secret file, or remove both "
                                  "to make a new pair (every worker then needs the new gateway.key)")
            create_key_pair(keys_dir, GATEWAY_KEY_NAME)
            made = True
        (keys_dir / AUTHORIZED_DIR).mkdir(mode=0o755, exist_ok=True)
        if (keys_dir / AUTHORIZED_DIR).stat().st_mode & 0o002:
            raise ConfigError(f"{keys_dir / AUTHORIZED_DIR} is writable by anyone: anyone could authorise a worker")
        return load_pair(secret), made
    except (KeyFileError, OSError) as exc:
        raise ConfigError(f"worker keys in {keys_dir}: {exc}") from None


@dataclass
class KeyRing:
    """The public keys allowed to join: files in authorized/, inline config keys, supervised workers."""

    directory: Path | None
    inline: dict[bytes, str] = field(default_factory=dict)
    extra: dict[bytes, str] = field(default_factory=dict)
    keys: dict[bytes, str] = field(default_factory=dict)  # public key -> where it came from
    _seen: tuple[Any, ...] = ()

    def reload(self, force: bool = False) -> bool:
        """Re-read the directory if it changed (or ``force``: the inline keys changed); True when the set
        of keys changed."""
        if self.directory is not None:
            try:
                listing = tuple(sorted((p.name, p.stat().st_mtime_ns) for p in self.directory.glob("*.key")))
            except OSError:
                listing = ()
            if listing == self._seen and self.keys and not force:
                return False
            self._seen = listing
        found = {**(authorized_keys(self.directory) if self.directory is not None else {}), **self.inline,
                 **self.extra}
        changed = found != self.keys
        if changed:
            added = set(found) - set(self.keys)
            removed = set(self.keys) - set(found)
            for key in sorted(added):
                log.info("worker key %s authorised (%s)", key_id(key), found[key])
            for key in sorted(removed):
                log.info("worker key %s no longer authorised (%s)", key_id(key), self.keys[key])
        self.keys = found
        return changed

    def callback(self, domain: str, key: bytes) -> bool:
        return key in self.keys


class _Authenticator(AsyncioAuthenticator):
    """pyzmq's ZAP handler, told each request's peer address so that a refusal can name it."""

    def __init__(self, context: zmq.asyncio.Context, on_refused: Any) -> None:
        super().__init__(context, log=logging.getLogger("acore.gateway.zap"))
        self._on_refused = on_refused
        self._address = ""

    async def handle_zap_message(self, msg: list[bytes]) -> None:
        # ZAP request frames: version, request id, domain, address, identity, mechanism, credentials...
        self._address = msg[3].decode("utf-8", "replace") if len(msg) > 3 else ""
        await super().handle_zap_message(msg)

    async def _authenticate_curve(self, domain: str, client_key: bytes) -> tuple[bool, bytes]:
        allowed, reason = await super()._authenticate_curve(domain, client_key)
        if not allowed:
            self._on_refused("unknown_key", self._address, f"key {key_id(z85.encode(client_key))}")
        return allowed, reason


class WorkerAuth:
    """CURVE for the pool's ROUTER socket: the gateway's keys, the key ring, the ZAP handler, refusals."""

    def __init__(self, keys_dir: Path, inline: list[bytes] | None = None, runtime_dir: Path | None = None,
                 make_supervised_key: bool = True) -> None:
        self.keys_dir = keys_dir
        self.pair, made = ensure_gateway_keys(keys_dir)
        if made:
            log.info("made the gateway key pair %s (copy %s to each worker host)", gateway_key_files(keys_dir)[1],
                     gateway_key_files(keys_dir)[0])
        self.ring = KeyRing(keys_dir / AUTHORIZED_DIR, {key: "config file" for key in inline or ()})
        self.refused: Counter[str] = Counter()
        self._logged: dict[tuple[str, str], tuple[float, int]] = {}  # (kind, host) -> (last logged, since then)
        self.supervised_key_file: Path | None = None
        if runtime_dir is not None:
            self.supervised_key_file = self._supervised_key(runtime_dir, make_supervised_key)
        self._authenticator: _Authenticator | None = None
        self._reload_task: asyncio.Task[None] | None = None
        self._monitor: HandshakeMonitor | None = None

    @property
    def gateway_public_file(self) -> Path:
        return gateway_key_files(self.keys_dir)[0]

    def _supervised_key(self, runtime_dir: Path, make: bool) -> Path:
        """A key pair for the workers this gateway starts itself, in its private 0700 runtime directory.

        The process that starts the workers makes a fresh pair; the front processes of a
        --processes N gateway (``make=False``) authorise the pair their parent made."""
        secret = runtime_dir / f"{SUPERVISED_KEY_NAME}.key_secret"
        if make:
            for path in (secret, runtime_dir / f"{SUPERVISED_KEY_NAME}.key"):
                path.unlink(missing_ok=True)  # a fresh pair per gateway run
            create_key_pair(runtime_dir, SUPERVISED_KEY_NAME)
        try:
            self.ring.extra[load_pair(secret).public] = "this gateway's supervised workers"
        except KeyFileError as exc:
            raise ConfigError(f"the supervised workers' key: {exc}") from None
        return secret

    def refuse(self, kind: str, address: str, detail: str = "") -> None:
        """Count a refusal; log it, at most once a minute for the same kind of refusal from the same host."""
        self.refused[kind] += 1
        host = address.rsplit(":", 1)[0] if address.count(":") == 1 else address
        now = time.monotonic()
        last = self._logged.get((kind, host))
        if last is not None and now - last[0] < LOG_EVERY_S:
            self._logged[(kind, host)] = (last[0], last[1] + 1)
            return
        repeats = f"; {last[1]} more like it in the last minute" if last is not None and last[1] else ""
        self._logged[(kind, host)] = (now, 0)
        why = {"unknown_key": "its key is not authorised", "plaintext": "it does not speak CURVE (no keys)",
               "wrong_gateway_key": "it used another gateway key", "handshake": "the handshake failed"}[kind]
        log.warning("refused a worker connection from %s: %s%s (%d refused so far%s)", address or "an address gone "
                    "before it could be read", why, f" ({detail})" if detail else "", sum(self.refused.values()),
                    repeats)

    def apply(self, sock: zmq.Socket[Any]) -> None:
        """Make ``sock`` a CURVE server that asks our ZAP handler about every client key."""
        sock.curve_server = True
        sock.curve_secretkey = self.pair.secret
        sock.curve_publickey = self.pair.public
        sock.zap_domain = ZAP_DOMAIN.encode()

    def start(self, context: zmq.Context[Any], sock: zmq.Socket[Any]) -> None:
        self.ring.reload()
        shadow = zmq.asyncio.Context.shadow(context.underlying)
        authenticator = _Authenticator(shadow, self.refuse)
        authenticator.configure_curve_callback(domain=ZAP_DOMAIN, credentials_provider=self.ring)
        authenticator.start()
        self._authenticator = authenticator
        self._reload_task = asyncio.get_running_loop().create_task(self._reloads(), name="worker-keys-reload")
        endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)
        self._monitor = HandshakeMonitor(sock, self.refuse, int(endpoint.rsplit(":", 1)[1]))
        self._monitor.start()

    async def _reloads(self) -> None:
        while True:
            await asyncio.sleep(RELOAD_S)
            try:
                self.ring.reload()
            except Exception:  # a bad file never stops the reloads
                log.exception("re-reading %s failed", self.ring.directory)

    async def stop(self) -> None:
        if self._reload_task is not None:
            self._reload_task.cancel()
            try:
                await self._reload_task
            except (asyncio.CancelledError, Exception):
                pass
        if self._monitor is not None:
            self._monitor.stop()
        if self._authenticator is not None:
            self._authenticator.stop()

    def describe(self) -> dict[str, Any]:
        return {"curve": True, "gateway_key": key_id(self.pair.public), "authorized_keys": len(self.ring.keys),
                "refused": dict(self.refused)}


class HandshakeMonitor:
    """Reads the ROUTER's monitor events on a thread: handshakes that fail before ZAP is asked.

    The peer address is taken from the accepted socket when libzmq has not closed it yet (the
    monitor reports only a file descriptor); a refusal is counted either way.
    """

    def __init__(self, sock: zmq.Socket[Any], on_refused: Any, port: int) -> None:
        self._events = (zmq.EVENT_ACCEPTED | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
                        | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL | zmq.EVENT_DISCONNECTED)
        self._monitor = sock.get_monitor_socket(self._events)
        self._sock = sock
        self._on_refused = on_refused
        self._stop = threading.Event()
        self._peers: dict[int, str] = {}  # fd -> peer address, for connections still handshaking
        self._thread = threading.Thread(target=self._run, name="worker-socket-monitor", daemon=True)
        self._loop = asyncio.get_running_loop()
        self._port = port

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2.0)
        try:
            self._sock.disable_monitor()
        except zmq.ZMQError:
            pass
        self._monitor.close(linger=0)

    def _run(self) -> None:
        last_accepted = ""
        while not self._stop.is_set():
            if not self._monitor.poll(200):
                continue
            try:
                frames = self._monitor.recv_multipart(flags=zmq.NOBLOCK)
            except zmq.ZMQError:
                continue
            if len(frames) != 2 or len(frames[0]) != 6:
                continue
            event, value = struct.unpack("=hi", frames[0])
            if event == zmq.EVENT_ACCEPTED:
                last_accepted = _peer_of(value, self._port)
                self._peers[value] = last_accepted
            elif event == zmq.EVENT_DISCONNECTED:
                self._peers.pop(value, None)
            elif event in (zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL, zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL):
                kind = {_CRYPTOGRAPHIC: "wrong_gateway_key", _MECHANISM_MISMATCH: "plaintext"}.get(value & 0xFFFFFFFF,
                                                                                                   "handshake")
                log.debug("handshake failed: event %d value %#x", event, value & 0xFFFFFFFF)
                self._loop.call_soon_threadsafe(self._on_refused, kind, last_accepted, "")


def _peer_of(fd: int, port: int) -> str:
    """host:port of an accepted TCP connection, if libzmq has not closed it already (and the number
    was not reused meanwhile: the socket must still be one accepted on our port)."""
    try:
        duplicate = os.dup(fd)
    except OSError:
        return ""
    try:
        with socket.socket(fileno=duplicate) as peer:
            if peer.family not in (socket.AF_INET, socket.AF_INET6) or peer.getsockname()[1] != port:
                return ""
            host, port = peer.getpeername()[:2]
            return f"{host}:{port}"
    except OSError:
        return ""
