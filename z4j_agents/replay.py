"""Sealed copies of a task's original call, for retries.

An engine adapter keeps the exact call (name, arguments, routing) that a
retry needs in ``TaskEvent.replay``. The collector stores those bytes beside
the task, but only an agent holding the same ``Z4J_HMAC_SECRET`` can open
them: the key is ``HMAC(secret, "z4j-replay-v1")``, while the collector only
knows ``frame_key = HMAC(secret, "z4j-frame-key-v1")`` and cannot derive one
from the other.

Stdlib and msgspec only (this runs in customers' workers). The cipher is a
SHAKE-256 keystream (key, nonce) XORed with the plaintext, authenticated by
HMAC-SHA256 over version, flags, nonce and ciphertext (encrypt-then-MAC, two
keys derived from the replay key). Layout, version 1::

    b"Z4R" | version (1 byte) | flags (1 byte) | nonce (16) | ciphertext | tag (32)

The plaintext is the msgpack encoding of a plain value (dicts, lists, str,
bytes, int, float, bool, None); flag bit 0 says it was zlib-compressed first.

    blob = seal(secret, {"task": "proj.add", "body": b"..."})
    call = open(secret, blob)        # ReplayError when the secret or bytes are wrong
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
import zlib
from typing import Any

import msgspec

__all__ = ["ReplayError", "open", "open_bytes", "replay_key", "seal", "seal_bytes"]

VERSION = 1
_MAGIC = b"Z4R"
_NONCE = 16
_TAG = 32
_HEAD = len(_MAGIC) + 2
_COMPRESSED = 0x01
_COMPRESS_ABOVE = 2048
MAX_PLAINTEXT = 64 * 1024 * 1024

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder()


class ReplayError(ValueError):
    """The bytes cannot be opened: not a sealed call, another secret, or altered."""


def replay_key(secret: str | bytes) -> bytes:
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, b"z4j-replay-v1", hashlib.sha256).digest()


@functools.lru_cache(maxsize=16)
def _keys(secret: str | bytes) -> tuple[bytes, Any]:
    # Cached: an agent seals with one secret, for every task it sees. The MAC
    # is kept keyed: copying it skips the key schedule on every seal.
    key = replay_key(secret)
    return (hmac.new(key, b"enc", hashlib.sha256).digest(),
            hmac.new(hmac.new(key, b"mac", hashlib.sha256).digest(), digestmod=hashlib.sha256))


def _tag(keyed_mac: Any, data: bytes) -> bytes:
    mac = keyed_mac.copy()
    mac.update(data)
    return mac.digest()


def _xor(data: bytes, enc_key: bytes, nonce: bytes) -> bytes:
    if not data:
        return b""
    stream = hashlib.shake_256(enc_key + nonce).digest(len(data))
    n = len(data)
    return (int.from_bytes(data, "little") ^ int.from_bytes(stream, "little")).to_bytes(n, "little")


def seal_bytes(secret: str | bytes, plaintext: bytes, *, _flags: int = 0) -> bytes:
    """Encrypt and authenticate ``plaintext`` with the replay key of ``secret``."""
    enc_key, mac_key = _keys(secret)
    nonce = os.urandom(_NONCE)
    head = _MAGIC + bytes((VERSION, _flags))
    body = nonce + _xor(bytes(plaintext), enc_key, nonce)
    tag = _tag(mac_key, head + body)
    return head + body + tag


def open_bytes(secret: str | bytes, blob: bytes) -> bytes:
    """The plaintext of :func:`seal_bytes` (decompressed); ReplayError otherwise."""
    plaintext, _ = _open(secret, blob)
    return plaintext


def _open(secret: str | bytes, blob: bytes) -> tuple[bytes, int]:
    if not isinstance(blob, (bytes, bytearray, memoryview)):
        raise ReplayError(f"a sealed call is bytes, got {type(blob).__name__}")
    blob = bytes(blob)
    if len(blob) < _HEAD + _NONCE + _TAG or not blob.startswith(_MAGIC):
        raise ReplayError("not a sealed z4j call")
    version, flags = blob[3], blob[4]
    if version != VERSION:
        raise ReplayError(f"sealed call version {version} is not supported (want {VERSION})")
    enc_key, mac_key = _keys(secret)
    head, body, tag = blob[:_HEAD], blob[_HEAD:-_TAG], blob[-_TAG:]
    if not hmac.compare_digest(_tag(mac_key, head + body), tag):
        raise ReplayError("sealed call does not verify: another agent secret sealed it, or it was altered")
    plaintext = _xor(body[_NONCE:], enc_key, body[:_NONCE])
    if flags & _COMPRESSED:
        try:
            d = zlib.decompressobj()
            plaintext = d.decompress(plaintext, MAX_PLAINTEXT)
            if d.unconsumed_tail:
                raise ReplayError(f"sealed call is larger than {MAX_PLAINTEXT} bytes")
        except zlib.error as exc:
            raise ReplayError(f"sealed call is corrupt: {exc}") from None
    return plaintext, flags


def seal(secret: str | bytes, obj: Any) -> bytes:
    """Seal a plain value (msgpack types only; anything else raises TypeError)."""
    plaintext = _encoder.encode(obj)
    flags = 0
    if len(plaintext) > _COMPRESS_ABOVE:
        packed = zlib.compress(plaintext, 1)
        if len(packed) < len(plaintext):
            plaintext, flags = packed, _COMPRESSED
    return seal_bytes(secret, plaintext, _flags=flags)


def open(secret: str | bytes, blob: bytes) -> Any:  # noqa: A001 - the module's verb, as in seal/open
    """The value :func:`seal` sealed; ReplayError when it cannot be opened."""
    plaintext = open_bytes(secret, blob)
    try:
        return _decoder.decode(plaintext)
    except msgspec.DecodeError as exc:
        raise ReplayError(f"sealed call is corrupt: {exc}") from None

