"""GET /metrics: Prometheus text exposition (services/metrics.py).

Its permission is "metrics" (guards.py): anyone may scrape while no
Z4J_METRICS_TOKEN is set; with it set, only ``Authorization: Bearer <token>``.
"""

from __future__ import annotations

from litestar import Litestar, Request, Response, get

from z4j_collector import __version__
from z4j_collector.services.metrics import CONTENT_TYPE, Metrics


def metrics_of(app: Litestar) -> Metrics:
    """The app's one Metrics (made on first use; services add sources to it)."""
    state = app.state
    metrics = state.get("metrics")
    if metrics is None:
        metrics = state.metrics = Metrics(state.store, state.writer, state.registry, __version__,
                                          worker_fresh_s=3 * state.settings.heartbeat_s)
    return metrics


@get("/metrics", opt={"permission": "metrics"}, tags=["meta"], summary="Prometheus metrics (text format)",
     include_in_schema=True)
async def prometheus_metrics(request: Request) -> Response[str]:
    body = await metrics_of(request.app).scrape()
    return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
