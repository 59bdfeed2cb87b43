"""Running labelled queries through an engine and summarising how well it ranks."""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.catalog import LabelledQuery
from vitrine.config import write_atomic
from vitrine.embedding import Query
from vitrine.engine import SearchEngine
from vitrine.evaluation.confusions import Confusion, ProductRecall, confusions, hardest_products, top_graded
from vitrine.evaluation.metrics import mean_metrics, query_metrics
from vitrine.progress import progress_bar
from vitrine.rerank.calibration import chance_ece, ece_interval, plot_reliability, reliability_bins

TRAINED_ON, NEVER_TRAINED_ON = "trained on", "never trained on"

R_STRATEGIES = ("hybrid", "absolute")
"""Rerank strategies whose scores are the calibrated r = P(instance match)."""


@dataclass
class QueryResult:
    where: str
    text: str | None
    image: str | None
    relevant: dict[str, int]
    ranked: list[str]
    metrics: dict[str, float]


@dataclass
class EvalReport:
    name: str
    queries: int
    metrics: dict[str, float]
    seconds: float
    per_query: list[QueryResult] = field(default_factory=list)
    unknown_products: int = 0
    channel: str = "vector"
    rerank: str | None = None
    candidates: int | None = None
    calibration: dict[str, Any] | None = None
    """With a strategy whose scores are r = P(instance match) (``hybrid``, ``absolute``): r's ECE over the
    reranked candidates against the labels (a product with the query's highest grade is a match, see
    ``exact_matches``; unlabelled products are not), the range of 95% of its values over resampled query
    sets, the ECE a perfectly calibrated r of these values would read, the share of exact matches and r's mean,
    and per bin of r the points of its reliability diagram (``bins``; drawn beside the reports by ``write``)."""
    confusions: list[Confusion] = field(default_factory=list)
    """The most frequent (wanted product, product ranked first instead) pairs over queries with one exact match."""
    hardest: list[ProductRecall] = field(default_factory=list)
    """The products those queries found first least often."""
    segments: dict[str, dict[str, Any]] = field(default_factory=dict)
    """With trained towers and queries about products they never trained on: ``{"trained on": {"queries": n,
    "metrics": {...}}, "never trained on": {...}}`` (see ``segments_by_training``)."""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def markdown(self, reliability_plot: str | None = None) -> str:
        """The report as markdown; ``reliability_plot``: the file name of r's reliability diagram, to show it."""
        lines = [f"# Evaluation: {self.name}", "",
                 f"{self.queries} queries in {self.seconds:.1f} s; {self.searched()}"
                 + (f"; {self.unknown_products} relevant ids are not in the catalog" if self.unknown_products else ""),
                 ""]
        segments = list(self.segments.items())
        lines += ["| metric | value |" + "".join(f" {name} ({part['queries']}) |" for name, part in segments),
                  "|---|---|" + "---|" * len(segments)]
        lines += [f"| {name} | {value:.4f} |" + "".join(f" {part['metrics'][name]:.4f} |" for _, part in segments)
                  for name, value in self.metrics.items()]
        if self.calibration:
            lines += ["", self.calibration_line(), *self._reliability_table()]
            lines += ["", f"![reliability of r]({reliability_plot})"] if reliability_plot else []
        lines += self._confusion_tables()
        misses = [q for q in self.per_query if q.metrics.get("recall@1", 1.0) < 1.0][:20]
        if misses:
            lines += ["", "## First queries whose best product was not ranked first", "",
                      "| query | relevant | top 3 |", "|---|---|---|"]
            lines += [f"| {q.text or Path(q.image or '').name} | {', '.join(q.relevant)} | {', '.join(q.ranked[:3])} |"
                      for q in misses]
        return "\n".join(lines) + "\n"

    def calibration_line(self) -> str:
        c = self.calibration or {}
        low, high = c["ece_95%"]
        return (f"r = P(exact match) over {c['candidates']} reranked candidates: ECE {c['ece']:.4f} (over resampled "
                f"query sets 95% within [{low:.4f}, {high:.4f}]; a perfectly calibrated r would read "
                f"{c['ece_by_chance']:.4f}), mean r {c['mean_r']:.3f} against a share {c['share_exact']:.3f} of "
                "exact matches")

    def _reliability_table(self) -> list[str]:
        bins = (self.calibration or {}).get("bins") or []
        return (["", "| r | candidates | mean r | share of exact matches |", "|---|---|---|---|"]
                + [f"| {b['low']:.1f}-{b['high']:.1f} | {b['count']} | {b['mean']:.3f} | {b['observed']:.3f} |"
                   for b in bins]) if bins else []

    def confusion_line(self, shown: int = 3) -> str | None:
        """The most frequent confusions in one line, for a terminal (the markdown report tables more)."""
        if not self.confusions:
            return None
        return "most frequent misses (queries: wanted -> ranked first): " + "; ".join(
            f"{c.queries}: {_named(c.wanted, c.wanted_title)} -> {_named(c.given, c.given_title)}"
            for c in self.confusions[:shown])

    def _confusion_tables(self) -> list[str]:
        lines = []
        if self.confusions:
            lines += ["", "## Ranked first instead of the product a query was about", "",
                      "| queries | wanted | ranked first instead |", "|---|---|---|"]
            lines += [f"| {c.queries} | {_named(c.wanted, c.wanted_title)} | {_named(c.given, c.given_title)} |"
                      for c in self.confusions]
        if self.hardest:
            lines += ["", "## Products found first least often", "",
                      "| product | queries | ranked first | most often first instead |", "|---|---|---|---|"]
            lines += [f"| {_named(row.product, row.title)} | {row.queries} | {row.first} | "
                      f"{_named(row.instead, row.instead_title)} |" for row in self.hardest]
        return lines

    def searched(self) -> str:
        """How the rankings were made, in words."""
        how = "ID recognition (prototype channel)" if self.channel == "prototype" else "vector search"
        return how + (f", the top {self.candidates} reranked by {self.rerank}" if self.rerank else "")

    def write(self, folder: Path) -> list[Path]:
        """The JSON and markdown reports in ``folder`` and, when r was measured, its reliability diagram (PNG)."""
        folder.mkdir(parents=True, exist_ok=True)
        stem = folder / f"eval-{self.name}-{time.strftime('%Y%m%d-%H%M%S')}"
        json_path, md_path = stem.with_suffix(".json"), stem.with_suffix(".md")
        plot = self._plot_reliability(stem.with_name(stem.name + "-reliability.png"))
        write_atomic(json_path, json.dumps(self.to_dict(), indent=2).encode())
        write_atomic(md_path, self.markdown(plot.name if plot else None).encode())
        return [json_path, md_path] + ([plot] if plot else [])

    def _plot_reliability(self, path: Path) -> Path | None:
        """r's reliability diagram from the calibration's bins (None without them)."""
        c = self.calibration or {}
        if not c.get("bins"):
            return None
        return plot_reliability({f"r (ECE {c['ece']:.3f})": c["bins"]}, path,
                                title=f"r = P(exact match) on {self.queries} queries ({self.rerank})",
                                ylabel="observed share of exact matches")


