"""Must show: the live client stream delivers coalesced task and worker
changes in frames that are signed with a key derived for this stream and
numbered 1, 2, 3…; a client refuses tampered, replayed or skipped frames;
a caller without a valid token gets no stream at all."""

from __future__ import annotations

import hashlib
import hmac
import json
import os

import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests.support.collector import mint_agent, mint_tokens
from tests.support.stream import SignedStream, StreamRefused, stream_key
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig
from z4j_collector.api.stream import stream_key as collector_stream_key


# ------------------------------------------------------------ tests


@pytest.fixture
def agent(collector):
    creds = mint_agent(collector, "streamer")
    agent = Agent(AgentConfig.from_env(collector.agent_env(creds)), engine="bare")
    yield agent
    agent.stop()


def test_stream_delivers_coalesced_signed_changes(collector, agent):
    tokens = mint_tokens(collector, "viewer", "admin")
    tasks = 120
    with SignedStream(collector.url, tokens["viewer"]) as viewer, SignedStream(collector.url, tokens["admin"]) as admin:
        assert viewer.hello["project"] == "default"
        assert viewer.hello["nonce"] != admin.hello["nonce"]
        assert viewer.key == collector_stream_key(tokens["viewer"], bytes.fromhex(viewer.hello["nonce"]))

        events = 0
        for i in range(tasks):
            agent.task(f"s-{i}", "received", name="stream.task", queue="live")
            agent.task(f"s-{i}", "started", worker="ws-1")
            agent.task(f"s-{i}", "failed" if i % 10 == 0 else "succeeded", exception="boom" if i % 10 == 0 else None)
            events += 3
        agent.worker("ws-1", "online", pid=42)
        assert agent.flush(30)

        for stream in (viewer, admin):  # every subscriber gets every change
            frames: list[dict] = []
            latest: dict[str, dict] = {}
            workers: dict[str, dict] = {}
            while len(latest) < tasks or "ws-1" not in workers:
                frame = stream.recv(timeout=15)  # raises unless signed and in sequence
                frames.append(frame)
                latest.update({t["task_id"]: t for t in frame["tasks"]})
                workers.update({w["name"]: w for w in frame["workers"]})
            assert [f["seq"] for f in frames] == list(range(1, len(frames) + 1))
            assert all(f["type"] == "changes" for f in frames)
            assert len(frames) < events, "changes were not coalesced"
            for frame in frames:  # one entry per task per frame
                assert len({t["task_id"] for t in frame["tasks"]}) == len(frame["tasks"])
            assert {tid: t["state"] for tid, t in latest.items()} == {
                f"s-{i}": "failure" if i % 10 == 0 else "success" for i in range(tasks)
            }
            assert {t["name"] for t in latest.values()} == {"stream.task"}
            assert {t["queue"] for t in latest.values()} == {"live"}
            assert workers["ws-1"]["state"] == "online" and workers["ws-1"]["engine"] == "bare"

        # a worker going offline is a change too; seq keeps counting
        agent.worker("ws-1", "offline")
        assert agent.flush(30)
        frame = viewer.recv(timeout=15)
        while not any(w["name"] == "ws-1" for w in frame["workers"]):
            frame = viewer.recv(timeout=15)
        assert [w["state"] for w in frame["workers"] if w["name"] == "ws-1"] == ["offline"]


def test_client_refuses_tampered_replayed_and_foreign_frames(collector, agent):
    tokens = mint_tokens(collector, "viewer", "operator")
    with SignedStream(collector.url, tokens["viewer"]) as stream, SignedStream(collector.url, tokens["operator"]) as other:
        agent.task("t-1", "succeeded", name="tamper.me")
        assert agent.flush(30)
        raw = stream.recv_raw(timeout=15)
        foreign = other.recv_raw(timeout=15)  # the same change, on another stream

        frame = json.loads(raw)
        assert set(frame) == {"mac", "body"} and len(frame["mac"]) == 64
        tampered_body = dict(frame, body=frame["body"].replace('"success"', '"failure"'))
        assert tampered_body["body"] != frame["body"]
        flipped = format(int(frame["mac"][0], 16) ^ 1, "x")
        tampered_mac = dict(frame, mac=flipped + frame["mac"][1:])
        for bad in (json.dumps(tampered_body), json.dumps(tampered_mac), foreign, "not json", '{"body": "{}"}'):
            with pytest.raises(StreamRefused):
                stream.open(bad)
        assert stream.seq == 0, "a refused frame must not move the stream on"

        body = stream.open(raw)  # the genuine frame still verifies
        assert body["seq"] == 1 and body["tasks"][0]["state"] == "success"
        with pytest.raises(StreamRefused, match="sequence"):
            stream.open(raw)  # replayed

        # correctly signed, but skipping a number: a frame was dropped or held back
        skipped = json.dumps({"seq": 3, "ts": 0, "type": "changes", "tasks": [], "workers": []})
        mac = hmac.new(stream.key, skipped.encode(), hashlib.sha256).hexdigest()
        with pytest.raises(StreamRefused, match="sequence"):
            stream.open(json.dumps({"mac": mac, "body": skipped}))
        # and a key derived from another nonce (another session of the same token) does not verify
        assert stream_key(tokens["viewer"], os.urandom(16)) != stream.key


def test_no_stream_without_a_valid_token(collector):
    viewer = mint_tokens(collector, "viewer")["viewer"]
    url = collector.url.replace("http://", "ws://") + "/api/v1/projects/default/stream"
    for headers in ({}, {"Authorization": "Bearer z4jt_not-a-token"}, {"Authorization": f"Basic {viewer}"}):
        # the guard refuses before the WebSocket is accepted: the HTTP upgrade fails
        with pytest.raises(InvalidStatus) as refused:
            with connect(url, additional_headers=headers, open_timeout=10) as ws:
                ws.recv(timeout=5)
        assert refused.value.response.status_code in (401, 403)
    # the same token is accepted; for another project's slug it is not
    with SignedStream(collector.url, viewer) as stream:
        assert stream.hello["type"] == "hello"
    with pytest.raises(InvalidStatus):
        with SignedStream(collector.url, viewer, project="other"):
            pass
