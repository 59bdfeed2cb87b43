"""The web page in a real browser (Playwright driving Debian's Chromium): type, upload a photo, see results."""

import contextlib
import re
import shutil
import socket
import threading
import time
from pathlib import Path

import pytest
import uvicorn

import vitrine
from conftest import REPO, draw_product
from vitrine.config import ServeConfig
from vitrine.serve import create_app

CHROMIUM = next((path for path in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(path).exists()), None)
ARTIFACTS = REPO / "tests" / "artifacts"

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="Chromium not installed (make test installs it with apt-get)")


@pytest.fixture(scope="module")
def server_url(built_store: Path, tmp_path_factory: pytest.TempPathFactory):
    store = Path(shutil.copytree(built_store, tmp_path_factory.mktemp("browser") / "store"))
    with serving(vitrine.open(store)) as url:
        yield url


@contextlib.contextmanager
def serving(engine):
    """The app on a free port of 127.0.0.1, in a thread, for as long as the block runs."""
    app = create_app(engine, ServeConfig())
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)


def test_search_page_by_text_and_photo(server_url: str, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    photo = draw_product(tmp_path / "shopper-photo.jpg", "circle", (190, 25, 25), size=300, background=(205, 200, 190))
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        errors: list[str] = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(server_url)
        expect(page.locator("#store-meta")).to_contain_text("4 products")
        expect(page.locator("#rerank")).to_be_disabled()  # /api/info offers no reranker yet
        expect(page.locator("#exact-switch")).to_be_hidden()  # nor ID recognition: the towers have no head

        page.fill("#q", "a warm winter scarf")
        page.press("#q", "Enter")
        first = page.locator("#grid .card").first
        expect(first).to_contain_text("Striped Wool Scarf")
        expect(first.locator(".score")).to_have_attribute("title", "similarity score")
        expect(page.locator("#results-meta")).to_contain_text("4 products")
        # Images load after the cards render: wait (bounded) for the first one to decode.
        page.wait_for_function(
            "() => { const img = document.querySelector('#grid .card img');"
            " return img !== null && img.complete && img.naturalWidth > 0; }",
            timeout=10_000,
        )

        page.fill("#q", "")
        page.set_input_files("#photo", str(photo))
        expect(page.locator("#photo-chip")).to_be_visible()
        expect(page.locator("#results-title")).to_contain_text("your photo")
        expect(page.locator("#grid .card").first).to_contain_text("Red Apple")
        page.screenshot(path=str(ARTIFACTS / "search-photo.png"), full_page=True)

        page.locator("#grid .card").first.click()
        expect(page.locator("#product-title")).to_have_text("Red Apple")
        expect(page.locator("#product-attributes")).to_contain_text("Fruit")
        page.screenshot(path=str(ARTIFACTS / "product-page.png"), full_page=True)

        page.goto(f"{server_url}/#/p/no-such-product")
        expect(page.locator("#message")).to_contain_text("unknown product id")
        browser.close()
    assert not errors
    assert (ARTIFACTS / "search-photo.png").stat().st_size > 10_000


def test_exact_product_switch_searches_by_id_recognition(built_store: Path, tmp_path: Path):
    from playwright.sync_api import expect, sync_playwright

    from test_prototypes import STAGES
    from test_training import shopper_photos
    from vitrine.catalog import Store
    from vitrine.training import train_store

    store = Store.open(shutil.copytree(built_store, tmp_path / "store"))
    config = store.config({**STAGES, "training.objective": "prototype", "prototype.stages": "1,2"})
    train_store(store, shopper_photos(tmp_path / "photos", per_product=2), config=config, name="proto", progress=False)
    engine = vitrine.open(store)
    engine.sync(rebuild=True, progress=False)
    expected = engine.search(text="a warm winter scarf", k=4, channel="prototype")
    with serving(engine) as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu"])
        page = browser.new_page(viewport={"width": 1200, "height": 800})
        page.goto(url)
        expect(page.locator("#exact-switch")).to_be_visible()
        page.fill("#q", "a warm winter scarf")
        page.press("#q", "Enter")
        expect(page.locator("#results-meta")).not_to_contain_text("exact product")
        page.click("#exact-switch")  # searches again, through the prototype channel
        expect(page.locator("#results-meta")).to_contain_text("exact product (ID recognition)")
        expect(page.locator("#grid .card").first).to_contain_text(expected[0].product.title)
        expect(page.locator("#grid .card .score").first).to_have_text(f"{expected[0].score:.3f}")
        expect(page.locator("#grid .card .score").first).to_have_attribute("title", re.compile("prototype"))
        page.screenshot(path=str(ARTIFACTS / "search-exact.png"))
        browser.close()
