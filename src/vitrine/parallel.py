"""Batch work (encoding a catalog, governing a training set) in this process or on Ray Data.

Both engines run the same code on the same batches and return results in input order, so a
pipeline's output does not depend on where it ran. The work is given as a *factory*: a callable
that builds the per-batch function, so that heavy state (a model) is built once per Ray worker
instead of being pickled with every batch.

    squares = map_batches(range(10), lambda: (lambda xs: [x * x for x in xs]), batch_size=4)
    squares = map_batches(range(10), factory, engine=BatchConfig(engine="ray"))
"""

from __future__ import annotations

import logging
import pickle
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from vitrine.config import BATCH_ENGINES, BatchConfig
from vitrine.errors import VitrineError
from vitrine.progress import progress_bar

T = TypeVar("T")
R = TypeVar("R")
BatchFn = Callable[[list[T]], Sequence[R]]

log = logging.getLogger(__name__)


def map_batches(items: Iterable[T], factory: Callable[[], BatchFn], *, batch_size: int = 64,
                engine: BatchConfig | str = "local", desc: str = "batches") -> list[R]:
    """``factory()(batch)`` over consecutive batches of ``items``, results flattened in input order.

    The batch function must return one result per item of its batch."""
    engine = BatchConfig(engine=engine) if isinstance(engine, str) else engine
    if engine.engine not in BATCH_ENGINES:
        raise VitrineError(f"unknown batch engine {engine.engine!r}: choose one of {', '.join(BATCH_ENGINES)}")
    items = list(items)
    if batch_size < 1:
        raise VitrineError(f"batch_size must be at least 1, not {batch_size}")
    if not items:
        return []
    if engine.engine == "ray":
        return _map_on_ray(items, factory, batch_size, engine)
    return _map_locally(items, factory, batch_size, desc)


def _map_locally(items: list, factory: Callable[[], BatchFn], batch_size: int, desc: str) -> list:
    fn = factory()
    results: list = []
    for start in progress_bar(range(0, len(items), batch_size), desc=desc):
        batch = items[start:start + batch_size]
        results.extend(_checked(fn(batch), len(batch)))
    return results


def _checked(results: Sequence, expected: int) -> Sequence:
    if len(results) != expected:
        raise VitrineError(f"batch function returned {len(results)} results for {expected} items")
    return results


class _RayBatch:
    """A Ray Data actor: builds the batch function once, then maps row batches through it."""

    def __init__(self, factory: Callable[[], BatchFn]) -> None:
        self.fn = factory()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        items = [pickle.loads(blob) for blob in batch["item"]]
        results = _checked(self.fn(items), len(items))
        return {"position": batch["position"], "result": [pickle.dumps(result) for result in results]}


def _map_on_ray(items: list, factory: Callable[[], BatchFn], batch_size: int, engine: BatchConfig) -> list:
    import ray

    ensure_ray(engine)
    # Items and results travel pickled, so they come back exactly as the local engine returns them
    # (Arrow would turn arrays into lists and tuples into arrays).
    dataset = ray.data.from_items([{"position": i, "item": pickle.dumps(item)} for i, item in enumerate(items)])
    workers = engine.workers or max(1, int(ray.available_resources().get("CPU", 1)))
    pool = ray.data.ActorPoolStrategy(size=min(workers, -(-len(items) // batch_size)))
    mapped = dataset.map_batches(_RayBatch, fn_constructor_args=(factory,), batch_size=batch_size,
                                 batch_format="numpy", compute=pool)
    rows = sorted(mapped.iter_rows(), key=lambda row: int(row["position"]))
    return [pickle.loads(row["result"]) for row in rows]


def ensure_ray(engine: BatchConfig) -> None:
    """Connect to ``engine.address`` or start a local Ray once per process."""
    import ray

    if ray.is_initialized():
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "configure_logging": False}
    if engine.address:
        options["address"] = engine.address
    elif engine.num_cpus:
        options["num_cpus"] = engine.num_cpus
    log.info("starting Ray (%s)", engine.address or "local")
    ray.init(**options)
    ray.data.DataContext.get_current().enable_progress_bars = False
