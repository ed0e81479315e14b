"""Secret redaction for task arguments, results, exceptions and tracebacks.

Runs inside customers' worker processes (before anything leaves the worker)
and again in the collector, so it is stdlib only, never raises on any input
and is cheap enough for every task event.

Two mechanisms:

* **Keys.** A dict key (or the first item of a 2-item pair such as an HTTP
  header tuple, or the ``key`` in ``key=value`` text) is *sensitive* when its
  normalised form (lower case, ``_ - .`` and spaces removed) contains a needle:
  ``db_password``, ``stripe_api_key``, ``aws_secret_access_key``, ``X-Api-Key``
  all match. Decisions are cached per key.
* **Values.** Strings are scanned for secrets that are recognisable on their
  own (JWTs, bearer tokens, cloud and SaaS keys, PEM private keys, passwords in
  URLs, ``password=...`` assignments). Only the secret is replaced, the rest
  of the string (an e-mail address, the other lines of a traceback) is kept.
  A long text (a traceback) is scanned a line at a time, and lines found
  harmless are remembered, so the frames every traceback repeats cost a set
  lookup.

Output is JSON-shaped: dicts keep their shape (non-str keys go through
``str()``); lists, tuples, sets and frozensets all become lists; bytes are
decoded as UTF-8 (with replacement); int, float, bool and None are kept; any
other object is replaced by its ``repr()``, which is then scanned like a
string. The input is never mutated.

The ``redacted`` flag returned next to every result is True when a secret was
replaced by :data:`MASK` (or a whole task was redacted, or redaction failed
and the value was withheld). Size guards (depth limit, cycles, truncation)
and ``repr()`` conversion do not set it. Redacting an already redacted value
returns it unchanged with the flag False, so agent and collector can both run.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["CYCLE", "DEPTH_LIMIT", "MASK", "Redactor", "TaskRedaction", "default_redactor"]

MASK = "[redacted]"
DEPTH_LIMIT = "[depth limit]"
CYCLE = "[cycle]"

_CACHE_SIZE = 4096
_CACHEABLE_KEY = 256  # longer keys are checked every time, never cached
_LINE_MODE_MIN = 512  # a longer text with line breaks is scanned a line at a time
_CACHEABLE_LINE = 512  # longer harmless lines are not remembered
_MAX_DEPTH_CAP = 128  # the walk is recursive: stay far below the recursion limit
_SCALARS = frozenset({int, float, bool, type(None)})
_SEQUENCES = frozenset({list, tuple, set, frozenset})
_BYTES = (bytes, bytearray, memoryview)
_CONTAINERS = (Mapping, list, tuple, set, frozenset)

# --- keys --------------------------------------------------------------------
#
# Needles are matched as substrings of the normalised key, except:
# * ``auth`` must not be followed by ``or`` unless that is ``oriz``/``oris``:
#   masks auth, authorization, http_authorization, oauth_token, auth_header,
#   authenticated; keeps author, author_id, authored_at, coauthor, authority.
# * ``token`` must not be followed by ``iz``/``is``: keeps tokenizer,
#   tokenise, tokenization; masks tokens_used (harmless).
# * Short needles that hide inside ordinary words (``ssn`` in "classname",
#   ``pass`` in "passenger") only match as a whole word of the raw key, split
#   on separators and camelCase: user_ssn, SSN, db_pass, smtpPass, sig, db_pw.
# ``pin`` is deliberately absent (shipping, pinned versions).
_KEY_NEEDLES = re.compile(
    "password|passwd|passphrase|pwd|secret|apikey|accesskey|accountkey"
    "|privatekey|signingkey|encryptionkey|credential|cookie|session|signature"
    "|creditcard|cardnumber|cvv|cvc|bearer|jwt"
    "|token(?!i[sz])"
    "|auth(?!or(?!i[sz]))"
)
_KEY_WORDS = frozenset({"pass", "pw", "ssn", "sig", "otp"})
_KEY_WORD_SPLIT = re.compile(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|[0-9]+")
_KEY_SEPARATORS = str.maketrans("", "", "_-. ")


def _normalise_key(key: str) -> str:
    return key.lower().translate(_KEY_SEPARATORS)


def _key_is_sensitive(key: str, extra_needles: tuple[str, ...]) -> bool:
    norm = _normalise_key(key)
    if _KEY_NEEDLES.search(norm):
        return True
    for needle in extra_needles:
        if needle in norm:
            return True
    for word in _KEY_WORD_SPLIT.findall(key):
        if word.lower() in _KEY_WORDS:
            return True
    return False


# --- values ------------------------------------------------------------------
#
# Each family runs only when a cheap substring test says it could match, and
# one prefilter (_TRIGGERS) lets an ordinary string skip all of them with a
# single C-level search.

_PEM = re.compile(
    r"(-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----)"
    r"((?s:.*?))"
    r"(-----END (?:[A-Z0-9]+ )*PRIVATE KEY(?: BLOCK)?-----|\Z)"
)

# Only the password of ``scheme://user:password@host``; greedy, so the last
# "@" before the path ends the password (as URL parsers do). E-mail addresses
# have no "://" and are left alone.
_URL_PASSWORD = re.compile(r"(://[^\s:/?#@'\"<>]*:)[^\s/?#'\"<>]+(?=@)")
_WEBHOOK = re.compile(
    r"(https?://hooks\.slack\.com/(?:services|workflows|triggers)/)[A-Za-z0-9/_-]+"
    r"|(https?://(?:[a-z]+\.)?discord(?:app)?\.com/api/webhooks/[0-9]+/)[A-Za-z0-9_-]+"
)
# The look-behind keeps this linear: without it "eyJeyJeyJ..." is quadratic.
_JWT = re.compile(r"(?<![A-Za-z0-9_-])eyJ[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]{2,}\.[A-Za-z0-9_-]*(?:\.[A-Za-z0-9_-]*){0,2}")
_PREFIXED = re.compile(
    r"(?<![A-Za-z0-9_])(?:"
    r"(?:sk|rk)_(?:live|test)_[A-Za-z0-9]{10,}"  # Stripe secret / restricted
    r"|whsec_[A-Za-z0-9+/=]{16,}"  # Stripe webhook secret
    r"|gh[pousr]_[A-Za-z0-9]{20,}"  # GitHub tokens
    r"|github_pat_[A-Za-z0-9_]{20,}"  # GitHub fine-grained PAT
    r"|xox[abposr]-[A-Za-z0-9-]{10,}"  # Slack tokens
    r"|AIza[A-Za-z0-9_-]{35}"  # Google API key
    r"|(?:AKIA|ASIA)[A-Z0-9]{16}(?![A-Za-z0-9])"  # AWS access key id
    r")"
)
_BEARER = re.compile(r"\b((?:[Bb]earer|BEARER)[ \t]+)[A-Za-z0-9._~+/-]{8,}=*")
_BEARER_REPL = r"\1" + MASK
_URL_REPL = r"\1" + MASK
_BASIC = re.compile(r"\b((?:[Bb]asic|BASIC)[ \t]+)([A-Za-z0-9+/]{4,}={0,2})(?![A-Za-z0-9+/=])")

# ``key=value``, ``key: value``, ``"key": "value"``, ``'key': 'value'`` and the
# backslash-escaped JSON-in-a-string form. The key is tested with the same
# rules as dict keys; only a sensitive key's value is masked. Not a separator:
# "==", ":=", "::", "://". Not a key: an exception class ("TokenError: ...").
_KV_SEP = re.compile(r"[:=]")
_EXCEPTION_SUFFIXES = ("Error", "Exception", "Warning")
_KEY_START = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_")
_KEY_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-"
_KV_KEYS_REVERSED = re.compile(r"[:=][ \t]*[\"']?\\?([A-Za-z0-9_.\-]+)")
_KV_VALUE = re.compile(
    r"[ \t]*((?:[Bb]earer|BEARER|[Bb]asic|BASIC|[Tt]oken|TOKEN|Digest|Bot)[ \t]+(?=\S))?"
    r"(\[redacted\]"
    r"|\{[^{}\n]{0,2000}\}|\[[^\[\]\n]{0,2000}\]"  # a flat object or list: all of it
    r"|\"(?:[^\"\\\n]|\\.)*(?:\"|(?=\n)|\Z)"
    r"|'(?:[^'\\\n]|\\.)*(?:'|(?=\n)|\Z)"
    r"|\\\"(?:[^\"\\\n]|\\[^\"\n])*(?:\\\"|(?=\n)|\Z)"
    r"|\\'(?:[^'\\\n]|\\[^'\n])*(?:\\'|(?=\n)|\Z)"
    r"|[^\s,;&'\"<>)}\]{(\[][^\s,;&'\"<>)}\]]*)"
)


# Every family in ``_Policy.text`` is gated by substring tests, and each gate
# implies a match of this pattern: a string it does not match comes out of
# ``text`` unchanged, so one C-level search decides for most strings (a
# handful of ``in`` tests and two Python calls otherwise). Keep it a superset
# of the gates (tests/agents/test_redaction.py compares both on every family).
_TRIGGERS = re.compile(
    r"[:=]|PRIVATE KEY|eyJ|k_live_|k_test_|whsec_|gh[pousr]_|github_pat_|xox|AIza|AKIA|ASIA|earer|EARER|asic|ASIC"
)


_GITHUB_HINT = re.compile("gh[pousr]_|github_pat_")


def _always(s: str) -> bool:
    return True


def _mask_pem(m: re.Match[str]) -> str:
    # Keep the line breaks around the body, real or escaped ("\\n" in a repr).
    body = m.group(2)
    lead = body[: len(body) - len(body.lstrip())] or ("\\n" if body.startswith("\\n") else "")
    trail = body[len(body.rstrip()) :] or ("\\n" if body.endswith("\\n") else "")
    return f"{m.group(1)}{lead}{MASK}{trail}{m.group(3)}"


def _mask_webhook(m: re.Match[str]) -> str:
    return (m.group(1) or m.group(2)) + MASK


def _mask_basic(m: re.Match[str]) -> str:
    # "Basic" is an English word: only mask what decodes to "user:password".
    try:
        decoded = base64.b64decode(m.group(2), validate=True)
    except (binascii.Error, ValueError):
        return m.group(0)
    return m.group(1) + MASK if b":" in decoded else m.group(0)


def _mask_quoted(value: str) -> str:
    """Mask a ``key=value`` value, keeping its quotes."""
    if value == MASK or value[0] in "[{":
        return MASK
    for quote in ('\\"', "\\'", '"', "'"):
        if value.startswith(quote):
            end = quote if len(value) >= 2 * len(quote) and value.endswith(quote) else ""
            return f"{quote}{MASK}{end}"
    return MASK


def _compile_extra(pattern: str) -> re.Pattern[str]:
    if not isinstance(pattern, str):
        raise ValueError(f"redaction pattern {pattern!r} is not a string")
    try:
        return re.compile(pattern)
    except re.error as exc:
        reason = str(exc).replace("\n", " ")
        raise ValueError(f"invalid redaction pattern {pattern!r}: {reason}") from None


def _mask_extra(m: re.Match[str]) -> str:
    """Extra patterns mask their whole match, or only a group named ``secret``."""
    text = m.group(0)
    if not text:
        return text  # a pattern that matches "" must not sprinkle masks
    if "secret" in m.re.groupindex:
        start, end = m.span("secret")
        if start < 0 or start == end:
            return text
        base = m.start()
        return f"{text[: start - base]}{MASK}{text[end - base :]}"
    return MASK


def _as_tuple(items: Iterable[str] | str | None) -> tuple[str, ...]:
    if items is None:
        return ()
    if isinstance(items, str):
        return (items,)
    return tuple(items)


@dataclass(frozen=True)
class TaskRedaction:
    """Per-task override, keyed by exact task name in ``Redactor(overrides=...)``.

    ``redact_all`` replaces the task's args, kwargs and result with MASK
    (``redact``); exception messages and tracebacks still get in-string
    masking only (``redact_text``), with this task's extra keys and patterns.
    ``extra_keys`` and ``extra_patterns`` add to the defaults for this task.
    """

    redact_all: bool = False
    extra_keys: tuple[str, ...] = ()
    extra_patterns: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "extra_keys", _as_tuple(self.extra_keys))
        object.__setattr__(self, "extra_patterns", _as_tuple(self.extra_patterns))


# Per-call walk state, a list for speed: [anything masked?, ids of the
# containers on the current path (for cycles)].
_State = list
_HIT = 0
_PATH = 1


def _new_state() -> list[Any]:
    return [False, set()]


class _Policy:
    """Everything needed to redact for one task name (or the default)."""

    __slots__ = (
        "redact_all",
        "_extra_needles",
        "_extra_res",
        "_min_len",
        "probe",
        "_max_depth",
        "_max_string",
        "_window",
        "_sensitive_cache",
        "_key_cache",
        "_harmless_keys",
        "_harmless_lines",
    )

    def __init__(
        self,
        *,
        redact_all: bool,
        extra_needles: tuple[str, ...],
        extra_res: tuple[re.Pattern[str], ...],
        max_depth: int,
        max_string: int,
        caches: tuple[dict[str, bool], dict[str, tuple[bool, str, bool]], set[str], set[str]],
    ) -> None:
        self.redact_all = redact_all
        self._extra_needles = extra_needles
        self._extra_res = extra_res
        # No built-in secret is shorter than 8 chars; user patterns may be.
        self._min_len = 1 if extra_res else 8
        # probe(s) is falsy when ``text(s)`` is certainly ``s``: user patterns
        # may match anything, so with them every string is scanned.
        self.probe = _always if extra_res else _TRIGGERS.search
        self._max_depth = max_depth
        self._max_string = max_string
        # Huge strings: mask a generous prefix only, then truncate.
        self._window = 2 * max_string + 4096
        # Shared by policies with the same extra keys and patterns.
        self._sensitive_cache, self._key_cache, self._harmless_keys, self._harmless_lines = caches

    # -- keys --

    def sensitive(self, key: str) -> bool:
        found = self._sensitive_cache.get(key)
        if found is None:
            found = _key_is_sensitive(key, self._extra_needles)
            if len(key) <= _CACHEABLE_KEY:
                cache = self._sensitive_cache
                if len(cache) >= _CACHE_SIZE:
                    cache.clear()
                cache[key] = found
        return found

    def key(self, key: str) -> tuple[bool, str, bool]:
        """(is sensitive, key as output with secrets masked, whether masked)."""
        found = self._key_cache.get(key)
        if found is None:
            state = _new_state()
            found = (self.sensitive(key), self.string(key, state), state[_HIT])
            if len(key) <= _CACHEABLE_KEY:
                cache = self._key_cache
                if len(cache) >= _CACHE_SIZE:
                    cache.clear()
                cache[key] = found
        return found

    # -- strings --

    def text(self, s: str) -> str:
        """Mask every secret inside ``s``; no size limit applied."""
        if len(s) >= _LINE_MODE_MIN and not self._extra_res and "\n" in s and not ("-" in s and "PRIVATE KEY" in s):
            return self._lines(s)
        return self._text(s)

    def _lines(self, s: str) -> str:
        """``_text(s)``, a line at a time, skipping lines already found harmless.

        A traceback is mostly lines seen before (the same frames, the same
        code), and a regex scan costs tens of ns per character: a set lookup
        per line instead. Exact: no built-in family matches across a line
        break (their character classes and look-arounds all stop at "\n"),
        except a PEM block, which ``text`` leaves to the whole-text scan, as
        it does user patterns, which may match anything."""
        lines = s.split("\n")
        harmless = self._harmless_lines
        changed = False
        for i, line in enumerate(lines):
            if line in harmless:
                continue
            out = self._text(line)  # its gates are substring tests: cheaper than the prefilter on a line
            if out == line:
                if len(line) <= _CACHEABLE_LINE:
                    if len(harmless) >= _CACHE_SIZE:
                        harmless.clear()
                    harmless.add(line)
            else:
                lines[i] = out
                changed = True
        return "\n".join(lines) if changed else s

    def _text(self, s: str) -> str:
        # Every family is gated by C-level substring tests: a regex scan costs
        # tens of ns per character, an ``in`` about one.
        colon = ":" in s
        if "-" in s and "PRIVATE KEY" in s:
            s = _PEM.sub(_mask_pem, s)
        if colon and "://" in s:
            s = _URL_PASSWORD.sub(_URL_REPL, s)
            if "hooks" in s:
                s = _WEBHOOK.sub(_mask_webhook, s)
        if "eyJ" in s:
            s = _JWT.sub(MASK, s)
        if (
            ("_" in s and (("k_" in s and ("k_live_" in s or "k_test_" in s)) or "whsec_" in s
                           or ("gh" in s and _GITHUB_HINT.search(s) is not None)))
            or "xox" in s
            or ("A" in s and ("AIza" in s or "AKIA" in s or "ASIA" in s))
        ):
            s = _PREFIXED.sub(MASK, s)
        if "earer" in s or "EARER" in s:
            s = _BEARER.sub(_BEARER_REPL, s)
        if "asic" in s or "ASIC" in s:
            s = _BASIC.sub(_mask_basic, s)
        if (colon or "=" in s) and self._may_have_sensitive_key(s):
            s = self._assignments(s)
        for rx in self._extra_res:
            s = rx.sub(_mask_extra, s)
        return s

    def _may_have_sensitive_key(self, s: str) -> bool:
        """False when no ``key=``/``key:`` in ``s`` is sensitive.

        Reversed, "key: value" reads ":key", which a regex can find starting
        from the separator: one C-level pass collects every key in the text
        (a key-first regex is retried at every character, and the exact scan
        below costs a few µs of Python per separator). Keys already found
        harmless are dropped by one set difference, so a traceback seen in
        many shapes costs no Python per key. A superset of what
        ``_assignments`` masks: it reads the same keys, minus "==", "::",
        ":=" and "://" (and, for keys over 256 characters, only their end).
        """
        keys = set(_KV_KEYS_REVERSED.findall(s[::-1]))
        harmless = self._harmless_keys
        keys -= harmless
        if not keys:
            return False
        sensitive, cache_get = self.sensitive, self._sensitive_cache.get
        for reversed_key in keys:
            key = reversed_key[::-1]
            if key[0] in _KEY_START:
                found = cache_get(key)
                if (sensitive(key) if found is None else found) and not key.endswith(_EXCEPTION_SUFFIXES):
                    return True
            if len(reversed_key) <= _CACHEABLE_KEY:
                if len(harmless) >= _CACHE_SIZE:
                    harmless.clear()
                harmless.add(reversed_key)
        return False

    def _assignments(self, s: str) -> str:
        """Mask the value after every ``<sensitive key><sep>`` in ``s``.

        Scans separators, not keys: finding ":"/"=" is a C-level skip, and
        the key is then read backwards with ``rstrip`` (a key-first regex
        would be tried at every character of a long traceback).
        """
        parts: list[str] | None = None
        last = pos = 0
        find, value_at, sensitive = _KV_SEP.search, _KV_VALUE.match, self.sensitive
        cache_get = self._sensitive_cache.get
        while (m := find(s, pos)) is not None:
            i = pos = m.end()  # just after the separator
            nxt = s[i : i + 1]
            if nxt == "=" or (nxt == ":" and s[i - 1] == ":"):
                pos += 1  # "==", "::", ":="
                continue
            if nxt == "/" and s[i - 1] == ":" and s[i + 1 : i + 2] == "/":
                continue  # "://"
            k = i - 1
            while k and s[k - 1] in " \t":
                k -= 1
            if k and s[k - 1] in "\"'":
                k -= 1
                if k and s[k - 1] == "\\":
                    k -= 1
            head = s[k - _CACHEABLE_KEY if k > _CACHEABLE_KEY else 0 : k]
            key = head[len(head.rstrip(_KEY_CHARS)) :]
            if not key or key[0] not in _KEY_START:
                continue
            found = cache_get(key)
            if not (sensitive(key) if found is None else found) or key.endswith(_EXCEPTION_SUFFIXES):
                continue  # keep scanning inside the value: "x=password=..."
            v = value_at(s, i)
            if v is None:
                continue
            value = v.group(2)
            masked = _mask_quoted(value)
            if masked != value:
                if parts is None:
                    parts = []
                parts.append(s[last : v.start(2)])
                parts.append(masked)
                last = v.end()
            pos = v.end()
        if parts is None:
            return s
        parts.append(s[last:])
        return "".join(parts)

    def string(self, s: str, state: _State) -> str:
        n = len(s)
        if n < self._min_len:
            return s
        if n <= self._max_string:
            if not self.probe(s):
                return s
            out = self.text(s)
            if out is not s and out != s:
                state[_HIT] = True
            return out
        # Mask first, then cut, so a secret straddling the cut never leaks.
        window = s[: self._window]
        out = self.text(window)
        if out != window:
            state[_HIT] = True
        return self._truncate(out, n - len(window))

    def _truncate(self, s: str, already_dropped: int) -> str:
        total = len(s) + already_dropped
        if total <= self._max_string:
            return s
        # The suffix counts against max_string, so a truncated string is never
        # truncated again by a second pass (agent, then collector).
        keep = max(0, self._max_string - len(f"…[truncated {total} chars]"))
        return f"{s[:keep]}…[truncated {total - keep} chars]"

    # -- structures --

    def walk(self, v: Any, depth: int, state: _State) -> Any:
        t = type(v)
        if t is str:
            n = len(v)
            if n < self._min_len or (n <= self._max_string and not self.probe(v)):
                return v
            return self.string(v, state)
        if t in _SCALARS:
            return v
        if t is dict:
            return self._dict(v, depth, state, False)
        if t in _SEQUENCES:
            return self._sequence(v, depth, state, False)
        return self._other(v, depth, state, False)

    def mask(self, v: Any, depth: int, state: _State) -> Any:
        """Under a sensitive key: every leaf becomes MASK, containers keep shape."""
        t = type(v)
        if t is dict:
            return self._dict(v, depth, state, True)
        if t in _SEQUENCES:
            return self._sequence(v, depth, state, True)
        if t is str:
            if v != MASK:  # already masked (a second pass): not a new hit
                state[_HIT] = True
            return MASK
        if t not in _SCALARS and t not in _BYTES and isinstance(v, _CONTAINERS):
            return self._other(v, depth, state, True)
        state[_HIT] = True
        return MASK

    def _enter(self, v: Any, depth: int, state: _State) -> str | None:
        """Start walking container ``v``: the marker to return instead, or None."""
        if depth >= self._max_depth:
            return DEPTH_LIMIT
        ident = id(v)
        path = state[_PATH]
        if ident in path:
            return CYCLE
        path.add(ident)
        return None

    def _dict(self, v: Any, depth: int, state: _State, masking: bool) -> Any:
        stop = self._enter(v, depth, state)
        if stop is not None:
            return stop
        depth += 1
        out = {}
        cache, min_len, max_string, probe = self._key_cache, self._min_len, self._max_string, self.probe
        for k, x in list(v.items()):  # a snapshot: another thread may be mutating v
            if type(k) is not str:
                k = _key_text(k)
            info = cache.get(k)
            if info is None:
                info = self.key(k)
            if info[2]:
                state[_HIT] = True
            t = type(x)
            if masking or info[0]:
                x = self.mask(x, depth, state)
            elif t is str:
                n = len(x)
                if n >= min_len and (n > max_string or probe(x)):
                    x = self.string(x, state)
            elif t not in _SCALARS:
                x = self.walk(x, depth, state)
            out[info[1]] = x
        state[_PATH].discard(id(v))
        return out

    def _sequence(self, v: Any, depth: int, state: _State, masking: bool) -> Any:
        stop = self._enter(v, depth, state)
        if stop is not None:
            return stop
        depth += 1
        items = list(v)
        if masking:
            mask = self.mask
            out = [mask(x, depth, state) for x in items]
        elif len(items) == 2 and _pair_key_is_sensitive(items[0], self):
            # ("Authorization", "...") / (b"x-api-key", b"...") header pairs.
            out = [self.walk(items[0], depth, state), self.mask(items[1], depth, state)]
        else:
            out = items  # a fresh list: replace the items that need work
            min_len, max_string, probe = self._min_len, self._max_string, self.probe
            for i, x in enumerate(items):
                t = type(x)
                if t is str:
                    n = len(x)
                    if n >= min_len and (n > max_string or probe(x)):
                        out[i] = self.string(x, state)
                elif t not in _SCALARS:
                    out[i] = self.walk(x, depth, state)
        state[_PATH].discard(id(v))
        return out

    def _other(self, v: Any, depth: int, state: _State, masking: bool) -> Any:
        if isinstance(v, str):
            text = str.__str__(v)
            return self.mask(text, depth, state) if masking else self.walk(text, depth, state)
        if isinstance(v, _BYTES):
            text = _decode(v, self._window)
            return self.mask(text, depth, state) if masking else self.walk(text, depth, state)
        if isinstance(v, (dict, Mapping)):
            return self._dict(v, depth, state, masking)
        if isinstance(v, (list, tuple, set, frozenset)):
            return self._sequence(v, depth, state, masking)
        text = _repr(v)
        return self.mask(text, depth, state) if masking else self.walk(text, depth, state)


def _pair_key_is_sensitive(first: Any, policy: _Policy) -> bool:
    t = type(first)
    if t is str:
        return 0 < len(first) <= _CACHEABLE_KEY and policy.sensitive(first)
    if t is bytes and 0 < len(first) <= _CACHEABLE_KEY:
        return policy.sensitive(first.decode("utf-8", "replace"))
    return False


def _decode(v: bytes | bytearray | memoryview, limit: int) -> str:
    # UTF-8 needs at most 4 bytes per char: this keeps at least `limit` chars.
    return bytes(v[: 4 * limit]).decode("utf-8", "replace")


def _repr(v: Any) -> str:
    try:
        text = repr(v)
        if type(text) is str:
            return text
    except Exception:  # noqa: BLE001 - foreign objects may do anything in __repr__
        pass
    return f"<unrepresentable {type(v).__qualname__}>"


def _key_text(k: Any) -> str:
    if isinstance(k, _BYTES):
        return _decode(k, 4 * _CACHEABLE_KEY)
    try:
        text = str(k)
        if type(text) is str:
            return text
    except Exception:  # noqa: BLE001
        pass
    return _repr(k)


class Redactor:
    """Masks secrets in task payloads; safe to share between threads.

    ``extra_keys`` are key substrings (normalised like keys: ``"x_tenant"``
    matches ``XTenantId``); ``extra_patterns`` are regexes masked inside
    strings (the whole match, or only a group named ``secret``). Both apply to
    every task; ``overrides`` adds per-task settings on top. Extra patterns
    also run on strings shorter than the 8-char fast path.

    Raises ValueError at construction for an invalid pattern or limit; the
    redaction methods never raise.
    """

    def __init__(
        self,
        extra_keys: Iterable[str] = (),
        extra_patterns: Iterable[str] = (),
        overrides: Mapping[str, TaskRedaction] | None = None,
        max_depth: int = 32,
        max_string: int = 64 * 1024,
    ) -> None:
        if not isinstance(max_depth, int) or not 1 <= max_depth <= _MAX_DEPTH_CAP:
            raise ValueError(f"max_depth must be between 1 and {_MAX_DEPTH_CAP}, got {max_depth!r}")
        if not isinstance(max_string, int) or max_string < 64:
            raise ValueError(f"max_string must be an int >= 64, got {max_string!r}")
        self.max_depth = max_depth
        self.max_string = max_string
        keys = _needles(_as_tuple(extra_keys))
        patterns = _as_tuple(extra_patterns)
        caches: dict[tuple[tuple[str, ...], tuple[str, ...]], Any] = {}

        def policy(redact_all: bool, needles: tuple[str, ...], regexes: tuple[str, ...]) -> _Policy:
            compiled = tuple(_compile_extra(p) for p in regexes)  # validates before hashing
            shared = caches.setdefault((needles, regexes), ({}, {}, set(), set()))
            return _Policy(
                redact_all=redact_all,
                extra_needles=needles,
                extra_res=compiled,
                max_depth=max_depth,
                max_string=max_string,
                caches=shared,
            )

        self._default = policy(False, keys, patterns)
        self._policies: dict[str, _Policy] = {}
        for name, override in (overrides or {}).items():
            if not isinstance(override, TaskRedaction):
                raise ValueError(f"override for task {name!r} must be a TaskRedaction, got {override!r}")
            self._policies[name] = policy(
                override.redact_all,
                keys + _needles(override.extra_keys),
                patterns + override.extra_patterns,
            )

    def _policy(self, task_name: str | None) -> _Policy:
        if task_name is None or not self._policies:
            return self._default
        try:
            return self._policies.get(task_name, self._default)
        except TypeError:  # unhashable "name"
            return self._default

    def redact(self, value: Any, task_name: str | None = None) -> tuple[Any, bool]:
        """Return (a redacted, JSON-shaped copy of ``value``, whether anything was masked)."""
        return self._apply(self._default if task_name is None else self._policy(task_name), value)

    def _apply(self, policy: _Policy, value: Any) -> tuple[Any, bool]:
        if policy.redact_all:
            return MASK, True
        state = [False, set()]  # see _new_state
        try:
            return policy.walk(value, 0, state), state[_HIT]
        except Exception:  # noqa: BLE001 - fail closed, never break the worker
            return MASK, True

    def redact_text(self, text: str, task_name: str | None = None) -> tuple[str, bool]:
        """Mask secrets inside an exception message or traceback, keeping the rest."""
        policy = self._policy(task_name)
        state = _new_state()
        try:
            if type(text) is not str:
                if isinstance(text, str):
                    text = str.__str__(text)
                elif isinstance(text, _BYTES):
                    text = _decode(text, policy._window)
                else:
                    text = _key_text(text)
            return policy.string(text, state), state[_HIT]
        except Exception:  # noqa: BLE001
            return MASK, True


def _needles(keys: tuple[str, ...]) -> tuple[str, ...]:
    out = []
    for key in keys:
        if not isinstance(key, str) or not _normalise_key(key):
            raise ValueError(f"redaction key {key!r} must be a non-empty string")
        out.append(_normalise_key(key))
    return tuple(out)


_default: Redactor | None = None


def default_redactor() -> Redactor:
    """The shared ``Redactor()`` with default settings."""
    global _default
    if _default is None:
        _default = Redactor()
    return _default


_PAYLOAD_FIELDS = ("args", "kwargs", "result", "extra")
_TEXT_FIELDS = ("exception", "traceback")


def redact_event(redactor: Redactor, event: Any) -> bool:
    """Redact a task event's payload in place; True when something was masked.

    The one place both sides use: the agent before anything leaves the worker
    (it also turns arbitrary objects into their repr), the collector again on
    ingest. Sets ``event.redacted`` and returns it. Field by field exactly what
    ``Redactor.redact``/``redact_text`` return, with the task's policy looked
    up once and the common values (None, numbers, strings nothing could match)
    handled without a walk.
    """
    name, hit = event.name, bool(event.redacted)
    policy = redactor._default if name is None else redactor._policy(name)
    probe, max_string = policy.probe, policy._max_string
    for field in _PAYLOAD_FIELDS:
        value = getattr(event, field)
        if value is None:
            continue
        if not policy.redact_all:
            t = type(value)
            if t in _SCALARS:
                continue  # kept as is, nothing masked
            if t is str and (len(value) < policy._min_len or (len(value) <= max_string and not probe(value))):
                continue
        clean, masked = redactor._apply(policy, value)
        setattr(event, field, clean)
        hit = hit or masked
    for field in _TEXT_FIELDS:
        value = getattr(event, field)
        if value:
            if type(value) is str and len(value) <= max_string and not probe(value):
                continue  # what redact_text returns for it: itself, nothing masked
            clean, masked = redactor.redact_text(value, name)
            setattr(event, field, clean)
            hit = hit or masked
    event.redacted = hit
    return hit


def redact_info(redactor: Redactor, event: Any) -> None:
    """Worker facts (broker URLs, hostnames with credentials…) are redacted too."""
    if event.info:
        event.info = redactor.redact(event.info)[0]
