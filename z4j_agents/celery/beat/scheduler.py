"""``z4j_agents.celery.beat.Z4JScheduler``: the default file scheduler, with
entries z4j can change from outside.

Celery's :class:`~celery.beat.PersistentScheduler` keeps its entries in a
shelve file that only the beat process may open. This subclass keeps that
file (run counts and last runs survive restarts, as before) and merges in the
entries of a JSON file, ``<schedule file>.z4j.json`` (or
``app.conf.z4j_beat_file``), which the beat agent writes when z4j creates,
edits, disables or deletes a schedule. Beat notices a change within
``app.conf.z4j_beat_reload_interval`` seconds (5 by default: the scheduler
never sleeps longer than that) and at once when the agent runs in the same
process.

    celery -A proj beat -S z4j_agents.celery.beat.Z4JScheduler
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
import threading
from typing import Any

from celery.beat import PersistentScheduler
from celery.schedules import schedstate

from z4j_agents.celery.beat.specs import from_spec

log = logging.getLogger("z4j.celery.beat")

FILE_VERSION = 1


def z4j_file_for(app: Any, schedule_filename: str | None) -> str:
    configured = app.conf.get("z4j_beat_file")
    if configured:
        return str(configured)
    return f"{schedule_filename or app.conf.beat_schedule_filename}.z4j.json"


def read_file(path: str) -> dict[str, dict[str, Any]]:
    """The entries of a z4j schedule file ({} when there is none yet)."""
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except FileNotFoundError:
        return {}
    entries = data.get("entries") if isinstance(data, dict) else None
    if not isinstance(entries, dict):
        raise ValueError(f"{path} holds no entries object")
    return entries


_write_lock = threading.Lock()


def write_file(path: str, entries: dict[str, dict[str, Any]]) -> None:
    """Replace the file atomically (a reader sees the old or the new file)."""
    folder = os.path.dirname(os.path.abspath(path))
    with _write_lock:
        fd, tmp = tempfile.mkstemp(prefix=".z4j-beat-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"version": FILE_VERSION, "entries": entries}, fh, indent=1, sort_keys=True)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


class Z4JScheduler(PersistentScheduler):
    """A PersistentScheduler that also runs the entries of z4j's JSON file."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.z4j_path = ""
        self.z4j_changed = threading.Event()
        self._z4j_mtime: int | None = None
        self._z4j_names: set[str] = set()
        self._z4j_disabled: set[str] = set()
        super().__init__(*args, **kwargs)
        reload_s = float(self.app.conf.get("z4j_beat_reload_interval") or 5.0)
        self.max_interval = min(self.max_interval, reload_s)

    # ------------------------------------------------------------ merging

    def setup_schedule(self) -> None:
        self.z4j_path = z4j_file_for(self.app, self.schedule_filename)
        super().setup_schedule()
        self._z4j_merge()

    def merge_inplace(self, b: dict[str, Any]) -> None:
        # Celery drops every stored entry that is not in beat_schedule; z4j's
        # entries keep their run counts and last runs across restarts.
        kept = {}
        try:
            names = set(read_file(self.z4j_path)) - set(b)
            kept = {name: self.schedule[name] for name in names if name in self.schedule}
        except Exception:  # noqa: BLE001 - a bad file is reported by the merge
            pass
        super().merge_inplace(b)
        self.schedule.update(kept)

    def tick(self, *args: Any, **kwargs: Any) -> float:
        try:
            self._z4j_maybe_merge()
        except Exception:  # noqa: BLE001 - a bad file must not stop beat
            log.exception("z4j beat: could not merge %s", self.z4j_path)
        return super().tick(*args, **kwargs)

    def _z4j_mtime_now(self) -> int | None:
        try:
            return os.stat(self.z4j_path).st_mtime_ns
        except FileNotFoundError:
            return None

    def _z4j_maybe_merge(self) -> None:
        if self.z4j_changed.is_set() or self._z4j_mtime_now() != self._z4j_mtime:
            self._z4j_merge()

    def _z4j_merge(self) -> None:
        self.z4j_changed.clear()
        mtime = self._z4j_mtime_now()
        try:
            defined = read_file(self.z4j_path)
        except Exception:  # noqa: BLE001
            log.exception("z4j beat: cannot read %s; keeping the entries merged before", self.z4j_path)
            self._z4j_mtime = mtime
            return
        code = set(self.app.conf.beat_schedule or {})
        wanted = {}
        for name, d in defined.items():
            if name in code:
                log.warning("z4j beat: %r is defined in beat_schedule; the code's definition wins", name)
                continue
            try:
                wanted[name] = self.Entry(
                    name=name, task=d["task"], schedule=from_spec(d["schedule"], self.app),
                    args=list(d.get("args") or []), kwargs=dict(d.get("kwargs") or {}),
                    options=dict(d.get("options") or {}), app=self.app,
                )
            except Exception as exc:  # noqa: BLE001 - one bad entry, not all
                log.error("z4j beat: skipping entry %r of %s: %s", name, self.z4j_path, exc)
        schedule = self.schedule
        for name in self._z4j_names - set(wanted):
            schedule.pop(name, None)
        for name, new in wanted.items():
            old = schedule.get(name)
            if old is not None and old == new:
                continue  # unchanged: keep its last run and count
            if old is not None:
                new.last_run_at, new.total_run_count = old.last_run_at, old.total_run_count
            schedule[name] = new
        self._z4j_names = set(wanted)
        self._z4j_disabled = {n for n, d in defined.items() if isinstance(d, dict) and d.get("enabled") is False}
        self._z4j_mtime = mtime
        self._heap = None  # rebuild the heap from the merged entries on this tick
        self.sync()

    def is_due(self, entry: Any) -> Any:
        if entry.name in self._z4j_disabled:
            return schedstate(False, 5.0)
        return super().is_due(entry)

    # ------------------------------------------------------------ for the agent

    def live_entries(self) -> dict[str, Any]:
        """A copy of the running entries (safe to call from another thread)."""
        for _ in range(5):
            try:
                return dict(self.schedule)
            except RuntimeError:  # changed while copied: beat is ticking
                continue
        return {}

    @property
    def info(self) -> str:
        return f"{super().info}\n    . z4j -> {self.z4j_path}"
