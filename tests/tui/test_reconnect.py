"""Must show: when the collector stops, the console says the connection is
lost (once) and keeps trying; when a collector comes back on the same port and
database, it says it reconnected, refetches, and the live stream carries new
tasks again without a key pressed."""

from __future__ import annotations

import pytest
from textual.notifications import Notify

from tests.support.collector import Collector, mint_agent, mint_tokens
from tests.tui.helpers import until
from z4j_agents.bare import Agent
from z4j_agents.config import AgentConfig
from z4j_tui.app import Z4jApp
from z4j_tui.client import Client
from z4j_tui.screens.tasks import TasksScreen


@pytest.fixture
def restartable(tmp_path):
    """A collector, an agent and a viewer token (minted outside the test's event loop)."""
    collector = Collector(f"sqlite:///{tmp_path}/z4j.db", tmp_path).start()
    agent = Agent(AgentConfig.from_env(collector.agent_env(mint_agent(collector, "restart-agent"))))
    token = mint_tokens(collector, "viewer")["viewer"]
    yield collector, agent, token
    agent.stop()
    collector.stop()


async def test_reconnects_after_a_collector_restart(restartable):
    collector, agent, token = restartable
    agent.task("before-1", "sent", name="jobs.before")
    assert agent.flush(30)
    messages = []
    client = Client(collector.url, token)
    # polling every 0.5 s while the stream is down, as the console does every 2 s
    app = Z4jApp(client, "default", refresh_interval=0.5)
    try:
        async with app.run_test(size=(80, 24), message_hook=messages.append) as pilot:
            screen = app.screen
            assert isinstance(screen, TasksScreen)
            await until(pilot, lambda: screen.live and "bare:before-1" in screen.tasks, "live with the task")

            def notes(severity: str) -> list[str]:
                return [m.notification.message for m in messages
                        if isinstance(m, Notify) and m.notification.severity == severity]

            collector.stop()
            await until(pilot, lambda: not screen.live and notes("error"), "the lost connection")
            assert notes("error")[0].startswith("connection lost: ")
            await pilot.pause(1.5)  # a few failed polls and reconnects: still one message
            assert len(notes("error")) == 1 and app.is_running

            collector.start()
            await until(pilot, lambda: screen.live and any(n.startswith("reconnected to") for n in notes("information")),
                        "the reconnection, said")
            agent.task("after-1", "sent", name="jobs.after")
            assert agent.flush(30)
            await until(pilot, lambda: "bare:after-1" in screen.tasks, "a new task, live")
            assert len(notes("error")) == 1
    finally:
        client.close()
