"""Forked children hand their events to the parent's agent.

Under a forking pool (Celery prefork, RQ's work horse per job), task hooks
fire in child processes. A child must not open its own connection to the
collector (a pool of 16 would be 16 sessions, re-opened at every recycle; a
horse per job would be a connection per job), so the parent listens on a Unix-domain stream socket created before the pool forks,
and each child:

* queues events in memory (constant time, bounded: what does not fit is
  counted as dropped and the count travels with the next frame to the parent,
  which adds it to the agent's ``dropped``), and
* writes them from its own daemon thread, started on the child's first
  event, over its own connection to that socket (frames: 4-byte length +
  msgpack of ``[dropped_since_last_frame, [event, ...]]``). The writer is
  not woken per event: the first event after it drained the queue wakes
  it, it lingers ``LINGER_S`` (less when ``WAKE_AT`` events wait, or on
  ``flush``) and writes all that waits in one frame, so a burst of events
  costs the task's thread one lock hand-off, and the parent one read.

The task never waits for the relay and never sees it fail. The parent reads
all children's connections on one thread and emits into the one agent.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import struct
import tempfile
import threading
import time
from collections import deque
from typing import Any, Callable

import msgspec

from z4j_agents import protocol as p

log = logging.getLogger("z4j.relay")

_LEN = struct.Struct(">I")
MAX_FRAME = 8 * 1024 * 1024
"""A larger event loses its payload (args, kwargs, result, replay) in the child."""

_frame_decoder = msgspec.msgpack.Decoder(tuple[int, list[p.Event]])
LINGER_S = 0.05
"""How long a child's events may wait for the next write."""
WAKE_AT = 500
"""A child's writer is woken at once when this many events wait."""


def _enc_hook(obj: Any) -> Any:
    # Arguments and results may be any object: the parent redacts what it
    # gets, and redaction turns unknown objects into their repr anyway.
    try:
        return repr(obj)
    except Exception:  # noqa: BLE001
        return f"<unrepresentable {type(obj).__name__}>"


_frame_encoder = msgspec.msgpack.Encoder(enc_hook=_enc_hook)


def _abstract_ok() -> bool:
    return hasattr(socket, "AF_UNIX") and os.uname().sysname == "Linux"


