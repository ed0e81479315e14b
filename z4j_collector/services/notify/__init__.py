"""Notification channels: CRUD (audited, secrets masked in answers), sending
with retries and a delivery log, and the "send test" action.

A rules engine (not built yet) sends through the same entry point::

    channel = await notifier.channel(project_id, channel_id)      # the stored row, secrets included
    delivery = await notifier.send(project_id, channel, Message(title, text, fields={...}), source="rule:<id>")

``send`` never raises for a failed delivery: the outcome (sent / failed /
refused, attempts, last error) is in the returned row and in the log.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

from z4j_collector.errors import CollectorError, Conflict, NotFound
from z4j_collector.services.audit import Actor, Audit
from z4j_collector.services.mail import Mailer
from z4j_collector.services.notify import channels
from z4j_collector.services.notify.channels import KINDS, Message, mask, validate
from z4j_collector.services.outbound import OutboundClient, OutboundError, OutboundRefused
from z4j_collector.store.base import SqlStore

__all__ = ["KINDS", "Message", "Notifier"]
log = logging.getLogger("z4j.collector.notify")

MAX_ATTEMPTS = 3
RETRY_BASE_S = 1.0
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,99}")


class Notifier:
    def __init__(self, store: SqlStore, audit: Audit, outbound: OutboundClient, mailer: Mailer,
                 max_attempts: int = MAX_ATTEMPTS, retry_base_s: float = RETRY_BASE_S) -> None:
        self.store = store
        self.audit = audit
        self.outbound = outbound
        self.mailer = mailer
        self.max_attempts = max_attempts
        self.retry_base_s = retry_base_s

    # ------------------------------------------------------------ channels

    @staticmethod
    def shown(channel: dict[str, Any]) -> dict[str, Any]:
        return {**channel, "config": mask(channel["kind"], channel["config"])}

    async def list(self, project_id: int) -> list[dict[str, Any]]:
        return [self.shown(c) for c in await self.store.list_channels(project_id)]

    async def channel(self, project_id: int, channel_id: int) -> dict[str, Any]:
        found = await self.store.get_channel(project_id, channel_id)
        if found is None:
            raise NotFound(f"no notification channel {channel_id} in this project", code="no_such_channel")
        return found

    async def one(self, project_id: int, channel_id: int) -> dict[str, Any]:
        return self.shown(await self.channel(project_id, channel_id))

    @staticmethod
    def _name(name: Any) -> str:
        if not isinstance(name, str) or not _NAME.fullmatch(name.strip()):
            raise CollectorError("name must be 1 to 100 letters, digits, spaces, '.', '_' or '-'",
                                 code="invalid_request")
        return name.strip()

    @staticmethod
    def _enabled(value: Any) -> bool:
        if not isinstance(value, bool):
            raise CollectorError(f"enabled must be true or false, got {value!r}", code="invalid_request")
        return value

    async def create(self, project_id: int, body: dict[str, Any], actor: Actor) -> dict[str, Any]:
        kind = body.get("kind")
        if kind not in KINDS:
            raise CollectorError(f"kind must be one of {', '.join(KINDS)}, got {kind!r}", code="invalid_request")
        name = self._name(body.get("name"))
        config = validate(kind, body.get("config"), self.outbound.allowlist)
        enabled = self._enabled(body.get("enabled", True))
        now = time.time()

        async def tx_fn(tx: Any) -> int:
            if await self.store.channel_by_name_tx(tx, project_id, name) is not None:
                raise Conflict(f"a notification channel named {name!r} already exists", code="channel_exists")
            channel_id = await self.store.insert_channel(tx, project_id, kind, name, config, enabled, now)
            await self.audit.record(tx, actor.entry(project_id, "notify.channel.create", f"channel:{name}",
                                                    kind=kind, config=mask(kind, config), enabled=enabled), now)
            return channel_id

        return await self.one(project_id, await self.store.write(tx_fn))

    async def edit(self, project_id: int, channel_id: int, body: dict[str, Any], actor: Actor) -> dict[str, Any]:
        old = await self.channel(project_id, channel_id)
        kind = old["kind"]
        if "kind" in body and body["kind"] != kind:
            raise CollectorError("a channel's kind cannot change: create a new channel", code="invalid_request")
        name = self._name(body["name"]) if "name" in body else old["name"]
        config = validate(kind, body["config"], self.outbound.allowlist, old["config"]) if "config" in body \
            else old["config"]
        enabled = self._enabled(body["enabled"]) if "enabled" in body else old["enabled"]
        now = time.time()

        async def tx_fn(tx: Any) -> None:
            other = await self.store.channel_by_name_tx(tx, project_id, name)
            if other is not None and other["id"] != channel_id:
                raise Conflict(f"a notification channel named {name!r} already exists", code="channel_exists")
            if not await self.store.update_channel(tx, project_id, channel_id, name, config, enabled, now):
                raise NotFound(f"no notification channel {channel_id} in this project", code="no_such_channel")
            changed = sorted(k for k in config if config.get(k) != old["config"].get(k))
            await self.audit.record(tx, actor.entry(
                project_id, "notify.channel.update", f"channel:{name}", kind=kind, config=mask(kind, config),
                changed_config=changed, enabled=enabled, renamed_from=old["name"] if name != old["name"] else None),
                now)

        await self.store.write(tx_fn)
        return await self.one(project_id, channel_id)

    async def delete(self, project_id: int, channel_id: int, actor: Actor) -> None:
        old = await self.channel(project_id, channel_id)

        async def tx_fn(tx: Any) -> None:
            if not await self.store.delete_channel(tx, project_id, channel_id):
                raise NotFound(f"no notification channel {channel_id} in this project", code="no_such_channel")
            await self.audit.record(tx, actor.entry(project_id, "notify.channel.delete", f"channel:{old['name']}",
                                                    kind=old["kind"]))

        await self.store.write(tx_fn)

    # ------------------------------------------------------------ sending

    async def send(self, project_id: int, channel: dict[str, Any], message: Message, source: str) -> dict[str, Any]:
        """Deliver ``message`` on ``channel`` (a stored row, secrets included), retrying
        what may work later (network errors, timeouts, 5xx, 429) up to ``max_attempts``
        times with backoff; never retries a refusal. The delivery log row."""
        now = time.time()
        delivery_id = await self.store.write(
            lambda tx: self.store.insert_delivery(tx, project_id, channel, source, message.title, now))
        context = {"project_id": project_id, "channel": channel["name"], "delivery_id": delivery_id,
                   "source": source}
        status, error, attempts = "failed", None, 0
        while attempts < self.max_attempts:
            attempts += 1
            try:
                await channels.send(channel["kind"], channel["config"], message, context, self.outbound, self.mailer)
                status, error = "sent", None
                break
            except OutboundRefused as exc:
                status, error = "refused", exc.reason
                break
            except OutboundError as exc:
                status, error = "failed", exc.reason
                if not exc.retryable:
                    break
            except Exception as exc:  # noqa: BLE001 - a channel bug must not break the caller
                log.exception("notification channel %s failed", channel["name"])
                status, error = "failed", f"{type(exc).__name__}: {exc}"
                break
            if attempts < self.max_attempts:
                await asyncio.sleep(self.retry_base_s * 2 ** (attempts - 1))
        if status != "sent":
            log.warning("notification %r on channel %s %s after %d attempt(s): %s", message.title, channel["name"],
                        status, attempts, error)
        await self.store.write(lambda tx: self.store.finish_delivery(tx, delivery_id, status, attempts, error,
                                                                     time.time()))
        return {"id": delivery_id, "channel_id": channel["id"], "channel_name": channel["name"],
                "kind": channel["kind"], "source": source, "title": message.title, "status": status,
                "attempts": attempts, "error": error, "created_at": now}

    async def test(self, project_id: int, project: str, channel_id: int, actor: Actor) -> dict[str, Any]:
        """The "send test" action: a test message now, its delivery row returned, audited."""
        channel = await self.channel(project_id, channel_id)
        message = Message(title=f"z4j test notification ({channel['name']})",
                          text=f"A test message from z4j for project {project}, sent by {actor.name}.",
                          fields={"project": project, "channel": channel["name"]})
        delivery = await self.send(project_id, channel, message, source="test")
        await self.audit.write(actor.entry(project_id, "notify.channel.test", f"channel:{channel['name']}",
                                           outcome="ok" if delivery["status"] == "sent" else "failed",
                                           delivery_id=delivery["id"], status=delivery["status"],
                                           attempts=delivery["attempts"], error=delivery["error"]))
        return delivery

    async def deliveries(self, project_id: int, channel_id: int | None, status: str | None, before: int | None,
                         limit: int) -> list[dict[str, Any]]:
        return await self.store.list_deliveries(project_id, channel_id, status, before, limit)
