"""CurveZMQ key files, in pyzmq's certificate format (``zmq.auth``): what both sides read and write.

A key pair is two files: ``NAME.key`` (the public key, safe to copy to the other host) and
``NAME.key_secret`` (public and secret key, mode 0600). The gateway's directory holds its own
``gateway.key`` / ``gateway.key_secret`` and the public keys of the workers it accepts in
``authorized/*.key`` (like SSH's authorized_keys). Only file handling lives here; the sockets
apply the keys themselves (gateway/pool/auth.py, workers/loop.py).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import zmq.auth
from zmq.utils import z85

GATEWAY_KEY_NAME = "gateway"
AUTHORIZED_DIR = "authorized"
DEFAULT_WORKER_KEY_NAME = "worker"


class KeyFileError(ValueError):
    """A key file that is missing, unreadable or not a CurveZMQ certificate (the message says which)."""


@dataclass(frozen=True, slots=True)
class KeyPair:
    public: bytes  # Z85, 40 characters
    secret: bytes

    @property
    def key_id(self) -> str:
        """A short name for logs and /providers: the first 8 characters of the public key."""
        return key_id(self.public)


@dataclass(frozen=True, slots=True)
class CurveKeys:
    """What a worker needs to join over tcp://: the gateway's public key and its own pair."""

    gateway: bytes
    own: KeyPair


def key_id(public: bytes) -> str:
    return public[:8].decode("ascii", "replace")


def create_key_pair(directory: str | Path, name: str) -> tuple[Path, Path]:
    """Write ``NAME.key`` (0644) and ``NAME.key_secret`` (0600) into ``directory``; refuse to overwrite."""
    if not name or "/" in name or name.startswith("."):
        raise KeyFileError(f"key name {name!r} must be a plain file name")
    folder = Path(directory)
    folder.mkdir(parents=True, exist_ok=True)
    public, secret = folder / f"{name}.key", folder / f"{name}.key_secret"
    for path in (public, secret):
        if path.exists():
            raise KeyFileError(f"{path} exists: remove it first to make a new key (its peers must get the new one)")
    previous = os.umask(0o077)  # the secret file is never readable by others, not even for an instant
    try:
        zmq.auth.create_certificates(str(folder), name)
    finally:
        os.umask(previous)
    os.chmod(secret, 0o600)
    os.chmod(public, 0o644)
    return public, secret


def load_public(path: str | Path) -> bytes:
    """The public key in a ``.key`` (or ``.key_secret``) file."""
    try:
        public, _secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the public key in {path}: {exc}") from None
    return public


def load_pair(path: str | Path) -> KeyPair:
    """Both keys from a ``.key_secret`` file."""
    try:
        public, secret = zmq.auth.load_certificate(str(path))
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"cannot read the key pair in {path}: {exc}") from None
    if not secret:
        raise KeyFileError(f"{path} holds no secret key: pass the .key_secret file, not the public .key")
    return KeyPair(public, secret)


def parse_public(text: str) -> bytes:
    """A Z85 public key written inline (config file); checked by decoding it."""
    raw = text.strip().encode("ascii", "replace")
    try:
        if len(raw) != 40 or len(z85.decode(raw)) != 32:
            raise ValueError("wrong length")
    except ValueError:
        raise KeyFileError(f"{text!r} is not a Z85 CurveZMQ public key (40 characters)") from None
    return raw


def authorized_keys(directory: str | Path) -> dict[bytes, str]:
    """Public key -> file name of every ``*.key`` in ``directory`` (unreadable files are skipped)."""
    found: dict[bytes, str] = {}
    folder = Path(directory)
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.key")):
        try:
            found[load_public(path)] = path.name
        except KeyFileError:
            continue
    return found
