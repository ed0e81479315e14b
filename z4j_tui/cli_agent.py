"""``z4j agent``: agents that run outside the workers.

``z4j agent celery -A proj`` is Celery's observer mode
(z4j_agents/celery/observer.py): it follows the broker's events, for
clusters whose workers cannot be changed. It needs only ``z4j[celery,cli]``
(no collector) and the agent's environment (Z4J_BRAIN_URL, Z4J_TOKEN,
Z4J_HMAC_SECRET, optional Z4J_PROJECT_ID and Z4J_AGENT_NAME).
"""

from __future__ import annotations

from typing import Annotated

import typer

agent_app = typer.Typer(help="Agents outside the workers: `z4j agent celery -A proj` follows a Celery "
                             "cluster's events (observer mode).", no_args_is_help=True)


@agent_app.command("celery")
def celery_observer(
    app_path: Annotated[str, typer.Option("-A", "--app", help="The Celery app, as `celery -A` takes it: "
                                                              "module, package or module:attribute")],
    enable_events: Annotated[bool, typer.Option(
        "--enable-events", help="Switch task events on in every worker (an enable_events broadcast, repeated "
                                "every 5 s). Without it the workers need -E")] = False,
    broker: Annotated[str | None, typer.Option("--broker", "-b", help="Broker URL (default: the app's)")] = None,
    lease_url: Annotated[str | None, typer.Option(
        "--lease-url", help="Redis URL for the one-observer lease when the broker is not Redis "
                            "(Z4J_OBSERVER_LEASE_URL)")] = None,
    queues: Annotated[str | None, typer.Option(
        "--queues", "-Q", help="More queues whose depth to sample, comma-separated (the app's are sampled)")] = None,
    loglevel: Annotated[str, typer.Option("--loglevel", "-l", help="DEBUG, INFO, WARNING, ERROR")] = "INFO",
) -> None:
    """Follow a Celery cluster's events from outside its workers and ship them to z4j.

    One observer per broker consumes (a lease); others stand by and take over.
    Observed tasks cannot be retried from z4j (events hold no exact arguments):
    that needs the agent in the worker.
    """
    from z4j_agents.celery.observer import main

    extra = tuple(q.strip() for q in (queues or "").split(",") if q.strip())
    raise SystemExit(main(app_path, enable_events=enable_events, broker=broker, lease_url=lease_url,
                          queues=extra, loglevel=loglevel))


def register(app: typer.Typer) -> None:
    app.add_typer(agent_app, name="agent")
