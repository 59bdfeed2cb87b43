"""Product routes: read one, and (with the API key) create, replace and delete.

A write is answered only after the catalog has committed it and the index holds its new vectors,
so the product is searchable the moment the client hears back.
"""


import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Response
from starlette.concurrency import run_in_threadpool

from vitrine.catalog import Product
from vitrine.catalog.images import WEB_FORMATS
from vitrine.catalog.ingest import store_image_bytes
from vitrine.errors import VitrineError
from vitrine.serve.schemas import ID_PATTERN, Deleted, Error, ProductCreate, ProductFields, ProductOut, WriteResult
from vitrine.serve.security import guard
from vitrine.serve.state import ServiceState
from vitrine.serve.uploads import decode_base64

ProductId = Annotated[str, Path(pattern=ID_PATTERN, description="The product's id.")]
ERRORS = {status: {"model": Error} for status in (400, 401, 403, 404, 409, 413, 422, 503)}


def router(state: ServiceState) -> APIRouter:
    reads = APIRouter(tags=["products"], dependencies=[Depends(guard(
        state.api_key, required=state.config.read_requires_key, action="reading products"))])
    writes = APIRouter(tags=["products"], dependencies=[Depends(guard(state.api_key, required=True,
                                                                      action="writing products"))])

    @reads.get("/products/{product_id}", response_model=ProductOut, responses=ERRORS)
    def get_product(product_id: ProductId) -> ProductOut:
        """One product by id."""
        return ProductOut.of(state.engine.catalog.get(product_id))

    @writes.post("/products", response_model=WriteResult, status_code=201, responses=ERRORS)
    async def create_product(body: ProductCreate) -> WriteResult:
        """Add a product (409 if the id exists). Searchable as soon as this answers."""
        return await run_in_threadpool(write, state, body.id, body, True)

    @writes.put("/products/{product_id}", response_model=WriteResult, responses=ERRORS)
    async def replace_product(product_id: ProductId, body: ProductFields) -> WriteResult:
        """Replace a product (404 if unknown). Without ``images`` it keeps the images it has."""
        return await run_in_threadpool(write, state, product_id, body, False)

    @writes.delete("/products/{product_id}", response_model=Deleted, responses=ERRORS)
    async def delete_product(product_id: ProductId) -> Deleted:
        """Remove a product from the catalog and the index."""
        await run_in_threadpool(state.engine.remove, [product_id], save=False)
        state.saver.touch()
        return Deleted(deleted=product_id)

    combined = APIRouter()
    combined.include_router(reads)
    combined.include_router(writes)
    return combined


def write(state: ServiceState, product_id: str, body: ProductFields, create: bool) -> WriteResult:
    started = time.perf_counter()
    config = state.config
    _check_attributes(body.attributes)
    if body.images is not None and len(body.images) > config.max_images:
        raise VitrineError(f"{len(body.images)} images; a product may have at most {config.max_images}")
    if body.images is None:
        images = () if create else state.engine.catalog.get(product_id).images
    else:
        # Images are written (content-addressed, fsynced) before the catalog names them.
        images = tuple(store_image_bytes(state.engine.store, decode_base64(data, f"images[{n}]", config.max_upload_bytes),
                                         f"images[{n}]", config.max_pixels, WEB_FORMATS)
                       for n, data in enumerate(body.images))
    product = Product(id=product_id, title=body.title, description=body.description, attributes=body.attributes,
                      images=images, group=body.group)
    stored = time.perf_counter()
    with state.slots.hold():  # embedding a product uses the same cores as searches: take turns
        counts = state.engine.upsert([product], must_be_new=create, must_exist=not create, save=False)
    state.saver.touch()
    done = time.perf_counter()
    timings = {"images": stored - started, "index": done - stored, "total": done - started}
    state.metrics.stages.labels("write").observe(done - started)
    return WriteResult(product=ProductOut.of(product), created=counts.added == 1,
                       timings_ms={stage: round(seconds * 1000, 3) for stage, seconds in timings.items()})


def _check_attributes(attributes: dict) -> None:
    try:
        size = len(json.dumps(attributes, allow_nan=False))
    except ValueError:
        raise VitrineError("attributes must be plain JSON (no NaN or infinity)") from None
    if size > 20_000:
        raise VitrineError(f"attributes are {size:,} bytes of JSON; the limit is 20,000")


