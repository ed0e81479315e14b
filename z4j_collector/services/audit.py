"""The audit service: who did what, sealed into the project's chain in the
same transaction as the change, and signed checkpoints of every chain.

Usage inside a change::

    async def tx_fn(tx):
        ...change rows...
        await audit.record(tx, actor.entry(project_id, "agent.revoke", f"agent:{name}"))
    await store.write(tx_fn)

``INSTANCE`` (project id 0) is the chain of instance-wide changes: users,
projects, first-boot setup.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from z4j_collector import auditchain
from z4j_collector.keys import AuditKeys
from z4j_collector.store.base import SqlStore

log = logging.getLogger("z4j.collector.audit")
INSTANCE = 0
_encode = msgspec.json.Encoder().encode


@dataclass(frozen=True)
class Actor:
    """Who is acting and from where; ``name`` is what the audit log shows."""

    name: str
    user_id: int | None = None
    source: str | None = None

    def entry(self, project_id: int, action: str, target: str, outcome: str = "ok", **detail: Any) -> AuditEntry:
        return AuditEntry(project_id, action, target, self, outcome, detail)


SYSTEM = Actor("system")
SHELL = Actor("server-shell", source="local")


@dataclass(frozen=True)
class AuditEntry:
    project_id: int
    action: str
    target: str
    actor: Actor
    outcome: str = "ok"
    detail: dict[str, Any] = field(default_factory=dict)


class Audit:
    def __init__(self, store: SqlStore, keys: AuditKeys) -> None:
        self.store = store
        self.keys = keys

    def _seal(self, prev_hash: str, row: dict[str, Any]) -> str:
        return auditchain.seal(self.keys.chain_key, prev_hash, row)

    async def record(self, tx: Any, entry: AuditEntry, now: float | None = None) -> dict[str, Any]:
        """Append one row to the entry's chain inside the caller's transaction."""
        row = {
            "project_id": entry.project_id, "ts": now if now is not None else time.time(),
            "actor": entry.actor.name[:400], "actor_user_id": entry.actor.user_id,
            "source": (entry.actor.source or "")[:64] or None, "action": entry.action[:64], "target": entry.target,
            "outcome": entry.outcome[:16], "detail": _encode(entry.detail).decode(),
        }
        return await self.store.audit_append(tx, row, self._seal)

    async def write(self, *entries: AuditEntry) -> None:
        """Entries that record no other change (a refused login, a sent command)."""

        async def tx_fn(tx: Any) -> None:
            for entry in entries:
                await self.record(tx, entry)

        await self.store.write(tx_fn)

    # ------------------------------------------------------------ checkpoints

    async def checkpoint(self, project_id: int) -> dict[str, Any] | None:
        """Sign the chain's current head; None when the chain is empty."""
        head = await self.store.audit_head(project_id)
        if head is None or head[0] == 0:
            return None
        ts = time.time()
        cp = {"project_id": project_id, "seq": head[0], "hash": head[1], "ts": ts, "key_id": self.keys.key_id,
              "signature": auditchain.sign_checkpoint(self.keys.signing_key, project_id, head[0], head[1], ts)}

        async def tx_fn(tx: Any) -> int:
            return await self.store.insert_checkpoint(tx, cp)

        cp["id"] = await self.store.write(tx_fn)
        return cp

    async def checkpoint_all(self) -> list[dict[str, Any]]:
        out = []
        for project_id in await self.store.audit_chains():
            cp = await self.checkpoint(project_id)
            if cp is not None:
                out.append(cp)
        return out

    def export(self, checkpoints: Iterable[dict[str, Any]], projects: dict[int, str]) -> dict[str, Any]:
        """The checkpoint file: keep it off this machine; ``z4j audit verify --checkpoint`` reads it."""
        return {
            "format": auditchain.CHECKPOINT_FORMAT, "public_key": self.keys.public_b64, "key_id": self.keys.key_id,
            "exported_at": time.time(),
            "checkpoints": [
                {k: cp[k] for k in ("project_id", "seq", "hash", "ts", "signature")}
                | {"project": projects.get(cp["project_id"], "(instance)")}
                for cp in checkpoints
            ],
        }

    async def verify(self, project_id: int, extra: Iterable[dict[str, Any]] = ()) -> auditchain.Report:
        rows = await self.store.audit_rows(project_id)
        stored = await self.store.checkpoints(project_id)
        head = await self.store.audit_head(project_id)
        public = self.keys.signing_key.public_key()
        return auditchain.verify(project_id, rows, self.keys.chain_key, public, [*stored, *extra], head)

    async def run_checkpoints(self, interval_s: float) -> None:
        """Background task: a signed checkpoint of every chain every ``interval_s``."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                await self.checkpoint_all()
            except Exception:  # noqa: BLE001 - keep the timer alive; the next pass retries
                log.exception("audit checkpoint pass failed")
