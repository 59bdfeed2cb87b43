"""The HTTP API over a drawn four-product store: every endpoint, and every kind of bad input."""

import base64
import io
import shutil
import struct
import zlib
from dataclasses import replace
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

import vitrine
from conftest import CATALOG, draw_product
from vitrine.catalog import Product
from vitrine.config import ServeConfig
from vitrine.serve import create_app

KEY = "test-key"
AUTH = {"X-API-Key": KEY}


@pytest.fixture(scope="module")
def store(built_store: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the built store per module: the write tests change it."""
    return Path(shutil.copytree(built_store, tmp_path_factory.mktemp("serve") / "store"))


@pytest.fixture(scope="module")
def engine(store: Path):
    return vitrine.open(store)


@pytest.fixture(scope="module")
def client(engine):
    with TestClient(create_app(engine, ServeConfig(save_delay=0.2), api_key=KEY)) as client:
        yield client


def photo_bytes(tmp_path: Path, product_id: str, suffix: str = "jpg") -> bytes:
    _, _, _, shape, colour, _ = next(row for row in CATALOG if row[0] == product_id)
    path = draw_product(tmp_path / f"{product_id}.{suffix}", shape, tuple(max(0, c - 15) for c in colour), size=240,
                        background=(200, 195, 185))
    return path.read_bytes()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` pixels in a few dozen bytes (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


# --- searching ---------------------------------------------------------------------------------

def test_text_search(client: TestClient):
    response = client.get("/search", params={"q": "a warm winter scarf", "k": 3})
    assert response.status_code == 200
    body = response.json()
    assert body["results"][0]["product"]["id"] == "scarf"
    assert [hit["rank"] for hit in body["results"]] == [1, 2, 3]
    assert {"queue", "encode", "retrieve", "fetch", "total"} <= set(body["timings_ms"])
    assert body["query"] == {"text": "a warm winter scarf", "photo": False, "k": 3, "rerank": "none", "channel": "vector"}
    image = client.get(body["results"][0]["product"]["images"][0])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"


def test_photo_search_multipart_and_json(client: TestClient, tmp_path: Path):
    for product_id in ("apple", "mug"):
        upload = client.post("/search", files={"image": ("any-name.bin", photo_bytes(tmp_path, product_id))},
                             data={"k": "2"})
        assert upload.status_code == 200, upload.text
        assert upload.json()["results"][0]["product"]["id"] == product_id
        assert "decode" in upload.json()["timings_ms"]
    both = client.post("/search", json={"text": "red apple", "image": "data:image/jpeg;base64," +
                                        b64(photo_bytes(tmp_path, "apple")), "k": 2})
    assert both.status_code == 200
    assert both.json()["query"]["photo"] is True and both.json()["results"][0]["product"]["id"] == "apple"
    text_only = client.post("/search", data={"text": "cup for tea"})
    assert text_only.status_code == 200 and text_only.json()["results"][0]["product"]["id"] == "mug"


@pytest.mark.parametrize("params, status, message", [
    ({}, 422, "query parameter q: Field required"),
    ({"q": "apple", "k": 0}, 422, "query parameter k: Input should be greater than or equal to 1"),
    ({"q": "apple", "k": 101}, 422, "less than or equal to 100"),
    ({"q": "apple", "k": "ten"}, 422, "query parameter k: Input should be a valid integer"),
    ({"q": "a" * 501}, 422, "at most 500 characters"),
    ({"q": "   "}, 400, "needs text, a photo, or both"),
    ({"q": "apple", "rerank": "listwise"}, 400, "no reranker in this store"),
])
def test_bad_text_searches(client: TestClient, params, status, message):
    response = client.get("/search", params=params)
    assert response.status_code == status
    assert message in response.json()["error"]


def test_bad_photo_searches(client: TestClient, tmp_path: Path):
    gif = io.BytesIO()
    Image.new("RGB", (20, 20), "red").save(gif, "GIF")
    png = photo_bytes(tmp_path, "apple", "png")
    cases = [
        (dict(files={"image": ("photo.jpg", gif.getvalue())}), 400, "accepted format (JPEG, PNG, WEBP)"),
        (dict(files={"image": ("photo.jpg", b"just some text, named like a photo")}), 400, "accepted format"),
        (dict(files={"image": ("photo.png", png[: len(png) // 2])}), 400, "broken image data"),
        (dict(files={"image": ("bomb.png", png_header_only(30_000, 30_000))}), 400, "than the limit of 40,000,000"),
        (dict(files={"image": ("bomb.png", png_header_only(8_000, 8_000))}), 400, "8000x8000 pixels, more than the limit"),
        (dict(files={"image": ("empty.jpg", b"")}), 400, "photo is empty"),
        (dict(data={"k": "2"}), 400, "needs text, a photo, or both"),
        (dict(data={"text": "apple", "k": "many"}), 422, "body field k: Input should be a valid integer"),
        (dict(json={"text": "apple", "k": 0}), 400, "k must be between 1 and 100"),
        (dict(json={"text": "apple", "colour": "red"}), 422, "body field colour: Extra inputs are not permitted"),
        (dict(json={"image": "not base64 !!"}), 400, "image is not valid base64"),
        (dict(json={"text": "apple", "rerank": "hybrid"}), 400, "no reranker in this store"),
        (dict(content=b"{not json", headers={"content-type": "application/json"}), 422, "JSON"),
        (dict(content=b"hello", headers={"content-type": "text/plain"}), 415, "multipart/form-data"),
    ]
    for request, status, message in cases:
        response = client.post("/search", **request)
        assert response.status_code == status, (request, response.text)
        assert message in response.json()["error"], (request, response.text)


def test_size_limits(engine, tmp_path: Path):
    config = ServeConfig(max_upload_bytes=2_000, max_request_bytes=50_000, max_pixels=100 * 100)
    with TestClient(create_app(engine, config)) as small:
        big_photo = photo_bytes(tmp_path, "apple", "png") + b"\0" * 3_000
        response = small.post("/search", files={"image": ("a.png", big_photo)})
        assert response.status_code == 413 and "limit of 2,000" in response.json()["error"]
        response = small.post("/search", json={"image": b64(b"\xff" * 5_000)})
        assert response.status_code == 413 and "larger than the limit of 2,000" in response.json()["error"]
        declared = small.post("/search", content=b"x" * 60_000, headers={"content-type": "application/json"})
        assert declared.status_code == 413 and "limit of 50,000 bytes" in declared.json()["error"]
        streamed = small.post("/search", content=iter([b"x" * 20_000] * 4), headers={"content-type": "application/json"})
        assert streamed.status_code == 413 and "limit of 50,000 bytes" in streamed.json()["error"]
        buffer = io.BytesIO()
        Image.new("RGB", (200, 200), "blue").save(buffer, "PNG")  # small file, 40,000 pixels
        response = small.post("/search", files={"image": ("p.png", buffer.getvalue())})
        assert response.status_code == 400 and "200x200 pixels, more than the limit of 10,000" in response.json()["error"]


def test_busy_server_answers_503_instead_of_hanging(engine):
    app = create_app(engine, ServeConfig(queue_timeout=0.05))
    with TestClient(app) as client, app.state.service.slots.hold():  # every model slot taken
        response = client.get("/search", params={"q": "apple"})
    assert response.status_code == 503
    assert response.headers["retry-after"] == "1" and "busy" in response.json()["error"]


# --- products ------------------------------------------------------------------------------------

def test_product_lifecycle(client: TestClient, tmp_path: Path):
    kettle = draw_product(tmp_path / "kettle.png", "square", (20, 20, 20)).read_bytes()
    created = client.post("/products", headers=AUTH, json={
        "id": "kettle-1", "title": "Black Electric Kettle", "description": "Boils water for tea in two minutes.",
        "attributes": {"category": "Kitchen", "price": 24.5}, "images": [b64(kettle)]})
    assert created.status_code == 201, created.text
    assert created.json()["created"] is True
    # searchable the moment the write is acknowledged
    hits = client.get("/search", params={"q": "electric kettle to boil water", "k": 1}).json()["results"]
    assert hits[0]["product"]["id"] == "kettle-1"
    product = client.get("/products/kettle-1").json()
    assert product["attributes"] == {"category": "Kitchen", "price": 24.5}
    assert client.get(product["images"][0]).content == kettle

    replaced = client.put("/products/kettle-1", headers=AUTH, json={"title": "Garden Hose",
                                                                    "description": "A long hose for watering."})
    assert replaced.status_code == 200 and replaced.json()["created"] is False
    assert replaced.json()["product"]["images"] == product["images"]  # images kept when left out
    hits = client.get("/search", params={"q": "hose for watering the garden", "k": 1}).json()["results"]
    assert hits[0]["product"]["id"] == "kettle-1"

    assert client.delete("/products/kettle-1", headers=AUTH).json() == {"deleted": "kettle-1"}
    assert client.get("/products/kettle-1").status_code == 404
    ids = {hit["product"]["id"] for hit in client.get("/search", params={"q": "garden hose", "k": 10}).json()["results"]}
    assert "kettle-1" not in ids
    ready = client.get("/readyz").json()
    assert ready["ready"] is True and ready["missing"] == 0 and ready["outdated"] == 0


@pytest.mark.parametrize("method, path, body, headers, status, message", [
    ("post", "/products", {"id": "x1", "title": "X"}, {}, 401, "needs an API key in the X-API-Key header"),
    ("post", "/products", {"id": "x1", "title": "X"}, {"X-API-Key": "wrong"}, 401, "wrong API key"),
    ("delete", "/products/apple", None, {}, 401, "needs an API key"),
    ("post", "/products", {"id": "apple", "title": "Apple"}, AUTH, 409, "'apple' already exists"),
    ("put", "/products/ghost", {"title": "Ghost"}, AUTH, 404, "unknown product id 'ghost'"),
    ("delete", "/products/ghost", None, AUTH, 404, "unknown product id 'ghost'"),
    ("post", "/products", {"id": "x1", "title": ""}, AUTH, 422, "body field title: String should have at least 1 character"),
    ("post", "/products", {"id": "bad id!", "title": "X"}, AUTH, 422, "body field id: String should match pattern"),
    ("post", "/products", {"id": "x1", "title": "X", "price": 3}, AUTH, 422, "body field price: Extra inputs are not permitted"),
    ("post", "/products", {"id": "x1", "title": "X", "images": ["%%%"]}, AUTH, 400, "images[0] is not valid base64"),
    ("post", "/products", {"id": "x1", "title": "X", "images": [b64(b"GIF89a....")]}, AUTH, 400, "accepted format"),
    ("post", "/products", {"id": "x1", "title": "X", "images": [b64(b"x")] * 9}, AUTH, 400, "at most 8"),
    ("put", "/products/apple", {"title": "X", "attributes": {"a": "b" * 30_000}}, AUTH, 400, "attributes are"),
])
def test_bad_writes(client: TestClient, method, path, body, headers, status, message):
    response = client.request(method.upper(), path, json=body, headers=headers)
    assert response.status_code == status, response.text
    assert message in response.json()["error"]
    assert "x1" not in client.app.state.service.engine.catalog  # nothing half-written


def test_unknown_and_malformed_product_ids(client: TestClient):
    response = client.get("/products/nope")
    assert response.status_code == 404 and response.json() == {"error": "unknown product id 'nope'"}
    response = client.get("/products/bad%20id")
    assert response.status_code == 422 and "path parameter product_id" in response.json()["error"]
    assert client.get("/no/such/page").status_code == 404
    assert client.get("/no/such/page").json() == {"error": "Not Found"}


def test_writes_are_refused_without_a_configured_key(engine, monkeypatch):
    monkeypatch.delenv("VITRINE_API_KEY", raising=False)
    with TestClient(create_app(engine, ServeConfig())) as client:
        response = client.post("/products", json={"id": "x2", "title": "X"}, headers={"X-API-Key": "anything"})
        assert response.status_code == 403 and "writing products is disabled" in response.json()["error"]
        assert client.get("/api/info").json()["writes_enabled"] is False
    monkeypatch.setenv("SHOP_KEY", "from-env")
    with TestClient(create_app(engine, ServeConfig(api_key_env="SHOP_KEY"))) as client:
        assert client.get("/api/info").json()["writes_enabled"] is True
        assert client.delete("/products/ghost", headers={"X-API-Key": "from-env"}).status_code == 404


def test_reads_can_require_the_key(engine):
    with TestClient(create_app(engine, ServeConfig(read_requires_key=True), api_key=KEY)) as client:
        assert client.get("/search", params={"q": "apple"}).status_code == 401
        assert client.get("/products/apple").status_code == 401
        assert client.get("/search", params={"q": "apple"}, headers=AUTH).status_code == 200
        assert client.get("/healthz").status_code == 200  # probes stay open


# --- operations, page, persistence ---------------------------------------------------------------

def test_a_channel_the_store_cannot_serve_is_a_400(client: TestClient):
    response = client.get("/search", params={"q": "scarf", "channel": "prototype"})
    assert response.status_code == 400 and "no prototype head" in response.json()["error"]
    response = client.post("/search", json={"text": "scarf", "channel": "telepathy"})
    assert response.status_code == 400 and "this store offers: vector" in response.json()["error"]


def test_health_ready_info_metrics(client: TestClient):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["ready"] is True
    info = client.get("/api/info").json()
    assert info["rerankers"] == ["none"] and info["channels"] == ["vector"]
    assert info["writes_enabled"] is True and info["limits"]["max_k"] == 100
    client.get("/search", params={"q": "apple"})
    metrics = client.get("/metrics")
    assert metrics.headers["content-type"].startswith("text/plain")
    text = metrics.text
    assert 'vitrine_requests_total{method="GET",route="/search",status="200"}' in text
    assert 'vitrine_stage_seconds_bucket{le="0.005",stage="encode"}' in text
    assert 'vitrine_stage_seconds_count{stage="retrieve"}' in text
    assert 'vitrine_request_seconds_bucket' in text


def test_page_docs_and_schema(client: TestClient):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert 'id="q"' in page.text and "/static/app.js" in page.text
    assert "http" not in page.text.replace("http-equiv", "").split("<body")[1].split("xmlns")[0]  # nothing remote
    assert client.get("/static/app.js").status_code == 200
    assert client.get("/docs").status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/search", "/products", "/products/{product_id}", "/healthz", "/readyz", "/metrics"} <= set(schema["paths"])
    assert set(schema["paths"]["/search"]["post"]["requestBody"]["content"]) == {
        "multipart/form-data", "application/json", "application/x-www-form-urlencoded"}


def test_writes_are_saved_on_a_debounce_and_at_shutdown(store: Path, tmp_path: Path):
    root = Path(shutil.copytree(store, tmp_path / "store"))
    app = create_app(vitrine.open(root), ServeConfig(save_delay=3600), api_key=KEY)
    with TestClient(app) as client:
        assert client.post("/products", headers=AUTH, json={"id": "tea", "title": "Green tea"}).status_code == 201
        assert app.state.service.engine.unsaved == 1  # not saved yet: the catalog commit is the durable part
        on_disk = vitrine.open(root).index_state()
        assert on_disk.missing == 1
    # leaving the client shuts the app down, which saves
    assert vitrine.open(root).index_state().current


def test_start_up_replays_what_the_index_lacks(store: Path, tmp_path: Path):
    root = Path(shutil.copytree(store, tmp_path / "store"))
    vitrine.open(root).catalog.upsert([Product("soap", "Lavender hand soap", "Gentle liquid soap for hands.")])
    app = create_app(root)
    assert app.state.service.replayed.added == 1
    with TestClient(app) as client:
        assert client.get("/readyz").json()["missing"] == 0
        hits = client.get("/search", params={"q": "liquid hand soap", "k": 1}).json()["results"]
        assert hits[0]["product"]["id"] == "soap"


def test_default_config_comes_from_the_store(store: Path):
    config = replace(vitrine.open(store).config.serve)
    assert config == ServeConfig()
