"""The audit chain: how a row is sealed, how a checkpoint is signed, and the
verifier that walks a chain and names every row that is wrong, and how.

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
* The verifier finds, for each row, the seq its MAC was sealed with (a moved
  row is found after its predecessor, through ``prev_hash``), then walks the
  rows in that order. Kinds of problem: ``changed`` (a row matches its MAC
  nowhere), ``inserted`` (a forged row, or a copy), ``deleted`` (a gap),
  ``reordered`` (rows swapped, by seq or by storage order), ``renumbered``
  (rows shifted to hide an insert or a delete), ``truncated`` (the log ends
  before a signed checkpoint or the head) and ``checkpoint`` (a bad
  signature). Each problem is one line naming the row (seq and id).
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


KINDS = ("changed", "deleted", "inserted", "reordered", "renumbered", "truncated", "checkpoint")
MAX_SHIFT = 256
"""How far a row whose predecessor is gone is searched for the seq it was sealed with."""


@dataclass(frozen=True)
class Problem:
    seq: int
    row_id: int | None
    kind: str
    """One of :data:`KINDS`."""
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
    valid = _signed(project_id, checkpoints, public, report)
    report.rows = len(rows)
    if rows:
        _Walk(sorted(rows, key=lambda r: r["seq"]), chain_key, valid, head, report).run()
    else:
        covered = max(max(valid, default=0), head[0] if head else 0)
        if covered:
            what = "a signed checkpoint" if covered in valid else "the chain head"
            report.problems.append(Problem(covered, None, "truncated",
                                           f"the log is empty but {what} covers seq 1–{covered}: every row was removed"))
    report.problems.sort(key=lambda p: p.seq)
    return report


def _signed(project_id: int, checkpoints: Iterable[dict[str, Any]], public: Ed25519PublicKey,
            report: Report) -> dict[int, str]:
    """seq -> hash of the project's checkpoints whose signature holds; the others are problems."""
    valid: dict[int, str] = {}
    for cp in checkpoints:
        if int(cp.get("project_id", -1)) != project_id:
            continue
        report.checkpoints_checked += 1
        seq = int(cp.get("seq", 0))
        if not checkpoint_valid(public, cp):
            report.problems.append(Problem(seq, None, "checkpoint",
                                           f"checkpoint at seq {seq} has a bad signature: altered, or not signed "
                                           f"by this collector's key"))
            continue
        if valid.setdefault(seq, cp["hash"]) != cp["hash"]:
            report.problems.append(Problem(seq, None, "checkpoint",
                                           f"two signed checkpoints disagree about seq {seq}: split history"))
    return valid


def _where(row: dict[str, Any]) -> str:
    return f"row seq {row['seq']}" + (f" (id {row['id']})" if row.get("id") is not None else "")


def _span(first: int, last: int) -> str:
    return f"seq {first}" if first == last else f"seq {first}–{last}"


