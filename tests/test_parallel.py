"""map_batches: the same results, in the same order, in-process and on Ray."""

from __future__ import annotations

import numpy as np
import pytest

from vitrine.errors import VitrineError
from vitrine.parallel import map_batches


def scaler_factory():
    # Built once per worker: the state a real batch function would load (a model).
    scale = np.float32(2.5)
    return lambda items: [{"id": item["id"], "vector": item["vector"] * scale, "tags": (item["id"] % 3,)}
                          for item in items]


def records(n: int) -> list[dict]:
    rng = np.random.default_rng(0)
    return [{"id": i, "vector": rng.standard_normal(4).astype(np.float32)} for i in range(n)]


def test_local_map_keeps_order_and_types():
    items = records(11)
    out = map_batches(items, scaler_factory, batch_size=4)
    assert [row["id"] for row in out] == list(range(11))
    assert out[3]["vector"].dtype == np.float32
    np.testing.assert_allclose(out[3]["vector"], items[3]["vector"] * 2.5)


def test_ray_matches_local(ray_engine):
    items = records(23)
    local = map_batches(items, scaler_factory, batch_size=5)
    remote = map_batches(items, scaler_factory, batch_size=5, engine=ray_engine)
    assert [row["id"] for row in remote] == list(range(23))
    for a, b in zip(local, remote):
        assert a["tags"] == b["tags"] and isinstance(b["tags"], tuple)
        np.testing.assert_array_equal(a["vector"], b["vector"])
        assert b["vector"].dtype == np.float32


def test_wrong_result_count_and_unknown_engine_are_user_errors():
    with pytest.raises(VitrineError, match="returned 1 results for 3 items"):
        map_batches(range(3), lambda: (lambda batch: [0]), batch_size=3)
    with pytest.raises(VitrineError, match="unknown batch engine 'spark'"):
        map_batches(range(3), lambda: (lambda batch: batch), engine="spark")
