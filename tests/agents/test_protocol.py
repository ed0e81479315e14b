"""The wire protocol: signing, the refusals, and schema evolution."""

from __future__ import annotations

import time

import msgspec
import pytest

from z4j_agents import protocol as p

KEY = p.frame_key("secret")


def sample_batch(n: int = 3) -> p.EventBatch:
    events: list[p.Event] = [
        p.TaskEvent(id=p.new_id(), task_id=f"t{i}", engine="bare", kind="received", ts=time.time(),
                    name="x", args=[i, "a"], kwargs={"k": {"nested": [1, 2]}}, replay=b"\x00sealed")
        for i in range(n)
    ]
    events.append(p.WorkerEvent(id=p.new_id(), worker="w", engine="bare", kind="heartbeat", ts=time.time(),
                                info={"active": 1}))
    events.append(p.QueueEvent(id=p.new_id(), queue="q", engine="bare", ts=time.time(), depth=5))
    return p.EventBatch(batch_id=p.new_id(), events=events, dropped=2)


def test_round_trip_keeps_every_field():
    batch = sample_batch()
    frame = p.Verifier(KEY).open(p.Signer(KEY).seal(batch))
    assert frame == batch


@pytest.mark.parametrize(
    ("tamper", "code"),
    [
        (lambda env: env.__setattr__("body", env.body[:-1] + b"\x00"), "bad_signature"),
        (lambda env: env.__setattr__("mac", b"\x00" * 32), "bad_signature"),
        (lambda env: env.__setattr__("seq", env.seq + 1), "bad_signature"),
        (lambda env: env.__setattr__("ts", env.ts + 1), "bad_signature"),
        (lambda env: env.__setattr__("v", 99), "bad_version"),
    ],
)
def test_tampering_is_refused(tamper, code):
    env = msgspec.msgpack.decode(p.Signer(KEY).seal(sample_batch()), type=p.Envelope)
    tamper(env)
    with pytest.raises(p.ProtocolError) as err:
        p.Verifier(KEY).open(msgspec.msgpack.encode(env))
    assert err.value.code == code


def test_wrong_key_is_refused():
    with pytest.raises(p.ProtocolError, match="signature"):
        p.Verifier(p.frame_key("other")).open(p.Signer(KEY).seal(sample_batch()))


def test_skew_window_is_five_minutes_both_ways():
    signer, verifier = p.Signer(KEY), p.Verifier(KEY)
    now = time.time()
    assert verifier.open(signer.seal(sample_batch(), now=now - 290), now=now)
    assert verifier.open(signer.seal(sample_batch(), now=now + 290), now=now)
    for offset in (-600, 600, -301):
        with pytest.raises(p.ProtocolError) as err:
            verifier.open(signer.seal(sample_batch(), now=now + offset), now=now)
        assert err.value.code == "clock_skew"


def test_replay_and_out_of_order_are_refused():
    signer, verifier = p.Signer(KEY), p.Verifier(KEY)
    first, second = signer.seal(sample_batch()), signer.seal(sample_batch())
    verifier.open(first)
    with pytest.raises(p.ProtocolError) as err:
        verifier.open(first)
    assert err.value.code == "replayed_nonce"
    verifier.open(second)
    signer.seq = 1
    with pytest.raises(p.ProtocolError) as err:
        verifier.open(signer.seal(sample_batch()))
    assert err.value.code == "out_of_order"


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x93\x01\x02", b"not msgpack at all", msgspec.msgpack.encode({"a": 1})])
def test_malformed_envelopes_are_refused(data):
    with pytest.raises(p.ProtocolError) as err:
        p.Verifier(KEY).open(data)
    assert err.value.code == "malformed"


def test_signed_garbage_body_is_malformed():
    with pytest.raises(p.ProtocolError) as err:
        p.Verifier(KEY).open(p.Signer(KEY).seal_body(b"\x81\xa4type\xa7nothing"))
    assert err.value.code == "malformed"


def test_session_keys_differ_per_connection():
    a = p.session_key(KEY, b"c" * 16, b"s" * 16)
    b = p.session_key(KEY, b"c" * 16, b"t" * 16)
    assert a != b and len(a) == 32
    with pytest.raises(p.ProtocolError):
        p.Verifier(b).open(p.Signer(a).seal(sample_batch()))


def test_unknown_event_kind_is_refused():
    body = msgspec.msgpack.encode({"type": "batch", "batch_id": "b", "events": [
        {"type": "task", "id": "1", "task_id": "t", "engine": "bare", "kind": "exploded", "ts": 1.0}]})
    with pytest.raises(p.ProtocolError, match="exploded|kind"):
        p.decode_frame(body)


def test_error_frames_are_readable_unsigned():
    error = p.peek_error(p.encode_error("clock_skew", "frame timestamp is +600 s off"))
    assert error == p.ErrorFrame(code="clock_skew", message="frame timestamp is +600 s off")
    assert p.peek_error(p.Signer(KEY).seal(sample_batch())) is None


# ------------------------------------------------------------------ evolution
# A newer agent adds a field; an older collector must still read its frames,
# and a newer collector must read frames of an older agent.

class TaskEventV2(p.TaskEvent, tag="task", omit_defaults=True, kw_only=True):
    priority: int | None = None


class EventBatchV2(msgspec.Struct, tag="batch", kw_only=True):
    batch_id: str
    events: list[TaskEventV2]
    dropped: int = 0
    compression: str | None = None


def test_old_decoder_reads_new_frames():
    new = EventBatchV2(batch_id="b", events=[TaskEventV2(id="1", task_id="t", engine="bare", kind="started",
                                                         ts=1.0, priority=5)], compression="none")
    frame = p.decode_frame(msgspec.msgpack.encode(new))
    assert isinstance(frame, p.EventBatch) and frame.events[0].task_id == "t"


def test_new_decoder_reads_old_frames():
    old = p.EventBatch(batch_id="b", events=[p.TaskEvent(id="1", task_id="t", engine="bare", kind="started", ts=1.0)])
    frame = msgspec.msgpack.decode(msgspec.msgpack.encode(old), type=EventBatchV2)
    assert frame.events[0].priority is None and frame.compression is None


def test_states_and_ranks():
    assert set(p.KIND_TO_STATE.values()) == set(p.TASK_STATES)
    assert p.state_rank("success") > p.state_rank("lost") > p.state_rank("started")
    assert p.state_rank("pending") == p.state_rank("retry") == 0
