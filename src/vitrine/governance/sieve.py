"""The sieve (the baseline DataJuicer beats): one scalar per sample, drop the lowest share.

The score mixes image-text *alignment* in the current trained space (cosine of the query and its
product) with simple *quality* signals (an image's sharpness and exposure, a text's length and noise).
Each signal is turned into a rank in [0, 1] before mixing, so no signal's scale dominates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from scipy.stats import rankdata

from vitrine.catalog.images import ImageInput, open_image
from vitrine.errors import VitrineError


def sieve_scores(alignment: Sequence[float], quality: Sequence[Sequence[float]] | None = None,
                 quality_weight: float = 0.3) -> np.ndarray:
    """``(1 - w) * rank(alignment) + w * mean(rank(q) for q in quality)``, each rank in [0, 1]."""
    alignment = np.asarray(alignment, dtype=np.float64)
    if not 0.0 <= quality_weight <= 1.0:
        raise VitrineError(f"governance.quality_weight must be between 0 and 1, got {quality_weight}")
    signals = [np.asarray(q, dtype=np.float64) for q in (quality or [])]
    if not signals:
        return _rank(alignment)
    return (1 - quality_weight) * _rank(alignment) + quality_weight * np.mean([_rank(q) for q in signals], axis=0)


def sieve(scores: Sequence[float], drop: float) -> np.ndarray:
    """Indices of the samples kept after dropping the lowest ``drop`` share (ties: the later sample goes)."""
    scores = np.asarray(scores, dtype=np.float64)
    if not 0.0 <= drop < 1.0:
        raise VitrineError(f"governance.sieve_drop must be in [0, 1), got {drop}")
    n_drop = int(round(drop * len(scores)))
    order = np.lexsort((-np.arange(len(scores)), scores))  # lowest score first; among equals, the later one
    return np.sort(order[n_drop:])


def image_quality(image: ImageInput) -> tuple[float, float]:
    """(sharpness, exposure): variance of the Laplacian of the grey image (blur scores low), and how far
    the mean brightness stays from black or white (1 = mid-grey, 0 = all black or all white)."""
    grey = ImageOps.grayscale(open_image(image))
    grey.thumbnail((256, 256), Image.BILINEAR)
    edges = np.asarray(grey.filter(ImageFilter.FIND_EDGES), dtype=np.float32)
    mean = float(np.asarray(grey, dtype=np.float32).mean()) / 255.0
    return float(edges.var()), 1.0 - abs(mean - 0.5) * 2


def _rank(values: np.ndarray) -> np.ndarray:
    if len(values) <= 1:
        return np.ones(len(values))
    # Equal values share their (average) rank, so a signal that does not vary does not rank anything.
    return (rankdata(values, method="average") - 1) / (len(values) - 1)
