"""Sealed calls (z4j_agents.replay): what one agent seals, only an agent with the same secret opens,
byte-for-byte the layout docs/architecture.md describes."""

from __future__ import annotations

import hashlib
import hmac

import pytest

from z4j_agents import replay

SECRET = "s3cret-of-the-agent-0123456789abcdef"


def test_a_sealed_call_opens_with_the_same_secret_only():
    call = {"task": "proj.add", "args": [1, 2], "kwargs": {"card": "4111"}, "queue": "default"}
    blob = replay.seal(SECRET, call)
    assert replay.open(SECRET, blob) == call
    assert b"4111" not in blob  # encrypted, not only signed
    with pytest.raises(replay.ReplayError, match="another agent secret"):
        replay.open("another-secret", blob)


def test_every_altered_byte_is_refused():
    blob = replay.seal(SECRET, {"task": "t", "args": [1]})
    for i in range(len(blob)):
        altered = bytearray(blob)
        altered[i] ^= 0x01
        with pytest.raises(replay.ReplayError):
            replay.open(SECRET, bytes(altered))


def test_a_large_call_is_compressed_and_opens():
    call = {"task": "t", "args": ["x" * 50_000]}
    blob = replay.seal(SECRET, call)
    assert len(blob) < 5_000 and blob[4] & 0x01
    assert replay.open(SECRET, blob) == call


def test_the_layout_is_version_1_encrypt_then_hmac_sha256():
    """The tag is HMAC-SHA256(mac key, head | nonce | ciphertext): a blob sealed by an older agent
    (or by this one) verifies with the documented keys, so stored calls stay retryable."""
    blob = replay.seal_bytes(SECRET, b"plaintext of a call")
    key = hmac.new(SECRET.encode(), b"z4j-replay-v1", hashlib.sha256).digest()
    mac_key = hmac.new(key, b"mac", hashlib.sha256).digest()
    assert blob[:5] == b"Z4R\x01\x00"
    assert hmac.new(mac_key, blob[:-32], hashlib.sha256).digest() == blob[-32:]
    assert replay.open_bytes(SECRET, blob) == b"plaintext of a call"


@pytest.mark.parametrize("bad", [b"", b"Z4R", b"nope" * 20, "text"])
def test_what_is_not_a_sealed_call_says_so(bad):
    with pytest.raises(replay.ReplayError):
        replay.open(SECRET, bad)
