"""Observer mode: follow a Celery cluster's events from outside its workers.

``z4j agent celery -A proj`` (z4j_tui/cli_agent.py) runs :func:`main`. For
clusters whose workers cannot be changed: it consumes the broker's event
stream as Flower does (``app.events.Receiver``, ``task-*`` and ``worker-*``),
maps each event with the capture module's helpers and ships it through an
ordinary agent (engine ``celery``).

What it never does behind the operator's back:

* **Task events stay as the workers have them.** Workers send task events
  only with ``-E`` (or after an ``enable_events`` broadcast). By default the
  observer broadcasts nothing; when a worker's heartbeats show it ran tasks
  while no task event of it arrived, it logs one WARNING naming the workers
  and both ways to switch events on. ``--enable-events`` broadcasts
  ``app.control.enable_events()`` when it starts leading and every 5 s after
  (a restarted worker forgets it), and says so at start.
* **One consumer per broker.** Observers of one cluster share a lease, a
  Redis key (``SET NX PX``, renewed every second, released at a clean stop)
  in the broker's own Redis database, or in ``--lease-url`` for other
  brokers. The holder consumes; the others stand by (and say so), connected
  to the collector, and take over when it stops or its lease runs out. Two
  observers never consume at once, so no event is shipped twice.

Celery's events are not queued for absent consumers (on Redis they are
PUB/SUB messages; on AMQP they expire after ``event_queue_ttl``): what the
workers send while no observer consumes, during a handover, is not seen.

Observed tasks carry no sealed call (events hold only ``saferepr`` strings of
the arguments, cut at 1024 characters): args and kwargs are stored for
display, as strings, redacted like everything else, and a retry of such a
task is refused by the collector: retry needs the agent in the worker (or in
the producer). Cancel, purge and the worker controls work from here, since
they go through the broker.
"""

from __future__ import annotations

import ast
import logging
import os
import re
import signal
import socket
import sys
import threading
import time
import uuid
from collections import OrderedDict
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.celery import capture
from z4j_agents.config import AgentConfig, ConfigError
from z4j_agents.env_options import seconds
from z4j_agents.monitor import LogOnce

log = logging.getLogger("z4j.celery.observer")

TASK_KINDS = {
    "task-sent": ("sent", "PENDING"),
    "task-received": ("received", "RECEIVED"),
    "task-started": ("started", "STARTED"),
    "task-succeeded": ("succeeded", "SUCCESS"),
    "task-failed": ("failed", "FAILURE"),
    "task-retried": ("retried", "RETRY"),
    "task-revoked": ("revoked", "REVOKED"),
    "task-rejected": ("rejected", "REJECTED"),
}
"""Celery event type -> (our kind, Celery's state name). ``task-cancelled``
(a task put back on connection loss; it is received again) is not a state."""
WORKER_KINDS = {"worker-online": "online", "worker-heartbeat": "heartbeat", "worker-offline": "offline"}
_FINAL = frozenset({"succeeded", "failed", "retried", "revoked", "rejected"})
_WORKER_FACTS = ("pid", "sw_ident", "sw_sys", "freq", "active", "processed", "loadavg")

LEASE_TTL_S = 10.0
ENABLE_EVENTS_EVERY_S = 5.0
EVENTS_GRACE_S = 5.0
"""A worker whose processed count rose this long ago without one task event is reported."""
NO_WORKERS_S = 30.0
MAX_ATTEMPTS = 10_000
"""Tasks whose attempts are remembered (runtimes of failed and retried
attempts, retried events dated right); the least recently seen go first."""

_REPR = re.compile(r"([A-Za-z_][\w.]*)\((.*)\)", re.DOTALL)
_RENEW = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end return 0"
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


# ------------------------------------------------------------------ mapping


def _float(value: Any) -> float | None:
    try:
        return None if value is None or isinstance(value, bool) else float(value)
    except (TypeError, ValueError):
        return None


