"""What the agent reads and changes in a taskiq-redis broker, from its own threads.

taskiq's brokers are async and bound to the host's event loop; queue depths
(every few seconds) and purges must not borrow the host's connections, so
this module opens its own small synchronous Redis client with the same
address as the broker's pool. Supported: taskiq-redis ``ListQueueBroker``
(a Redis list per queue: depth is ``LLEN``, purge deletes or ``LREM``s),
``RedisStreamBroker`` (a stream per queue: depth is the consumer group's
lag, the entries not yet delivered). Other brokers: depth and purge are
refused with one line.
"""

from __future__ import annotations

from typing import Any

_KEEP = ("host", "port", "db", "username", "password", "socket_timeout", "socket_connect_timeout", "path",
         "client_name")
LIST, STREAM, PUBSUB = "list", "stream", "pubsub"


def kind(broker: Any) -> str | None:
    """``list``, ``stream``, ``pubsub`` or None (not a taskiq-redis broker)."""
    names = {c.__name__ for c in type(broker).__mro__}
    if "ListQueueBroker" in names:
        return LIST
    if "RedisStreamBroker" in names:
        return STREAM
    if "PubSubBroker" in names:
        return PUBSUB
    return None


def default_queue(broker: Any) -> str | None:
    name = getattr(broker, "queue_name", None)
    return name if isinstance(name, str) and name else None


def queue_of(broker: Any, labels: dict[str, Any] | None) -> str | None:
    """The queue a message goes to: its ``queue_name`` label, else the broker's queue."""
    if labels:
        name = labels.get("queue_name")
        if isinstance(name, str) and name:
            return name
    return default_queue(broker)


def sync_client(broker: Any) -> Any:
    """A synchronous redis-py client to the broker's Redis (its own connections)."""
    import redis

    pool = getattr(broker, "connection_pool", None)
    kwargs = dict(getattr(pool, "connection_kwargs", None) or {})
    if not kwargs:
        raise ValueError(f"{type(broker).__name__} has no Redis connection pool")
    options = {k: v for k, v in kwargs.items() if k in _KEEP and v is not None}
    options.update({k: v for k, v in kwargs.items() if k.startswith("ssl_") and v is not None})
    connection_class = getattr(pool, "connection_class", None)
    name = getattr(connection_class, "__name__", "")
    if "Unix" in name:
        options.pop("host", None)
        options.pop("port", None)
        options["unix_socket_path"] = options.pop("path", None)
    elif name == "SSLConnection":
        options["ssl"] = True
    options.setdefault("socket_timeout", 10)
    options.setdefault("socket_connect_timeout", 5)
    return redis.Redis(**options)


def depth(client: Any, broker: Any, queue: str) -> int | None:
    """Messages waiting in ``queue`` (None when the broker keeps none: pub/sub)."""
    k = kind(broker)
    if k == LIST:
        return int(client.llen(queue))
    if k == STREAM:
        group = getattr(broker, "consumer_group_name", "taskiq")
        try:
            groups = client.xinfo_groups(queue)
        except Exception as exc:  # noqa: BLE001 - no stream yet: nothing waits
            if "no such key" in str(exc).lower():
                return 0
            raise
        for g in groups:
            gname = g.get("name")
            gname = gname.decode() if isinstance(gname, bytes) else gname
            if gname == group:
                lag = g.get("lag")
                return int(lag) if lag is not None else int(client.xlen(queue))
        return int(client.xlen(queue))
    return None
