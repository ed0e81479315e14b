"""Must show: bad frames are refused with a clear reason, the connection is
closed, nothing is stored, and the collector keeps serving other agents."""

from __future__ import annotations

import threading
import time

import pytest

from tests.support.collector import mint_agent, mint_tokens, with_store
from tests.support.raw_agent import RawAgent
from z4j_agents import protocol as p
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig


def stored_events(collector) -> int:
    """The task events in the database (what `z4j status` counts; the command is tested in test_cli.py)."""
    return with_store(collector.db_url, lambda store: store.fetchall("SELECT count(*) FROM task_events"))[0][0]


@pytest.fixture
def good_agent(collector):
    """A well-behaved agent that keeps sending while the bad ones try."""
    creds = mint_agent(collector, "good")
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds), backoff_max=1.0), engine="bare")
    stop = threading.Event()
    sent = [0]

    def pump() -> None:
        while not stop.is_set():
            agent.task(f"good-{sent[0]}", "received", name="good.task")
            sent[0] += 1
            time.sleep(0.002)

    thread = threading.Thread(target=pump, daemon=True)
    thread.start()
    yield sent
    stop.set()
    thread.join()
    assert agent.flush(30), "the good agent could not deliver while bad agents were refused"
    agent.stop()
    api = collector.api(mint_tokens(collector, "viewer")["viewer"])
    counts = api.get("/api/v1/projects/default/tasks", params={"name": "good.task", "limit": 1000}).json()
    assert sent[0] > 0
    assert len(counts["tasks"]) == min(sent[0], 1000)


def test_bad_frames_are_refused_and_others_keep_working(collector, good_agent):
    creds = mint_agent(collector, "bad")
    url, token, secret = collector.url, creds["token"], creds["hmac_secret"]

    # unknown token
    raw = RawAgent(url, "z4ja_not-a-token", secret).connect()
    raw.send(raw.hello())
    error, code = raw.refusal()
    assert (error.code, code) == ("unknown_token", 4401)

    # missing token
    raw = RawAgent(url, "", secret).connect()
    error, code = raw.refusal()
    assert (error.code, code) == ("unauthorized", 4401)

    # hello signed with the wrong secret
    raw = RawAgent(url, token, secret).connect()
    raw.send(raw.hello(key=p.frame_key("wrong secret")))
    error, code = raw.refusal()
    assert (error.code, code) == ("bad_signature", 4400)
    assert "signature" in error.message

    # hello 10 minutes off the collector clock
    raw = RawAgent(url, token, secret).connect()
    raw.send(raw.hello(now=time.time() - 600))
    error, code = raw.refusal()
    assert (error.code, code) == ("clock_skew", 4400)
    assert "600" in error.message or "-600" in error.message or "off" in error.message

    # malformed msgpack
    raw = RawAgent(url, token, secret).connect()
    raw.send(b"\xc1\xff\x00 not msgpack")
    error, code = raw.refusal()
    assert (error.code, code) == ("malformed", 4400)

    # malformed after a good handshake, inside the session
    raw = RawAgent(url, token, secret).connect()
    raw.handshake()
    raw.send(b"\x93\x01\x02")
    error, code = raw.refusal()
    assert (error.code, code) == ("malformed", 4400)

    # a batch with a bad signature inside the session: nothing of it is stored
    before = stored_events(collector)
    raw = RawAgent(url, token, secret).connect()
    raw.handshake()
    raw.send(p.Signer(b"x" * 32).seal(raw.batch(5, "forged")))
    error, code = raw.refusal()
    assert (error.code, code) == ("bad_signature", 4400)

    # a replayed frame: the first copy is stored and acked, the replay refused
    raw = RawAgent(url, token, secret).connect()
    raw.handshake()
    frame = raw.signer.seal(raw.batch(1, "replayed"))
    raw.send(frame)
    ack = raw.recv_frame()
    assert isinstance(ack, p.BatchAck) and ack.accepted == 1
    raw.send(frame)
    error, code = raw.refusal()
    assert (error.code, code) == ("replayed_nonce", 4400)

    # out of order: a fresh nonce but a sequence number from the past
    raw = RawAgent(url, token, secret).connect()
    raw.handshake()
    raw.send(raw.signer.seal(raw.batch(1, "first")))
    assert isinstance(raw.recv_frame(), p.BatchAck)
    raw.signer.seq = 0
    raw.send(raw.signer.seal(raw.batch(1, "late")))
    error, code = raw.refusal()
    assert (error.code, code) == ("out_of_order", 4400)

    # a batch timestamped 10 minutes ago inside a good session
    raw = RawAgent(url, token, secret).connect()
    raw.handshake()
    raw.send(raw.signer.seal(raw.batch(3, "stale"), now=time.time() - 600))
    error, code = raw.refusal()
    assert (error.code, code) == ("clock_skew", 4400)

    # an agent may not send collector frames
    raw = RawAgent(url, token, secret).connect()
    raw.handshake()
    raw.send(raw.signer.seal(p.BatchAck(batch_id="x", accepted=1)))
    error, code = raw.refusal()
    assert (error.code, code) == ("unexpected_frame", 4400)

    # Only the two legitimate one-event batches of the bad agent were stored.
    api = collector.api(mint_tokens(collector, "viewer")["viewer"])
    names = {t["task_id"] for t in api.get("/api/v1/projects/default/tasks", params={"name": "raw.task", "limit": 100}).json()["tasks"]}
    assert names == {"replayed-0", "first-0"}
    assert stored_events(collector) >= before + 2
    assert api.get("/health").json()["status"] == "ok"
