"""What z4j reads and changes in the Redis broker's keys (dramatiq/brokers/redis/dispatch.lua).

For a queue ``q`` in namespace ``ns`` (``dramatiq`` by default):

* ``ns:q`` a list of waiting message ids, ``ns:q.msgs`` a hash id -> message
  (waiting, and fetched by a worker until it acks);
* ``ns:q.DQ`` / ``ns:q.DQ.msgs`` the same for delayed messages (retries too);
* ``ns:q.XQ`` a sorted set of dead-lettered ids (by time), ``ns:q.XQ.msgs``.

The ids in these keys are the broker's own ``redis_message_id`` option, not
the message id z4j and Dramatiq users know: lookups by message id read the
hashes (HSCAN) and decode the messages.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterator
from typing import Any

SCAN = 1000
MAX_SCAN = 200_000
"""Entries of one hash a lookup by message id reads at most."""

_REQUEUE = """
local done = {}
for i = 1, #ARGV, 2 do
    if redis.call("zrem", KEYS[1], ARGV[i]) == 1 then
        redis.call("hdel", KEYS[2], ARGV[i])
        redis.call("hset", KEYS[4], ARGV[i], ARGV[i + 1])
        redis.call("rpush", KEYS[3], ARGV[i])
        done[#done + 1] = ARGV[i]
    end
end
return done
"""


def is_redis(broker: Any) -> bool:
    try:
        from dramatiq.brokers.redis import RedisBroker
    except ImportError:  # pragma: no cover - dramatiq without its redis extra
        return False
    return isinstance(broker, RedisBroker)


def key(broker: Any, name: str) -> str:
    return f"{broker.namespace}:{name}"


def depths(broker: Any, queues: list[str]) -> dict[str, int]:
    """``q``: messages the broker holds for it (waiting or in a worker's hands,
    not yet acked: Dramatiq's own count), ``q.DQ``: delayed ones, ``q.XQ``: dead letters."""
    with broker.client.pipeline(transaction=False) as pipe:
        for q in queues:
            pipe.hlen(key(broker, f"{q}.msgs"))
            pipe.hlen(key(broker, f"{q}.DQ.msgs"))
            pipe.zcard(key(broker, f"{q}.XQ"))
        values = pipe.execute()
    out: dict[str, int] = {}
    for i, q in enumerate(queues):
        out[q], out[f"{q}.DQ"], out[f"{q}.XQ"] = (int(v) for v in values[3 * i:3 * i + 3])
    return out


def decode(data: bytes) -> Any:
    from dramatiq import Message

    try:
        return Message.decode(data)
    except Exception:  # noqa: BLE001 - a message this process cannot read is left alone
        return None


def scan_hash(broker: Any, name: str, limit: int = MAX_SCAN) -> Iterator[tuple[bytes, bytes]]:
    seen = 0
    for rid, data in broker.client.hscan_iter(key(broker, name), count=SCAN):
        yield rid, data
        seen += 1
        if seen >= limit:
            return


def find(broker: Any, name: str, message_ids: set[str]) -> dict[str, tuple[bytes, Any]]:
    """message id -> (broker id, Message) for the wanted ids found in hash ``name``."""
    found: dict[str, tuple[bytes, Any]] = {}
    if not message_ids:
        return found
    for rid, data in scan_hash(broker, name):
        message = decode(data)
        if message is not None and message.message_id in message_ids:
            found[message.message_id] = (rid, message)
            if len(found) == len(message_ids):
                break
    return found


def is_waiting(broker: Any, list_name: str, rid: bytes) -> bool:
    return broker.client.lpos(key(broker, list_name), rid) is not None


# ------------------------------------------------------------------ changes


def purge(broker: Any, queue: str, dead_letters: bool) -> dict[str, int]:
    """Drop every message of ``queue`` and its delay queue (and its dead
    letters when asked), in one transaction. Dramatiq 2.2's own ``flush``
    also drops the dead letters, so it is used only when they are to go."""
    names = [queue, f"{queue}.msgs", f"{queue}.DQ", f"{queue}.DQ.msgs"]
    if dead_letters:
        names += [f"{queue}.XQ", f"{queue}.XQ.msgs"]
    with broker.client.pipeline(transaction=True) as pipe:
        pipe.hlen(key(broker, f"{queue}.msgs"))
        pipe.hlen(key(broker, f"{queue}.DQ.msgs"))
        pipe.zcard(key(broker, f"{queue}.XQ"))
        pipe.delete(*(key(broker, n) for n in names))
        main, delayed, dead, _ = pipe.execute()
    out = {"purged": int(main) + int(delayed), "delayed": int(delayed)}
    if dead_letters:
        out["dead_letters"] = int(dead)
    return out


def purge_matching(broker: Any, queue: str, match: Callable[[Any], bool]) -> tuple[int, int]:
    """Remove the waiting messages ``match`` accepts: one pass reads the list,
    then each match is removed by id (LREM), so a message a worker took
    meanwhile is never touched; (removed, scanned)."""
    client = broker.client
    removed = scanned = 0
    for list_name in (queue, f"{queue}.DQ"):
        lkey, hkey = key(broker, list_name), key(broker, f"{list_name}.msgs")
        matches: list[bytes] = []
        start = 0
        while True:
            ids = client.lrange(lkey, start, start + SCAN - 1)
            if not ids:
                break
            start += len(ids)
            for rid, data in zip(ids, client.hmget(hkey, ids)):
                scanned += 1
                message = decode(data) if data is not None else None
                if message is not None and match(message):
                    matches.append(rid)
        for begin in range(0, len(matches), 500):
            chunk = matches[begin:begin + 500]
            with client.pipeline(transaction=False) as pipe:
                for rid in chunk:
                    pipe.lrem(lkey, 1, rid)
                gone = pipe.execute()
            taken = [rid for rid, n in zip(chunk, gone) if n]
            if taken:
                client.hdel(hkey, *taken)
            removed += len(taken)
    return removed, scanned


def remove_waiting(broker: Any, queue: str, message_id: str) -> bool:
    """Take one message out of its queue (or delay queue) if no worker has it yet."""
    for list_name in (queue, f"{queue}.DQ"):
        hit = find(broker, f"{list_name}.msgs", {message_id}).get(message_id)
        if hit is None:
            continue
        if broker.client.lrem(key(broker, list_name), 1, hit[0]):
            broker.client.hdel(key(broker, f"{list_name}.msgs"), hit[0])
            return True
    return False


def requeue_dead(broker: Any, queue: str, message_ids: list[str] | None) -> tuple[list[Any], list[str]]:
    """Put dead letters of ``queue`` (the given message ids, or all) back at
    the end of the queue with ``retries`` reset, keeping their ids.

    Each message leaves the XQ and enters the queue in one Lua script that
    first removes it from the XQ (ZREM): only the caller whose ZREM removed
    it enqueues it, so two requeues at once never run a message twice, and
    a crash between the two steps cannot lose one. Returns (requeued
    Messages, missing ids)."""
    wanted = None if message_ids is None else set(message_ids)
    found: list[tuple[bytes, Any]] = []
    for rid, data in scan_hash(broker, f"{queue}.XQ.msgs"):
        message = decode(data)
        if message is None or (wanted is not None and message.message_id not in wanted):
            continue
        found.append((rid, message))
    script = broker.client.register_script(_REQUEUE)
    keys = [key(broker, f"{queue}.XQ"), key(broker, f"{queue}.XQ.msgs"), key(broker, queue),
            key(broker, f"{queue}.msgs")]
    done: list[Any] = []
    for begin in range(0, len(found), 500):
        chunk = found[begin:begin + 500]
        fresh = {rid: _fresh(message, queue, rid) for rid, message in chunk}
        argv: list[Any] = []
        for rid, message in fresh.items():
            argv += [rid, message.encode()]
        moved = set(script(keys=keys, args=argv))
        done += [message for rid, message in fresh.items() if rid in moved]
    missing = sorted(wanted - {m.message_id for m in done}) if wanted is not None else []
    return done, missing


def _fresh(message: Any, queue: str, rid: bytes) -> Any:
    options = {k: v for k, v in message.options.items() if k not in ("eta", "traceback", "requeue_timestamp")}
    options["retries"] = 0
    options["redis_message_id"] = rid.decode() if isinstance(rid, bytes) else rid
    return dataclasses.replace(message, queue_name=queue, options=options)  # copy() would merge the old options
