"""What one running service holds: the engine, its limits, its metrics, and the model slots."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from vitrine.config import ServeConfig
from vitrine.engine import SearchEngine, SyncReport
from vitrine.errors import VitrineError
from vitrine.serve.metrics import Metrics
from vitrine.serve.persistence import DebouncedSaver


class Busy(VitrineError):
    """Every model slot stayed taken for the whole queue timeout (answered 503 with Retry-After)."""


class ModelSlots:
    """A bounded number of requests run the models at once; the others queue, up to a timeout.

    On two cores, sixteen photo encodes at once only fight over caches and threads; taking turns keeps
    each one fast and throughput flat as concurrency grows.
    """

    def __init__(self, slots: int, timeout: float) -> None:
        self._semaphore = threading.BoundedSemaphore(max(1, slots))
        self.timeout = timeout

    @contextmanager
    def hold(self) -> Iterator[float]:
        """Wait for a slot; yields the seconds waited."""
        start = time.perf_counter()
        if not self._semaphore.acquire(timeout=self.timeout):
            raise Busy(f"the server is busy: no model slot came free within {self.timeout:g} s; try again")
        try:
            yield time.perf_counter() - start
        finally:
            self._semaphore.release()


@dataclass
class ServiceState:
    engine: SearchEngine
    config: ServeConfig
    api_key: str | None
    metrics: Metrics
    slots: ModelSlots
    saver: DebouncedSaver
    replayed: SyncReport
