"""The agent <-> collector wire protocol: the only place wire structs live.

Stdlib and msgspec only: this module is imported inside customers' workers
and by the collector alike.

A WebSocket message is one msgpack-encoded :class:`Envelope`. Its ``body`` is
the msgpack encoding of one :data:`Frame`; the MAC covers the header fields
and the body *bytes*, so no canonical re-encoding is ever needed.

Keys (see docs/architecture.md, "Agent protocol"):

* ``Z4J_HMAC_SECRET`` (the agent's secret) never leaves the agent.
* ``frame_key = HMAC(secret, "z4j-frame-key-v1")`` is what the collector
  stores. It signs the ``hello``/``welcome`` handshake.
* ``session_key = HMAC(frame_key, "z4j-session-v1" | client_nonce |
  server_nonce)`` signs every later frame of that connection, so a frame
  captured on one connection is worthless on any other.

Every signed envelope carries a timestamp (refused when more than
:data:`MAX_SKEW_S` off the receiver's clock), a random nonce (refused when
seen before on the connection) and a sequence number (strictly increasing per
direction and connection).

Evolution rule: new fields always get defaults; old and new decoders must read
each other's messages (tests/agents/test_protocol.py).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import random
import struct
import time
from typing import Any, Literal

import msgspec

PROTOCOL_VERSION = 1
MAX_SKEW_S = 300.0
MAX_FRAME_BYTES = 16 * 1024 * 1024
MAX_EVENTS_PER_BATCH = 5000

# Normalized task states, the same for every engine (PRODUCT.md section 4).
TASK_STATES = (
    "pending",
    "received",
    "started",
    "retry",
    "success",
    "failure",
    "revoked",
    "rejected",
    "lost",
)
TERMINAL_STATES = frozenset({"success", "failure", "revoked", "rejected", "lost"})

# What each task event kind means for the task's state.
KIND_TO_STATE = {
    "sent": "pending",
    "received": "received",
    "started": "started",
    "retried": "retry",
    "succeeded": "success",
    "failed": "failure",
    "revoked": "revoked",
    "rejected": "rejected",
    "lost": "lost",
}
TaskKind = Literal[
    "sent", "received", "started", "retried", "succeeded", "failed", "revoked", "rejected", "lost"
]
WorkerKind = Literal["online", "heartbeat", "offline"]


def state_rank(state: str) -> int:
    """Precedence of a state when events arrive out of order.

    A terminal state is never demoted by a late non-terminal event; ``lost``
    (a guess by the reconciler) yields to any real terminal state.
    """
    if state == "lost":
        return 1
    if state in TERMINAL_STATES:
        return 2
    return 0


_random_bits = random.getrandbits


def new_id() -> str:
    """32 hex digits: milliseconds since the epoch, then 80 random bits.

    Ids made close in time sort close together, so database indexes on them
    grow at the right edge instead of splitting pages all over (UUIDv7's idea).
    """
    # Uniqueness, not secrecy: the fast PRNG (reseeded by Python after fork)
    # costs a fraction of a urandom system call on every captured event.
    # One integer formatted once: half the cost of two formatted fields.
    return format((int(time.time() * 1000) << 80) | _random_bits(80), "032x")


ENGINES = ("celery", "rq", "huey", "arq", "dramatiq", "taskiq")
"""The engines with an adapter in ``z4j_agents.<engine>``."""


# ---------------------------------------------------------------- events


class TaskEvent(msgspec.Struct, tag="task", omit_defaults=True, kw_only=True):
    """One thing that happened to one task."""

    id: str
    """Event id, unique forever; duplicates are dropped by it."""
    task_id: str
    engine: str
    kind: TaskKind
    ts: float
    """When it happened, seconds since the epoch (UTC)."""
    name: str | None = None
    queue: str | None = None
    worker: str | None = None
    engine_state: str | None = None
    args: Any = None
    """Redacted copy, for display only. Never an argument for a retry."""
    kwargs: Any = None
    result: Any = None
    exception: str | None = None
    traceback: str | None = None
    runtime: float | None = None
    retries: int | None = None
    eta: float | None = None
    parent_id: str | None = None
    root_id: str | None = None
    group_id: str | None = None
    chord_id: str | None = None
    redacted: bool = False
    """True when redaction masked something in args/kwargs/result/traceback."""
    replay: bytes | None = None
    """The original call, sealed by the agent with a key the collector does not
    have: stored opaque, opened only by an agent to retry (engine adapters
    fill it where the engine keeps no copy; docs/architecture.md)."""
    extra: dict[str, Any] | None = None


class WorkerEvent(msgspec.Struct, tag="worker", omit_defaults=True, kw_only=True):
    id: str
    worker: str
    engine: str
    kind: WorkerKind
    ts: float
    info: dict[str, Any] | None = None
    """Engine facts: pid, active, processed, loadavg, concurrency, queues, version."""


class QueueEvent(msgspec.Struct, tag="queue", omit_defaults=True, kw_only=True):
    id: str
    queue: str
    engine: str
    ts: float
    depth: int


Event = TaskEvent | WorkerEvent | QueueEvent


# ---------------------------------------------------------------- frames


class Hello(msgspec.Struct, tag="hello", kw_only=True):
    """First frame of the agent, signed with the frame key."""

    client_nonce: bytes
    agent_name: str
    project: str
    protocol: int = PROTOCOL_VERSION
    version: str = ""
    hostname: str = ""
    pid: int = 0
    engines: list[str] = msgspec.field(default_factory=list)
    capabilities: list[str] = msgspec.field(default_factory=list)


class Welcome(msgspec.Struct, tag="welcome", kw_only=True):
    """The collector's answer to Hello, signed with the frame key."""

    server_nonce: bytes
    session_id: str
    agent_id: int
    project: str
    heartbeat_s: float = 10.0
    max_batch: int = MAX_EVENTS_PER_BATCH


class EventBatch(msgspec.Struct, tag="batch", kw_only=True):
    batch_id: str
    events: list[Event]
    dropped: int = 0
    """Events this agent dropped on overflow since it started (cumulative)."""


class BatchAck(msgspec.Struct, tag="ack", kw_only=True):
    """Sent only after the batch is committed."""

    batch_id: str
    accepted: int
    duplicates: int = 0
    rejected: int = 0
    """Events refused one by one (e.g. an id too long to store); not resent."""
    reason: str | None = None


class Heartbeat(msgspec.Struct, tag="heartbeat", kw_only=True):
    buffered: int = 0
    dropped: int = 0
    sent: int = 0


class Command(msgspec.Struct, tag="command", kw_only=True):
    command_id: str
    action: str
    args: dict[str, Any] = msgspec.field(default_factory=dict)
    engine: str | None = None


class CommandResult(msgspec.Struct, tag="result", kw_only=True):
    command_id: str
    ok: bool
    result: Any = None
    error: str | None = None


class ErrorFrame(msgspec.Struct, tag="error", kw_only=True):
    """Why the collector is closing the connection (unsigned: it may be
    sent before any key is agreed)."""

    code: str
    message: str


Frame = Hello | Welcome | EventBatch | BatchAck | Heartbeat | Command | CommandResult | ErrorFrame


class Envelope(msgspec.Struct, array_like=True):
    v: int
    ts: float
    nonce: bytes
    seq: int
    body: bytes
    mac: bytes


_envelope_encoder = msgspec.msgpack.Encoder()
_envelope_decoder = msgspec.msgpack.Decoder(Envelope)
_frame_encoder = msgspec.msgpack.Encoder()
_frame_decoder = msgspec.msgpack.Decoder(Frame)


class ProtocolError(Exception):
    """A frame that must be refused. ``code`` is stable, the message human."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


# ---------------------------------------------------------------- keys


def frame_key(secret: str | bytes) -> bytes:
    """The key the collector stores for an agent: one-way from its secret."""
    raw = secret.encode() if isinstance(secret, str) else secret
    return hmac.new(raw, b"z4j-frame-key-v1", hashlib.sha256).digest()


def session_key(key: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.new(
        key, b"z4j-session-v1" + client_nonce + server_nonce, hashlib.sha256
    ).digest()


def token_hash(token: str) -> str:
    """How agent and API tokens are stored: tokens have >=128 random bits, so
    a plain SHA-256 is the right hash (ASVS 6.5.2)."""
    return hashlib.sha256(token.encode()).hexdigest()


_HEADER = struct.Struct(">Bdq")


def _mac(key: bytes, ts: float, nonce: bytes, seq: int, body: bytes) -> bytes:
    header = _HEADER.pack(PROTOCOL_VERSION, ts, seq)
    return hmac.new(key, header + nonce + body, hashlib.sha256).digest()


# ---------------------------------------------------------------- seal/open


class Signer:
    """Signs outgoing frames of one direction of one connection."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.seq = 0

    def seal(self, frame: Frame, now: float | None = None) -> bytes:
        body = _frame_encoder.encode(frame)
        return self.seal_body(body, now)

    def seal_body(self, body: bytes, now: float | None = None) -> bytes:
        self.seq += 1
        ts = time.time() if now is None else now
        nonce = os.urandom(12)
        env = Envelope(PROTOCOL_VERSION, ts, nonce, self.seq, body, _mac(self.key, ts, nonce, self.seq, body))
        return _envelope_encoder.encode(env)


class Verifier:
    """Checks incoming frames of one direction of one connection."""

    def __init__(self, key: bytes, max_skew: float = MAX_SKEW_S) -> None:
        self.key = key
        self.max_skew = max_skew
        self.last_seq = 0
        self._nonces: dict[bytes, float] = {}

    def open(self, data: bytes, now: float | None = None) -> Frame:
        env = decode_envelope(data)
        self.check(env, now)
        return decode_frame(env.body)

    def check(self, env: Envelope, now: float | None = None) -> None:
        if env.v != PROTOCOL_VERSION:
            raise ProtocolError("bad_version", f"protocol version {env.v} is not supported (want {PROTOCOL_VERSION})")
        expected = _mac(self.key, env.ts, env.nonce, env.seq, env.body)
        if not hmac.compare_digest(expected, env.mac):
            raise ProtocolError("bad_signature", "frame signature does not verify")
        now = time.time() if now is None else now
        if abs(now - env.ts) > self.max_skew:
            raise ProtocolError(
                "clock_skew",
                f"frame timestamp is {now - env.ts:+.0f} s off the collector clock "
                f"(limit {self.max_skew:.0f} s)",
            )
        if env.nonce in self._nonces:
            raise ProtocolError("replayed_nonce", "frame nonce was already used")
        if env.seq <= self.last_seq:
            raise ProtocolError(
                "out_of_order", f"frame sequence {env.seq} is not after {self.last_seq}"
            )
        self.last_seq = env.seq
        self._remember(env.nonce, now)

    def _remember(self, nonce: bytes, now: float) -> None:
        nonces = self._nonces
        nonces[nonce] = now
        if len(nonces) > 4096:
            # Nonces older than the skew window cannot come back: their
            # timestamps would be refused anyway.
            horizon = now - 2 * self.max_skew
            for old in [n for n, seen in nonces.items() if seen < horizon]:
                del nonces[old]


def decode_envelope(data: bytes) -> Envelope:
    if len(data) > MAX_FRAME_BYTES:
        raise ProtocolError("too_large", f"frame of {len(data)} bytes exceeds {MAX_FRAME_BYTES}")
    try:
        return _envelope_decoder.decode(data)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError("malformed", f"malformed envelope: {exc}") from None


def decode_frame(body: bytes) -> Frame:
    try:
        return _frame_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
        raise ProtocolError("malformed", f"malformed frame: {exc}") from None


def encode_frame(frame: Frame) -> bytes:
    return _frame_encoder.encode(frame)


def encode_error(code: str, message: str) -> bytes:
    """An unsigned error frame, wrapped in an envelope with an empty MAC."""
    body = _frame_encoder.encode(ErrorFrame(code=code, message=message))
    return _envelope_encoder.encode(Envelope(PROTOCOL_VERSION, time.time(), b"", 0, body, b""))


def peek_error(data: bytes) -> ErrorFrame | None:
    """Read an unsigned error frame, if that is what ``data`` is."""
    try:
        env = _envelope_decoder.decode(data)
        frame = _frame_decoder.decode(env.body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None
    return frame if isinstance(frame, ErrorFrame) else None