def _exception_text(exc_repr: Any, tb: Any) -> str | None:
    """``ValueError: text`` (the traceback's last line, as capture writes it) from
    Celery's ``ValueError('text')`` repr; the repr itself when they disagree."""
    if not exc_repr:
        return None
    text = str(exc_repr)
    name = text.split("(", 1)[0].strip()
    if tb and name:
        lines = [line.strip() for line in str(tb).strip().splitlines() if line.strip()]
        if lines:
            last = lines[-1]
            head = last.split(":", 1)[0]
            if head == name or head.endswith("." + name):
                return last
    match = _REPR.fullmatch(text)
    if match:  # ValueError('text') -> ValueError: text; anything else stays the repr
        inner = match.group(2).strip().rstrip(",")
        if not inner:
            return match.group(1)
        try:
            value = ast.literal_eval(inner)
        except Exception:  # noqa: BLE001 - not a literal: keep the repr
            return text
        if isinstance(value, str):
            return f"{match.group(1)}: {value}" if value else match.group(1)
    return text


def task_event(etype: str, event: dict[str, Any], started: float | None = None) -> p.TaskEvent | None:
    """One Celery ``task-*`` event as a TaskEvent (None for types that are no state).

    ``started``: when the task started, if known, for a failed or retried
    task's runtime (Celery sends a runtime with ``task-succeeded`` only).
    """
    spec = TASK_KINDS.get(etype)
    task_id = event.get("uuid")
    if spec is None or not task_id:
        return None
    kind, engine_state = spec
    ts = _float(event.get("timestamp"))
    host = capture._str(event.get("hostname"))
    fields: dict[str, Any] = {
        "name": capture._str(event.get("name")),
        "args": capture._str(event.get("args")),  # saferepr strings: for display only, never replay
        "kwargs": capture._str(event.get("kwargs")),
        "parent_id": capture._str(event.get("parent_id")),
        "root_id": capture._str(event.get("root_id")),
        "eta": capture._ts(event.get("eta")),
    }
    retries = event.get("retries")
    if isinstance(retries, int) and not isinstance(retries, bool):
        fields["retries"] = retries
    extra: dict[str, Any] = {}
    if kind == "sent":
        fields["queue"] = capture._str(event.get("queue"))
        for key in ("routing_key", "exchange"):
            if event.get(key):
                extra[key] = str(event[key])
        if host:
            extra["origin"] = host
    else:
        fields["worker"] = host
    if event.get("expires"):
        extra["expires"] = str(event["expires"])
    if kind == "succeeded":
        fields["result"] = capture._str(event.get("result"))
        fields["runtime"] = _float(event.get("runtime"))
    elif kind in ("failed", "retried"):
        tb = event.get("traceback")
        fields["exception"] = _exception_text(event.get("exception"), tb)
        fields["traceback"] = str(tb) if tb else None
        if started is not None and ts is not None and ts >= started:
            fields["runtime"] = ts - started
    elif kind == "revoked":
        extra["terminated"] = bool(event.get("terminated"))
        extra["expired"] = bool(event.get("expired"))
        if isinstance(event.get("signum"), int):
            extra["signum"] = event["signum"]
    elif kind == "rejected":
        extra["requeue"] = bool(event.get("requeue"))
    ev = capture._task_event(str(task_id), kind, engine_state, extra=extra or None, **fields)
    if ts is not None:
        ev.ts = ts
    return ev


def worker_facts(event: dict[str, Any]) -> dict[str, Any]:
    """What a ``worker-*`` event says about its worker, under capture's names."""
    info: dict[str, Any] = {k: event[k] for k in _WORKER_FACTS if event.get(k) is not None}
    if event.get("sw_ver"):
        info["version"] = event["sw_ver"]
    info["via"] = "observer"
    return info


# ------------------------------------------------------------------ lease


class Lease:
    """One Redis key, held by at most one observer: ``SET NX PX``, renewed and
    released only by its holder (compare-and-set in Lua)."""

    def __init__(self, client: Any, key: str, ttl_s: float, owner: str) -> None:
        self.client = client
        self.key = key
        self.ttl_ms = max(1000, int(ttl_s * 1000))
        self.token = f"{owner} {uuid.uuid4().hex[:12]}"

    def acquire(self) -> bool:
        return bool(self.client.set(self.key, self.token, nx=True, px=self.ttl_ms))

    def renew(self) -> bool:
        return bool(self.client.eval(_RENEW, 1, self.key, self.token, self.ttl_ms))

    def release(self) -> None:
        self.client.eval(_RELEASE, 1, self.key, self.token)

    def holder(self) -> str | None:
        value = self.client.get(self.key)
        if isinstance(value, bytes):
            value = value.decode(errors="replace")
        return value.rsplit(" ", 1)[0] if value else None


