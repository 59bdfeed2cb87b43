"""Saving the index files a short while after writes, not on every one.

Each write is durable once the catalog commits it; the index files only save re-embedding work after
a restart (``sync`` replays whatever they lack). Saving the whole index is O(catalog) per save, so a
burst of writes shares one save, ``delay`` seconds after the first, and shutdown saves what is left.
"""

from __future__ import annotations

import logging
import threading

from vitrine.engine import SearchEngine

log = logging.getLogger(__name__)


class DebouncedSaver:
    def __init__(self, engine: SearchEngine, delay: float) -> None:
        self.engine = engine
        self.delay = delay
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def touch(self) -> None:
        """A write happened: save within ``delay`` seconds (at once if the delay is 0)."""
        if self.delay <= 0:
            self.flush()
            return
        with self._lock:
            if self._timer is None:
                self._timer = threading.Timer(self.delay, self._fire)
                self._timer.daemon = True  # a killed process is covered by replay, not by this timer
                self._timer.start()

    def flush(self) -> None:
        """Save now if anything is unsaved, and cancel a pending save."""
        with self._lock:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
        if self.engine.unsaved:
            self.engine.save()

    def _fire(self) -> None:
        with self._lock:
            self._timer = None
        try:
            if self.engine.unsaved:
                self.engine.save()
        except Exception:  # noqa: BLE001 - a failed save is retried by the next write or at shutdown
            log.exception("saving the index failed; it will be replayed from the catalog if the process stops")