def evaluate(engine: SearchEngine, queries: Sequence[LabelledQuery], *, name: str = "queries",
             depth: int = 100, batch_size: int = 64, lexical: bool | None = None, progress: bool = True,
             channel: str | None = None, rerank: str | None = None, candidates: int | None = None) -> EvalReport:
    """Search every query (``depth`` results each) and score the rankings, as ``engine.search`` would
    make them with the same ``lexical``, ``channel``, ``rerank`` and ``candidates``."""
    depth = min(depth, engine.config.search.max_k)
    channel = channel or engine.config.search.channel
    candidates = (candidates or engine.config.rerank.candidates) if rerank else None
    known = {product.id for product in engine.catalog}
    start = time.perf_counter()
    results: list[QueryResult] = []
    scored_r = rerank in R_STRATEGIES
    r_values: list[np.ndarray] = []
    exact: list[np.ndarray] = []
    bar = progress_bar(total=len(queries), enabled=progress, desc=f"eval {name}", unit=" queries")
    for offset in range(0, len(queries), batch_size):
        batch = queries[offset:offset + batch_size]
        extra = max((len(q.exclude) for q in batch), default=0)
        hits = engine.search_many([Query(text=q.text, image=q.image) for q in batch],
                                  k=min(depth + extra, engine.config.search.max_k), lexical=lexical,
                                  channel=channel, rerank=rerank, candidates=candidates)
        for query, ranking in zip(batch, hits):
            ranked = [hit.product.id for hit in ranking if hit.product.id not in query.exclude][:depth]
            results.append(QueryResult(query.where, query.text, query.image, query.relevant, ranked[:10],
                                       query_metrics(ranked, query.relevant)))
            if scored_r:
                reranked = [hit for hit in ranking[:candidates] if hit.product.id not in query.exclude]
                r_values.append(np.array([hit.score for hit in reranked], dtype=np.float64))
                matches = exact_matches(query)
                exact.append(np.array([hit.product.id in matches for hit in reranked], dtype=bool))
        bar.update(len(batch))
    bar.close()
    unknown = sum(1 for q in queries for pid in q.relevant if pid not in known)
    title = _titles(engine)
    segments = segments_by_training(results, engine.trained_products())
    return EvalReport(name=name, queries=len(queries), metrics=mean_metrics([r.metrics for r in results]),
                      seconds=time.perf_counter() - start, per_query=results, unknown_products=unknown,
                      channel=channel, rerank=rerank, candidates=candidates,
                      calibration=r_calibration(r_values, exact) if scored_r else None,
                      confusions=confusions(results, title), hardest=hardest_products(results, title),
                      segments=segments)