# ------------------------------------------------------------------ event pump


def _receiver_class() -> type:
    from celery.events.receiver import EventReceiver

    class Receiver(EventReceiver):
        connect_max_retries = 2

        pump: Pump | None = None

        def event_from_message(self, body: Any, localize: bool = True, *args: Any, **kwargs: Any) -> Any:
            # Event timestamps are epoch seconds already: no "localizing" by
            # the difference of the worker's and our UTC offsets.
            return super().event_from_message(body, False, *args, **kwargs)

        def on_consume_ready(self, *args: Any, **kwargs: Any) -> None:
            super().on_consume_ready(*args, **kwargs)
            if self.pump is not None:
                self.pump.consuming_since = time.monotonic()
                log.info("z4j observer: consuming events from queue %s", self.queue.name)

    return Receiver


class Pump:
    """The event consumer, on one thread, while this observer holds the lease."""

    def __init__(self, observer: Observer) -> None:
        self.observer = observer
        self._stop = threading.Event()
        self._receiver: Any = None
        self.consuming_since: float | None = None
        """Since when the consumer has been consuming without a break (None: it is not)."""
        self._thread = threading.Thread(target=self._run, name="z4j-observer-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        receiver = self._receiver
        if receiver is not None:
            receiver.should_stop = True
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout)

    def _run(self) -> None:
        obs = self.observer
        Receiver = _receiver_class()
        said: str | None = None
        backoff = 1.0
        while not self._stop.is_set():
            try:
                with obs.app.connection_for_read() as conn:
                    receiver = Receiver(conn, handlers={"*": obs.on_event}, node_id=obs.node_id, app=obs.app)
                    receiver.pump = self
                    self._receiver = receiver
                    if self._stop.is_set():
                        break
                    receiver.capture(limit=None, timeout=None, wakeup=True)
                backoff = 1.0
            except Exception as exc:  # noqa: BLE001 - the broker may be down: try again
                self.consuming_since = None
                message = f"{type(exc).__name__}: {exc}"
                if message != said:
                    log.warning("z4j observer: event consumer: %s; retrying", message)
                    said = message
                self._stop.wait(backoff)
                backoff = min(backoff * 2, 10.0)
        self._receiver = None
        self.consuming_since = None


# ------------------------------------------------------------------ observer


class _Seen:
    """What the observer knows of one worker (from its events)."""

    __slots__ = ("first_processed", "processed", "rose_at", "task_events", "last_seen", "freq", "forwarded",
                 "offline", "warned")

    def __init__(self) -> None:
        self.first_processed: int | None = None
        self.processed: int | None = None
        self.rose_at: float | None = None
        self.task_events = 0
        self.last_seen = time.monotonic()
        self.freq = 2.0
        self.forwarded = 0.0
        self.offline = False
        self.warned = False


