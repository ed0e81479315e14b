"""Where ``z4j login`` keeps session tokens, and which credentials a command uses.

The token goes to the OS keyring (service ``z4j``, key = the collector URL).
Where no keyring backend exists (a headless box over SSH) it goes to
``$Z4J_HOME/credentials.json`` instead, created with mode 0600 and refused
when anyone else could read it. That file also remembers the last URL logged
in to (the default for later commands) and, per URL, the e-mail address and
where the token lives; it never holds a token that is in the keyring.

Credentials, first match wins: ``$Z4J_API_TOKEN`` (scripts, with
``$Z4J_URL``), then the stored login for the URL.
"""

from __future__ import annotations

import json
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

SERVICE = "z4j"
DEFAULT_URL = "http://127.0.0.1:7400"
FILE_NAME = "credentials.json"


class CredentialsError(Exception):
    """The stored credentials cannot be used; the message says why and what to do."""


@dataclass(frozen=True)
class Login:
    url: str
    token: str
    email: str
    where: str
    """Human words for where the token is kept."""


def home(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    return Path(env.get("Z4J_HOME") or "~/.z4j").expanduser()


def file_path(environ: Mapping[str, str] | None = None) -> Path:
    return home(environ) / FILE_NAME


def normalize_url(url: str) -> str:
    url = url.strip().rstrip("/")
    if not url.startswith(("http://", "https://")):
        raise CredentialsError(f"collector URL must start with http:// or https://, got {url!r}")
    return url


# ------------------------------------------------------------------ the file


def _read(path: Path) -> dict[str, Any]:
    try:
        info = path.stat()
    except FileNotFoundError:
        return {}
    except OSError as exc:
        raise CredentialsError(f"cannot read {path}: {exc.strerror}") from None
    if info.st_mode & 0o077:
        raise CredentialsError(f"{path} is readable by other users (mode {stat.S_IMODE(info.st_mode):04o}): "
                               f"refusing it; run `chmod 600 {path}` if nobody else could have read it, "
                               f"else remove it and log in again")
    if hasattr(os, "getuid") and info.st_uid != os.getuid():
        raise CredentialsError(f"{path} belongs to another user (uid {info.st_uid}): refusing it")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CredentialsError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("logins", {}), dict):
        raise CredentialsError(f"{path} is not a z4j credentials file: remove it and log in again")
    return data


def _write(path: Path, data: dict[str, Any]) -> None:
    """Replace the file atomically; the new file is 0600 from its first byte."""
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".credentials-", dir=path.parent)  # mkstemp opens with 0600
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ the keyring


def _keyring() -> Any | None:
    """The OS keyring, or None where there is no usable backend."""
    try:
        import keyring
        from keyring.backends import fail
    except ImportError:
        return None
    try:
        backend = keyring.get_keyring()
    except Exception:  # noqa: BLE001 - a broken keyring configuration means "no keyring"
        return None
    return None if isinstance(backend, fail.Keyring) else keyring


def _keyring_set(url: str, token: str) -> bool:
    ring = _keyring()
    if ring is None:
        return False
    try:
        ring.set_password(SERVICE, url, token)
    except Exception:  # noqa: BLE001 - locked, no D-Bus session, …: fall back to the file
        return False
    return True


def _keyring_get(url: str) -> str | None:
    ring = _keyring()
    if ring is None:
        return None
    try:
        return ring.get_password(SERVICE, url)
    except Exception:  # noqa: BLE001
        return None


def _keyring_delete(url: str) -> None:
    ring = _keyring()
    if ring is None:
        return
    try:
        ring.delete_password(SERVICE, url)
    except Exception:  # noqa: BLE001 - nothing there, or the keyring went away: nothing to forget
        pass


# ------------------------------------------------------------------ the API


def save(url: str, token: str, email: str, environ: Mapping[str, str] | None = None) -> str:
    """Keep a session token for ``url``; make ``url`` the default. Returns where it went."""
    url = normalize_url(url)
    path = file_path(environ)
    data = _read(path)
    logins = data.setdefault("logins", {})
    entry: dict[str, Any] = {"email": email}
    if _keyring_set(url, token):
        entry["store"] = "keyring"
        where = f"the OS keyring (service {SERVICE!r}, key {url!r})"
    else:
        entry.update(store="file", token=token)
        where = f"{path} (mode 0600; no OS keyring backend here)"
    logins[url] = entry
    data["default_url"] = url
    _write(path, data)
    return where


def load(url: str, environ: Mapping[str, str] | None = None) -> Login | None:
    """The stored login for ``url``, or None."""
    url = normalize_url(url)
    path = file_path(environ)
    entry = _read(path).get("logins", {}).get(url)
    if not isinstance(entry, dict):
        return None
    if entry.get("store") == "keyring":
        token = _keyring_get(url)
        where = "the OS keyring"
    else:
        token = entry.get("token")
        where = str(path)
    if not isinstance(token, str) or not token:
        return None
    return Login(url, token, str(entry.get("email", "")), where)


def forget(url: str, environ: Mapping[str, str] | None = None) -> bool:
    """Drop the stored login for ``url``; True when there was one."""
    url = normalize_url(url)
    path = file_path(environ)
    data = _read(path)
    entry = data.get("logins", {}).pop(url, None)
    if entry is None:
        return False
    if entry.get("store") == "keyring":
        _keyring_delete(url)
    _write(path, data)  # the default URL stays: it is no secret, and the next login goes there
    return True


def check(environ: Mapping[str, str] | None = None) -> None:
    """Raise CredentialsError now when the file could not be used later (e.g.
    before logging in, so no session is opened that cannot be kept)."""
    _read(file_path(environ))


def default_url(environ: Mapping[str, str] | None = None) -> str | None:
    url = _read(file_path(environ)).get("default_url")
    return url if isinstance(url, str) and url else None


def resolve_url(url: str | None, environ: Mapping[str, str] | None = None) -> str:
    """--url, else $Z4J_URL, else the URL last logged in to, else the local default."""
    env = os.environ if environ is None else environ
    chosen = url or env.get("Z4J_URL") or default_url(env) or DEFAULT_URL
    return normalize_url(chosen)


def resolve_token(url: str, environ: Mapping[str, str] | None = None) -> str | None:
    """$Z4J_API_TOKEN, else the stored login for ``url``, else None."""
    env = os.environ if environ is None else environ
    token = env.get("Z4J_API_TOKEN", "").strip()
    if token:
        return token
    login = load(url, env)
    return login.token if login else None
