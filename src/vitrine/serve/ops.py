"""Operations routes: liveness, readiness (the index checked against the catalog), metrics, info."""


from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from vitrine import __version__
from vitrine.serve import rerank
from vitrine.serve.schemas import Health, Info, Ready
from vitrine.serve.state import ServiceState


def router(state: ServiceState) -> APIRouter:
    routes = APIRouter(tags=["operations"])

    @routes.get("/healthz", response_model=Health)
    def healthz() -> Health:
        """The process answers."""
        return Health(status="ok")

    @routes.get("/readyz", response_model=Ready, responses={503: {"model": Ready}})
    def readyz() -> Response:
        """Ready to search: the index answers for this embedder and holds every catalog product at its
        current version (the start-up replay has run). 503 otherwise."""
        engine = state.engine
        index = engine.index_state()
        reason = engine.stale or (None if index.current else
                                  f"the index lacks {index.missing} products and has {index.outdated} outdated")
        ready = Ready(ready=reason is None, reason=reason, products=index.products, indexed=index.indexed,
                      missing=index.missing, outdated=index.outdated, unsaved_writes=index.unsaved)
        return JSONResponse(ready.model_dump(), status_code=200 if ready.ready else 503)

    @routes.get("/metrics", response_class=Response,
                responses={200: {"content": {CONTENT_TYPE_LATEST.split(";")[0]: {}}}})
    def metrics() -> Response:
        """Prometheus text format: requests, latency per route, seconds per search stage."""
        state.metrics.products.set(len(state.engine.catalog))
        state.metrics.indexed.set(len(state.engine.index))
        return Response(state.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    @routes.get("/api/info", response_model=Info)
    def info() -> Info:
        """What this server offers: for the web page and for clients."""
        engine, config = state.engine, state.config
        return Info(name=engine.store.root.name, version=__version__, products=len(engine.catalog),
                    embedding=str(engine.embedder.describe().get("kind", "unknown")),
                    rerankers=rerank.available(engine), channels=engine.channels(), writes_enabled=state.api_key is not None,
                    reads_need_key=config.read_requires_key,
                    limits={"max_k": config.max_k, "max_query_chars": config.max_query_chars,
                            "max_upload_bytes": config.max_upload_bytes, "max_pixels": config.max_pixels,
                            "max_images": config.max_images})

    return routes
