"""Live writes through the engine: committed, searchable at once, replayed after a lost index save."""

import shutil
import threading
from pathlib import Path

import pytest

import vitrine
from conftest import draw_product
from vitrine.catalog import Product
from vitrine.catalog.ingest import store_image_bytes
from vitrine.errors import ImageError, ProductExistsError, UnknownProductError


@pytest.fixture
def store_copy(built_store: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(built_store, tmp_path / "store"))


def test_upsert_is_searchable_at_once_and_remove_drops_it(store_copy: Path, tmp_path: Path):
    engine = vitrine.open(store_copy)
    photo = draw_product(tmp_path / "kettle.png", "square", (20, 20, 20)).read_bytes()
    image = store_image_bytes(engine.store, photo, "kettle")
    counts = engine.upsert([Product("kettle", "Black Electric Kettle", "Boils water for tea.", images=(image,))])
    assert counts.added == 1
    assert engine.search(text="electric kettle to boil water", k=1)[0].product.id == "kettle"
    assert engine.index_state().current

    engine.upsert([Product("kettle", "Garden Hose", "A long rubber hose for watering plants.", images=(image,))],
                  must_exist=True)
    assert engine.search(text="hose for watering the garden", k=1)[0].product.id == "kettle"

    assert engine.remove(["kettle"]) == 1
    assert "kettle" not in {hit.product.id for hit in engine.search(text="hose", k=10)}
    assert engine.index_state().current


def test_create_only_and_update_only_are_enforced(store_copy: Path):
    engine = vitrine.open(store_copy)
    with pytest.raises(ProductExistsError, match="'apple' already exists"):
        engine.upsert([Product("apple", "Another apple")], must_be_new=True)
    with pytest.raises(UnknownProductError, match="'ghost'"):
        engine.upsert([Product("ghost", "Nobody")], must_exist=True)
    with pytest.raises(UnknownProductError, match="'ghost'"):
        engine.remove(["ghost"])
    assert engine.catalog.get("apple").title == "Red Apple"  # nothing was committed
    assert "ghost" not in engine.catalog


def test_unsaved_writes_are_replayed_from_the_catalog(store_copy: Path):
    engine = vitrine.open(store_copy)
    engine.upsert([Product("tea", "Green tea", "Loose leaf sencha.")], save=False)
    assert engine.unsaved == 1
    # A new process over the same store: the index file lacks the product, the catalog has it.
    reopened = vitrine.open(store_copy)
    state = reopened.index_state()
    assert (state.missing, state.current) == (1, False)
    assert reopened.sync(progress=False).added == 1
    assert reopened.index_state().current
    assert reopened.search(text="japanese green tea leaves", k=1)[0].product.id == "tea"


def test_search_timed_reports_each_stage(built_store: Path):
    result = vitrine.open(built_store).search_timed(text="apple", k=2)
    assert [hit.product.id for hit in result.hits][:1] == ["apple"]
    assert set(result.timings) == {"encode", "retrieve", "fetch"}
    assert all(seconds >= 0 for seconds in result.timings.values())
    assert result.timings["encode"] > result.timings["retrieve"]


def test_concurrent_writers_and_readers(store_copy: Path):
    engine = vitrine.open(store_copy)
    errors: list[BaseException] = []

    def write(worker: int) -> None:
        try:
            for n in range(5):
                engine.upsert([Product(f"w{worker}-{n}", f"Product {n} from writer {worker}")], save=n == 4)
        except BaseException as exc:  # noqa: BLE001 - collected and asserted below
            errors.append(exc)

    def read() -> None:
        try:
            for _ in range(15):
                assert engine.search(text="product", k=5)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(3)] + [threading.Thread(target=read) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    assert vitrine.open(store_copy).index_state().current
    assert len(engine.catalog) == 4 + 15


def test_store_image_bytes_refuses_formats_outside_the_list(store_copy: Path, tmp_path: Path):
    store = vitrine.open(store_copy).store
    gif = tmp_path / "x.gif"
    draw_product(gif, "circle", (1, 2, 3))
    with pytest.raises(ImageError, match="accepted format"):
        store_image_bytes(store, gif.read_bytes(), "x.gif", formats={"JPEG", "PNG", "WEBP"})
