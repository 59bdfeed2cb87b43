"""Backbone features computed once and kept on disk (SQLite), so frozen-backbone training runs in
seconds and re-indexing after training does not decode a single image again.

Keys name the encoder and the content (a text's hash; an image file's path, size and mtime), so a
changed file or another backbone never reads a stale vector.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from vitrine.catalog.images import ImageInput
from vitrine.encoders.base import ImageEncoder, TextEncoder


class FeatureCache:
    def __init__(self, path: Path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA busy_timeout=10000")
        self._db.execute("CREATE TABLE IF NOT EXISTS features (key TEXT PRIMARY KEY, vector BLOB NOT NULL)")
        self._lock = threading.Lock()

    def texts(self, encoder: TextEncoder, texts: Sequence[str], *, progress: bool = False) -> np.ndarray:
        keys = [f"{encoder.name}|text|{hashlib.sha1(text.encode()).hexdigest()}" for text in texts]
        return self._cached(keys, list(texts), encoder.dim,
                            lambda todo: encoder.encode(todo, batch_size=64, progress=progress))

    def images(self, encoder: ImageEncoder, paths: Sequence[str], *, progress: bool = False) -> np.ndarray:
        return self.image_variants(encoder, paths, "", list, progress=progress)

    def image_variants(self, encoder: ImageEncoder, paths: Sequence[str], variant: str,
                       derive: Callable[[list[str]], Sequence[ImageInput]], *, progress: bool = False) -> np.ndarray:
        """Features of images derived from files (``derive(paths)``: crops, say), kept under the file's key
        and ``variant``, which must name what ``derive`` does (``""``: the files as they are)."""
        keys = [f"{encoder.name}|image|{_file_key(path)}" + (f"|{variant}" if variant else "") for path in paths]
        return self._cached(keys, list(paths), encoder.dim,
                            lambda todo: encoder.encode(derive(todo), batch_size=32, progress=progress))

    def _cached(self, keys: list[str], items: list, dim: int, compute) -> np.ndarray:
        found = self._get(set(keys))
        missing = list(dict.fromkeys(key for key in keys if key not in found))
        if missing:
            first = {key: item for key, item in zip(keys, items)}
            vectors = compute([first[key] for key in missing])
            self._put(dict(zip(missing, vectors)))
            found.update(zip(missing, vectors))
        out = np.zeros((len(keys), dim), dtype=np.float32)
        for row, key in enumerate(keys):
            out[row] = found[key]
        return out

    def _get(self, keys: set[str]) -> dict[str, np.ndarray]:
        found: dict[str, np.ndarray] = {}
        ordered = list(keys)
        with self._lock:
            for start in range(0, len(ordered), 500):
                chunk = ordered[start:start + 500]
                rows = self._db.execute(
                    f"SELECT key, vector FROM features WHERE key IN ({','.join('?' * len(chunk))})", chunk)
                found.update((key, np.frombuffer(blob, dtype=np.float32)) for key, blob in rows)
        return found

    def _put(self, vectors: dict[str, np.ndarray]) -> None:
        with self._lock, self._db:
            self._db.executemany("INSERT OR REPLACE INTO features VALUES (?, ?)",
                                 [(key, np.asarray(v, dtype=np.float32).tobytes()) for key, v in vectors.items()])


def _file_key(path: str) -> str:
    stat = os.stat(path)
    return f"{os.path.abspath(path)}|{stat.st_size}|{stat.st_mtime_ns}"


class CachedImageEncoder(ImageEncoder):
    """An image encoder that looks up images given as file paths in a ``FeatureCache`` first.

    Images given as bytes or PIL images (uploads) pass straight through: they have no stable name.
    """

    def __init__(self, encoder: ImageEncoder, cache: FeatureCache) -> None:
        self.encoder, self.cache = encoder, cache
        self.name, self.dim, self.normalized = encoder.name, encoder.dim, encoder.normalized

    def encode(self, images: Sequence[ImageInput], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        files = [row for row, image in enumerate(images) if isinstance(image, (str, Path)) and os.path.isfile(image)]
        file_rows = set(files)
        others = [row for row in range(len(images)) if row not in file_rows]
        out = np.zeros((len(images), self.dim), dtype=np.float32)
        if files:
            out[files] = self.cache.images(self.encoder, [str(images[row]) for row in files], progress=progress)
        if others:
            out[others] = self.encoder.encode([images[row] for row in others], batch_size=batch_size, progress=progress)
        return out


class CachedTextEncoder(TextEncoder):
    """A text encoder that keeps every text it encodes in a ``FeatureCache``.

    For batch work over a fixed corpus (re-indexing after training, benchmarks); a live service
    should not cache free-form query texts, which would grow without bound.
    """

    def __init__(self, encoder: TextEncoder, cache: FeatureCache) -> None:
        self.encoder, self.cache = encoder, cache
        self.name, self.dim = encoder.name, encoder.dim

    def encode(self, texts: Sequence[str], *, batch_size: int = 32, progress: bool = False) -> np.ndarray:
        return self.cache.texts(self.encoder, texts, progress=progress)
