"""The audit log's two keys, kept apart from every other secret.

* the **chain key** (32 random bytes): HMAC key of the per-project chain;
* the **signing key** (Ed25519): signs checkpoints; its public half verifies
  exported checkpoints anywhere, without any secret.

Neither lives in the database (whoever can rewrite the database must not be
able to re-seal the chain). They come from ``Z4J_AUDIT_KEY`` and
``Z4J_AUDIT_SIGNING_KEY`` (hex) when set, else from ``$Z4J_HOME/keys/``
(files created on first use, mode 0600). Several collectors on one
PostgreSQL must share them: copy the files or set the variables.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from z4j_collector.errors import ConfigError
from z4j_collector.settings import z4j_home


def key_id(public: bytes) -> str:
    return hashlib.sha256(public).hexdigest()[:16]


def public_key_from_b64(text: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(text, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (ValueError, TypeError) as exc:
        raise ConfigError(f"not an Ed25519 public key (base64 of 32 bytes): {exc}") from None


@dataclass(frozen=True)
class AuditKeys:
    chain_key: bytes
    signing_key: Ed25519PrivateKey

    @property
    def public_bytes(self) -> bytes:
        return self.signing_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @property
    def public_b64(self) -> str:
        return base64.b64encode(self.public_bytes).decode()

    @property
    def key_id(self) -> str:
        return key_id(self.public_bytes)

    @classmethod
    def load(cls, home: Path | None = None) -> AuditKeys:
        folder = (home or z4j_home()) / "keys"
        chain = _key_bytes("Z4J_AUDIT_KEY", folder / "audit-chain.key")
        signing = _key_bytes("Z4J_AUDIT_SIGNING_KEY", folder / "audit-signing.key")
        return cls(chain, Ed25519PrivateKey.from_private_bytes(signing))


def _key_bytes(env: str, path: Path) -> bytes:
    raw = os.environ.get(env)
    origin = env
    if raw is None:
        origin = str(path)
        if not path.exists():
            _create(path)
        try:
            raw = path.read_text().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read audit key {path}: {exc.strerror}") from None
    try:
        key = bytes.fromhex(raw.strip())
    except ValueError:
        raise ConfigError(f"{origin} must hold 64 hex characters (32 bytes)") from None
    if len(key) != 32:
        raise ConfigError(f"{origin} must hold 64 hex characters (32 bytes), got {len(key)} bytes")
    return key


def _create(path: Path) -> None:
    # Written aside, then linked into place: a concurrent reader sees either
    # no file or a whole key, and two creators end up sharing one key.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(secrets.token_hex(32) + "\n")
        os.link(tmp, path)
    except FileExistsError:
        pass  # another process created it first: use theirs
    except OSError as exc:
        raise ConfigError(f"cannot create audit key {path}: {exc.strerror}") from None
    finally:
        tmp.unlink(missing_ok=True)
