"""Start the beat agent inside ``celery beat``.

``celery beat`` does not start the worker agent (the activation hooks fire
for ``celery worker`` only). Importing this module connects ``beat_init``:
when beat starts and ``Z4J_BRAIN_URL`` is set, an agent that declares only
the ``celery.schedules.*`` actions starts next to the scheduler and logs
``z4j beat bootstrap: agent runtime started`` (logger
``z4j.celery.beat_bootstrap``). Any failure is logged; beat runs on.
"""

from __future__ import annotations

import atexit
import logging
import os
from typing import Any

from celery.signals import beat_init

log = logging.getLogger("z4j.celery.beat_bootstrap")

_started: dict[int, Any] = {}
_apps: set[int] = set()
_any_app = False


def _on_beat_init(sender: Any = None, **_: Any) -> None:
    try:
        app = sender.app
        if not (_any_app or id(app) in _apps):
            return
        if not os.environ.get("Z4J_BRAIN_URL"):
            return
        start(sender)
    except Exception:  # noqa: BLE001 - beat must run without us
        log.exception("z4j beat bootstrap: could not start the agent")


def start(service: Any, config: Any = None) -> Any:
    """Start the beat agent for a running ``celery.beat.Service``; the adapter."""
    from z4j_agents.bare import Agent
    from z4j_agents.celery.beat.adapter import ENGINE, BeatAdapter
    from z4j_agents.config import AgentConfig

    if id(service) in _started:
        return _started[id(service)]
    agent = Agent(config or AgentConfig.from_env(), engine=ENGINE, start=False)
    adapter = BeatAdapter(service.app, service.scheduler, agent)
    adapter.register(agent)
    adapter.watch()
    agent.start()
    _started[id(service)] = adapter
    atexit.register(agent.stop, 2.0)
    log.info("z4j beat bootstrap: agent runtime started (%s scheduler)", adapter.store.kind)
    return adapter


def connect(app: Any = None) -> None:
    """Start the beat agent when beat starts (for ``app`` only, or any app)."""
    global _any_app
    if app is None:
        _any_app = True
    else:
        _apps.add(id(app))
    beat_init.connect(_on_beat_init, weak=False, dispatch_uid="z4j-beat-bootstrap")