def segments_by_training(results: Sequence[QueryResult], trained: set[str] | None) -> dict[str, dict[str, Any]]:
    """The metrics over queries about products the towers ``trained`` on and over those about products they never
    saw (new listings, held-out products): a query counts as "never trained on" when none of its exact matches was
    trained on, "trained on" when all were, and neither when both kinds are among them. Empty when there is nothing
    to split: no list of trained products, or no query about a never-trained one."""
    if trained is None:
        return {}
    groups: dict[str, list[dict[str, float]]] = {TRAINED_ON: [], NEVER_TRAINED_ON: []}
    for result in results:
        exact = top_graded(result.relevant)
        known = exact & trained
        if exact and known == exact:
            groups[TRAINED_ON].append(result.metrics)
        elif exact and not known:
            groups[NEVER_TRAINED_ON].append(result.metrics)
    if not groups[NEVER_TRAINED_ON]:
        return {}
    return {name: {"queries": len(metrics), "metrics": mean_metrics(metrics)} for name, metrics in groups.items()
            if metrics}


def _titles(engine: SearchEngine) -> Callable[[str], str]:
    def title(product_id: str) -> str:
        return engine.catalog.get(product_id).title if product_id in engine.catalog else ""
    return title


def _named(product_id: str, title: str) -> str:
    """A product as a report names it: its title, and its id where the title does not say it ("Royal Gala" says
    "Royal-Gala"; "Samsung 40-inch TV" does not say "cf-0a3f")."""
    if not title:
        return product_id
    return title if _letters(title) == _letters(product_id) else f"{title} ({product_id})"


def _letters(name: str) -> str:
    return re.sub(r"[\W_]+", "", name.lower())


def exact_matches(query: LabelledQuery) -> set[str]:
    """The products a query is about: those with its highest grade (what recall@1 asks for first). A photo list
    or a group names them with one grade; graded labels (CrowdFlower, JSONL 0-3) give the top grade to them."""
    return top_graded(query.relevant)


def r_calibration(r_values: Sequence[np.ndarray], exact: Sequence[np.ndarray]) -> dict[str, Any] | None:
    """How well the reranker's r = P(exact match) is calibrated on labelled queries (see ``EvalReport``)."""
    if not any(len(values) for values in r_values):
        return None
    ece, low, high = ece_interval(r_values, exact)
    flat_r, flat_exact = np.concatenate(r_values), np.concatenate(exact)
    return {"ece": ece, "ece_95%": [low, high], "ece_by_chance": chance_ece(flat_r), "candidates": len(flat_r),
            "mean_r": float(flat_r.mean()), "share_exact": float(flat_exact.mean()),
            "bins": reliability_bins(flat_r, flat_exact)}
