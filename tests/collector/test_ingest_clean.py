"""The gateway's clean step (NUL characters, keys, redaction again), without a server.

Its NUL check reads every field a str can be decoded into in one join; these
cases put a NUL in each kind of field and check it is replaced all the same.
"""

from __future__ import annotations

import msgspec
import pytest

from z4j_agents import protocol as p
from z4j_agents.redaction import MASK, Redactor
from z4j_collector.api.gateway import Gateway


def _clean(events):
    return Gateway(None, None, None, None, Redactor())._clean(events)  # type: ignore[arg-type]


def _task(**fields):
    base = {"id": "e1", "task_id": "t1", "engine": "celery", "kind": "received", "ts": 1.0}
    return p.TaskEvent(**{**base, **fields})


@pytest.mark.parametrize("field", ["name", "queue", "worker", "engine_state", "exception", "traceback",
                                   "parent_id", "root_id", "group_id", "chord_id", "args", "kwargs", "result"])
def test_nul_in_any_string_field_is_replaced(field):
    kept, rejected, _ = _clean([_task(**{field: "a\x00b"})])
    assert rejected == 0
    assert getattr(kept[0], field) == "a\ufffdb"


def test_nul_in_nested_values_and_in_key_fields():
    worker = p.WorkerEvent(id="w1", worker="w\x00", engine="celery", kind="online", ts=1.0)
    queue = p.QueueEvent(id="q1", queue="q\x00", engine="celery", ts=1.0, depth=1)
    nested = _task(args=["a\x00b"], kwargs={"k": "v\x00"})
    kept, rejected, _ = _clean([worker, queue, nested])
    assert rejected == 2  # a key with a NUL cannot be stored: refused alone
    # Only top-level strings are columns; nested ones are stored as JSON (escaped).
    assert (kept[0].args, kept[0].kwargs) == (["a\x00b"], {"k": "v\x00"})


def test_clean_events_pass_unchanged_and_secrets_are_masked_again():
    event = _task(name="n", args=[1, "plain"], kwargs={"password": "hunter2x"}, exception="x password=hunter2x")
    before = msgspec.json.encode(_task(name="n", args=[1, "plain"]))
    kept, rejected, _ = _clean([event])
    assert rejected == 0 and kept[0].redacted
    assert kept[0].kwargs == {"password": MASK} and kept[0].exception == f"x password={MASK}"
    plain, _, _ = _clean([_task(name="n", args=[1, "plain"])])
    assert msgspec.json.encode(plain[0]) == before


def test_key_fields_that_cannot_be_stored_are_refused_alone():
    kept, rejected, reason = _clean([_task(task_id="k" * 300), _task(id="\x00"), _task(id="ok")])
    assert [e.id for e in kept] == ["ok"] and rejected == 2 and reason