class _Walk:
    """One verification: each row's *written* seq (the one its MAC was sealed
    with, found through its predecessor's hash when it was moved), then the
    rows in written order against the checkpoints and the head."""

    def __init__(self, rows: list[dict[str, Any]], key: bytes, valid: dict[int, str],
                 head: tuple[int, str] | None, report: Report) -> None:
        self.rows, self.key, self.valid, self.head, self.report = rows, key, valid, head, report
        self.by_hash: dict[Any, int] = {}
        for i, row in enumerate(rows):
            self.by_hash.setdefault(row["hash"], i)
        self.anchors = {GENESIS: 0} | {digest: seq for seq, digest in valid.items()}
        self.written: list[int] = [0] * len(rows)
        self.state: list[str] = [""] * len(rows)
        """"ok" (sealed at its seq), "moved" (sealed at another seq) or "bad" (matches its MAC nowhere)."""

    def problem(self, kind: str, message: str, row: dict[str, Any] | None = None, seq: int | None = None) -> None:
        self.report.problems.append(Problem(seq if seq is not None else row["seq"] if row else 0,
                                            row.get("id") if row else None, kind, message))

    def mac_ok(self, row: dict[str, Any], seq: int) -> bool:
        try:
            return seal(self.key, str(row["prev_hash"]), {**row, "seq": seq}) == row["hash"]
        except (TypeError, ValueError, KeyError):
            return False

    def run(self) -> None:
        rows, report = self.rows, self.report
        report.first_seq, report.last_seq = rows[0]["seq"], rows[-1]["seq"]
        if len(rows) >= 3 and not any(self.mac_ok(r, r["seq"]) for r in rows):
            self.problem("changed", "no row matches its MAC: wrong audit chain key (Z4J_AUDIT_KEY or "
                                    "$Z4J_HOME/keys/audit-chain.key), or every row was rewritten", rows[0])
            return
        for i in range(len(rows)):
            self.resolve(i)
        forged = self.classify_bad()
        accepted = self.walk([i for i in range(len(rows)) if i not in forged])
        self.report_moved()
        if accepted:
            last = rows[accepted[-1]]
            report.head_hash = last["hash"]
            self.check_storage_order(accepted)
            self.check_end(accepted)

    # ------------------------------------------------------------ written seqs

    def resolve(self, i: int) -> None:
        """Place row ``i`` after its predecessor (by prev_hash), placing that one first."""
        stack, pending = [i], {i}
        while stack:
            k = stack[-1]
            if self.state[k]:
                stack.pop()
                continue
            j = self.by_hash.get(self.rows[k]["prev_hash"])
            if j is not None and j != k and not self.state[j] and j not in pending:
                stack.append(j)
                pending.add(j)
                continue
            stack.pop()
            if j is not None and j != k and self.state[j]:
                base: int | None = self.written[j]
            else:
                base = self.anchors.get(self.rows[k]["prev_hash"])
            self.place(k, base)

    def place(self, k: int, base: int | None) -> None:
        row = self.rows[k]
        seq = row["seq"]
        if self.mac_ok(row, seq):
            self.state[k], self.written[k] = "ok", seq
            return
        candidates = [base + 1] if base is not None else []
        candidates += [c for d in range(1, MAX_SHIFT + 1) for c in (seq - d, seq + d) if c > 0]
        for candidate in candidates:
            if candidate != seq and self.mac_ok(row, candidate):
                self.state[k], self.written[k] = "moved", candidate
                return
        self.state[k], self.written[k] = "bad", base + 1 if base is not None else seq

    # ------------------------------------------------------------ reporting

    def classify_bad(self) -> set[int]:
        """Report rows that match their MAC nowhere; return the forged ones (left out of the chain)."""
        rows, head = self.rows, self.head
        taken = {self.written[i] for i, s in enumerate(self.state) if s != "bad"}
        linked = {r["prev_hash"] for r in rows}
        forged: set[int] = set()
        for i, state in enumerate(self.state):
            if state != "bad":
                continue
            row, written = rows[i], self.written[i]
            where = _where(row)
            if written in taken:
                forged.add(i)
                self.problem("inserted", f"{where} does not match its MAC and stands where the row written as "
                                         f"seq {written} belongs: forged row inserted", row)
            elif row["hash"] in linked or self.valid.get(written) == row["hash"]:
                self.problem("changed", f"{where} does not match its MAC: changed after it was written", row)
            elif head is not None and (row["seq"], row["hash"]) == (head[0], head[1]):
                self.problem("changed", f"{where} does not match its MAC and only the (unsealed) chain head vouches "
                                        f"for it: changed after it was written, or forged and appended", row)
            elif head is not None and row["seq"] > head[0]:
                forged.add(i)
                self.problem("inserted", f"{where} does not match its MAC and lies past the chain head "
                                         f"(seq {head[0]}): forged row appended", row)
            else:
                self.problem("changed", f"{where} does not match its MAC and no row links to it: changed "
                                        f"(its hash too) or forged", row)
        return forged

    def report_moved(self) -> None:
        rows, written = self.rows, self.written
        moved = [i for i, s in enumerate(self.state) if s == "moved"]
        at = {row["seq"]: i for i, row in enumerate(rows)}
        swapped = {i for i in moved
                   if (j := at.get(written[i])) is not None and self.state[j] == "moved"
                   and written[j] == rows[i]["seq"]}
        for i in sorted(swapped):
            self.problem("reordered", f"{_where(rows[i])} was written as seq {written[i]}: rows reordered", rows[i])
        run: list[int] = []
        for i in [i for i in moved if i not in swapped] + [-1]:
            if (i >= 0 and run and rows[i]["seq"] == rows[run[-1]]["seq"] + 1
                    and rows[i]["seq"] - written[i] == rows[run[-1]]["seq"] - written[run[-1]]):
                run.append(i)
                continue
            if run:
                self.report_renumbered(run)
            run = [i]

    def report_renumbered(self, run: list[int]) -> None:
        first, last = self.rows[run[0]], self.rows[run[-1]]
        shift = first["seq"] - self.written[run[0]]
        if len(run) == 1:
            what = _where(first)
        else:
            ids = f" (ids {first.get('id')}–{last.get('id')})" if first.get("id") is not None else ""
            what = f"rows {_span(first['seq'], last['seq'])}{ids}"
        cause = "inserted" if shift > 0 else "deleted"
        self.problem("renumbered", f"{what} {'was' if len(run) == 1 else 'were'} written as "
                                   f"{_span(self.written[run[0]], self.written[run[-1]])}: renumbered after rows "
                                   f"were {cause} before them", first)

    def walk(self, chain: list[int]) -> list[int]:
        """Rows in written order: gaps are deleted rows, repeats are copies. Returns the rows kept."""
        rows, written, state = self.rows, self.written, self.state
        chain.sort(key=lambda i: (written[i], state[i] != "ok", rows[i]["seq"]))
        if not chain:
            return []
        first = rows[chain[0]]
        expected, prev_hash = 1, GENESIS
        if written[chain[0]] > 1:
            expected = written[chain[0]]
            anchor = self.valid.get(expected - 1)
            if anchor is not None and anchor == first["prev_hash"]:
                self.report.anchored_on, prev_hash = expected - 1, anchor
            else:
                self.problem("deleted", f"rows seq 1–{expected - 1} are missing and no signed checkpoint at "
                                        f"seq {expected - 1} anchors {_where(first)}", first)
                prev_hash = first["prev_hash"]
        kept: list[int] = []
        seen: dict[int, int] = {}
        for i in chain:
            row, at = rows[i], written[i]
            if at < expected:
                self.problem("inserted", f"{_where(row)} repeats the row written as seq {at} "
                                         f"({_where(rows[seen[at]])}): copied row inserted", row)
                continue
            if at > expected:
                self.problem("deleted", f"{_span(expected, at - 1)} missing before {_where(row)}: rows deleted", row,
                             seq=expected)
            elif row["prev_hash"] != prev_hash and state[i] != "bad" and (not kept or state[kept[-1]] != "bad"):
                self.problem("changed", f"{_where(row)} does not follow the row written before it (its prev_hash "
                                        f"differs): chain rewritten here", row)
            seen[at] = i
            kept.append(i)
            prev_hash, expected = row["hash"], at + 1
        return kept

    def check_storage_order(self, kept: list[int]) -> None:
        """Rows are stored (ids) in chain order; rows whose whole contents were swapped show here."""
        rows = self.rows
        placed = [i for i in kept if self.state[i] == "ok" and rows[i].get("id") is not None]
        ids = [rows[i]["id"] for i in placed]
        where_id = {rows[i]["id"]: rows[i] for i in placed}
        for i, have, should in zip(placed, ids, sorted(ids)):
            if have != should:
                self.problem("reordered", f"{_where(rows[i])} is out of storage order ({_where(where_id[should])} "
                                          f"was stored here): rows reordered", rows[i])

    def check_end(self, kept: list[int]) -> None:
        """Signed checkpoints and the head against the end of the chain."""
        rows, written = self.rows, self.written
        last = written[kept[-1]]
        at = {written[i]: i for i in kept}
        beyond = [seq for seq in self.valid if seq > last]
        if beyond:
            top = max(beyond)
            self.problem("truncated", f"the log ends at seq {last} but a signed checkpoint covers seq {top}: "
                                      f"rows {_span(last + 1, top)} were removed", seq=last + 1)
        for seq, digest in sorted(self.valid.items()):
            i = at.get(seq)
            if i is not None and self.state[i] == "ok" and rows[i]["hash"] != digest:
                self.problem("truncated", f"{_where(rows[i])} is not the row the signed checkpoint at seq {seq} "
                                          f"covers: the log was cut back and written again after it", rows[i])
                break
        if self.head is None:
            return
        head_seq, head_hash = self.head
        end = rows[kept[-1]]  # the row written last, whose hash the head holds
        stored_end = max(rows[i]["seq"] for i in kept)  # the head's seq is compared with the stored seqs
        if head_seq > stored_end:
            self.problem("truncated", f"the chain head says seq {head_seq} but the log ends at seq {stored_end}: "
                                      f"rows {_span(stored_end + 1, head_seq)} were removed", seq=stored_end + 1)
        elif head_seq < stored_end:
            self.problem("truncated", f"the chain head says seq {head_seq} but the log goes on to seq {stored_end}: "
                                      f"the head was moved back", seq=head_seq)
        elif head_hash != end["hash"] and self.state[kept[-1]] != "bad":
            self.problem("changed", f"the chain head does not match {_where(end)}: head rewritten", end)