class Observer:
    """Lease, event pump, queue depths and the checks, for one Celery app."""

    def __init__(self, app: Any, config: AgentConfig, *, enable_events: bool = False, lease_url: str | None = None,
                 lease_ttl_s: float = LEASE_TTL_S, heartbeat_s: float = 10.0, queue_depth_s: float = 5.0,
                 queues: tuple[str, ...] = (), redactor: Any = None, events_grace_s: float = EVENTS_GRACE_S,
                 no_workers_s: float = NO_WORKERS_S, enable_every_s: float = ENABLE_EVENTS_EVERY_S) -> None:
        from z4j_agents.celery.agent import CeleryAgent

        self.app = app
        self.agent = CeleryAgent(app, config, redactor=redactor, heartbeat_s=heartbeat_s,
                                 queue_depth_s=queue_depth_s, queues=queues)
        self.enable_events = enable_events
        self.lease_url = lease_url
        self.lease_ttl_s = lease_ttl_s
        self.heartbeat_s = heartbeat_s
        self.events_grace_s = events_grace_s
        self.no_workers_s = no_workers_s
        self.enable_every_s = enable_every_s
        self.exchange = str(app.conf.event_exchange or "celeryev")
        self.node_id = f"z4j-observer-{self.exchange}"
        """The event queue's name (celeryev.<node_id>): one per cluster, whichever observer consumes."""
        self.stopping = threading.Event()
        self.leading = False
        self.valid_until = 0.0
        """Monotonic time until which the lease is surely ours: events consumed
        later are dropped (a paused holder may have been replaced by then)."""
        self.lease: Lease | None = None
        self.pump: Pump | None = None
        self.monitor: Any = None
        self.where = ""
        self._conn: Any = None
        self._lock = threading.Lock()
        self._workers: dict[str, _Seen] = {}
        self._attempts: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._led_at = 0.0
        self._next_enable = 0.0
        self._once = LogOnce(log)
        self.task_events = 0
        self.worker_events = 0

    # -------------------------------------------------------- events (pump thread)

    def on_event(self, event: dict[str, Any]) -> None:
        """One event from the receiver; never raises (it would end the capture)."""
        try:
            if time.monotonic() > self.valid_until:
                return  # not surely the holder any more: the next one ships it
            etype = event.get("type") or ""
            if etype.startswith("task-"):
                self._task(etype, event)
            elif etype.startswith("worker-"):
                self._worker(etype, event)
        except Exception:  # noqa: BLE001
            log.exception("z4j observer: could not map a %s event", event.get("type"))

    def _task(self, etype: str, event: dict[str, Any]) -> None:
        task_id = event.get("uuid")
        kind = TASK_KINDS.get(etype, (None,))[0]
        if kind is None or not task_id:
            return
        ts = _float(event.get("timestamp"))
        started = next_received = None
        with self._lock:
            if kind in ("received", "started") or kind in _FINAL:
                started, next_received = self._attempt(task_id, kind, ts)
            host = event.get("hostname")
            if kind != "sent" and host:
                self._seen(host).task_events += 1
            self.task_events += 1
        ev = task_event(etype, event, started)
        if ev is None:
            return
        if kind == "retried" and next_received is not None and ev.ts >= next_received:
            # Celery sends task-retried once the attempt's result is back, after
            # the retry was published and maybe received: date it before that.
            ev.ts = next_received - 1e-6
            if started is not None and ev.ts >= started:
                ev.runtime = ev.ts - started
        self.agent.runtime.emit(ev)

    def _attempt(self, task_id: str, kind: str, ts: float | None) -> tuple[float | None, float | None]:
        """Track a task's attempts; for the end of one (retried, or final): when
        it started, and when the next attempt was received.

        Each retry ends one attempt, in order, so the n-th ``retried`` event
        ends attempt n,
        whatever order the events arrive in (a prefork worker may report
        ``retried`` after the next attempt has already run); a final event
        ends the last attempt."""
        seen = self._attempts.get(task_id)
        if seen is None:
            if kind not in ("received", "started"):
                return None, None
            seen = self._attempts[task_id] = {"received": [], "started": [], "retried": 0}
            if len(self._attempts) > MAX_ATTEMPTS:
                self._attempts.popitem(last=False)
        else:
            self._attempts.move_to_end(task_id)
        if kind in ("received", "started"):
            if ts is not None:
                seen[kind].append(ts)
                seen[kind].sort()
            return None, None
        starts = seen["started"]
        if kind != "retried":  # the final event ends the last attempt
            return (starts[-1] if starts else None), None
        n = seen["retried"]
        seen["retried"] = n + 1
        following = seen["received"][n + 1] if n + 1 < len(seen["received"]) else None
        return (starts[n] if n < len(starts) else None), following

    def _seen(self, host: str) -> _Seen:
        seen = self._workers.get(host)
        if seen is None:
            seen = self._workers[host] = _Seen()
        return seen

    def _worker(self, etype: str, event: dict[str, Any]) -> None:
        kind = WORKER_KINDS.get(etype)
        host = event.get("hostname")
        if kind is None or not host:
            return
        now = time.monotonic()
        with self._lock:
            self.worker_events += 1
            seen = self._seen(host)
            seen.last_seen = now
            freq = _float(event.get("freq"))
            if freq and freq > 0:
                seen.freq = freq
            processed = event.get("processed")
            if isinstance(processed, int):
                if seen.first_processed is None:
                    seen.first_processed = processed
                elif processed > seen.first_processed and seen.rose_at is None:
                    seen.rose_at = now
                seen.processed = processed
            if kind == "heartbeat" and not seen.offline and now - seen.forwarded < self.heartbeat_s:
                return  # workers beat every 2 s: forward one in heartbeat_s
            seen.forwarded = now
            seen.offline = kind == "offline"
        ts = _float(event.get("timestamp")) or time.time()
        self.agent.runtime.emit(p.WorkerEvent(id=p.new_id(), worker=str(host), engine=capture.ENGINE, kind=kind,
                                              ts=ts, info=worker_facts(event)))

    # -------------------------------------------------------- lease and checks (main thread)

    def _open_lease(self) -> Lease:
        owner = f"{self.agent.config.agent_name} ({socket.gethostname()} pid {os.getpid()})"
        if self.lease_url:
            import hashlib

            import redis

            client = redis.Redis.from_url(self.lease_url, socket_timeout=5, socket_connect_timeout=5)
            broker = self.app.connection_for_write().as_uri()
            digest = hashlib.sha256(f"{broker}|{self.exchange}".encode()).hexdigest()[:16]
            self.where = f"{broker} (lease in {_mask(self.lease_url)})"
            return Lease(client, f"z4j:observer:{self.exchange}:{digest}", self.lease_ttl_s, owner)
        conn = self.app.connection_for_write()
        driver = conn.transport.driver_type
        if driver != "redis":
            conn.release()
            raise ConfigError(f"the observers' lease lives in Redis and this broker is {driver}: pass "
                              f"--lease-url redis://… (one Redis all observers of this cluster share)")
        # The broker's own Redis database: the key is per broker however its URL is spelled.
        self._conn = conn
        self.where = conn.as_uri()
        client = conn.default_channel.client
        return Lease(client, f"z4j:observer:lease:{self.exchange}", self.lease_ttl_s, owner)

    def run(self) -> int:
        """Until :meth:`stop` (SIGTERM/SIGINT): 0 after a clean stop, 2 for a bad setup."""
        from z4j_agents.celery.agent import register_actions

        self._say_events_mode()
        register_actions(self.agent, self.app)
        self.agent.runtime.start()
        tick = max(0.2, min(1.0, self.lease_ttl_s / 5))
        last_renewed = 0.0
        try:
            while not self.stopping.is_set():
                try:
                    if self.lease is None:
                        self.lease = self._open_lease()
                    lease = self.lease
                    asked = time.monotonic()
                    if not self.leading:
                        if lease.acquire():
                            last_renewed = asked
                            self.valid_until = asked + self.lease_ttl_s * 0.9
                            self._lead()
                        else:
                            self._once("standby", logging.INFO,
                                       "z4j observer: standby: %s consumes the events of %s; this observer takes "
                                       "over when it stops", lease.holder() or "another observer", self.where)
                    elif lease.renew():
                        last_renewed = asked
                        self.valid_until = asked + self.lease_ttl_s * 0.9
                        self._leader_round()
                    else:
                        self._step_down("lost the lease to %s" % (lease.holder() or "another observer"))
                except ConfigError:
                    raise
                except Exception as exc:  # noqa: BLE001 - Redis or the broker is down: keep trying
                    self._once(f"err:{type(exc).__name__}:{exc}", logging.WARNING,
                               "z4j observer: %s: %s; retrying", type(exc).__name__, exc)
                    if self.leading and time.monotonic() - last_renewed > self.lease_ttl_s * 0.6:
                        self._step_down("could not renew the lease in time")
                self.stopping.wait(tick)
        except ConfigError as exc:
            log.error("z4j observer: %s", exc)
            self._shutdown()
            return 2
        self._shutdown()
        return 0

    def stop(self) -> None:
        self.stopping.set()

    def _say_events_mode(self) -> None:
        if self.enable_events:
            log.warning("z4j observer: --enable-events: task events are switched on in every worker of this "
                        "cluster (app.control.enable_events() now and every %g s, since a restarted worker forgets "
                        "it); `celery control disable_events` switches them off", self.enable_every_s)
        else:
            log.info("z4j observer: task events are left as the workers have them (start workers with -E, or run "
                     "this observer with --enable-events)")

    def _lead(self) -> None:
        from z4j_agents.celery.agent import Monitor

        self.leading = True
        self._led_at = time.monotonic()
        self._next_enable = 0.0
        with self._lock:
            self._workers.clear()
            self._attempts.clear()
            self.task_events = self.worker_events = 0
        self._once.forget("noworkers")
        log.info("z4j observer: leading: this observer holds the lease and consumes the events of %s", self.where)
        self.pump = Pump(self)
        self.pump.start()
        if self.agent.queue_depth_s > 0:
            self.monitor = Monitor(self.agent)
            self.monitor.start()
        self._once.forget("standby")

    def _step_down(self, reason: str) -> None:
        log.warning("z4j observer: stopped consuming: %s", reason)
        self.leading = False
        self.valid_until = 0.0
        self._stop_work()

    def _stop_work(self) -> None:
        pump, self.pump = self.pump, None
        if pump is not None:
            pump.stop()
        monitor, self.monitor = self.monitor, None
        if monitor is not None:
            monitor.stop()

    def _leader_round(self) -> None:
        now = time.monotonic()
        if self.enable_events and now >= self._next_enable:
            self._next_enable = now + self.enable_every_s
            try:
                self.app.control.enable_events()
            except Exception as exc:  # noqa: BLE001
                self._once(f"enable:{type(exc).__name__}", logging.WARNING,
                           "z4j observer: could not broadcast enable_events: %s: %s", type(exc).__name__, exc)
        self._check_workers(now)

    def _check_workers(self, now: float) -> None:
        silent: list[str] = []
        lost: list[tuple[str, float]] = []
        since = self.pump.consuming_since if self.pump is not None else None
        with self._lock:
            any_worker = bool(self._workers)
            for host, seen in self._workers.items():
                if (not seen.warned and not seen.task_events and seen.rose_at is not None
                        and now - seen.rose_at >= self.events_grace_s):
                    seen.warned = True
                    silent.append(host)
                # Celery's rule (alive until 2 x freq after the last heartbeat), and
                # only while our own consumer has been up all along.
                window = max(2 * seen.freq, 2.0) + 2.0
                if (not seen.offline and now - seen.last_seen > window and since is not None
                        and now - since > window):
                    seen.offline = True
                    lost.append((host, now - seen.last_seen))
        if silent:
            names = ", ".join(sorted(silent))
            if self.enable_events:
                log.warning("z4j observer: workers %s run tasks but send no task events, although this observer "
                            "broadcasts enable_events: is worker_enable_remote_control off in them? Start them "
                            "with -E (--task-events) instead", names)
            else:
                log.warning("z4j observer: workers %s run tasks but send no task events, so z4j sees none of "
                            "their tasks: start them with -E (--task-events, or worker_send_task_events = True), "
                            "or run `z4j agent celery --enable-events` to switch events on by broadcast", names)
        for host, quiet in lost:
            self.agent.runtime.emit(p.WorkerEvent(
                id=p.new_id(), worker=host, engine=capture.ENGINE, kind="offline", ts=time.time(),
                info={"via": "observer", "reason": f"no heartbeat for {quiet:.0f} s"}))
        if not any_worker and now - self._led_at >= self.no_workers_s:
            self._once("noworkers", logging.WARNING,
                       "z4j observer: no worker event on %s in %g s: do the workers use this broker and event "
                       "exchange (%s)? Workers started with --without-heartbeat announce nothing",
                       self.where, self.no_workers_s, self.exchange)

    def _shutdown(self) -> None:
        was_leading = self.leading
        self.leading = False
        self._stop_work()
        self.valid_until = 0.0
        lease = self.lease
        if lease is not None and was_leading:
            try:
                lease.release()
            except Exception as exc:  # noqa: BLE001
                log.warning("z4j observer: could not release the lease: %s: %s", type(exc).__name__, exc)
        flushed = self.agent.runtime.stop(5.0)
        if not flushed and self.agent.runtime.pending:
            log.warning("z4j observer: %d event(s) not delivered at shutdown", self.agent.runtime.pending)
        if self._conn is not None:
            try:
                self._conn.release()
            except Exception:  # noqa: BLE001
                pass
        log.info("z4j observer: stopped%s", " (lease released)" if was_leading else "")


