"""Calibrating the absolute score r = P(instance match): Platt scaling, temperature scaling or isotonic
regression, expected calibration error, and a reliability diagram.

Temperature scaling fits the four-level softmax as a whole; r is one of its four probabilities, and a
model that under-predicts instance matches on held-back queries stays biased after it (CrowdFlower:
mean r 0.37 against a 0.43 share of matches). Platt scaling fits r itself, the binary question the
merge and the ECE ask: ``r = sigmoid(a · z + b)`` on the level-0 log-odds ``z``, two parameters, and
with ``a > 0`` it keeps the order of the raw r.

r is only worth merging by if it means the same thing in every chunk and every query, so it is fitted
on held-back queries (the reranker's dev split), never on the lists it was trained on.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(axis=-1, keepdims=True)


@dataclass
class Calibrator:
    """Maps level logits ``(..., 4)`` to a calibrated r. ``kind``: ``none``, ``platt``, ``temperature`` or
    ``isotonic``."""

    kind: str = "none"
    temperature: float = 1.0
    slope: float = 1.0
    bias: float = 0.0
    """Platt: r = sigmoid(slope · z + bias), z the level-0 log-odds."""
    knots_x: list[float] = field(default_factory=list)
    knots_y: list[float] = field(default_factory=list)
    """Isotonic: the fitted step function as (raw r, calibrated r) knots, interpolated linearly."""

    def __call__(self, logits: np.ndarray) -> np.ndarray:
        logits = np.asarray(logits, dtype=np.float64)
        if self.kind == "temperature":
            return softmax(logits / self.temperature)[..., 0]
        if self.kind == "platt":
            return expit(self.slope * level0_log_odds(logits) + self.bias)
        raw = softmax(logits)[..., 0]
        if self.kind == "isotonic" and self.knots_x:
            return np.interp(raw, self.knots_x, self.knots_y)
        return raw

    @classmethod
    def fit(cls, kind: str, logits: np.ndarray, levels: np.ndarray) -> "Calibrator":
        """Fit on dev logits ``(n, 4)`` and their true levels ``(n,)``."""
        logits = np.asarray(logits, dtype=np.float64).reshape(-1, np.shape(logits)[-1])
        levels = np.asarray(levels).reshape(-1)
        if kind == "none" or len(levels) == 0:
            return cls("none")
        if kind == "temperature":
            return cls("temperature", temperature=fit_temperature(logits, levels))
        if kind == "platt":
            slope, bias = fit_platt(level0_log_odds(logits), levels == 0)
            return cls("platt", slope=slope, bias=bias)
        if kind == "isotonic":
            from sklearn.isotonic import IsotonicRegression

            raw = softmax(logits)[:, 0]
            model = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(raw, levels == 0)
            return cls("isotonic", knots_x=model.X_thresholds_.tolist(), knots_y=model.y_thresholds_.tolist())
        raise ValueError(f"unknown calibration {kind!r} (none, platt, temperature or isotonic)")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "temperature": self.temperature, "slope": self.slope, "bias": self.bias,
                "knots_x": self.knots_x, "knots_y": self.knots_y}


def level0_log_odds(logits: np.ndarray) -> np.ndarray:
    """``log P(level 0) − log P(any other level)`` from level logits ``(..., 4)``, without forming P."""
    logits = np.asarray(logits, dtype=np.float64)
    return logits[..., 0] - np.logaddexp.reduce(logits[..., 1:], axis=-1)


def fit_platt(log_odds: np.ndarray, matches: np.ndarray) -> tuple[float, float]:
    """Slope and bias minimising the binary log-loss of ``sigmoid(slope · z + bias)``; the slope is kept
    positive, so calibration never reverses the order of r."""
    from scipy.optimize import minimize

    z, y = np.asarray(log_odds, dtype=np.float64), np.asarray(matches, dtype=np.float64)

    def loss(params: np.ndarray) -> tuple[float, np.ndarray]:
        s = params[0] * z + params[1]
        gradient = expit(s) - y  # d loss / d s, per example
        return float(np.mean(np.logaddexp(0.0, s) - y * s)), np.array([np.mean(gradient * z), np.mean(gradient)])

    found = minimize(loss, np.array([1.0, 0.0]), jac=True, method="L-BFGS-B", bounds=[(1e-3, None), (None, None)])
    return float(found.x[0]), float(found.x[1])


def fit_temperature(logits: np.ndarray, levels: np.ndarray) -> float:
    """The temperature minimising the negative log-likelihood of the true levels (one parameter, so a
    bounded scalar search is exact enough and cannot overfit a small dev split)."""
    from scipy.optimize import minimize_scalar

    rows = np.arange(len(levels))

    def nll(log_t: float) -> float:
        scaled = logits / np.exp(log_t)
        scaled = scaled - scaled.max(axis=1, keepdims=True)
        log_probs = scaled - np.log(np.exp(scaled).sum(axis=1, keepdims=True))
        return float(-log_probs[rows, levels].mean())

    found = minimize_scalar(nll, bounds=(np.log(0.05), np.log(20.0)), method="bounded")
    return float(np.exp(found.x))


def expected_calibration_error(probabilities: np.ndarray, outcomes: np.ndarray, bins: int = 10) -> float:
    """ECE: over equal-width bins of predicted probability, the gap |accuracy − confidence| weighted by the
    bin's share of the predictions."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    outcomes = np.asarray(outcomes, dtype=np.float64).reshape(-1)
    if len(probabilities) == 0:
        return 0.0
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    # share_b · |accuracy_b − confidence_b| = |Σ_b outcomes − Σ_b probabilities| / n
    gaps = np.bincount(which, outcomes, bins) - np.bincount(which, probabilities, bins)
    return float(np.abs(gaps).sum() / len(probabilities))


