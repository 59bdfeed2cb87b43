from pathlib import Path

import numpy as np
import pytest

from vitrine.config import IndexConfig
from vitrine.errors import DimensionError, StoreError
from vitrine.index import FaissIndex, load_index


def unit(rows: int, dim: int = 16, seed: int = 0) -> np.ndarray:
    vectors = np.random.default_rng(seed).normal(size=(rows, dim)).astype(np.float32)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


def brute_force(ids: np.ndarray, vectors: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    return ids[np.argsort(-(queries @ vectors.T), axis=1, kind="stable")[:, :k]]


CONFIGS = {"flat": IndexConfig(), "hnsw": IndexConfig(factory="HNSW16", ef_search=256),
           "hnsw-sq8": IndexConfig(factory="HNSW16,SQ8", ef_search=256),
           "ivfpq-refined": IndexConfig(factory="IVF4,PQ8x4,RFlat", nprobe=4, refine_k_factor=10)}


@pytest.mark.parametrize("kind", CONFIGS)
def test_search_agrees_with_brute_force(kind: str):
    vectors, queries = unit(500), unit(20, seed=1)
    ids = np.arange(500, dtype=np.int64) * 7 + 3
    index = FaissIndex(16, CONFIGS[kind])
    index.add(ids, vectors)
    scores, found = index.search(queries, 10)
    expected = brute_force(ids, vectors, queries, 10)
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(found, expected)])
    assert overlap >= (1.0 if kind == "flat" else 0.95)
    if kind == "flat":
        assert np.allclose(scores[:, 0], np.max(queries @ vectors.T, axis=1), atol=1e-5)


@pytest.mark.parametrize("kind", CONFIGS)
def test_remove_and_update_by_id(kind: str):
    vectors = unit(200)
    ids = np.arange(200, dtype=np.int64)
    index = FaissIndex(16, CONFIGS[kind])
    index.add(ids, vectors)
    assert index.remove(np.array([5, 6, 9999])) == 2
    assert len(index) == 198 and 5 not in index
    _, found = index.search(vectors[[5, 6]], 5)
    assert 5 not in found and 6 not in found
    # update: id 7 now holds vector 5's direction
    index.add(np.array([7]), vectors[[5]])
    _, found = index.search(vectors[[5]], 1)
    assert found[0, 0] == 7
    assert len(index) == 198
    live = np.setdiff1d(ids, [5, 6])
    live_vectors = vectors[live].copy()
    live_vectors[live == 7] = vectors[5]
    _, found = index.search(vectors[:30], 5)
    expected = brute_force(live, live_vectors, vectors[:30], 5)
    assert np.mean(found[:, 0] == expected[:, 0]) >= 0.95


def test_compaction_drops_deleted_slots_and_keeps_answers():
    vectors = unit(100)
    index = FaissIndex(16, IndexConfig(compact_ratio=0.25))
    index.add(np.arange(100), vectors)
    index.remove(np.arange(30))
    assert index.describe()["deleted"] == 0  # compacted past 25 % deleted
    _, found = index.search(vectors[30:40], 1)
    assert found[:, 0].tolist() == list(range(30, 40))


@pytest.mark.parametrize("vectors, factory", [("fp16", "HNSW8,SQfp16"), ("float32", "HNSW8"), ("sq8", "HNSW8,SQ8")])
def test_auto_switches_to_hnsw_past_threshold(vectors: str, factory: str):
    index = FaissIndex(16, IndexConfig(hnsw_threshold=100, hnsw_m=8, hnsw_vectors=vectors))
    index.add(np.arange(60), unit(60))
    assert index.factory == "Flat"
    index.add(np.arange(60, 160), unit(100, seed=3))
    assert index.factory == factory and len(index) == 160
    _, found = index.search(unit(60)[:5], 1)
    assert found[:, 0].tolist() == [0, 1, 2, 3, 4]
    # the vectors survived the switch, at the stored precision
    np.testing.assert_allclose(index.reconstruct(3), unit(60)[3], atol={"fp16": 1e-3, "float32": 1e-7, "sq8": 2e-2}[vectors])


def test_unknown_hnsw_storage_is_refused_up_front():
    with pytest.raises(StoreError, match="index.hnsw_vectors must be one of fp16, float32, sq8, not 'fp8'"):
        FaissIndex(16, IndexConfig(hnsw_vectors="fp8"))


@pytest.mark.parametrize("kind", CONFIGS)
def test_save_and_load_give_identical_answers(tmp_path: Path, kind: str):
    vectors = unit(300)
    index = FaissIndex(16, CONFIGS[kind])
    index.add(np.arange(300) + 10, vectors)
    index.remove(np.array([10, 11]))
    before = index.search(vectors[:10], 5)
    index.save(tmp_path)
    loaded = load_index(tmp_path, CONFIGS[kind])
    after = loaded.search(vectors[:10], 5)
    assert np.array_equal(before[1], after[1]) and np.allclose(before[0], after[0])
    assert len(loaded) == 298 and loaded.factory == index.factory


def test_missing_and_corrupt_index(tmp_path: Path):
    assert load_index(tmp_path) is None
    (tmp_path / "faiss.npz").write_bytes(b"not an index")
    with pytest.raises(StoreError, match="cannot read the vector index"):
        load_index(tmp_path)


def test_wrong_dimensions_and_small_index():
    index = FaissIndex(16)
    with pytest.raises(DimensionError, match=r"shape \(2, 8\); this index holds 16-d"):
        index.add(np.arange(2), unit(2, dim=8))
    with pytest.raises(DimensionError):
        index.search(unit(1, dim=4), 3)
    index.add(np.arange(2), unit(2))
    scores, found = index.search(unit(1), 5)
    assert found[0, 2:].tolist() == [-1, -1, -1]
    empty_scores, empty = FaissIndex(16).search(unit(3), 4)
    assert empty.shape == (3, 4) and (empty == -1).all()


def test_bad_factory_string_is_a_clear_error():
    with pytest.raises(StoreError, match="FAISS cannot build index 'Nonsense42'"):
        FaissIndex(16, IndexConfig(factory="Nonsense42"))
