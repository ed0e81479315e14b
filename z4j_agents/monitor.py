"""The agent's periodic work in a worker process: heartbeats and queue depths,
on one daemon thread (never the engine's own threads or event loop).

Each engine subclasses :class:`Monitor` for what a round does (how it samples
its broker, what else it checks at a heartbeat); the loop, its timing and its
failure policy are here: a round that raises is logged and the next round
comes; nothing of it ever reaches a task."""

from __future__ import annotations

import logging
import threading
import time
from typing import Any


class LogOnce:
    """Log a line once per key (a broker that stays down is said once, not every round)."""

    def __init__(self, log: logging.Logger) -> None:
        self.log = log
        self.said: set[str] = set()

    def __call__(self, key: str, level: int, message: str, *args: Any) -> None:
        if key not in self.said:
            self.said.add(key)
            self.log.log(level, message, *args)

    def forget(self, key: str) -> None:
        """Say it again next time (the condition ended)."""
        self.said.discard(key)


class Monitor:
    """``heartbeat()`` every ``agent.heartbeat_s``, ``sample_depths()`` every
    ``agent.queue_depth_s`` while ``sampling()`` (by default: that interval is above 0)."""

    engine = "engine"
    """In the thread's name (z4j-<engine>-monitor) and the log lines."""

    def __init__(self, agent: Any, log: logging.Logger) -> None:
        self.agent = agent
        self.log = log
        self.once = LogOnce(log)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"z4j-{self.engine}-monitor", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive() and self._thread is not threading.current_thread():
            self._thread.join(timeout=2.0)
        self.close()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    # ------------------------------------------------------------ what an engine overrides

    def sampling(self) -> bool:
        """Whether to sample queue depths at all (asked once, when the thread starts)."""
        return self.agent.queue_depth_s > 0

    def sample_depths(self) -> None:
        """Report the queues' depths (QueueEvent); catch what its broker raises."""

    def heartbeat(self) -> None:
        self.agent.worker_event("heartbeat")

    def wait(self, timeout: float) -> None:
        """Wait until the next round (or the stop)."""
        self._stop.wait(timeout)

    def finished(self) -> None:
        """On the monitor's thread, after its last round."""

    def close(self) -> None:
        """On the stopping thread, after the monitor's thread ended (or 2 s)."""

    # ------------------------------------------------------------ the loop

    def _run(self) -> None:
        agent = self.agent
        sampling = self.sampling()
        next_beat = time.monotonic() + agent.heartbeat_s
        next_depth = time.monotonic()
        while not self._stop.is_set():
            now = time.monotonic()
            try:
                if sampling and now >= next_depth:
                    next_depth = now + agent.queue_depth_s
                    self.sample_depths()
                if now >= next_beat:
                    next_beat = now + agent.heartbeat_s
                    self.heartbeat()
            except Exception:  # noqa: BLE001 - the next round may do better
                self.log.exception("z4j %s: monitor round failed", self.engine)
            wake = min(next_beat, next_depth) if sampling else next_beat
            self.wait(max(0.05, wake - time.monotonic()))
        self.finished()
