"""The audit chain: how a row is sealed, how a checkpoint is signed, and the
verifier that walks a chain and names the first row that is wrong.

Pure functions over plain dicts; the store reads and writes the rows, the
audit service (services/audit.py) calls :func:`seal` inside the transaction
that makes the change.

* A row's MAC: ``HMAC-SHA256(chain_key, prev_hash | canonical(row))`` where
  the canonical form is the JSON array of every column but ``id`` and the
  hashes, ``seq`` included: moving a row changes what its MAC covers.
* A checkpoint: ``(project_id, seq, hash, ts)`` signed with Ed25519. Exported
  checkpoints live off the box; a log that ends before an exported
  checkpoint's ``seq`` was truncated. Retention deletes rows up to a
  checkpoint's ``seq`` and the chain then starts from that checkpoint.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgspec
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

GENESIS = "0" * 64
SEALED_COLUMNS = ("project_id", "seq", "ts", "actor", "actor_user_id", "source", "action", "target", "outcome", "detail")
CHECKPOINT_FORMAT = "z4j-audit-checkpoints-v1"
_encode = msgspec.json.Encoder().encode


def seal(chain_key: bytes, prev_hash: str, row: dict[str, Any]) -> str:
    body = _encode([row[c] for c in SEALED_COLUMNS])
    return hmac.new(chain_key, prev_hash.encode() + b"|" + body, hashlib.sha256).hexdigest()


def checkpoint_message(project_id: int, seq: int, head: str, ts: float) -> bytes:
    return f"z4j-audit-checkpoint-v1\n{project_id}\n{seq}\n{head}\n{ts!r}\n".encode()


def sign_checkpoint(key: Ed25519PrivateKey, project_id: int, seq: int, head: str, ts: float) -> str:
    return base64.b64encode(key.sign(checkpoint_message(project_id, seq, head, ts))).decode()


def checkpoint_valid(public: Ed25519PublicKey, cp: dict[str, Any]) -> bool:
    try:
        signature = base64.b64decode(cp["signature"], validate=True)
        public.verify(signature, checkpoint_message(int(cp["project_id"]), int(cp["seq"]), str(cp["hash"]), float(cp["ts"])))
        return True
    except (InvalidSignature, ValueError, TypeError, KeyError):
        return False


@dataclass(frozen=True)
class Problem:
    seq: int
    row_id: int | None
    kind: str
    """changed · deleted · inserted · reordered · truncated · checkpoint"""
    message: str


@dataclass
class Report:
    project_id: int
    rows: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    head_hash: str | None = None
    anchored_on: int | None = None
    """The checkpoint seq the chain starts from after retention (None: genesis)."""
    checkpoints_checked: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {
            "project_id": self.project_id, "ok": self.ok, "rows": self.rows, "first_seq": self.first_seq,
            "last_seq": self.last_seq, "head_hash": self.head_hash, "anchored_on": self.anchored_on,
            "checkpoints_checked": self.checkpoints_checked,
            "problems": [{"seq": p.seq, "row_id": p.row_id, "kind": p.kind, "message": p.message}
                         for p in self.problems],
        }


def verify(
    project_id: int,
    rows: Sequence[dict[str, Any]],
    chain_key: bytes,
    public: Ed25519PublicKey,
    checkpoints: Iterable[dict[str, Any]] = (),
    head: tuple[int, str] | None = None,
) -> Report:
    """Walk ``rows`` (one project's audit rows, any order) and report every problem.

    ``checkpoints`` are the stored ones and any exported ones (a file); a
    checkpoint whose signature fails is itself a problem. ``head`` is the
    stored chain head (seq, hash), which must agree with the last row.
    """
    report = Report(project_id)
    ordered = sorted(rows, key=lambda r: r["seq"])
    report.rows = len(ordered)
    valid: dict[int, str] = {}
    for cp in checkpoints:
        if int(cp.get("project_id", -1)) != project_id:
            continue
        report.checkpoints_checked += 1
        if not checkpoint_valid(public, cp):
            report.problems.append(Problem(int(cp.get("seq", 0)), None, "checkpoint",
                                           f"checkpoint at seq {cp.get('seq')} has a bad signature"))
            continue
        seq = int(cp["seq"])
        if valid.setdefault(seq, cp["hash"]) != cp["hash"]:
            report.problems.append(Problem(seq, None, "checkpoint",
                                           f"two signed checkpoints disagree about seq {seq} (split history)"))
    if not ordered:
        last = max(valid, default=0)
        if last:
            report.problems.append(Problem(last, None, "truncated",
                                           f"the log is empty but a signed checkpoint covers seq 1–{last}"))
        return report

    by_hash = {r["hash"]: r["seq"] for r in ordered}
    first = ordered[0]["seq"]
    report.first_seq, report.last_seq = first, ordered[-1]["seq"]
    expected, prev_hash, prev_id = 1, GENESIS, None
    if first != 1:
        if first - 1 in valid:
            report.anchored_on = first - 1
            prev_hash = valid[first - 1]
        else:
            report.problems.append(Problem(
                first, ordered[0].get("id"), "deleted",
                f"rows seq 1–{first - 1} are missing and no signed checkpoint at seq {first - 1} anchors row seq {first}",
            ))
            prev_hash = ordered[0]["prev_hash"]
        expected = first
    hashes: dict[int, str] = {}
    for row in ordered:
        seq, row_id = row["seq"], row.get("id")
        where = f"row seq {seq} (id {row_id})"
        if seq > expected:
            gap = f"seq {expected}" if seq == expected + 1 else f"seq {expected}–{seq - 1}"
            report.problems.append(Problem(seq, row_id, "deleted", f"{gap} missing before {where}: rows deleted"))
        if seal(chain_key, row["prev_hash"], row) != row["hash"]:
            moved_from = _original_seq(chain_key, row, by_hash)
            if moved_from is not None:
                report.problems.append(Problem(seq, row_id, "reordered",
                                               f"{where} was written as seq {moved_from}: rows reordered"))
            else:
                # A tail row written by someone without the key looks the same.
                kind = "inserted" if head is not None and seq > head[0] else "changed"
                report.problems.append(Problem(seq, row_id, kind,
                                               f"{where} does not match its MAC: changed or inserted after the fact"))
        elif row["prev_hash"] != prev_hash and seq == expected:
            report.problems.append(Problem(seq, row_id, "reordered",
                                           f"{where} does not follow the row before it: rows reordered or removed"))
        if prev_id is not None and row_id is not None and row_id < prev_id:
            report.problems.append(Problem(seq, row_id, "reordered",
                                           f"{where} was stored before the row it follows: rows reordered"))
        hashes[seq] = row["hash"]
        prev_hash, expected, prev_id = row["hash"], seq + 1, row_id if row_id is not None else prev_id
    report.head_hash = prev_hash
    last = report.last_seq
    for seq, digest in sorted(valid.items()):
        if seq > last:
            report.problems.append(Problem(seq, None, "truncated",
                                           f"the log ends at seq {last} but a signed checkpoint covers seq {seq}: "
                                           f"rows after seq {last} were removed"))
            break
        if seq >= first and hashes.get(seq) not in (None, digest):
            report.problems.append(Problem(seq, None, "checkpoint",
                                           f"row seq {seq} differs from the signed checkpoint at seq {seq}"))
    if head is not None and head[0] != last:
        kind = "truncated" if head[0] > last else "inserted"
        report.problems.append(Problem(head[0], None, kind,
                                       f"the chain head says seq {head[0]} but the log ends at seq {last}"))
    report.problems.sort(key=lambda p: p.seq)
    return report


def _original_seq(chain_key: bytes, row: dict[str, Any], by_hash: dict[str, int]) -> int | None:
    """The seq a row was sealed with, when it now sits elsewhere."""
    before = 0 if row["prev_hash"] == GENESIS else by_hash.get(row["prev_hash"])
    if before is None or before + 1 == row["seq"]:
        return None
    if seal(chain_key, row["prev_hash"], {**row, "seq": before + 1}) == row["hash"]:
        return before + 1
    return None