def ece_interval(probabilities: Sequence[np.ndarray], outcomes: Sequence[np.ndarray], bins: int = 10,
                 confidence: float = 0.95, resamples: int = 2000, seed: int = 0) -> tuple[float, float, float]:
    """ECE over every query's candidates and a percentile bootstrap interval that resamples whole queries
    (``probabilities[i]``, ``outcomes[i]``: query i's candidates): one query's candidates share its
    difficulty, so they are not independent draws. ``(ece, low, high)``. A percentile interval: every resample
    adds its own sampling noise to the bins, so for an r that is close to calibrated the interval can sit wholly
    above the point estimate."""
    flat_p, flat_y = np.concatenate(probabilities), np.concatenate(outcomes)
    point = expected_calibration_error(flat_p, flat_y, bins)
    if len(probabilities) < 2:
        return point, point, point
    rng = np.random.default_rng(seed)
    ends = np.cumsum([len(p) for p in probabilities])
    rows = [np.arange(end - len(p), end) for p, end in zip(probabilities, ends)]  # each query's candidates
    draws = []
    for _ in range(resamples):
        picked = np.concatenate([rows[i] for i in rng.integers(0, len(rows), len(rows))])
        draws.append(expected_calibration_error(flat_p[picked], flat_y[picked], bins))
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return point, float(low), float(high)


def chance_ece(probabilities: np.ndarray, bins: int = 10, draws: int = 500, seed: int = 0) -> float:
    """The mean ECE of a perfectly calibrated predictor making these predictions (outcomes drawn from the
    predictions themselves): how much ECE a split this size shows from sampling alone."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    rng = np.random.default_rng(seed)
    return float(np.mean([expected_calibration_error(probabilities, rng.random(len(probabilities)) < probabilities,
                                                     bins) for _ in range(draws)]))


def reliability_bins(probabilities: np.ndarray, outcomes: np.ndarray, bins: int = 10) -> list[dict[str, float]]:
    """The points of a reliability diagram: for each non-empty equal-width bin of predicted probability, its
    edges, how many predictions fell in it, their mean and the observed share of positive outcomes."""
    probabilities = np.asarray(probabilities, dtype=np.float64).reshape(-1)
    outcomes = np.asarray(outcomes, dtype=np.float64).reshape(-1)
    which = np.minimum((probabilities * bins).astype(int), bins - 1)
    counts = np.bincount(which, minlength=bins)
    predicted, observed = np.bincount(which, probabilities, bins), np.bincount(which, outcomes, bins)
    return [{"low": b / bins, "high": (b + 1) / bins, "count": int(counts[b]), "mean": float(predicted[b] / counts[b]),
             "observed": float(observed[b] / counts[b])} for b in range(bins) if counts[b]]


def reliability_diagram(curves: dict[str, tuple[np.ndarray, np.ndarray]], path: Path, bins: int = 10,
                        title: str = "reliability of r = P(instance match)") -> Path:
    """One line per named (probabilities, outcomes): observed frequency against mean prediction per bin."""
    return plot_reliability({f"{name} (ECE {expected_calibration_error(p, y, bins):.3f})": reliability_bins(p, y, bins)
                             for name, (p, y) in curves.items()}, path, title=title)


def plot_reliability(curves: dict[str, Sequence[dict[str, float]]], path: Path,
                     title: str = "reliability of r = P(instance match)",
                     ylabel: str = "observed share of instance matches") -> Path:
    """Draw ``reliability_bins`` output, one line per label, against the diagonal of perfect calibration."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(4.5, 4.5), dpi=100)
    axis.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1, label="perfectly calibrated")
    for label, points in curves.items():
        axis.plot([b["mean"] for b in points], [b["observed"] for b in points], marker="o", markersize=3, label=label)
    axis.set_xlabel("predicted r")
    axis.set_ylabel(ylabel)
    axis.set_xlim(0, 1)
    axis.set_ylim(0, 1)
    axis.set_title(title, fontsize=9)
    axis.legend(fontsize=7, loc="upper left")
    axis.grid(alpha=0.3)
    figure.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)
    return Path(path)
