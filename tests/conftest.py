"""Fixtures the tests draw themselves: small product images and JSONL catalogs."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import pytest
from PIL import Image, ImageDraw

os.environ.setdefault("HF_HUB_OFFLINE", "1")
# Backbones exported to ONNX Runtime go to a folder of this session (and its subprocesses), not the user's cache.
os.environ.setdefault("VITRINE_CACHE_DIR", tempfile.mkdtemp(prefix="vitrine-test-cache-"))

REPO = Path(__file__).resolve().parents[1]


def draw_product(path: Path, shape: str, colour: tuple[int, int, int], size: int = 160,
                 background: tuple[int, int, int] = (245, 245, 240)) -> Path:
    """A product shot: one coloured object on a plain background."""
    image = Image.new("RGB", (size, size), background)
    draw = ImageDraw.Draw(image)
    box = (size * 0.2, size * 0.2, size * 0.8, size * 0.8)
    if shape == "circle":
        draw.ellipse(box, fill=colour)
    elif shape == "square":
        draw.rectangle(box, fill=colour)
    elif shape == "stripes":
        for x in range(0, size, 16):
            draw.rectangle((x, 0, x + 7, size), fill=colour)
    else:
        draw.polygon([(size / 2, size * 0.15), (size * 0.85, size * 0.85), (size * 0.15, size * 0.85)], fill=colour)
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path)
    return path


CATALOG = [
    ("apple", "Red Apple", "A crisp sweet red apple fruit.", "circle", (200, 30, 30), "Fruit"),
    ("mug", "Blue Coffee Mug", "A ceramic mug for hot coffee and tea.", "square", (30, 60, 200), "Kitchen"),
    ("scarf", "Striped Wool Scarf", "A warm knitted scarf for winter.", "stripes", (40, 150, 60), "Clothing"),
    ("cone", "Orange Traffic Cone", "A plastic road safety cone.", "triangle", (250, 140, 20), "Tools"),
]


def write_jsonl(path: Path, records: list[dict]) -> Path:
    path.write_text("".join(json.dumps(record) + "\n" for record in records))
    return path


@pytest.fixture
def catalog_file(tmp_path: Path) -> Path:
    """A products.jsonl with four drawn products, image paths relative to the file."""
    records = []
    for product_id, title, description, shape, colour, category in CATALOG:
        draw_product(tmp_path / "img" / f"{product_id}.png", shape, colour)
        records.append({"id": product_id, "title": title, "description": description,
                        "attributes": {"category": category}, "images": [f"img/{product_id}.png"]})
    return write_jsonl(tmp_path / "products.jsonl", records)


@pytest.fixture(scope="session")
def built_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store over the drawn catalog, ingested and indexed once for the read-only tests."""
    from vitrine.catalog import Store, ingest, load_products
    from vitrine.engine import open as open_engine

    root = tmp_path_factory.mktemp("built")
    records = []
    for product_id, title, description, shape, colour, category in CATALOG:
        draw_product(root / "img" / f"{product_id}.png", shape, colour)
        records.append({"id": product_id, "title": title, "description": description,
                        "attributes": {"category": category}, "images": [f"img/{product_id}.png"]})
    source = write_jsonl(root / "products.jsonl", records)
    store = Store.create(root / "store")
    ingest(store, load_products(source), progress=False)
    open_engine(store).sync(progress=False)
    return root / "store"


@pytest.fixture(scope="session")
def ray_engine():
    """One small local Ray for the whole session (starting Ray costs seconds): the ``BatchConfig`` to pass."""
    import ray

    from vitrine.config import BatchConfig
    from vitrine.parallel import ensure_ray

    # Ray workers import the functions they run by module name; test modules live here, not in the package.
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "tests"), os.environ.get("PYTHONPATH")]))
    engine = BatchConfig(engine="ray", num_cpus=2, workers=2)
    try:
        ensure_ray(engine)
    except Exception:  # noqa: BLE001 - Ray's raylet once missed its 30 s start-up window on a busy 2-core box
        ray.shutdown()
        ensure_ray(engine)
    yield engine
    ray.shutdown()
