"""The agent runtime: buffer, batches, transport, acks, commands.

It is a guest in someone else's worker. ``emit`` is constant-time and never
blocks or raises; everything else (redaction, encoding, signing, network) runs
on one daemon thread with its own asyncio loop. The buffer is bounded: what
does not fit is counted and reported to the collector with every batch.

Delivery is at-least-once: a batch stays in ``_unacked`` until the collector
acks it (which it does only after commit) and is resent, with the same batch
id and events, after a reconnect.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import threading
import time
import weakref
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from z4j_agents import protocol as p
from z4j_agents.config import AgentConfig
from z4j_agents.redaction import Redactor, default_redactor, redact_event, redact_info

log = logging.getLogger("z4j.agent")

CommandHandler = Callable[[dict[str, Any]], Any]
_EVENT_TYPES = (p.TaskEvent, p.WorkerEvent, p.QueueEvent)


class CommandError(Exception):
    """Raised by a command handler to refuse with a clear, user-facing reason."""


def installed_version(dist: str = "z4j") -> str:
    """The installed distribution's version ("0" when it cannot be read): what the agent reports."""
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001
        return "0"


class AgentRuntime:
    def __init__(
        self,
        config: AgentConfig,
        *,
        engines: tuple[str, ...] = (),
        version: str = "",
        redactor: Redactor | None = None,
    ) -> None:
        self.config = config
        self.engines = list(engines)
        self.version = version
        self.redactor = redactor or default_redactor()
        self._queue: deque[p.Event] = deque()
        self._handlers: dict[str, CommandHandler] = {}
        self._unacked: OrderedDict[str, tuple[bytes, int]] = OrderedDict()
        self._in_hand = 0
        """Events taken off the queue for the batch being built, not yet in
        ``_unacked``: counted, so that ``flush`` always finds them somewhere."""
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._stopping = threading.Event()
        self._flush_until = 0.0
        """Until this time.monotonic(), a partial batch goes at once (``flush``)."""
        self._restart_in_child = False
        self.connected = threading.Event()
        self.dropped = 0
        self.rejected = 0
        self.acked_events = 0
        self.sent_batches = 0
        self.last_error: str | None = None
        # A weak reference: the interpreter keeps fork hooks forever, a
        # discarded runtime must not be kept alive by one.
        hook = weakref.WeakMethod(self._after_fork_in_child)
        os.register_at_fork(after_in_child=lambda: (method := hook()) is not None and method())

    # ------------------------------------------------------------ host side

    def emit(self, event: p.Event) -> None:
        """Queue one event. Constant time; never blocks; never raises."""
        try:
            if type(event) not in _EVENT_TYPES:
                raise TypeError(f"not an event: {type(event).__name__}")
            queue = self._queue
            if len(queue) >= self.config.buffer_max:
                self.dropped += 1
                return
            queue.append(event)
            if self._restart_in_child:
                self._restart_in_child = False
                self.start()
            elif len(queue) == self.config.batch_size:
                self._kick()
        except Exception:  # noqa: BLE001 - the host task must never see us fail
            log.exception("z4j agent: could not queue an event")

    def on_command(self, action: str, handler: CommandHandler) -> None:
        """Register what to do when the collector sends ``action``."""
        self._handlers[action] = handler

    def start(self) -> None:
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stopping.clear()
            self._thread = threading.Thread(target=self._thread_main, name="z4j-agent", daemon=True)
            self._thread.start()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is acked; True if it was."""
        deadline = time.monotonic() + timeout
        self._flush_until = deadline  # the sender sends partial batches until then
        self._kick()
        while time.monotonic() < deadline:
            if self._drained():
                return True
            time.sleep(0.01)
        return self._drained()

    def _drained(self) -> bool:
        # In the order the sender moves events: queue, then the batch in
        # hand, then unacked (each is filled before the one before it lets go).
        return not self._queue and not self._in_hand and not self._unacked

    def stop(self, timeout: float = 5.0) -> bool:
        """Flush for up to ``timeout`` seconds, then stop the thread."""
        flushed = self.flush(timeout) if self._thread and self._thread.is_alive() else False
        self._stopping.set()
        self._kick()
        if self._thread is not None:
            self._thread.join(timeout=2.0)
        return flushed

    @property
    def pending(self) -> int:
        return len(self._queue) + self._in_hand + sum(n for _, n in self._unacked.values())

    def _kick(self) -> None:
        loop, wake = self._loop, self._wake
        if loop is not None and wake is not None and not loop.is_closed():
            try:
                loop.call_soon_threadsafe(wake.set)
            except RuntimeError:
                pass

    def _after_fork_in_child(self) -> None:
        # The thread did not survive the fork. The parent still owns what was
        # buffered, so the child starts empty and reconnects on first use.
        was_running = self._thread is not None
        self._queue = deque()
        self._unacked = OrderedDict()
        self._in_hand = 0
        self._lock = threading.Lock()
        self._thread = None
        self._loop = None
        self._wake = None
        self.connected = threading.Event()
        self.dropped = self.rejected = self.acked_events = self.sent_batches = 0  # the parent's, not ours
        self._restart_in_child = was_running

    # ------------------------------------------------------------ agent thread

    def _thread_main(self) -> None:
        try:
            asyncio.run(self._main())
        except Exception:  # noqa: BLE001
            log.exception("z4j agent: runtime thread died")

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._wake = asyncio.Event()
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="z4j-command")
        backoff = self.config.backoff_initial
        while not self._stopping.is_set():
            try:
                await self._connect_once()
                backoff = self.config.backoff_initial
            except Exception as exc:  # noqa: BLE001 - every failure means: retry later
                self.connected.clear()
                message = f"{type(exc).__name__}: {exc}"
                if message != self.last_error:
                    log.warning("z4j agent: connection to %s failed: %s", self.config.brain_url, message)
                self.last_error = message
            if self._stopping.is_set():
                break
            # Full jitter keeps a fleet of agents from reconnecting in step.
            delay = random.uniform(backoff / 2, backoff)
            backoff = min(backoff * 2, self.config.backoff_max)
            try:
                await asyncio.wait_for(self._wait_stopping(), timeout=delay)
            except TimeoutError:
                pass
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def _wait_stopping(self) -> None:
        while not self._stopping.is_set():
            await self._wake.wait()
            self._wake.clear()

    async def _connect_once(self) -> None:
        from websockets.asyncio.client import connect

        headers = {"Authorization": f"Bearer {self.config.token}"}
        async with connect(
            self.config.brain_url,
            additional_headers=headers,
            max_size=p.MAX_FRAME_BYTES,
            open_timeout=self.config.connect_timeout,
            compression=None,
            ping_interval=20,
        ) as ws:
            session = await self._handshake(ws)
            self.connected.set()
            self.last_error = None
            log.info("z4j agent: connected to %s as %s", self.config.brain_url, self.config.agent_name)
            try:
                await session.run()
            finally:
                self.connected.clear()

    async def _handshake(self, ws: Any) -> _Session:
        key = p.frame_key(self.config.hmac_secret)
        client_nonce = os.urandom(16)
        hello = p.Hello(
            client_nonce=client_nonce,
            agent_name=self.config.agent_name,
            project=self.config.project,
            version=self.version,
            hostname=_hostname(),
            pid=os.getpid(),
            engines=self.engines,
            capabilities=sorted(self._handlers),
        )
        await ws.send(p.Signer(key).seal(hello))
        raw = await asyncio.wait_for(ws.recv(), timeout=self.config.connect_timeout)
        error = p.peek_error(raw)
        if error is not None:
            raise ConnectionRefusedError(f"collector refused the agent: {error.code}: {error.message}")
        welcome = p.Verifier(key).open(raw)
        if not isinstance(welcome, p.Welcome):
            raise p.ProtocolError("unexpected", f"expected welcome, got {type(welcome).__name__}")
        skey = p.session_key(key, client_nonce, welcome.server_nonce)
        return _Session(self, ws, p.Signer(skey), p.Verifier(skey), welcome)

    def _prepare(self, event: p.Event) -> p.Event:
        """Redact an event in place (on the agent thread, not the host's)."""
        if type(event) is p.WorkerEvent:
            try:
                redact_info(self.redactor, event)
            except Exception:  # noqa: BLE001
                event.info = None
            return event
        if type(event) is not p.TaskEvent or event.redacted:
            return event
        try:
            redact_event(self.redactor, event)
        except Exception:  # noqa: BLE001 - drop the payload, keep the event
            log.exception("z4j agent: redaction failed; payload withheld")
            event.args = event.kwargs = event.result = "[unavailable]"
            event.traceback = None
            event.redacted = True
        return event

    def _next_batch(self) -> bytes | None:
        """Take the next batch off the queue, encode it and put it in
        ``_unacked``; its frame. Until it is there, its events are counted in
        ``_in_hand``."""
        queue = self._queue
        if not queue:
            return None
        take = min(len(queue), self.config.batch_size)
        self._in_hand = take  # before the first event leaves the queue
        try:
            batch_id, body, count = self._build_batch([self._prepare(queue.popleft()) for _ in range(take)])
            self._unacked[batch_id] = (body, count)
        finally:
            self._in_hand = 0  # in ``_unacked`` now, or lost with the error
        return body

    def _build_batch(self, events: list[p.Event]) -> tuple[str, bytes, int]:
        batch = p.EventBatch(batch_id=p.new_id(), events=events, dropped=self.dropped)
        try:
            body = p.encode_frame(batch)
        except Exception:  # noqa: BLE001 - one unencodable event must not sink the batch
            good = []
            for ev in events:
                try:
                    p.encode_frame(ev)
                    good.append(ev)
                except Exception:  # noqa: BLE001
                    self.dropped += 1
                    log.warning("z4j agent: dropped an event that cannot be encoded")
            batch = p.EventBatch(batch_id=batch.batch_id, events=good, dropped=self.dropped)
            body = p.encode_frame(batch)
        return batch.batch_id, body, len(batch.events)


class _Session:
    """One live connection: sender, receiver and heartbeat."""

    def __init__(self, rt: AgentRuntime, ws: Any, signer: p.Signer, verifier: p.Verifier, welcome: p.Welcome) -> None:
        self.rt = rt
        self.ws = ws
        self.signer = signer
        self.verifier = verifier
        self.welcome = welcome
        self.send_lock = asyncio.Lock()

    async def send(self, frame: p.Frame | None = None, body: bytes | None = None) -> None:
        async with self.send_lock:
            data = self.signer.seal(frame) if body is None else self.signer.seal_body(body)
            await self.ws.send(data)

    async def run(self) -> None:
        tasks = [
            asyncio.create_task(self.sender()),
            asyncio.create_task(self.receiver()),
            asyncio.create_task(self.heartbeat()),
        ]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def sender(self) -> None:
        rt = self.rt
        # Whatever was sent but not acked before the reconnect goes first,
        # with its original batch id, so the collector can drop duplicates.
        for body, _ in list(rt._unacked.values()):
            await self.send(body=body)
        config, queue = rt.config, rt._queue
        # A batch goes when it is full, or when ``flush_interval`` has passed
        # since the last one went (so an event waits at most that long), or
        # when ``flush`` asks. Never on an ack alone: sending what
        # had gathered at each ack made batches of a few events, one frame,
        # one signature and one database commit each, all at the round trip's
        # pace (the worker paid for it in CPU and GIL hand-offs).
        last_sent = 0.0
        while not rt._stopping.is_set():
            while len(rt._unacked) < config.max_inflight and queue:
                now = time.monotonic()
                if (len(queue) < config.batch_size and now - last_sent < config.flush_interval
                        and now >= rt._flush_until):
                    break
                body = rt._next_batch()
                if body is None:
                    break
                await self.send(body=body)
                rt.sent_batches += 1
                last_sent = time.monotonic()
            wait = config.flush_interval
            if queue and len(rt._unacked) < config.max_inflight:
                wait = max(0.0, last_sent + config.flush_interval - time.monotonic())
            try:
                await asyncio.wait_for(rt._wake.wait(), timeout=wait)
            except TimeoutError:
                pass
            rt._wake.clear()

    async def receiver(self) -> None:
        rt = self.rt
        async for raw in self.ws:
            error = p.peek_error(raw)
            if error is not None:
                raise ConnectionAbortedError(f"collector closed the session: {error.code}: {error.message}")
            frame = self.verifier.open(raw)
            if isinstance(frame, p.BatchAck):
                entry = rt._unacked.pop(frame.batch_id, None)
                if entry is not None:
                    rt.acked_events += entry[1]
                if frame.rejected:
                    rt.rejected += frame.rejected
                    log.warning("z4j agent: collector rejected %d event(s): %s", frame.rejected, frame.reason)
                rt._wake.set()
            elif isinstance(frame, p.Command):
                asyncio.create_task(self.run_command(frame))

    async def heartbeat(self) -> None:
        rt = self.rt
        while True:
            await asyncio.sleep(self.welcome.heartbeat_s)
            await self.send(p.Heartbeat(buffered=rt.pending, dropped=rt.dropped, sent=rt.acked_events))

    async def run_command(self, cmd: p.Command) -> None:
        handler = self.rt._handlers.get(cmd.action)
        if handler is None:
            result = p.CommandResult(command_id=cmd.command_id, ok=False, error=f"this agent cannot do {cmd.action!r}")
        else:
            loop = asyncio.get_running_loop()
            try:
                value = await loop.run_in_executor(self.rt._executor, handler, cmd.args)
                result = p.CommandResult(command_id=cmd.command_id, ok=True, result=value)
            except CommandError as exc:
                result = p.CommandResult(command_id=cmd.command_id, ok=False, error=str(exc))
            except Exception as exc:  # noqa: BLE001 - report, never crash the worker
                log.exception("z4j agent: command %s failed", cmd.action)
                result = p.CommandResult(command_id=cmd.command_id, ok=False, error=f"{type(exc).__name__}: {exc}")
        try:
            await self.send(result)
        except Exception:  # noqa: BLE001 - the connection is gone; the collector times it out
            log.warning("z4j agent: could not send the result of command %s", cmd.command_id)


def _hostname() -> str:
    import socket

    return socket.gethostname()
