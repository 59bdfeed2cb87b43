"""The ``vitrine`` command: parses, calls the packages, prints. Nothing clever lives here."""

from __future__ import annotations

import functools
import inspect
import json
import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.table import Table

from vitrine.config import Config, data_dir, parse_assignments, stage3_recipe_settings, write_atomic
from vitrine.errors import VitrineError

if TYPE_CHECKING:
    from vitrine.catalog import Store

app = typer.Typer(
    help="vitrine: multi-modal product search. Ingest a catalog, index it, search it by text or photo.",
    no_args_is_help=True, rich_markup_mode="rich", pretty_exceptions_enable=False,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

StoreArg = Annotated[Path, typer.Argument(help="Store directory (created by 'vitrine ingest').")]
SetOpt = Annotated[Optional[list[str]], typer.Option(
    "--set", help="Override a setting and keep it in the store's config.toml, e.g. --set index.factory=HNSW32.")]


def user_errors(command: Callable) -> Callable:
    """Print a ``VitrineError`` as one line and exit 2, instead of a traceback."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except VitrineError as exc:
            err.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return wrapper


LOUD_LIBRARIES = ("bm25s",)


@app.callback()
def _setup(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log what happens.")] = False) -> None:
    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    for name in LOUD_LIBRARIES:  # they set their own loggers to DEBUG, which the root level cannot quiet
        logging.getLogger(name).setLevel(level)
    # ... and one imported later (commands import lazily) sets it again: the handler's level holds regardless.
    for handler in logging.getLogger().handlers:
        handler.setLevel(level)


@app.command()
@user_errors
def ingest(
    store: StoreArg,
    source: Annotated[Path, typer.Argument(help="A Grocery Store Dataset folder or a products .jsonl file.")],
    format: Annotated[str, typer.Option(help="auto, grocery or jsonl.")] = "auto",
    skip_bad: Annotated[bool, typer.Option("--skip-bad", help="Skip bad records and count them instead of stopping.")] = False,
    config: Annotated[Optional[Path], typer.Option(help="TOML settings for a new store.")] = None,
    set_: SetOpt = None,
) -> None:
    """Load products into STORE's catalog (created if missing). Images are copied into the store."""
    from vitrine.catalog import Store, ingest as ingest_products, load_products

    target = _store_with_settings(store, config, set_)
    report = ingest_products(target, load_products(source, format), skip_bad=skip_bad)
    out.print(f"{source}: {report.summary()}")
    if report.skipped:
        for bad in report.skipped[:10]:
            err.print(f"  skipped {bad.where}: {bad.reason}", highlight=False)
        path = target.reports_dir / "ingest-skipped.json"
        write_atomic(path, json.dumps([bad.__dict__ for bad in report.skipped], indent=2).encode())
        out.print(f"all {len(report.skipped)} skipped records: {path}")
    out.print(f"catalog: {len(target.catalog)} products in {target.root}. Next: vitrine index {store}")


@app.command()
@user_errors
def index(
    store: StoreArg,
    rebuild: Annotated[bool, typer.Option("--rebuild", "--reembed",
                                          help="Re-embed every product and build a fresh index (after training).")] = False,
    engine_: Annotated[Optional[str], typer.Option(
        "--engine", help="Where products are embedded: local (this process) or ray (Ray Data; see --ray-address).")] = None,
    ray_address: Annotated[Optional[str], typer.Option(
        help="Ray cluster to join (auto, ray://head:10001); without it Ray starts on this machine.")] = None,
    set_: SetOpt = None,
) -> None:
    """Embed new and changed products and bring the vector index in line with the catalog.

    Only what an embedding reads counts as a change: new attributes or prices re-embed nothing, and
    with --set index.entries=image a changed photo re-embeds that photo alone. --engine ray spreads
    the embedding over Ray workers (the same vectors as --engine local)."""
    target = _store_with_settings(store, None, set_, must_exist=True)
    overrides = {**({"batch.engine": engine_} if engine_ else {}), **({"batch.address": ray_address} if ray_address else {})}
    engine = _open(target, overrides)
    report = engine.sync(rebuild=rebuild or bool(set_))
    out.print(f"indexed {report.added} products ({report.embedded} vectors embedded), removed {report.removed}; "
              f"the index holds {report.total} ({engine.index.describe()['factory']}, {engine.embedder.dim}-d)")


@app.command()
@user_errors
def search(
    store: StoreArg,
    text: Annotated[Optional[str], typer.Option("--text", "-t", help="What the shopper typed.")] = None,
    image: Annotated[Optional[Path], typer.Option("--image", "-i", help="A photo to search with.")] = None,
    k: Annotated[int, typer.Option("-k", help="How many products to show.")] = 10,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    lexical: Annotated[Optional[bool], typer.Option("--lexical/--no-lexical", help=(
        "Fuse BM25 with the vectors (default: the store's search.lexical)."))] = None,
    fusion: Annotated[Optional[str], typer.Option(
        help="How --lexical fuses: rrf (ranks only) or convex (normalised scores, summed). "
             "Default: the store's search.fusion.")] = None,
    rerank: Annotated[Optional[str], typer.Option(
        help="Rerank with the store's trained reranker: hybrid, listwise, pointwise or sliding.")] = None,
    candidates: Annotated[Optional[int], typer.Option(help="Candidates retrieved for the reranker (default 50).")] = None,
    filter_: Annotated[Optional[str], typer.Option(
        "--filter", "-f", help='Attribute filter applied during the search, e.g. \'category == "Fruit" and price < 20\' '
                               "(==, !=, <, <=, >, >=, in [..], and, or, not, parentheses).")] = None,
    weight: Annotated[Optional[list[str]], typer.Option(
        help="Query weights, e.g. --weight text=0.7 --weight image=0.3 (photo + text), --weight lexical=2 (BM25 in fusion).")] = None,
    boost: Annotated[Optional[list[str]], typer.Option(
        help="Score modifier FIELD=WEIGHT over a numeric attribute: score + WEIGHT*log1p(FIELD), e.g. "
             "--boost popularity=0.05 --boost price=-0.02.")] = None,
    channel: Annotated[Optional[str], typer.Option(
        help="vector (embeddings), or prototype: ID recognition with the trained prototype head "
             "(query -> nearest prototypes -> their products). Default: the store's search.channel.")] = None,
    juice_query: Annotated[Optional[bool], typer.Option(
        "--juice-query/--no-juice-query",
        help="Crop the photo to its salient region before encoding (default: the store's search.juice_query).")] = None,
) -> None:
    """Search STORE by text, by photo, or both; optionally filtered, weighted and boosted."""
    from vitrine.engine.modifiers import parse_modifiers

    if text is None and image is None:
        raise VitrineError("give --text, --image, or both")
    if candidates is not None and not rerank:
        raise VitrineError("--candidates only applies with --rerank")
    weights = {name: float(value) for name, value in parse_modifiers(weight or [], flag="--weight").items()}
    engine = _open(store)
    if fusion is not None:
        engine.config.search.fusion = fusion
    hits = engine.search(text=text, image=image, k=k, lexical=lexical, rerank=rerank, candidates=candidates,
                         filter=filter_, weights=weights or None, modifiers=parse_modifiers(boost or []) or None,
                         channel=channel, juice_query=juice_query)
    if as_json:
        out.print_json(data=[{"rank": h.rank, "id": h.product.id, "title": h.product.title, "score": h.score}
                             for h in hits])
        return
    out.print(_hits_table(hits, f"{text or ''}{' + ' if text and image else ''}{image or ''}"))


@app.command(name="eval")
@user_errors
def eval_(
    store: StoreArg,
    queries: Annotated[Path, typer.Argument(help="Grocery list (path, fine_id, coarse_id) or queries .jsonl.")],
    root: Annotated[Optional[Path], typer.Option(help="Folder the query image paths are relative to.")] = None,
    format: Annotated[str, typer.Option(help="auto, grocery or jsonl.")] = "auto",
    name: Annotated[Optional[str], typer.Option(help="Report name (default: the query file's name).")] = None,
    depth: Annotated[Optional[int], typer.Option(
        help="Results retrieved per query (for MRR; default 100, or --candidates when reranking).")] = None,
    lexical: Annotated[Optional[bool], typer.Option("--lexical/--no-lexical", help="Fuse BM25 with the vectors.")] = None,
    channel: Annotated[Optional[str], typer.Option(
        help="vector, or prototype: ID recognition with the trained prototype head (default: search.channel).")] = None,
    rerank: Annotated[Optional[str], typer.Option(
        help="Rerank each query's candidates with the store's trained reranker: hybrid, listwise, pointwise or "
             "sliding (default: off). With hybrid, also how well its score r = P(exact match) is calibrated on "
             "these labels (ECE, and its range over resampled query sets).")] = None,
    candidates: Annotated[Optional[int], typer.Option(
        help="--rerank: how many retrieved products the reranker orders (default: rerank.candidates).")] = None,
) -> None:
    """Score STORE on labelled queries: Recall@1/5/10, mAP@10, NDCG@10, MRR, and which products are ranked first in
    place of the one a query was about. Writes JSON + markdown reports.

    Rankings are those 'vitrine search' gives with the same options: a channel or a reranker is measured as served.
    """
    from vitrine.catalog import load_queries
    from vitrine.evaluation import evaluate

    engine = _open(store)
    labelled = load_queries(queries, root, format)
    if depth is None:
        depth = (candidates or engine.config.rerank.candidates) if rerank else 100
    report = evaluate(engine, labelled, name=name or queries.stem, depth=depth, lexical=lexical, channel=channel,
                      rerank=rerank, candidates=candidates)
    out.print(f"{report.queries} queries; {report.searched()}")
    out.print(_metrics_table(report))
    if report.calibration:
        out.print(report.calibration_line())
    if report.confusion_line():
        out.print(report.confusion_line(), markup=False)
    out.print("reports: " + ", ".join(str(path) for path in report.write(engine.store.reports_dir)))


@app.command()
@user_errors
def querybank(
    store: StoreArg,
    queries: Annotated[Path, typer.Argument(
        help="Past queries: a .jsonl of {\"text\": ..., \"image\": ...} lines (a query log; 'relevant' not needed) "
             "or a Grocery photo list.")],
    root: Annotated[Optional[Path], typer.Option(help="Folder the query image paths are relative to.")] = None,
    format: Annotated[str, typer.Option(help="auto, grocery or jsonl.")] = "auto",
    k: Annotated[Optional[int], typer.Option(
        help="Bank queries per product whose cosines make its hubness (default: search.querybank_k, 10).")] = None,
) -> None:
    """Fit STORE's query bank: vector searches then lower each product's score by half its hubness.

    A product's hubness is the mean of its k highest cosines with the bank's queries (CSLS; querybank
    normalisation). Products that sit near very many queries win queries that are not theirs; this takes part of
    that back. Give it queries people really ask (a sample of the search log), not the training queries and never
    the catalog's own titles (those sit on the products that should win): hubs are where real queries fall. Fitted in the current embedder's space: after retraining the towers, fit it again.
    vitrine index STORE --set search.querybank=false serves without it.
    """
    from vitrine.catalog import load_queries
    from vitrine.embedding import Query

    engine = _open(store)
    bank = engine.fit_querybank([Query(text=q.text, image=q.image)
                                 for q in load_queries(queries, root, format, labelled=False)], k=k, progress=True)
    summary = bank.describe()
    out.print(f"query bank of {summary['queries']} queries (k = {summary['k']}): hubness of {summary['products']} "
              f"products, highest {summary['hubness_max']}, floor {summary['floor']}; "
              f"saved in {engine.store.index_dir}")


@app.command()
@user_errors
def compare(
    report_a: Annotated[Path, typer.Argument(help="An eval-*.json report (the baseline).")],
    report_b: Annotated[Path, typer.Argument(help="An eval-*.json report of the same queries (the change).")],
    metric: Annotated[Optional[list[str]], typer.Option(help="Only these metrics (repeatable; default: all).")] = None,
) -> None:
    """Compare two 'vitrine eval' reports of the same queries, query by query: for each metric, B - A with a 95%
    bootstrap interval; an interval across 0 is a tie the queries cannot break.

    For example, eval once plain and once with --rerank hybrid (or --channel prototype), then compare the two reports.
    """
    from vitrine.evaluation.compare import compare_reports, load_report

    result = compare_reports(load_report(report_a), load_report(report_b), metrics=metric or None)
    table = Table(title=f"B - A over {result.shared} queries both reports scored", title_justify="left")
    for column in ("metric", "A", "B", "B - A", "95% interval", "verdict"):
        table.add_column(column, justify="left" if column in ("metric", "verdict") else "right")
    for row in result.metrics:
        table.add_row(row.metric, f"{row.a:.4f}", f"{row.b:.4f}", f"{row.difference:+.4f}",
                      f"[{row.low:+.4f}, {row.high:+.4f}]", row.verdict)
    out.print(table)
    if result.only_a or result.only_b:
        out.print(f"not compared: {result.only_a} queries only in A, {result.only_b} only in B")


@app.command()
@user_errors
def train(
    store: StoreArg,
    data: Annotated[str, typer.Option(help="Training data: grocery:PATH, crowdflower:PATH, shopee:PATH, or pairs.jsonl.")],
    objective: Annotated[str, typer.Option(
        help="contrastive (InfoNCE with the configured negatives), or prototype: prototype-ID recognition "
             "with an additive angular margin, in the stages given by --stages.")] = "contrastive",
    stages: Annotated[Optional[str], typer.Option(
        help="--objective prototype: stages to run, e.g. 1,2,3 (1 contrastive warm-up, 2 prototype head on "
             "frozen backbones, 3 end-to-end with the top image blocks). With --resume finished stages are reused.")] = None,
    protocol: Annotated[str, typer.Option(help="Grocery only: 'seen', or 'new' to hold out products with fine_id % 4 == 3.")] = "seen",
    name: Annotated[str, typer.Option(help="Model name: saved as STORE/models/NAME.")] = "default",
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the training pairs.")] = None,
    resume: Annotated[bool, typer.Option("--resume", help="Continue from the last checkpoint of this model.")] = False,
    nproc: Annotated[Optional[int], typer.Option(
        help="Train in N processes with torch DDP (gloo on CPU): each takes a shard of every batch and "
             "sees the others' products as negatives. Features are cached once, before they start.")] = None,
    unfreeze: Annotated[Optional[int], typer.Option(
        help="Fine-tune the image backbone's top N blocks too (0: frozen backbone, the default).")] = None,
    image_encoder: Annotated[Optional[str], typer.Option(
        help="Train on this image backbone instead of the store's encoders.image (this model only, e.g. "
             "efficientnet-lite2@288): a second model to serve beside the first with embedding.also.")] = None,
    image_projection: Annotated[Optional[str], typer.Option(
        help="'none' trains this model without an image projection: the image backbone's pooled features are "
             "the space, moved only by fine-tuned blocks (this model only; default: training.image_projection, "
             "'mlp').")] = None,
    stage3_recipe: Annotated[Optional[str], typer.Option(
        help="--objective prototype: train stage 3 with a named bundle of prototype.stage3_* settings (this model "
             "only): 'classifier' (batches of 32, lr 1e-3, cosine schedule, no dev split: better on products "
             "trained on, worse on ones never trained on) or 'towers' (as stages 1-2; the default).")] = None,
    unfreeze_text: Annotated[Optional[int], typer.Option(
        help="Fine-tune the text model's top N transformer layers too (0: frozen, the default; contrastive "
             "objective). Their input token states are cached, 48 tokens a text.")] = None,
    visual_task: Annotated[Optional[str], typer.Option(
        help="Add a self-supervised image loss: masked-contrastive or masked-regression (needs --unfreeze).")] = None,
    ngrams: Annotated[Optional[int], typer.Option(
        help="Add a learned embedding of hashed word 1-2-grams and character 3-grams to the text towers, with "
             "this many hash buckets (e.g. 262144; 0: none, the default). Helps with codes, sizes and languages "
             "the pretrained text model reads poorly.")] = None,
    set_: SetOpt = None,
) -> None:
    """Train the query and product towers on pairs (cached backbone features), then use them.

    Negatives come from the batch and, if configured, a memory bank (--set training.memory_bank=4096)
    and mined hard negatives (--set training.hard_negatives=8). --unfreeze 1 also fine-tunes the top
    block of the image backbone (its input maps are cached, so this stays affordable on a CPU);
    --unfreeze-text 1 the text model's last transformer layer. --set training.image_views=2 also shows
    each training photo as two fixed random crops of it (encoded once, cached).

    --objective prototype --stages 1,2,3 trains Pailitao-VL's prototype-ID embedding (settings under
    prototype.*, e.g. --set prototype.margin=0.2); search it with --channel prototype for ID recognition.
    There --unfreeze and --unfreeze-text fine-tune in stage 1; stage 2 keeps those blocks and layers frozen, and
    stage 3 trains them on.
    --image-projection none keeps the image backbone's own pooled features as the space (with
    --stages 1,2,3 and prototype.stage3_unfreeze > 0 the backbone's top blocks move it).
    --stage3-recipe classifier trains stage 3 as a classifier is fine-tuned (prototype.stage3_*).

    --nproc 2 trains in two DDP processes (the batch size stays the global one).

    Re-index afterwards: vitrine index STORE --reembed.
    """
    from vitrine.catalog.datasets import load_splits
    from vitrine.training import train_store

    target = _store_with_settings(store, None, set_, must_exist=True)
    overrides = {"training.objective": objective, **({"training.epochs": epochs} if epochs else {}),
                 **({"training.unfreeze_blocks": unfreeze} if unfreeze is not None else {}),
                 **({"training.unfreeze_text_layers": unfreeze_text} if unfreeze_text is not None else {}),
                 **({"training.visual_task": visual_task} if visual_task else {}),
                 **({"training.ngram_buckets": ngrams} if ngrams is not None else {}),
                 **({"prototype.stages": stages} if stages else {}),
                 **({"encoders.image": image_encoder} if image_encoder else {}),
                 **({"training.image_projection": image_projection} if image_projection else {}),
                 **(stage3_recipe_settings(stage3_recipe) if stage3_recipe else {})}
    splits = load_splits(data, protocol=protocol)
    if nproc is not None:  # checked before any feature is computed
        if nproc < 1:
            raise VitrineError(f"--nproc must be at least 1 (processes to train in), got {nproc}")
        overrides["training.nproc"] = nproc
    result = train_store(target, splits.train, config=target.config(overrides), name=name,
                         held_out=splits.held_out, resume=resume)
    folder = target.models_dir / name
    out.print(f"trained {name}: {result.epochs} epochs, {result.steps} steps in {result.seconds:.1f} s, "
              f"final loss {result.losses[-1]:.4f}; peak memory {result.peak_rss_mb:.0f} MB")
    out.print(f"model, loss curve and report: {folder}. Next: vitrine index {store} --reembed")


@app.command(name="train-reranker")
@user_errors
def train_reranker(
    store: StoreArg,
    data: Annotated[str, typer.Option(help="Training data: grocery:PATH, crowdflower:PATH, shopee:PATH, or pairs.jsonl.")],
    protocol: Annotated[str, typer.Option(help="Grocery only: 'seen', or 'new' to hold out products with fine_id % 4 == 3.")] = "seen",
    name: Annotated[Optional[str], typer.Option(help="Reranker name: saved as STORE/models/NAME (default rerank.model).")] = None,
    epochs: Annotated[Optional[int], typer.Option(help="Passes over the training lists.")] = None,
    candidates: Annotated[Optional[int], typer.Option(help="Retrieved candidates per training query (K).")] = None,
    set_: SetOpt = None,
) -> None:
    """Train the Pailitao-VL reranker (chunk listwise + NULL + absolute scorer, and a pointwise scorer) on
    lists of the store's top-K for each training query, then use it: vitrine search STORE --rerank hybrid.

    Lists come from the store's current embedder and index settings (train and index the towers first
    for the best candidates); its mistakes on training queries are the hard negatives. With trained
    towers, rerank.cross_fit (3) fold retrievers are trained first, each without one fold of the training
    queries, and each fold's lists come from the retriever that never saw them.
    """
    from vitrine.catalog.datasets import load_splits

    target = _store_with_settings(store, None, set_, must_exist=True)
    overrides = {**({"rerank.epochs": epochs} if epochs else {}), **({"rerank.candidates": candidates} if candidates else {}),
                 **({"rerank.model": name} if name else {})}
    # Fold retrievers train as the store's towers were trained (their training.json and backbones), unless --set
    # says otherwise.
    config = _towers_settings(target).with_overrides({**parse_assignments(set_ or []), **overrides})
    _train_reranker(target, load_splits(data, protocol=protocol), config)
    if name:
        target.config({"rerank.model": name}).save(target.config_path)
    out.print(f"Next: vitrine search {store} --text ... --rerank hybrid")


def _towers_settings(target) -> Config:
    """The store's settings, with the training settings of the towers it serves, if they are trained."""
    from vitrine.training.run import trained_like

    config = target.config()
    if config.embedding.kind != "trained":
        return config
    return trained_like(config, target.models_dir / config.embedding.model)


def _train_reranker(target, splits, config: Config) -> dict[str, Any]:
    """Lists from the store's retriever (cross-fitted over trained towers), both models, calibration; says how
    it went and where it is."""
    from vitrine.encoders import FeatureCache
    from vitrine.engine.factory import build_embedder
    from vitrine.rerank import product_table
    from vitrine.rerank.train import query_key, train_store_reranker
    from vitrine.training import train_store

    engine = _open(target)
    engine.sync(progress=True)
    table = product_table(target, engine.embedder, progress=True)

    def fold_retriever(fold: int, keys: set[str]):
        """Towers like the store's, trained on the training queries in ``keys`` only (kept, not switched to)."""
        fold_name = f"{config.rerank.model}-fold{fold}"
        out.print(f"cross-fitting: training retriever {fold_name} on {len(keys)} of the training queries")
        train_store(target, [pair for pair in splits.train if query_key(pair) in keys], config=config, name=fold_name,
                    held_out=splits.held_out, activate=False)
        return build_embedder(config.with_overrides({"embedding.model": fold_name}), target.models_dir, None,
                              FeatureCache(target.root / "cache" / "features.sqlite"))

    trained = config.embedding.kind == "trained"
    _, report = train_store_reranker(target, splits, engine.embedder, table, config.rerank,
                                     lexical=engine.lexical, fuse_lexical=config.search.lexical,
                                     rrf_k=config.search.rrf_k, fusion=config.search.fusion,
                                     fold_retriever=fold_retriever if trained else None, progress=True)
    listwise = report["listwise"]
    lists = f"{report['train_lists']} lists" + (f" (cross-fitted, {report['cross_fit_folds']} folds)"
                                                  if report["cross_fit_folds"] else "")
    out.print(f"trained reranker {config.rerank.model} on {lists}, {report['dev_lists']} held back: "
              f"listwise best epoch {listwise['best_epoch']} of {listwise['epochs']} (0: the retriever's own order), "
              f"dev ECE of r {report['calibration'].get('dev_ece_raw', float('nan')):.3f} → "
              f"{report['calibration'].get('dev_ece_calibrated', float('nan')):.3f}")
    if "dev_ece_held_out" in report["calibration"]:
        low, high = report["calibration"]["dev_ece_held_out_95%"]
        out.print(f"ECE of r on queries the calibrator has not seen (each half of the held-back queries calibrated "
                  f"on the other): {report['calibration']['dev_ece_held_out']:.3f}; over resampled sets of those "
                  f"queries, 95% of ECEs within [{low:.3f}, {high:.3f}]")
    if report["dev_ndcg@10"]:
        out.print("held-back queries, NDCG@10: " + ", ".join(f"{name} {value:.3f}" for name, value in
                                                            report["dev_ndcg@10"].items())
                  + f"; default strategy: {report['strategy']} (rerank.strategy, 'auto' picks the best)")
    out.print(f"saved in {target.models_dir / config.rerank.model} (plots: {', '.join(report.get('plots', []))})")
    return report


@app.command()
@user_errors
def govern(
    store: StoreArg,
    data: Annotated[str, typer.Option(help="Training data to govern: grocery:PATH, crowdflower:PATH, shopee:PATH, or pairs.jsonl.")],
    mode: Annotated[str, typer.Option(help="juice (govern inside each sample) or sieve (drop the lowest-scored samples).")] = "juice",
    protocol: Annotated[str, typer.Option(help="Grocery only: 'seen', or 'new' to hold out products with fine_id % 4 == 3.")] = "seen",
    name: Annotated[Optional[str], typer.Option(help="Governed set name: written to STORE/governed/NAME/vN (default: the mode).")] = None,
    engine: Annotated[Optional[str], typer.Option(help="Where the vision branch runs: local or ray (default: batch.engine).")] = None,
    limit: Annotated[int, typer.Option(help="Govern only this many pairs, drawn with governance.seed (0 = all).")] = 0,
    set_: SetOpt = None,
) -> None:
    """Govern a training set with the store's trained towers (DataJuicer): sieve or juice it.

    [bold]sieve[/] scores each sample (alignment in the trained space + image/text quality) and drops the lowest
    governance.sieve_drop share. [bold]juice[/] keeps every sample and governs inside it: each photo becomes its
    salient crop, tagged with the ImageNet classes and catalog keywords it shows; product texts lose HTML,
    boilerplate, spec spam and promotional phrases and gain the tags their photos share. The result is a
    new version under STORE/governed/NAME/ (pairs.jsonl, products.jsonl, audit.jsonl, manifest.json with
    lineage) and a report in STORE/reports/govern-NAME-vN.md. Train on it with:
    vitrine ingest NEWSTORE .../products.jsonl, then vitrine train NEWSTORE --data .../pairs.jsonl.
    """
    from vitrine.catalog.datasets import load_splits
    from vitrine.governance import govern as run_governance
    from vitrine.governance.report import write_report

    target = _store_with_settings(store, None, set_, must_exist=True)
    config = target.config({"batch.engine": engine} if engine else None)
    splits = load_splits(data, protocol=protocol)
    pairs = [pair for pair in splits.train if pair.product_id not in splits.held_out]
    governed = run_governance(target, pairs, mode=mode, name=name, source=data, config=config, limit=limit)
    report = write_report(governed, target.reports_dir, config.governance.report_samples, config.governance.seed)
    counts = ", ".join(f"{k} {v}" for k, v in governed.manifest["counts"].items() if not k.startswith("tokens_removed_"))
    out.print(f"{mode}: {counts}")
    alignment = governed.manifest.get("alignment")
    if alignment:
        out.print(f"alignment in the trained space: {alignment['before']:.4f} before, {alignment['after']:.4f} after")
    out.print(f"governed set: {governed.folder}; report: {report}")


@app.command()
@user_errors
def info(store: StoreArg) -> None:
    """What a store holds: products, embedding, index, trained models, query bank, and when it was built."""
    from vitrine.catalog import Store
    from vitrine.engine.querybank import BANK_FILE, QueryBank

    opened = Store.open(store)
    bank = opened.index_dir / BANK_FILE
    out.print_json(data={**opened.manifest, "models": trained_models(opened),
                         "querybank": QueryBank.load(bank).describe() if bank.is_file() else None})


def trained_models(store: Store) -> dict[str, dict[str, Any]]:
    """A few facts per model folder, from the ``training.json`` every training writes; ``in_use`` marks
    the towers and the reranker the store's configuration serves."""
    config = store.config()
    serving = {config.rerank.model} | (set(config.embedding.models()) if config.embedding.kind == "trained" else set())
    models = {}
    for record in sorted(store.models_dir.glob("*/training.json")):
        name = record.parent.name
        try:
            facts = json.loads(record.read_text())
        except (OSError, ValueError):
            models[name] = {"error": f"unreadable {record}"}
            continue
        if "train_lists" in facts:
            ndcg = {strategy: round(value, 4) for strategy, value in facts.get("dev_ndcg@10", {}).items()}
            models[name] = {"kind": "reranker", "strategy": facts.get("strategy"), "lists": facts.get("train_lists"),
                            "data": facts.get("data"), "held_back_ndcg@10": ndcg}
        else:
            result = facts.get("result", {})
            models[name] = {"kind": "towers", "objective": facts.get("training", {}).get("objective"),
                            "stages": ",".join(sorted(facts.get("stages", {}))) or None,
                            "products": facts.get("products"),
                            "epochs": result.get("epochs"), "best_epoch": result.get("best_epoch")}
        models[name]["in_use"] = name in serving
    return models


@app.command()
@user_errors
def serve(
    store: StoreArg,
    host: Annotated[Optional[str], typer.Option(help="Address to listen on (default: serve.host, 127.0.0.1).")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port (default: serve.port, 8000).")] = None,
    api_key: Annotated[Optional[str], typer.Option(
        "--api-key", help="Key that write endpoints require (X-API-Key header). Prefer the environment variable "
                          "named by serve.api_key_env (VITRINE_API_KEY): a flag shows in the process list.")] = None,
    set_: Annotated[Optional[list[str]], typer.Option(
        "--set", help="Override a setting for this run only, e.g. --set serve.read_requires_key=true.")] = None,
) -> None:
    """Serve STORE over HTTP: the search API (OpenAPI at /docs), metrics, and the web page at /.

    Before it listens, the index is checked against the catalog and whatever it lacks is embedded.
    """
    from vitrine.engine import open as open_engine

    engine = open_engine(store, config_overrides=parse_assignments(set_ or []))
    _serve(engine, host, port, api_key)


def _serve(engine, host: Optional[str], port: Optional[int], api_key: Optional[str]) -> None:
    import uvicorn

    from vitrine.serve import create_app

    config = engine.config.serve
    host, port = host or config.host, port or config.port
    app = create_app(engine, config, api_key=api_key)
    state = app.state.service
    replayed = state.replayed
    if replayed.added or replayed.removed:
        out.print(f"replayed from the catalog: {replayed.added} products embedded, {replayed.removed} removed")
    writes = "enabled (X-API-Key)" if state.api_key else f"disabled (set {config.api_key_env} to enable)"
    out.print(f"vitrine: {len(engine.catalog)} products from {engine.store.root}; writes {writes}")
    out.print(f"serving at [bold]http://{host}:{port}/[/]  (API docs: http://{host}:{port}/docs; Ctrl+C stops)",
              highlight=False)
    # No access log: at hundreds of requests a second it costs more than the searches; /metrics counts them.
    uvicorn.run(app, host=host, port=port, log_level="warning", access_log=False, timeout_keep_alive=5,
                timeout_graceful_shutdown=10)


@app.command()
@user_errors
def demo(
    store: Annotated[Path, typer.Option(help="Where the demo store lives (built if missing).")] = Path(".vitrine/grocery"),
    data: Annotated[Optional[Path], typer.Option(help="The Grocery Store Dataset (default: $VITRINE_DATA/grocery-store).")] = None,
    train: Annotated[bool, typer.Option("--train/--no-train",
                                        help="Train the towers on the Grocery training photos when building.")] = True,
    rerank: Annotated[bool, typer.Option("--rerank/--no-rerank",
                                         help="Train a reranker too when building (with --train).")] = True,
    serve_: Annotated[bool, typer.Option("--serve/--no-serve", help="Start the web page and API afterwards.")] = True,
    host: Annotated[Optional[str], typer.Option(help="Address to listen on.")] = None,
    port: Annotated[Optional[int], typer.Option(help="Port to listen on.")] = None,
) -> None:
    """Build a store from the Grocery Store Dataset (if missing), then serve it: search page at the printed URL.

    Building ingests the 81 products, trains the towers on the training photos with a prototype head (stages 1
    and 2 of the prototype-ID objective; --no-train keeps zero-shot), indexes, trains the reranker (--no-rerank
    skips it), and evaluates photo search on the val split: vector search, ID recognition (the page's "Exact
    product") and the hybrid reranker (the page's "Rerank"). Three to four minutes on two cores.
    """
    from vitrine.catalog import Store

    if not (store / "manifest.json").is_file() or len(Store.open(store).catalog) == 0:
        _build_demo_store(store, data, train, rerank)
    else:
        out.print(f"using the demo store in {store} (delete it to rebuild)")
    engine = _open(store)
    if serve_:
        _serve(engine, host, port, None)


def _build_demo_store(store: Path, data: Optional[Path], train: bool, rerank: bool) -> None:
    from vitrine.catalog import Store, ingest as ingest_products, load_products, load_queries
    from vitrine.evaluation import evaluate

    grocery = (data or data_dir() / "grocery-store").resolve()
    root = grocery / "dataset" if (grocery / "dataset").is_dir() else grocery
    if not (root / "classes.csv").is_file():
        raise VitrineError(f"{grocery}: Grocery Store Dataset not found (set VITRINE_DATA or pass --data)")
    target = Store.create(store)
    out.rule("1. catalog")
    out.print(f"{root}: {ingest_products(target, load_products(root)).summary()}")
    train = train and (root / "train.txt").is_file()
    if train:
        from vitrine.catalog.datasets import load_splits
        from vitrine.training import train_store

        out.rule("2. training the towers on the Grocery training photos (contrastive, then a prototype head)")
        splits = load_splits(f"grocery:{root}")
        config = target.config({"training.objective": "prototype", "prototype.stages": "1,2"})
        started = time.perf_counter()
        train_store(target, splits.train, config=config, held_out=splits.held_out)
        out.print(f"trained in {time.perf_counter() - started:.0f} s (report and loss curve in {target.models_dir})")
    out.rule("3. index")
    engine = _open(target)
    report = engine.sync(rebuild=True)
    out.print(f"{report.total} products indexed ({engine.embedder.dim}-d, {engine.index.describe()['factory']})")
    reranker = None
    if train and rerank:
        out.rule("4. training the reranker on the retriever's top 50 for each training photo")
        _train_reranker(target, splits, _towers_settings(target))
        reranker = "hybrid"
    out.rule("5. photo → product on the val split")
    val = load_queries(root / "val.txt", root)
    runs = [(channel, None) for channel in engine.channels()]
    if reranker:
        runs.append(("vector", reranker))
    for channel, strategy in runs:
        result = evaluate(engine, val, name=f"grocery-val-{channel}" + (f"-{strategy}" if strategy else ""),
                          channel=channel, rerank=strategy, depth=engine.config.rerank.candidates if strategy else 100)
        out.print(f"{result.searched()}:")
        out.print(_metrics_table(result))
        result.write(target.reports_dir)


def _store_with_settings(store: Path, config: Optional[Path], assignments: Optional[list[str]],
                         must_exist: bool = False):
    from vitrine.catalog import Store

    target = Store.open(store) if must_exist else Store.create(store, Config.load(config))
    if assignments:
        target.config(parse_assignments(assignments)).save(target.config_path)
    return target


def _open(store, overrides: dict[str, Any] | None = None):
    from vitrine.engine import open as open_engine

    return open_engine(store, config_overrides=overrides or None)


def _hits_table(hits, title: str) -> Table:
    table = Table(title=title, title_justify="left")
    for column, justify in (("rank", "right"), ("id", "left"), ("title", "left"), ("score", "right")):
        table.add_column(column, justify=justify)
    for hit in hits:
        table.add_row(str(hit.rank), hit.product.id, hit.product.title, f"{hit.score:.4f}")
    return table


def _metrics_table(report) -> Table:
    table = Table(title=f"{report.name}: {report.queries} queries", title_justify="left")
    table.add_column("metric")
    table.add_column("value", justify="right")
    segments = list(report.segments.items())
    for name, part in segments:
        table.add_column(f"{name} ({part['queries']})", justify="right")
    for metric, value in report.metrics.items():
        table.add_row(metric, f"{value:.4f}", *(f"{part['metrics'][metric]:.4f}" for _, part in segments))
    return table


def _reflowed(docstring: str) -> str:
    """A docstring with each paragraph on one line: Rich help keeps a docstring's own line breaks and then wraps
    them again at the terminal's width, which leaves ragged half-empty lines."""
    paragraphs = inspect.cleandoc(docstring).split("\n\n")
    return "\n\n".join(" ".join(line.strip() for line in paragraph.splitlines()) for paragraph in paragraphs)


for _command in app.registered_commands:
    _command.help = _command.help or _reflowed(_command.callback.__doc__ or "")


def main() -> None:
    app()
