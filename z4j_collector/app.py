"""The collector application: a factory plus one plugin."""

from __future__ import annotations

import logging
import sys
from collections.abc import AsyncGenerator
from contextlib import asynccontextmanager

from litestar import Litestar, Request, Response, Router, get
from litestar.config.app import AppConfig
from litestar.datastructures import State
from litestar.exceptions import HTTPException
from litestar.openapi import OpenAPIConfig
from litestar.plugins import InitPluginProtocol

from z4j_agents.redaction import default_redactor
from z4j_collector import __version__
from z4j_collector.api.actions import ActionController
from z4j_collector.api.admin import ProjectController, UserController
from z4j_collector.api.audit import AuditController
from z4j_collector.api.auth import AuthController
from z4j_collector.api.commands import CommandController
from z4j_collector.api.notify import NotifyController
from z4j_collector.api.rules import RulesController
from z4j_collector.api.reconciler import ReconcilerController
from z4j_collector.api.schedules import ScheduleController
from z4j_collector.api.fleet import FleetController
from z4j_collector.api.gateway import agent_gateway
from z4j_collector.api.metrics import metrics_of, prometheus_metrics
from z4j_collector.api.schemas import Health
from z4j_collector.api.stream import project_stream
from z4j_collector.api.tasks import TaskController
from z4j_collector.api.trends import TrendsController
from z4j_collector.errors import CollectorError, MigrationRequired, RateLimited
from z4j_collector.guards import RefusedWebSockets, requires_permission
from z4j_collector.keys import AuditKeys
from z4j_collector.services.actions import ActionService
from z4j_collector.services.agents import AgentRegistry
from z4j_collector.services.audit import Audit
from z4j_collector.services.cluster import Cluster, PgCluster
from z4j_collector.services.commands import CommandService
from z4j_collector.services.hub import Hub
from z4j_collector.services.identity import Identity
from z4j_collector.services.ingest import IngestWriter
from z4j_collector.services.mail import Mailer
from z4j_collector.services.membership import Membership
from z4j_collector.services.notify import Notifier
from z4j_collector.services.rules import Rules
from z4j_collector.services.reconciler import Reconciler
from z4j_collector.services.outbound import Allowlist, OutboundClient
from z4j_collector.services.periodic import Periodic
from z4j_collector.services.schedules import Schedules
from z4j_collector.services.trends import Trends
from z4j_collector.settings import Settings
from z4j_collector.store import make_store, migrate

log = logging.getLogger("z4j.collector")


@get("/health", opt={"permission": "public"}, tags=["meta"], summary="Liveness and ingest counters")
async def health(request: Request) -> Health:
    state = request.app.state
    stats = state.writer.stats
    return Health(
        status="ok", version=__version__, database=state.store.dialect,
        ingest={"events": stats.events, "batches": stats.batches, "duplicates": stats.duplicates,
                "commits": stats.commits, "failures": stats.failures},
        cluster=state.cluster.view(),
    )


def error_response(request: Request, exc: Exception) -> Response:
    if isinstance(exc, CollectorError):
        status, code, message = exc.status_code, exc.code, exc.message
    elif isinstance(exc, HTTPException):
        status, code = exc.status_code, {400: "invalid_request", 404: "not_found", 405: "method_not_allowed",
                                         401: "unauthorized", 403: "forbidden"}.get(exc.status_code, "error")
        message = exc.detail
        extra = getattr(exc, "extra", None)
        if status == 400 and isinstance(extra, list) and extra:
            message = "; ".join(
                f"{e.get('key')}: {e.get('message')}" if isinstance(e, dict) else str(e) for e in extra
            )
        elif status == 400 and extra:
            message = f"{exc.detail}: {extra}"
    else:
        log.exception("unhandled error on %s", request.url.path)
        status, code, message = 500, "internal", "internal error; see the collector log"
    headers = {"Retry-After": str(exc.retry_after)} if isinstance(exc, RateLimited) else None
    return Response({"code": code, "message": message}, status_code=status, headers=headers)