class RelayServer:
    """The parent's end: accepts children's connections and emits their events."""

    def __init__(self, emit: Callable[[p.Event], None], add_dropped: Callable[[int], None]) -> None:
        self._emit = emit
        self._add_dropped = add_dropped
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._path: str | None = None
        if _abstract_ok():
            self.address: str | bytes = f"\0z4j-relay-{os.getpid()}-{os.urandom(6).hex()}"
        else:  # pragma: no cover - non-Linux
            self._dir = tempfile.mkdtemp(prefix="z4j-relay-")
            self._path = self.address = os.path.join(self._dir, "s")
        self._sock.bind(self.address)
        self._sock.listen(128)
        self._sock.setblocking(False)
        self._owner = os.getpid()
        self._sel = selectors.DefaultSelector()
        self._sel.register(self._sock, selectors.EVENT_READ, None)
        self._buffers: dict[socket.socket, bytearray] = {}
        self._stopping = False
        self.frames = 0
        self._thread = threading.Thread(target=self._run, name="z4j.relay", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping:
            try:
                ready = self._sel.select(timeout=0.5)
            except Exception:  # noqa: BLE001
                log.exception("z4j relay: select failed")
                time.sleep(0.5)
                continue
            for key, _ in ready:
                try:
                    if key.fileobj is self._sock:
                        self._accept()
                    else:
                        self._read(key.fileobj)  # type: ignore[arg-type]
                except Exception:  # noqa: BLE001 - one bad child must not stop the relay
                    log.exception("z4j relay: a child's connection failed")
                    self._drop(key.fileobj)  # type: ignore[arg-type]

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            conn.setblocking(False)
            self._buffers[conn] = bytearray()
            self._sel.register(conn, selectors.EVENT_READ, None)

    def _drop(self, conn: socket.socket) -> None:
        if conn is self._sock:
            return
        self._buffers.pop(conn, None)
        try:
            self._sel.unregister(conn)
        except Exception:  # noqa: BLE001
            pass
        conn.close()

    def _read(self, conn: socket.socket) -> None:
        try:
            data = conn.recv(1 << 18)
        except (BlockingIOError, InterruptedError):
            return
        if not data:
            self._drop(conn)
            return
        buf = self._buffers[conn]
        buf += data
        pos = 0
        while len(buf) - pos >= _LEN.size:
            (size,) = _LEN.unpack_from(buf, pos)
            if size > MAX_FRAME:
                log.error("z4j relay: frame of %d bytes from a child; closing its connection", size)
                self._drop(conn)
                return
            end = pos + _LEN.size + size
            if len(buf) < end:
                break
            self._deliver(bytes(buf[pos + _LEN.size:end]))
            pos = end
        if pos:
            del buf[:pos]

    def _deliver(self, frame: bytes) -> None:
        try:
            dropped, events = _frame_decoder.decode(frame)
        except Exception as exc:  # noqa: BLE001
            log.warning("z4j relay: unreadable frame from a child: %s", exc)
            self._add_dropped(1)
            return
        self.frames += 1
        if dropped:
            self._add_dropped(dropped)
        for event in events:
            self._emit(event)

    def close(self) -> None:
        if os.getpid() != self._owner:
            return
        self._stopping = True
        self._thread.join(timeout=2.0)
        for conn in list(self._buffers):
            self._drop(conn)
        try:
            self._sel.close()
            self._sock.close()
        except Exception:  # noqa: BLE001
            pass
        if self._path:
            try:
                os.unlink(self._path)
                os.rmdir(os.path.dirname(self._path))
            except OSError:
                pass


class RelayClient:
    """A child's end: ``send`` queues; a daemon thread writes to the parent."""

    def __init__(self, address: str | bytes, buffer_max: int = 10_000) -> None:
        self.address = address
        self.buffer_max = buffer_max
        self._queue: deque[p.Event] = deque()
        self._cond = threading.Condition(threading.Lock())
        self._thread: threading.Thread | None = None
        self._sock: socket.socket | None = None
        self._pending_dropped = 0
        self.dropped = 0
        self.sent = 0
        self._busy = False

    def send(self, event: p.Event) -> None:
        """Constant time; never blocks on the parent; never raises."""
        try:
            if len(self._queue) >= self.buffer_max:
                self._pending_dropped += 1
                self.dropped += 1
                return
            self._queue.append(event)
            if self._thread is None:
                self._start()
            elif len(self._queue) in (1, WAKE_AT):
                # The first event after the writer drained the queue wakes it
                # (it then lingers for the rest of the burst); a full queue
                # ends the linger.
                with self._cond:
                    self._cond.notify()
        except Exception:  # noqa: BLE001
            log.exception("z4j relay: could not queue an event")

    def _start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="z4j-relay-child", daemon=True)
        self._thread.start()

    def flush(self, timeout: float = 2.0) -> bool:
        """Wait (bounded) until everything queued was written; for the child's exit.
        The writer wakes it the moment the queue is drained (an RQ work horse
        flushes at the end of every job, so a polling delay would cost every job)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            self._cond.notify_all()
            while self._queue or self._busy:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
        return True

    def _connect(self) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(5.0)
        sock.connect(self.address)
        return sock

    def _run(self) -> None:
        backoff = 0.05
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait(0.5)
                if len(self._queue) < WAKE_AT:
                    # Linger: what arrives meanwhile leaves in the same frame.
                    self._cond.wait(LINGER_S)
            if self._sock is None:
                try:
                    self._sock = self._connect()
                    backoff = 0.05
                except OSError as exc:
                    # The parent is gone or not listening: keep the bound buffer,
                    # retry with backoff; overflow is counted by send().
                    log.debug("z4j relay: cannot reach the parent: %s", exc)
                    time.sleep(backoff)
                    backoff = min(backoff * 2, 2.0)
                    continue
            self._busy = True
            batch: list[p.Event] = []
            try:
                while self._queue:
                    queue = self._queue
                    batch = [queue.popleft() for _ in range(min(len(queue), WAKE_AT))]
                    self._write(batch)
                    batch = []
            except OSError as exc:
                log.debug("z4j relay: connection to the parent lost: %s", exc)
                try:
                    self._sock.close()
                finally:
                    self._sock = None
                self.dropped += len(batch)
                self._pending_dropped += len(batch)
            except Exception:  # noqa: BLE001
                log.exception("z4j relay: writing events failed")
                self.dropped += len(batch)
                self._pending_dropped += len(batch)
            finally:
                with self._cond:
                    self._busy = False
                    self._cond.notify_all()  # a flush may be waiting

    def _write(self, events: list[p.Event]) -> None:
        dropped, self._pending_dropped = self._pending_dropped, 0
        body = _frame_encoder.encode((dropped, events))
        if len(body) > MAX_FRAME:
            if len(events) > 1:  # one frame each, so only a too large event loses its payload
                self._pending_dropped += dropped
                for event in events:
                    self._write([event])
                return
            event = events[0]
            if type(event) is p.TaskEvent:
                size = len(body)
                event.args = event.kwargs = event.result = f"[too large for the relay: {size} bytes]"
                event.replay = None
                body = _frame_encoder.encode((dropped, events))
        self._sock.sendall(_LEN.pack(len(body)) + body)  # type: ignore[union-attr]
        self.sent += len(events)
