"""The demo's Celery application: a small shop's tasks.

Run by ``z4j demo`` as real ``celery worker`` and ``celery beat`` processes
on the demo's own redis-server (``$Z4J_DEMO_REDIS_URL``). Nothing here knows
about z4j: the worker and beat agents start zero-code from the environment,
as in any project.

What each task shows in the console:

- ``shop.send_receipt``, ``shop.resize_image``: plain successes of varied runtime;
- ``shop.charge_card``: the payment gateway times out on the first attempt
  for every third order and succeeds on any later one, so a failure retried
  from z4j succeeds (the console's retry, end to end);
- ``shop.import_feed``: a parse error deep in helper functions (a traceback
  worth reading); it fails again when retried;
- ``shop.sync_inventory``: retries itself once (state ``retry``), then succeeds;
- ``fulfil.reserve_stock | fulfil.pack | fulfil.ship``: a chain;
- ``reports.count_region`` ×4 then ``reports.total``: a chord (a group and its callback);
- ``reports.digest``: fired by beat every few seconds (a schedule in code).
"""

from __future__ import annotations

import os
import random
import time

from celery import Celery

REDIS_URL = os.environ.get("Z4J_DEMO_REDIS_URL", "redis://127.0.0.1:6379/0")
DIGEST_EVERY_S = float(os.environ.get("Z4J_DEMO_DIGEST_S", "10"))

app = Celery("z4j_demo", broker=REDIS_URL, backend=REDIS_URL)
app.conf.update(
    task_default_queue="celery",
    broker_connection_retry_on_startup=True,
    result_expires=3600,
    worker_hijack_root_logger=True,
    beat_schedule={
        "digest": {"task": "reports.digest", "schedule": DIGEST_EVERY_S, "kwargs": {"period": "last 10 s"}},
    },
    beat_max_loop_interval=1,
    z4j_beat_reload_interval=2,
)


class GatewayTimeout(Exception):
    """The payment provider did not answer in time."""


def _redis():
    import redis

    return redis.Redis.from_url(REDIS_URL)


def _work(low: float, high: float) -> float:
    spent = random.uniform(low, high)
    time.sleep(spent)
    return round(spent, 3)


@app.task(name="shop.send_receipt")
def send_receipt(order_id: str, email: str) -> dict:
    _work(0.02, 0.2)
    return {"order": order_id, "sent_to": email}


@app.task(name="shop.resize_image")
def resize_image(image_id: int, width: int) -> dict:
    _work(0.05, 0.6)
    return {"image": image_id, "width": width, "height": width * 3 // 4}


@app.task(name="shop.charge_card")
def charge_card(order_id: str, amount_cents: int, card_token: str) -> dict:
    """Every third order's first attempt times out; any later attempt (a retry
    from z4j runs the exact same call again) goes through."""
    attempt = _redis().incr(f"z4j-demo:charge:{order_id}")
    _work(0.05, 0.3)
    if attempt == 1 and int(order_id.rsplit("-", 1)[-1]) % 3 == 0:
        raise GatewayTimeout(f"payment gateway timed out charging {order_id} ({amount_cents} cents)")
    return {"order": order_id, "charged": amount_cents, "attempt": attempt}


def _parse_price(raw: str) -> int:
    whole, _, cents = raw.partition(".")
    return int(whole) * 100 + int(cents or 0)


def _parse_row(line: str) -> dict:
    sku, price = line.split(",")
    return {"sku": sku, "price": _parse_price(price)}


@app.task(name="shop.import_feed")
def import_feed(feed_url: str, rows: list[str]) -> int:
    """Fails on the bad row some feeds have (and again when retried)."""
    _work(0.05, 0.2)
    return len([_parse_row(line) for line in rows])


@app.task(name="shop.sync_inventory", bind=True, max_retries=3)
def sync_inventory(self, sku: str) -> dict:
    _work(0.02, 0.1)
    if self.request.retries == 0:
        raise self.retry(exc=ConnectionError(f"warehouse API busy for {sku}"), countdown=1)
    return {"sku": sku, "stock": random.randint(0, 40)}


@app.task(name="fulfil.reserve_stock")
def reserve_stock(order_id: str) -> str:
    _work(0.05, 0.2)
    return order_id


@app.task(name="fulfil.pack")
def pack(order_id: str) -> str:
    _work(0.1, 0.4)
    return order_id


@app.task(name="fulfil.ship")
def ship(order_id: str) -> dict:
    _work(0.05, 0.2)
    return {"order": order_id, "carrier": random.choice(["DHL", "UPS", "La Poste"])}


@app.task(name="reports.count_region")
def count_region(region: str) -> int:
    _work(0.05, 0.3)
    return random.randint(10, 500)


@app.task(name="reports.total")
def total(counts: list[int]) -> int:
    return sum(counts)


@app.task(name="reports.digest")
def digest(period: str) -> dict:
    _work(0.02, 0.1)
    return {"period": period, "orders": random.randint(0, 50)}
