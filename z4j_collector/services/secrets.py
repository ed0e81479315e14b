"""Passwords (argon2id) and the opaque tokens users hold (sessions, API
tokens, invitations, resets, setup): 256 random bits, a type prefix, stored
as SHA-256 (ASVS 5.0 §6.5.2: secrets of ≥112 bits need no slow hash).
"""

from __future__ import annotations

import asyncio
import hashlib
import threading
import re
import secrets

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from z4j_collector.errors import CollectorError

# argon2-cffi defaults: RFC 9106 low-memory profile (t=3, m=64 MiB, p=4).
_hasher = PasswordHasher()
# Each hash takes 64 MiB and most of a core: a handful at once, the rest wait.
_slots = threading.BoundedSemaphore(2)
# Verified when the account does not exist, so both cost the same time.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))

MIN_PASSWORD = 8
MAX_PASSWORD = 1024
_COMMON = frozenset({
    "password", "password1", "password123", "12345678", "123456789", "1234567890", "qwertyuiop", "iloveyou",
    "11111111", "00000000", "abc12345", "qwerty123", "letmein1", "welcome1", "admin123", "sunshine",
    "princess", "football", "baseball", "trustno1", "passw0rd", "superman", "changeme", "zaq12wsx",
})
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

PREFIXES = {"session": "z4js_", "api": "z4jt_", "invite": "z4ji_", "reset": "z4jr_", "setup": "z4ju_",
            "agent": "z4ja_"}


def token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def new_token(kind: str) -> tuple[str, str]:
    """A fresh token of ``kind`` and the hash that is stored."""
    token = PREFIXES[kind] + secrets.token_urlsafe(32)
    return token, token_hash(token)


def check_password(password: str) -> str:
    if not isinstance(password, str) or len(password) < MIN_PASSWORD:
        raise CollectorError(f"password must be at least {MIN_PASSWORD} characters", code="weak_password")
    if len(password) > MAX_PASSWORD:
        raise CollectorError(f"password must be at most {MAX_PASSWORD} characters", code="weak_password")
    if password.lower() in _COMMON:
        raise CollectorError("that password is among the most common ones; choose another", code="weak_password")
    return password


def check_email(email: str) -> str:
    email = (email or "").strip().lower()
    if len(email) > 320 or not _EMAIL.match(email):
        raise CollectorError(f"not an e-mail address: {email[:80]!r}", code="bad_email")
    return email


async def hash_password(password: str) -> str:
    return await asyncio.to_thread(_hash, password)


async def verify_password(stored: str | None, password: str) -> tuple[bool, str | None]:
    """(matches, new hash when the parameters changed since it was stored)."""
    return await asyncio.to_thread(_verify, stored, password)


def _hash(password: str) -> str:
    with _slots:
        return _hasher.hash(password)


def _verify(stored: str | None, password: str) -> tuple[bool, str | None]:
    with _slots:
        return _verify_now(stored, password)


def _verify_now(stored: str | None, password: str) -> tuple[bool, str | None]:
    try:
        _hasher.verify(stored or _DUMMY_HASH, password)
    except (VerificationError, InvalidHashError):
        return False, None
    if stored is None:
        return False, None
    return True, _hasher.hash(password) if _hasher.check_needs_rehash(stored) else None
