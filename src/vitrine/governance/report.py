"""The governance report: ``store/reports/govern-<name>-v<N>.md`` with a PNG grid of originals beside
their salient crops and tags, token statistics, and alignment before/after."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vitrine.config import write_atomic
from vitrine.governance.records import GovernedSet


def write_report(governed: GovernedSet, reports_dir: Path, samples: int = 12, seed: int = 0) -> Path:
    """Markdown (and a PNG grid when the set has crops); returns the markdown's path."""
    manifest = governed.manifest
    stem = f"govern-{manifest['name']}-v{manifest['version']}"
    reports_dir.mkdir(parents=True, exist_ok=True)
    lines = [f"# Governance: {manifest['name']} v{manifest['version']} ({manifest['mode']})", "",
             f"Source: `{manifest['source']['data'] or 'pairs'}` ({manifest['source']['pairs']} pairs, digest "
             f"`{manifest['source']['digest'][:12]}`), judged by `models/{manifest['model']['name']}`. "
             f"Set: `{governed.folder}` (output digest `{manifest['output_digest'][:12]}`).", ""]
    lines += ["| count | value |", "|---|---|"] + [f"| {k} | {v} |" for k, v in manifest["counts"].items()]
    counts = manifest["counts"]
    if counts.get("tokens_before"):
        share = counts.get("tokens_removed", 0) / counts["tokens_before"]
        lines += ["", f"**Tokens**: {counts['tokens_before']} in product texts before; {share:.1%} removed "
                      f"({counts.get('tokens_removed', 0)}); {counts.get('tokens_added', 0)} added as tags."]
        reasons = {k.removeprefix("tokens_removed_"): v for k, v in counts.items() if k.startswith("tokens_removed_")}
        if reasons:
            lines += ["", "| removed because | tokens |", "|---|---|"]
            lines += [f"| {reason} | {n} |" for reason, n in sorted(reasons.items(), key=lambda kv: -kv[1])]
    alignment = manifest.get("alignment", {})
    if alignment:
        lines += ["", f"**Alignment** (mean cosine of each sample's query and its product in the trained space): "
                      f"before {alignment['before']:.4f}, after {alignment['after']:.4f}."]
    grid = _grid(governed, reports_dir / f"{stem}.png", samples, seed)
    if grid:
        lines += ["", f"![originals and salient crops]({grid.name})"]
    examples = [e for e in governed.audit if e.kind == "product" and e.why != ("unchanged",)][:8]
    if examples:
        lines += ["", "## Product texts (before → after, why)", ""]
        for entry in examples:
            before = f"{entry.before['title']}. {entry.before['description']}"[:300]
            after = f"{entry.after['title']}. {entry.after['description']}"[:300] if entry.after else "(dropped)"
            lines += [f"- **{entry.key}**: {before!r} → {after!r}; " + "; ".join(entry.why)[:400]]
    path = reports_dir / f"{stem}.md"
    write_atomic(path, ("\n".join(lines) + "\n").encode())
    write_atomic(reports_dir / f"{stem}.json", json.dumps(manifest, indent=2, sort_keys=True).encode())
    return path


def _grid(governed: GovernedSet, path: Path, samples: int, seed: int) -> Path | None:
    """Rows of (original with its salient box, crop with its classes)."""
    entries = [e for e in governed.audit if e.kind == "sample" and e.after and "box" in e.after]
    if not entries or samples <= 0:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.patches as patches
    import matplotlib.pyplot as plt
    from PIL import Image

    chosen = sorted(np.random.default_rng(seed).choice(len(entries), size=min(samples, len(entries)), replace=False))
    columns = 4  # two samples per row
    rows = -(-len(chosen) // 2)
    figure, axes = plt.subplots(rows, columns, figsize=(columns * 3, rows * 3.2), squeeze=False)
    for axis in axes.ravel():
        axis.axis("off")
    for slot, index in enumerate(chosen):
        entry = entries[index]
        original, cropped = axes[slot // 2][(slot % 2) * 2], axes[slot // 2][(slot % 2) * 2 + 1]
        left, top, right, bottom = entry.after["box"]
        original.imshow(Image.open(entry.before["query_image"]).convert("RGB"))
        original.add_patch(patches.Rectangle((left, top), right - left, bottom - top, fill=False, color="lime", lw=2))
        original.set_title(entry.before["product_id"][:28], fontsize=7)
        cropped.imshow(Image.open(governed.folder / entry.after["query_image"]).convert("RGB"))
        cropped.set_title("\n".join(entry.after["classes"][:3])[:80], fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=80)
    plt.close(figure)
    return path
