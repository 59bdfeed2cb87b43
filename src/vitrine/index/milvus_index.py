"""Milvus behind ``VectorIndex``: the scale-out backend (a Milvus cluster, or embedded milvus-lite).

Chosen by ``index.uri``: ``milvus://host:port/collection`` reaches a Milvus server over gRPC; a path
ending in ``.db`` starts embedded milvus-lite on that file (relative paths are under ``STORE/index``).
Milvus keeps its own data, so ``save()`` only flushes and writes a pointer file naming the collection.

Each Milvus call has a large fixed cost (milvus-lite: milliseconds), so inserts, deletes and
searches go in batches of ``index.milvus_batch`` rather than one call per vector or query.

With ``index.milvus_attributes`` (the default) a collection also holds each entry's filter document
(``vitrine.catalog.filter_document``: the product's attributes, id and group) in a JSON field, and a
filter runs inside Milvus as a boolean expression (``search(..., where=Filter)``) instead of arriving
as a list of allowed ids from the catalog.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import numpy as np

from vitrine.catalog.filters import Filter
from vitrine.config import IndexConfig, write_atomic
from vitrine.errors import StoreError
from vitrine.index.base import VectorIndex

POINTER_FILE = "milvus.json"
ID_FIELD, VECTOR_FIELD, ATTRIBUTES_FIELD = "id", "vector", "attributes"
MAX_TOPK = 16_384
"""Milvus refuses larger ``limit`` values or result windows."""


@dataclass(frozen=True)
class MilvusTarget:
    """Where a collection lives: the client URI and the collection name."""

    uri: str
    collection: str
    lite: bool


def parse_uri(uri: str, folder: Path | None, collection: str) -> MilvusTarget:
    """``milvus://host:port/name`` → a server; ``*.db`` → milvus-lite (relative to ``folder``)."""
    if uri.startswith("milvus://"):
        parsed = urlparse(uri)
        if not parsed.hostname:
            raise StoreError(f"index.uri {uri!r}: expected milvus://host:port/collection")
        name = parsed.path.strip("/") or collection
        return MilvusTarget(f"http://{parsed.hostname}:{parsed.port or 19530}", name, lite=False)
    if uri.endswith(".db"):
        path = Path(uri)
        if not path.is_absolute():
            path = Path(folder or ".") / path
        path.parent.mkdir(parents=True, exist_ok=True)
        return MilvusTarget(str(path.resolve()), collection, lite=True)
    raise StoreError(f"index.uri {uri!r}: expected milvus://host:port/collection or a milvus-lite path ending in .db")


def is_milvus(config: IndexConfig) -> bool:
    return bool(config.uri)


