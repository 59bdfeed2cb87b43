"""Kill the server with SIGKILL in the middle of a stream of writes; every acknowledged write survives."""

import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pytest

KEY = "crash-key"
ITEMS = ["umbrella", "bicycle helmet", "garden hose", "yoga mat", "desk lamp", "tennis racket", "frying pan",
         "sleeping bag", "bird feeder", "violin", "snow shovel", "fishing rod", "chess set", "rain boots",
         "hair dryer", "telescope", "skateboard", "toaster", "backpack", "watering can", "harmonica", "kite",
         "rolling pin", "hammock", "flashlight", "ice skates", "paint brush", "sewing machine", "globe", "drum"]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(store: Path, port: int) -> subprocess.Popen:
    env = {**os.environ, "VITRINE_API_KEY": KEY}
    return subprocess.Popen([sys.executable, "-c", "from vitrine.cli import main; main()", "serve", str(store),
                             "--port", str(port), "--set", "serve.save_delay=30"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


def wait_ready(process: subprocess.Popen, url: str, timeout: float = 120) -> httpx.Response:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise AssertionError(f"server exited: {process.stderr.read().decode()[-2000:]}")
        try:
            response = httpx.get(f"{url}/readyz", timeout=2)
            if response.status_code == 200:
                return response
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise AssertionError("server did not become ready")


def test_acknowledged_writes_survive_sigkill(built_store: Path, tmp_path: Path):
    store = Path(shutil.copytree(built_store, tmp_path / "store"))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start(store, port)
    acknowledged: list[str] = []
    try:
        wait_ready(server, url)
        stop = threading.Event()

        def stream_writes() -> None:
            # Writes keep coming while the server is killed; only the ones answered 201 count.
            with httpx.Client(base_url=url, headers={"X-API-Key": KEY}, timeout=10) as client:
                for n, item in enumerate(ITEMS * 3):
                    if stop.is_set():
                        return
                    product_id = f"item-{n}"
                    try:
                        response = client.post("/products", json={"id": product_id, "title": f"{item.title()} no. {n}",
                                                                   "description": f"A {item}."})
                    except httpx.HTTPError:
                        return  # the server is gone
                    if response.status_code == 201:
                        acknowledged.append(product_id)

        writer = threading.Thread(target=stream_writes)
        writer.start()
        deadline = time.monotonic() + 60
        while len(acknowledged) < len(ITEMS) and time.monotonic() < deadline:
            time.sleep(0.01)
        server.send_signal(signal.SIGKILL)  # mid-stream: no shutdown hook, no final index save
        server.wait(timeout=10)
        stop.set()
        writer.join(timeout=30)
        assert len(acknowledged) >= len(ITEMS)

        server = start(store, port)
        ready = wait_ready(server, url).json()
        assert ready["missing"] == 0 and ready["outdated"] == 0
        assert ready["products"] == ready["indexed"] >= 4 + len(acknowledged)
        with httpx.Client(base_url=url, timeout=30) as client:
            for product_id in acknowledged:
                assert client.get(f"/products/{product_id}").status_code == 200, product_id
            everything = client.get("/search", params={"q": "product", "k": 100}).json()["results"]
            assert set(acknowledged) <= {hit["product"]["id"] for hit in everything}
            for n in range(0, len(ITEMS), 7):  # and findable by what they are
                hits = client.get("/search", params={"q": f"a {ITEMS[n]}", "k": 3}).json()["results"]
                assert f"item-{n}" in {hit["product"]["id"] for hit in hits}, ITEMS[n]
    finally:
        if server.poll() is None:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=20)
            except subprocess.TimeoutExpired:
                server.kill()
