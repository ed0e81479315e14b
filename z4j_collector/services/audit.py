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

import logging
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import msgspec

from z4j_collector import auditchain
from z4j_collector.errors import Conflict
from z4j_collector.keys import AuditKeys
from z4j_collector.store.base import SqlStore
from z4j_collector.services.periodic import every

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


SYSTEM = Actor("system", source="local")
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

    def _public(self) -> Any:
        return self.keys.signing_key.public_key()

    async def last_checkpoint(self, project_id: int) -> dict[str, Any] | None:
        """The newest stored checkpoint this collector's key signed (others are not trusted)."""
        public = self._public()
        for cp in await self.store.checkpoints(project_id):
            if auditchain.checkpoint_valid(public, cp):
                return cp
        return None

    async def checkpoint(self, project_id: int) -> dict[str, Any] | None:
        """A signed checkpoint of the chain's head: the last one when the head has
        not moved since, else a new one, signed only once the rows written since
        the last checkpoint verify (a broken chain is never vouched for).
        None when the chain is empty; :class:`Conflict` when it does not verify."""
        last = await self.last_checkpoint(project_id)

        async def tx_fn(tx: Any) -> dict[str, Any] | None:
            head = await self.store.audit_lock_head(tx, project_id)  # appenders wait: rows and head agree
            if head is None or head[0] == 0:
                return None
            if last is not None and (last["seq"], last["hash"]) == head:
                return last
            rows = await self.store.audit_rows(project_id, last["seq"] if last else None, tx=tx)
            report = auditchain.verify(project_id, rows, self.keys.chain_key, self._public(),
                                       [last] if last else [], head)
            if not rows or not report.ok:
                problem = report.problems[0].message if report.problems else "no rows after the last checkpoint"
                raise Conflict(f"audit chain {project_id} does not verify, nothing signed: {problem}",
                               code="audit_broken")
            ts = time.time()
            cp = {"project_id": project_id, "seq": head[0], "hash": head[1], "ts": ts, "key_id": self.keys.key_id,
                  "signature": auditchain.sign_checkpoint(self.keys.signing_key, project_id, head[0], head[1], ts)}
            cp["id"] = await self.store.insert_checkpoint(tx, cp)
            return cp

        return await self.store.write(tx_fn)

    async def checkpoint_all(self, strict: bool = True) -> list[dict[str, Any]]:
        """A checkpoint of every chain; ``strict``: a chain that does not verify fails the whole call."""
        out = []
        for project_id in await self.store.audit_chains():
            try:
                cp = await self.checkpoint(project_id)
            except Conflict as exc:
                if strict:
                    raise
                log.error("%s", exc.message)
                continue
            if cp is not None:
                out.append(cp)
        return out

    async def prune(self, project_id: int, keep_after_ts: float, actor: Actor = SYSTEM) -> dict[str, Any]:
        """Retention: drop the rows older than ``keep_after_ts``, but only through the
        newest signed checkpoint among them, so the kept chain starts from that
        checkpoint and still verifies. One transaction, audited as ``audit.prune``."""
        public = self._public()
        cps = [cp for cp in await self.store.checkpoints(project_id) if auditchain.checkpoint_valid(public, cp)]

        async def tx_fn(tx: Any) -> dict[str, Any]:
            first, first_kept = await self.store.audit_prune_bounds(tx, project_id, keep_after_ts)
            result: dict[str, Any] = {"project_id": project_id, "through_seq": None, "deleted": 0}
            if first is None:
                return result | {"reason": "the log is empty"}
            cut = first_kept - 1 if first_kept is not None else None  # rows through ``cut`` are old enough
            anchor = next((cp for cp in cps if cut is None or cp["seq"] <= cut), None)
            if anchor is None or anchor["seq"] < first:
                return result | {"reason": "no signed checkpoint covers rows older than the cut"}
            if await self.store.audit_hash_at(tx, project_id, anchor["seq"]) != anchor["hash"]:
                raise Conflict(f"row seq {anchor['seq']} of audit chain {project_id} differs from its signed "
                               f"checkpoint: run `z4j audit verify`; nothing pruned", code="audit_broken")
            deleted = await self.store.audit_delete_through(tx, project_id, anchor["seq"])
            await self.record(tx, actor.entry(project_id, "audit.prune", f"audit-log:seq {first}–{anchor['seq']}",
                                              through_seq=anchor["seq"], deleted=deleted,
                                              checkpoint_ts=anchor["ts"], older_than=keep_after_ts))
            return result | {"through_seq": anchor["seq"], "deleted": deleted, "checkpoint_ts": anchor["ts"]}

        return await self.store.write(tx_fn)

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
        rows, head = await self._snapshot(project_id)
        stored = await self.store.checkpoints(project_id)
        return auditchain.verify(project_id, rows, self.keys.chain_key, self._public(), [*stored, *extra], head)

    async def _snapshot(self, project_id: int) -> tuple[list[dict[str, Any]], tuple[int, str] | None]:
        """The chain's rows and head as of one moment: read between two equal
        reads of the head (no append committed in between), else under its lock."""
        for _ in range(5):
            head = await self.store.audit_head(project_id)
            rows = await self.store.audit_rows(project_id)
            if await self.store.audit_head(project_id) == head:
                return rows, head

        async def tx_fn(tx: Any) -> tuple[list[dict[str, Any]], tuple[int, str] | None]:
            head = await self.store.audit_lock_head(tx, project_id)
            return await self.store.audit_rows(project_id, tx=tx), head

        return await self.store.write(tx_fn)

    async def run_checkpoints(self, interval_s: float) -> None:
        """Background task: a signed checkpoint of every chain every ``interval_s``."""
        await every(interval_s, lambda: self.checkpoint_all(strict=False), "audit checkpoint pass")
