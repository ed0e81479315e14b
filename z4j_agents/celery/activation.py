"""Zero-code activation through Celery's own plugin hook.

Celery's command line loads every ``celery.commands`` entry point when
``celery`` starts; z4j's points at :data:`z4j_command` in this module.
Importing it only connects the worker lifecycle signals, and only when
``Z4J_BRAIN_URL`` is set: ``worker_init`` fires for ``celery worker`` alone,
so ``celery beat``, ``inspect``, ``purge`` and the rest never start an agent.

``celery z4j`` prints whether this process would start an agent, and why not.
"""

from __future__ import annotations

import os

import click

ENV = "Z4J_BRAIN_URL"


def _activate() -> None:
    if not os.environ.get(ENV):
        return
    try:
        from z4j_agents.celery.agent import connect_worker_signals

        connect_worker_signals()
    except Exception as exc:  # noqa: BLE001 - a broken plugin must never break `celery`
        import logging

        logging.getLogger("z4j.celery.worker_bootstrap").error(
            "z4j worker bootstrap: activation failed: %s: %s", type(exc).__name__, exc)
    try:  # `celery beat` starts its own agent, for schedules only (beat/bootstrap.py)
        from z4j_agents.celery.beat.bootstrap import connect as connect_beat

        connect_beat()
    except Exception as exc:  # noqa: BLE001
        import logging

        logging.getLogger("z4j.celery.beat_bootstrap").error(
            "z4j beat bootstrap: activation failed: %s: %s", type(exc).__name__, exc)


@click.command("z4j", help="Show whether z4j will start in `celery worker` (zero-code activation).")
def z4j_command() -> None:
    from z4j_agents.config import AgentConfig, ConfigError

    if not os.environ.get(ENV):
        click.echo(f"z4j: inactive ({ENV} is not set)")
        return
    try:
        config = AgentConfig.from_env()
    except ConfigError as exc:
        click.echo(f"z4j: inactive: {exc}")
        raise SystemExit(1) from None
    click.echo(f"z4j: active: `celery worker` starts an agent for project {config.project!r}, "
               f"collector {config.brain_url}")


_activate()
