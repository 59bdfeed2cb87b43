"""The app factory: ``create_app(store_or_engine)`` → a FastAPI app that serves one store.

Everything the app needs lives on ``app.state.service`` (no module-level state), so tests can build
as many apps as they like.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources
from pathlib import Path

from fastapi import FastAPI
from PIL import Image
from fastapi.responses import FileResponse
from fastapi.staticfiles import StaticFiles
from starlette.concurrency import run_in_threadpool

from vitrine import __version__
from vitrine.catalog import Store
from vitrine.config import ServeConfig
from vitrine.embedding import Query
from vitrine.engine import SearchEngine, open as open_engine
from vitrine.serve import handlers, ops, products, search
from vitrine.serve.metrics import Metrics, RequestMetrics
from vitrine.serve.persistence import DebouncedSaver
from vitrine.serve.security import resolve_key
from vitrine.serve.state import ModelSlots, ServiceState
from vitrine.serve.uploads import BodyLimit

STATIC = Path(str(resources.files("vitrine.serve") / "static"))


def create_app(store_or_engine: str | Path | Store | SearchEngine, config: ServeConfig | None = None, *,
               api_key: str | None = None) -> FastAPI:
    """A FastAPI app over a store (or an open engine).

    ``config`` defaults to the store's ``[serve]`` settings; ``api_key`` defaults to the environment
    variable named by ``config.api_key_env`` (no key: writes are refused). Before the app is returned
    the index is checked against the catalog and anything the catalog has and the index lacks is
    embedded (the replay that makes acknowledged writes survive a crash).
    """
    engine = store_or_engine if isinstance(store_or_engine, SearchEngine) else open_engine(store_or_engine)
    config = config or engine.config.serve
    replayed = engine.sync(progress=False)
    if config.warm_up:
        _warm_up(engine)
    state = ServiceState(engine=engine, config=config, api_key=resolve_key(config, api_key), metrics=Metrics(),
                         slots=ModelSlots(config.encode_slots, config.queue_timeout),
                         saver=DebouncedSaver(engine, config.save_delay), replayed=replayed)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await run_in_threadpool(state.saver.flush)  # a clean stop leaves nothing to replay

    app = FastAPI(title="vitrine", version=__version__, lifespan=lifespan,
                  description="Multi-modal product search: text, photo, or both. Writes need the X-API-Key header.")
    app.state.service = state
    handlers.install(app)
    app.include_router(search.router(state))
    app.include_router(products.router(state))
    app.include_router(ops.router(state))

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    engine.store.images_dir.mkdir(exist_ok=True)
    app.mount("/images", StaticFiles(directory=engine.store.images_dir), name="images")
    # The last added runs outermost: the body cap acts before anything reads the body.
    app.add_middleware(RequestMetrics, metrics=state.metrics)
    app.add_middleware(BodyLimit, limit=config.max_request_bytes)
    return app


def _warm_up(engine: SearchEngine) -> None:
    """Load both backbones and run their first (slowest) pass now, not in a shopper's request."""
    photo = Image.new("RGB", (64, 64), (200, 200, 200))
    engine.embedder.encode_queries([Query(text="warm up"), Query(image=photo)])
