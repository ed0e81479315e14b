"""Traffic for the demo's Celery application: ``python -m
z4j_tui.demo_tasks.celery_traffic`` publishes a shop's day until SIGTERM.

It is a producer like a web application: ``install(app)`` starts an agent at
the first publish, so each task is seen queued (``pending``) before a worker
takes it.
"""

from __future__ import annotations

import itertools
import os
import random
import signal
import sys
import time

from celery import chain, chord

from z4j_tui.demo_tasks import celery_app as shop

RATE = float(os.environ.get("Z4J_DEMO_RATE", "1"))
"""Rounds a second (a round is a few tasks; a chain and a chord now and then)."""

GOOD_FEED = ["sku-1,12.50", "sku-2,3.99", "sku-3,120"]
BAD_FEED = ["sku-7,4.20", "sku-8,N/A", "sku-9,9.99"]


def one_round(n: int, orders: itertools.count) -> None:
    order = f"ord-{next(orders):05d}"
    shop.send_receipt.delay(order, f"customer{n % 97}@example.com")
    shop.charge_card.delay(order, random.randint(500, 25000), card_token=f"tok_{random.getrandbits(48):012x}")
    if n % 2 == 0:
        shop.resize_image.delay(1000 + n, random.choice([320, 640, 1280]))
    if n % 5 == 0:
        shop.sync_inventory.delay(f"sku-{n % 40}")
    if n % 7 == 3:
        shop.import_feed.delay(f"https://feeds.example.com/{n}.csv", BAD_FEED if n % 2 else GOOD_FEED)
    if n % 6 == 1:
        chain(shop.reserve_stock.s(order), shop.pack.s(), shop.ship.s()).delay()
    if n % 10 == 4:
        chord([shop.count_region.s(r) for r in ("north", "south", "east", "west")])(shop.total.s())


def main() -> None:
    if os.environ.get("Z4J_BRAIN_URL"):
        from z4j_agents.celery import install

        install(shop.app)
    stopping = False

    def stop(signum, frame) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    orders = itertools.count(1)
    for n in itertools.count():
        if stopping:
            break
        try:
            one_round(n, orders)
        except Exception as exc:  # noqa: BLE001 - a broker hiccup: say so, keep going
            print(f"z4j demo traffic: {exc}", file=sys.stderr, flush=True)
        time.sleep(1.0 / RATE)


if __name__ == "__main__":
    main()
