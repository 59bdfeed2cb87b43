"""``sieve_set`` and ``juice_set``: a store's training pairs in, a governed set in the store out.

Sieve keeps whole samples or drops them. Juice keeps every sample and governs *inside* it:
- vision branch: each photo gets its salient crop (which joins it as one more sample of its product,
  replaces it, or replaces it only where the judging model finds it closer to the product:
  ``governance.crops``), and the object classes in it (ImageNet labels and zero-shot catalog tags) are recorded;
- text branch: every product text loses its noise (``TextCleaner``) and gains the classes its photos
  show consistently (a tag carried by at least ``enhance_min_share`` of the product's photos).

The vision branch runs through ``vitrine.parallel.map_batches`` (``local`` or ``ray``, same output);
everything else is cheap and runs here, in a fixed order, so a set is reproducible from its inputs.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import numpy as np

from vitrine.catalog import Store
from vitrine.catalog.product import Pair, Product
from vitrine.config import BatchConfig, Config
from vitrine.errors import VitrineError
from vitrine.governance.judge import Judge
from vitrine.governance.records import AuditEntry, GovernedSet, next_version_folder, pairs_digest, write_set
from vitrine.governance.saliency import crop
from vitrine.governance.sieve import image_quality, sieve, sieve_scores
from vitrine.governance.text import TextCleaner, count_tokens, enhance
from vitrine.governance.vision import PhotoJuice, TagVocabulary, tag_vocabulary, vision_factory
from vitrine.parallel import map_batches
from vitrine.progress import progress_bar
from vitrine.training.keywords import extract_keywords

MODES = ("sieve", "juice")
CROP_POLICIES = ("add", "replace", "better")


def govern(store: Store, pairs: Sequence[Pair], *, mode: str, name: str | None = None, source: str = "",
           config: Config | None = None, engine: BatchConfig | str | None = None, limit: int = 0,
           progress: bool = True) -> GovernedSet:
    """Sieve or juice ``pairs`` (against the store's catalog) into ``store/governed/<name>/v<N>``."""
    if mode not in MODES:
        raise VitrineError(f"unknown governance mode {mode!r}: choose one of {', '.join(MODES)}")
    config = config or store.config()
    engine = engine or config.batch
    pairs = sample_pairs(pairs, limit, config.governance.seed)
    if not pairs:
        raise VitrineError("no training pairs to govern")
    products = {p.id: p for p in store.catalog}
    unknown = sorted({p.product_id for p in pairs} - set(products))
    if unknown:
        raise VitrineError(f"pairs name product ids the catalog does not hold ({len(unknown)} ids; first: {unknown[0]!r})")
    folder, version = next_version_folder(store.root, name or mode)
    judge = Judge(store, config, progress=progress)
    manifest = {"name": folder.parent.name, "version": version, "mode": mode, "seed": config.governance.seed,
                "source": {"data": source, "pairs": len(pairs), "digest": pairs_digest(pairs), "store": str(store.root)},
                "model": {"name": judge.folder.name, "folder": str(judge.folder)},
                "governance": asdict(config.governance)}
    run = _sieve if mode == "sieve" else _juice
    governed = run(store, pairs, products, judge, config, engine, folder, manifest, progress)
    return write_set(governed)


def juice(store: Store, pairs: Sequence[Pair], **options: Any) -> GovernedSet:
    """``govern(..., mode="juice")``: every sample kept and governed inside."""
    return govern(store, pairs, mode="juice", **options)


def sieve_set(store: Store, pairs: Sequence[Pair], **options: Any) -> GovernedSet:
    """``govern(..., mode="sieve")``: the lowest-scored samples dropped."""
    return govern(store, pairs, mode="sieve", **options)


def sample_pairs(pairs: Sequence[Pair], limit: int, seed: int) -> list[Pair]:
    """All pairs, or ``limit`` of them drawn with ``seed`` (kept in their original order)."""
    pairs = list(pairs)
    if not limit or limit >= len(pairs):
        return pairs
    chosen = np.random.default_rng(seed).choice(len(pairs), size=limit, replace=False)
    return [pairs[i] for i in sorted(chosen)]


# --- sieve ---------------------------------------------------------------------------------------

def _sieve(store, pairs, products, judge, config, engine, folder, manifest, progress) -> GovernedSet:
    settings = config.governance
    alignment = judge.alignment(pairs, products)
    quality = _quality_signals(pairs, products, progress)
    scores = sieve_scores(alignment, list(quality.values()), settings.quality_weight)
    kept = set(sieve(scores, settings.sieve_drop).tolist())
    audit = []
    for index, (pair, score, align) in enumerate(zip(pairs, scores, alignment)):
        signals = ", ".join(f"{name} {values[index]:.3g}" for name, values in quality.items())
        why = [f"score {score:.3f}: alignment {align:.3f}, {signals}"]
        why.append("kept" if index in kept else f"dropped: in the lowest {settings.sieve_drop:.0%} of scores")
        record = _pair_dict(pair)
        audit.append(AuditEntry("sample", str(index), record, record if index in kept else None, tuple(why)))
    catalog = [products[pid] for pid in sorted(products)]
    manifest["counts"] = {"samples": len(pairs), "kept": len(kept), "dropped": len(pairs) - len(kept)}
    manifest["alignment"] = {"before": float(alignment.mean()),
                             "after": float(alignment[sorted(kept)].mean()) if kept else 0.0}
    return GovernedSet(folder, manifest, [p for i, p in enumerate(pairs) if i in kept],
                       [_absolute_images(store, p) for p in catalog], audit)


def _quality_signals(pairs: Sequence[Pair], products: dict[str, Product], progress: bool) -> dict[str, np.ndarray]:
    photos = [p.query_image for p in pairs if p.query_image]
    if photos:
        measured = [image_quality(path) for path in progress_bar(photos, enabled=progress, desc="image quality")]
        by_photo = dict(zip(photos, measured))
        return {"sharpness": np.array([by_photo[p.query_image][0] if p.query_image else 0.0 for p in pairs]),
                "exposure": np.array([by_photo[p.query_image][1] if p.query_image else 0.0 for p in pairs])}
    cleaner = TextCleaner.fit(p.text for p in products.values())
    tokens, clean_share = {}, {}
    for pid in {p.product_id for p in pairs}:
        text = products[pid].text
        tokens[pid] = count_tokens(text)
        clean_share[pid] = cleaner.clean(text).tokens_after / max(tokens[pid], 1)
    return {"tokens": np.array([np.log1p(tokens[p.product_id]) for p in pairs]),
            "clean share": np.array([clean_share[p.product_id] for p in pairs])}


# --- juice ---------------------------------------------------------------------------------------

def _juice(store, pairs, products, judge, config, engine, folder, manifest, progress) -> GovernedSet:
    settings = config.governance
    if settings.crops not in CROP_POLICIES:
        raise VitrineError(f"unknown governance.crops {settings.crops!r}: choose one of {', '.join(CROP_POLICIES)}")
    photos = list(dict.fromkeys(p.query_image for p in pairs if p.query_image))
    vocabulary = _vocabulary(products.values(), judge, settings.tag_vocabulary) if photos else None
    seen: list[PhotoJuice] = map_batches(
        photos, vision_factory(settings, str(judge.folder), vocabulary), batch_size=settings.batch_size, engine=engine, desc="juice photos")
    by_photo = dict(zip(photos, seen))
    crops = _write_crops(photos, seen, folder / "crops", progress)

    cropped = [replace(p, query_image=str(crops[p.query_image]), query_key=p.query_key or p.query_image)
               if p.query_image else p for p in pairs]
    closer = _crop_is_closer(judge, pairs, cropped, products) if settings.crops == "better" else None
    juiced_pairs, audit, crops_used = [], [], 0
    tags_of: dict[str, list[tuple[str, ...]]] = defaultdict(list)
    for index, (pair, juiced) in enumerate(zip(pairs, cropped)):
        if not pair.query_image:
            juiced_pairs.append(pair)
            audit.append(AuditEntry("sample", str(index), _pair_dict(pair), _pair_dict(pair),
                                    ("no photo: the sample's text is governed through its product",)))
            continue
        found = by_photo[pair.query_image]
        tags_of[pair.product_id].append(found.classes)
        keep_photo = settings.crops == "add" or bool(closer is not None and not closer[index])
        use_crop = settings.crops != "better" or bool(closer[index])
        juiced_pairs += [pair] * keep_photo + [juiced] * use_crop
        crops_used += use_crop
        # Paths inside the set are relative to it, so equal sets are equal wherever they are written.
        after = {**_pair_dict(juiced if use_crop else pair), "box": list(found.box), "classes": list(found.classes)}
        if use_crop:
            after["query_image"] = str(crops[pair.query_image].relative_to(folder))
        why = (_crop_reason(settings.crops, use_crop, found.kept_area, settings.saliency),
               "imagenet: " + (", ".join(f"{label} {p:.2f}" for label, p in found.labels) or "none above threshold"),
               "tags: " + (", ".join(f"{tag} {s:.2f}" for tag, s in found.tags) or "none above threshold"))
        audit.append(AuditEntry("sample", str(index), _pair_dict(pair), after, why))

    cleaner = TextCleaner.fit((p.text for p in products.values()), settings)
    governed_products, token_stats = [], Counter()
    for pid in sorted(products):
        product, entry, counts = _juice_product(products[pid], cleaner, tags_of.get(pid, []), settings)
        governed_products.append(_absolute_images(store, product))
        audit.append(entry)
        token_stats.update(counts)
    manifest["counts"] = {"samples": len(pairs), "juiced_samples": len(juiced_pairs), "photos": len(photos),
                          "crops_used": crops_used,
                          "products": len(products),
                          **{f"tokens_{k}": v for k, v in token_stats.items()}}
    manifest["alignment"] = _alignment_before_after(judge, pairs, juiced_pairs, products, governed_products)
    return GovernedSet(folder, manifest, juiced_pairs, governed_products, audit)


def _crop_is_closer(judge: Judge, photos: Sequence[Pair], crops: Sequence[Pair],
                    products: dict[str, Product]) -> np.ndarray:
    """Per sample: does the judging model put the crop closer to its product than the photo as taken?"""
    scores = judge.alignment([*photos, *crops], products)  # one pass: the product vectors are built once
    return scores[len(photos):] > scores[:len(photos)]


def _crop_reason(policy: str, use_crop: bool, kept_area: float, saliency: str) -> str:
    found = f"salient crop keeps {kept_area:.0%} of the photo ({saliency} saliency)"
    if policy == "add":
        return f"{found}, added beside the photo"
    if policy == "better":
        return f"{found}; " + ("closer to the product than the photo" if use_crop else
                               "photo kept: closer to the product than its crop")
    return found


def _juice_product(product: Product, cleaner: TextCleaner, photo_classes: list[tuple[str, ...]],
                   settings) -> tuple[Product, AuditEntry, Counter]:
    title = cleaner.clean(product.title, title=True)
    description = cleaner.clean(product.description)
    votes = Counter(tag for classes in photo_classes for tag in set(classes))
    needed = max(1, int(np.ceil(settings.enhance_min_share * len(photo_classes))))
    consensus = [tag for tag, n in sorted(votes.items(), key=lambda kv: (-kv[1], kv[0])) if n >= needed]
    enhanced, added = enhance(description.after, consensus[: settings.enhance_tags]) if photo_classes else (description.after, ())
    juiced = replace(product, title=title.after or product.title, description=enhanced)
    why = [f"{r.reason}: {r.text[:120]!r}" for r in (*title.removed, *description.removed)]
    if added:
        why.append(f"enhanced with {', '.join(added)} (shown in at least {needed} of its {len(photo_classes)} photos)")
    counts = Counter({"before": title.tokens_before + description.tokens_before,
                      "removed": max(0, title.tokens_before + description.tokens_before
                                     - title.tokens_after - description.tokens_after),
                      "added": count_tokens(" ".join(added))})
    for removal in (*title.removed, *description.removed):
        counts[f"removed_{removal.reason}"] += count_tokens(removal.text)
    entry = AuditEntry("product", product.id, {"title": product.title, "description": product.description},
                       {"title": juiced.title, "description": juiced.description}, tuple(why) or ("unchanged",))
    return juiced, entry, counts


def _vocabulary(products, judge: Judge, size: int) -> TagVocabulary:
    """The ``size`` catalog keywords found in most products, as vectors of the trained product text tower."""
    keywords = extract_keywords([p.text for p in products])
    counts = Counter(word for words in keywords for word in words)
    words = [w for w, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:size]]
    return tag_vocabulary(words, judge.text_features(words), judge.model)


def _write_crops(photos: list[str], seen: list[PhotoJuice], folder: Path, progress: bool) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    for index, (photo, found) in enumerate(progress_bar(list(zip(photos, seen)), enabled=progress, desc="crops")):
        path = folder / f"{index:06d}.jpg"
        crop(photo, found.box).save(path, quality=92)
        paths[photo] = path
    return paths


def _alignment_before_after(judge: Judge, before: Sequence[Pair], after: Sequence[Pair],
                            raw: dict[str, Product], governed: Sequence[Product]) -> dict[str, float]:
    raw_alignment = judge.alignment(before, raw)
    juiced_alignment = judge.alignment(after, {p.id: p for p in governed})
    return {"before": float(raw_alignment.mean()), "after": float(juiced_alignment.mean())}


def _pair_dict(pair: Pair) -> dict[str, Any]:
    return {k: v for k, v in asdict(pair).items() if v not in (None, "")}


def _absolute_images(store: Store, product: Product) -> Product:
    # Absolute even for a store opened by a relative path: products.jsonl is read from elsewhere.
    return replace(product, images=tuple(str(store.resolve(i).absolute()) if not Path(i).is_absolute() else i
                                         for i in product.images))