class CollectorPlugin(InitPluginProtocol):
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def on_app_init(self, app_config: AppConfig) -> AppConfig:
        app_config.route_handlers.extend(
            [health, prometheus_metrics, agent_gateway, project_stream, TaskController, FleetController, CommandController,
             AuthController, UserController, ProjectController, AuditController, ScheduleController, ActionController,
             NotifyController, RulesController, ReconcilerController, TrendsController]
        )
        app_config.guards.append(requires_permission)
        app_config.middleware.append(RefusedWebSockets)
        app_config.exception_handlers[Exception] = error_response
        app_config.lifespan.append(self.lifespan)
        app_config.state = State({"settings": self.settings})
        return app_config

    @asynccontextmanager
    async def lifespan(self, app: Litestar) -> AsyncGenerator[None, None]:
        settings = self.settings
        revision, head = migrate.current(settings.db_url), migrate.head()
        if revision != head:
            raise MigrationRequired(
                f"database is at revision {revision or 'none'}, code needs {head}: run `z4j db upgrade`"
            )
        keys = AuditKeys.load()
        store = make_store(settings.db_url)
        await store.open()
        hub = Hub()
        registry = AgentRegistry()
        audit = Audit(store, keys)
        identity = Identity(store, audit, settings)
        writer = IngestWriter(store, hub, max_batches=settings.ingest_queue_batches)
        writer.start()
        trends = writer.trends = Trends(store)
        trends.start()
        commands = CommandService(store, registry, audit)
        # Several collectors may share a PostgreSQL database: they route
        # commands and live changes to each other, and one of them (the
        # leader) runs the background jobs registered below.
        cluster = PgCluster(store, hub, registry, commands) if store.dialect == "postgresql" else Cluster()
        commands.cluster = cluster if cluster.enabled else None
        app.state.update(
            trends=trends, store=store, hub=hub, registry=registry, writer=writer, audit=audit, identity=identity,
            membership=Membership(store, audit, identity, Mailer(settings.smtp), registry),
            commands=commands, redactor=default_redactor(), actions=ActionService(store, commands, registry, audit),
        )
        app.state.notify = Notifier(store, audit, OutboundClient(Allowlist.from_env()), Mailer(settings.smtp))
        app.state.schedules = Schedules(store, registry, app.state.commands, audit, settings.schedule_sync_s)
        app.state.rules = Rules(store, audit, app.state.notify)
        app.state.reconciler = Reconciler(store, registry, commands, audit, hub=hub)
        metrics_of(app).add_source(app.state.reconciler.metrics)
        checkpoints = Periodic(lambda: audit.run_checkpoints(settings.checkpoint_interval_s))
        for job in (app.state.schedules, app.state.rules, app.state.reconciler, checkpoints):
            cluster.leader_job(job.start, job.stop)
        cluster.leader_job(trends.start_retention, trends.stop_retention)
        app.state.cluster = cluster
        await cluster.start()
        try:
            token = await identity.issue_setup_token()
            if token is not None:
                # stderr, once: whoever can read the server's console sets it up.
                print(
                    f"z4j: no user exists yet. Create the first superuser within "
                    f"{settings.setup_ttl_s / 3600:.0f} h with:\n"
                    f"    z4j setup --url {settings.base_url} --token {token} --email YOU@EXAMPLE.COM\n"
                    f"  (or POST {settings.base_url}/api/v1/setup with this token)",
                    file=sys.stderr, flush=True,
                )
            yield
        finally:
            await cluster.stop()
            await writer.stop()
            await trends.stop()
            await store.close()


def create_app(settings: Settings) -> Litestar:
    app = Litestar(
        plugins=[CollectorPlugin(settings)],
        openapi_config=OpenAPIConfig(
            title="z4j collector", version=__version__, path="/api/v1/schema",
            # The schema is public documentation; every route still declares it.
            openapi_router=Router(path="/api/v1/schema", route_handlers=[], opt={"permission": "public"}),
        ),
        debug=False,
    )
    # Litestar adds an OPTIONS handler per path; it answers CORS preflights
    # and says nothing but the allowed methods, so it is public by design.
    for route in app.routes:
        for method, (handler, _) in getattr(route, "route_handler_map", {}).items():
            if method == "OPTIONS":
                handler.opt["permission"] = "public"
    return app