class MilvusIndex(VectorIndex):
    def __init__(self, dim: int, config: IndexConfig, folder: Path | None = None) -> None:
        from pymilvus import MilvusClient

        self.dim = int(dim)
        self.config = config
        self.target = parse_uri(config.uri, folder, config.collection)
        try:
            self._client = MilvusClient(uri=self.target.uri)
        except Exception as exc:  # noqa: BLE001 - pymilvus raises many kinds; the user needs the address
            raise StoreError(f"cannot reach Milvus at {self.target.uri} ({exc})") from None
        if not self._client.has_collection(self.target.collection):
            self._create()
        fields = self._fields()
        self._check_dim(fields)
        self.holds_attributes = ATTRIBUTES_FIELD in fields
        self._client.load_collection(self.target.collection)

    # --- VectorIndex -----------------------------------------------------------------------------

    def add(self, ids: np.ndarray, vectors: np.ndarray, documents: Sequence[Mapping] | None = None) -> None:
        ids, vectors = self.check_batch(ids, vectors)
        if documents is not None and len(documents) != len(ids):
            raise ValueError(f"{len(documents)} documents for {len(ids)} ids")
        for start in range(0, len(ids), self.config.milvus_batch):
            chunk = slice(start, start + self.config.milvus_batch)
            self._client.upsert(self.target.collection, data=self._rows(
                ids[chunk].tolist(), list(vectors[chunk]), None if documents is None else documents[chunk]))

    def set_documents(self, ids: np.ndarray, documents: Sequence[Mapping]) -> None:
        """Replace the filter documents of entries already held; their vectors are read back and kept
        (Milvus 2.5 upserts whole rows). Ids not held are ignored."""
        ids = np.asarray(ids, dtype=np.int64).reshape(-1)
        if not self.holds_attributes or len(ids) == 0:
            return
        if len(documents) != len(ids):
            raise ValueError(f"{len(documents)} documents for {len(ids)} ids")
        for start in range(0, len(ids), self.config.milvus_batch):
            chunk = ids[start:start + self.config.milvus_batch].tolist()
            held = {int(row[ID_FIELD]): row[VECTOR_FIELD] for row in
                    self._client.get(self.target.collection, ids=chunk, output_fields=[VECTOR_FIELD])}
            pairs = [(id_, document) for id_, document in zip(chunk, documents[start:start + len(chunk)]) if id_ in held]
            if pairs:
                self._client.upsert(self.target.collection, data=self._rows(
                    [id_ for id_, _ in pairs], [held[id_] for id_, _ in pairs], [document for _, document in pairs]))

    def remove(self, ids: np.ndarray) -> int:
        ids = np.unique(np.asarray(ids, dtype=np.int64).reshape(-1))
        present = self._present(ids)
        for start in range(0, len(present), self.config.milvus_batch):
            self._client.delete(self.target.collection, ids=present[start:start + self.config.milvus_batch].tolist())
        return len(present)

    def search(self, queries: np.ndarray, k: int, allowed: np.ndarray | None = None,
               where: Filter | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` by inner product; ``allowed`` ids and/or ``where`` (compiled to a Milvus boolean
        expression over the filter documents) filter during the search (Milvus pre-filters, so a
        selective filter still fills ``k``)."""
        queries = self.check(queries, "queries")
        k = max(int(k), 0)
        scores = np.zeros((len(queries), k), dtype=np.float32)
        keys = np.full((len(queries), k), -1, dtype=np.int64)
        if k == 0 or len(queries) == 0:
            return scores, keys
        if k > MAX_TOPK:
            raise StoreError(f"Milvus returns at most {MAX_TOPK} results per query, {k} were asked for")
        options = self._filter_options(allowed, where)
        for start in range(0, len(queries), self.config.milvus_batch):
            chunk = queries[start:start + self.config.milvus_batch]
            found = self._client.search(self.target.collection, data=list(chunk), limit=k, output_fields=[],
                                        search_params={"metric_type": "IP", "params": self._search_params()},
                                        anns_field=VECTOR_FIELD, **options)
            for row, hits in enumerate(found, start=start):
                for col, hit in enumerate(hits):
                    keys[row, col] = int(hit[ID_FIELD] if ID_FIELD in hit else hit["id"])
                    scores[row, col] = float(hit["distance"])
        return scores, keys

    def ids(self) -> np.ndarray:
        out: list[int] = []
        iterator = self._client.query_iterator(self.target.collection, batch_size=self.config.milvus_batch,
                                               filter=f"{ID_FIELD} >= 0", output_fields=[ID_FIELD])
        try:
            while True:
                page = iterator.next()
                if not page:
                    break
                out.extend(int(row[ID_FIELD]) for row in page)
        finally:
            iterator.close()
        return np.asarray(out, dtype=np.int64)

    def __len__(self) -> int:
        rows = self._client.query(self.target.collection, filter="", output_fields=["count(*)"])
        return int(rows[0]["count(*)"])

    def __contains__(self, id_: object) -> bool:
        return len(self._present(np.asarray([id_], dtype=np.int64))) == 1

    def reconstruct(self, id_: int) -> np.ndarray:
        rows = self._client.get(self.target.collection, ids=[int(id_)], output_fields=[VECTOR_FIELD])
        if not rows:
            raise KeyError(id_)
        return np.asarray(rows[0][VECTOR_FIELD], dtype=np.float32)

    def save(self, folder: Path) -> None:
        """Milvus persists its data itself: flush, and leave a pointer so the store knows where it is."""
        self._client.flush(self.target.collection)
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        write_atomic(folder / POINTER_FILE, json.dumps(self.describe(), indent=2).encode())

    def describe(self) -> dict:
        return {"backend": "milvus", "factory": f"milvus:{self.config.milvus_index}", "uri": self.target.uri,
                "collection": self.target.collection, "dim": self.dim, "lite": self.target.lite,
                "attributes": self.holds_attributes}

    def clear(self) -> None:
        """Empty the collection for a fresh build. A collection without the attributes field that
        ``index.milvus_attributes`` asks for is dropped and created anew, so the rebuild can filter in Milvus."""
        if self.config.milvus_attributes and not self.holds_attributes:
            self._client.drop_collection(self.target.collection)
            self._create()
            self.holds_attributes = True
            self._client.load_collection(self.target.collection)
        else:
            self.remove(self.ids())

    def close(self) -> None:
        self._client.close()

    # --- internals -------------------------------------------------------------------------------

    def _create(self) -> None:
        from pymilvus import DataType

        schema = self._client.create_schema(auto_id=False, enable_dynamic_field=False)
        schema.add_field(ID_FIELD, DataType.INT64, is_primary=True)
        schema.add_field(VECTOR_FIELD, DataType.FLOAT_VECTOR, dim=self.dim)
        if self.config.milvus_attributes:
            schema.add_field(ATTRIBUTES_FIELD, DataType.JSON)
        index_params = self._client.prepare_index_params()
        index_params.add_index(field_name=VECTOR_FIELD, index_type=self.config.milvus_index, metric_type="IP",
                               params=self._build_params())
        self._client.create_collection(self.target.collection, schema=schema, index_params=index_params)

    def _fields(self) -> dict[str, dict]:
        fields = self._client.describe_collection(self.target.collection).get("fields", [])
        return {field.get("name"): field for field in fields}

    def _check_dim(self, fields: dict[str, dict]) -> None:
        held = int(fields.get(VECTOR_FIELD, {}).get("params", {}).get("dim", self.dim))
        if held != self.dim:
            raise StoreError(f"Milvus collection {self.target.collection!r} holds {held}-d vectors; "
                             f"this store embeds {self.dim}-d (rebuild with 'vitrine index --rebuild')")

    def _rows(self, ids: list[int], vectors: list, documents: Sequence[Mapping] | None) -> list[dict]:
        """Rows to upsert; a collection with attributes gets each entry's document (empty when none is given)."""
        rows = [{ID_FIELD: int(id_), VECTOR_FIELD: vector} for id_, vector in zip(ids, vectors)]
        if self.holds_attributes:
            for row, document in zip(rows, documents if documents is not None else [{}] * len(rows)):
                row[ATTRIBUTES_FIELD] = dict(document)
        return rows

    def _filter_options(self, allowed: np.ndarray | None, where: Filter | None) -> dict:
        terms = []
        if allowed is not None:  # literal ids: milvus-lite does not take filter templates
            terms.append(_id_list(np.asarray(allowed, dtype=np.int64).reshape(-1)))
        if where is not None:
            if not self.holds_attributes:
                raise StoreError(f"Milvus collection {self.target.collection!r} holds no attributes to filter on; "
                                 "rebuild the index ('vitrine index --rebuild') with index.milvus_attributes = true")
            terms.append(where.milvus(ATTRIBUTES_FIELD))
        return {"filter": " and ".join(terms)} if terms else {}

    def _build_params(self) -> dict:
        kind = self.config.milvus_index.upper()
        if kind == "HNSW":
            return {"M": self.config.hnsw_m, "efConstruction": self.config.ef_construction}
        if kind.startswith("IVF"):
            return {"nlist": 1024}
        return {}

    def _search_params(self) -> dict:
        kind = self.config.milvus_index.upper()
        if kind == "HNSW":
            return {"ef": self.config.ef_search}
        if kind.startswith("IVF"):
            return {"nprobe": 32}
        return {}

    def _present(self, ids: np.ndarray) -> np.ndarray:
        found: list[int] = []
        for start in range(0, len(ids), self.config.milvus_batch):
            chunk = ids[start:start + self.config.milvus_batch].tolist()
            rows = self._client.query(self.target.collection, filter=_id_list(np.asarray(chunk)),
                                      output_fields=[ID_FIELD])
            found.extend(int(row[ID_FIELD]) for row in rows)
        return np.asarray(sorted(found), dtype=np.int64)


def _id_list(ids: np.ndarray) -> str:
    return f"{ID_FIELD} in [{','.join(map(str, ids.tolist()))}]"