def _mask(url: str) -> str:
    from kombu.utils.url import maybe_sanitize_url

    return maybe_sanitize_url(url)


# ------------------------------------------------------------------ entry point


def load_app(path: str, broker: str | None = None) -> Any:
    """The Celery app ``path`` names, found as ``celery -A`` finds it (the
    current directory first on sys.path); ConfigError with the reason."""
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)
    try:
        from celery import Celery
        from celery.app.utils import find_app
    except ImportError as exc:
        raise ConfigError(f"observer mode needs Celery ({exc.name} is missing): pip install 'z4j[celery]'") from None
    try:
        app = find_app(path)
    except Exception as exc:  # noqa: BLE001 - the user's module may raise anything on import
        raise ConfigError(f"cannot load the Celery app {path!r}: {type(exc).__name__}: {exc}") from None
    if not isinstance(app, Celery):
        raise ConfigError(f"{path!r} is a {type(app).__name__}, not a Celery app")
    if broker:
        app.conf.broker_url = broker
    return app


def _env_seconds(name: str, default: float) -> float:
    value = seconds(os.environ, name, above_zero=True)
    return default if value is None else value


def build(app_path: str, *, enable_events: bool = False, broker: str | None = None, lease_url: str | None = None,
          queues: tuple[str, ...] = ()) -> Observer:
    """An observer from the command line's options and the environment; ConfigError when something is wrong."""
    from z4j_agents.celery.agent import _options_from_env

    overrides: dict[str, Any] = {}
    if not os.environ.get("Z4J_AGENT_NAME"):
        overrides["agent_name"] = f"observer@{socket.gethostname()}"
    config = AgentConfig.from_env(**overrides)
    options = _options_from_env()
    queues = tuple(dict.fromkeys((*options.pop("queues", ()), *queues)))
    app = load_app(app_path, broker)
    return Observer(app, config, enable_events=enable_events,
                    lease_url=lease_url or os.environ.get("Z4J_OBSERVER_LEASE_URL") or None,
                    lease_ttl_s=_env_seconds("Z4J_OBSERVER_LEASE_TTL_S", LEASE_TTL_S),
                    events_grace_s=_env_seconds("Z4J_OBSERVER_EVENTS_GRACE_S", EVENTS_GRACE_S),
                    no_workers_s=_env_seconds("Z4J_OBSERVER_NO_WORKERS_S", NO_WORKERS_S),
                    queues=queues, **options)


def main(app_path: str, *, enable_events: bool = False, broker: str | None = None, lease_url: str | None = None,
         queues: tuple[str, ...] = (), loglevel: str = "INFO") -> int:
    """Run an observer in this process until SIGTERM or SIGINT; the exit code."""
    level = logging.getLevelName(loglevel.upper())
    if not isinstance(level, int):
        sys.stderr.write(f"z4j agent celery: unknown log level {loglevel!r}\n")
        return 2
    logging.basicConfig(level=level, stream=sys.stderr,
                        format="[%(asctime)s: %(levelname)s/%(name)s] %(message)s")
    try:
        observer = build(app_path, enable_events=enable_events, broker=broker, lease_url=lease_url, queues=queues)
    except ConfigError as exc:
        sys.stderr.write(f"z4j agent celery: {exc}\n")
        return 2

    def on_signal(signum: int, _frame: Any) -> None:
        log.info("z4j observer: %s: stopping", signal.Signals(signum).name)
        observer.stop()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    log.info("z4j observer: agent %s, project %s, collector %s", observer.agent.config.agent_name,
             observer.agent.config.project, observer.agent.config.brain_url)
    return observer.run()
