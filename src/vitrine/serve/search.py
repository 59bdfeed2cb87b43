"""Search routes: ``GET /search?q=`` for text, ``POST /search`` for a photo, text, or both."""


import json
import time
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request
from fastapi.exceptions import RequestValidationError
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from vitrine.engine import SearchOptions
from vitrine.engine.modifiers import parse_modifiers
from vitrine.errors import VitrineError
from vitrine.serve import channels, rerank
from vitrine.serve.schemas import Error, Hit, ProductOut, SearchJSON, SearchResponse
from vitrine.serve.security import guard
from vitrine.serve.state import ServiceState
from vitrine.serve.uploads import check_size, decode_base64, decode_photo

ERRORS = {status: {"model": Error} for status in (400, 401, 403, 413, 415, 422, 503)}


def router(state: ServiceState) -> APIRouter:
    config = state.config
    routes = APIRouter(tags=["search"], dependencies=[Depends(guard(state.api_key, required=config.read_requires_key,
                                                                     action="searching"))])

    @routes.get("/search", response_model=SearchResponse, responses=ERRORS)
    def search_text(
        q: Annotated[str, Query(min_length=1, max_length=config.max_query_chars, description="What the shopper typed.")],
        k: Annotated[int, Query(ge=1, le=config.max_k, description="How many products.")] = 10,
        rerank_: Annotated[str, Query(alias="rerank", max_length=40, description="Reranker: see /api/info.")] = rerank.NONE,
        channel: Annotated[str, Query(max_length=40, description=(
            "vector, or prototype: ID recognition for exact-product lookup (see /api/info)."))] = channels.VECTOR,
        filter_: Annotated[str | None, Query(alias="filter", max_length=1000, description=(
            'Attribute filter applied during the search, e.g. category == "Fruit" and price < 20.'))] = None,
        boost: Annotated[list[str] | None, Query(max_length=200, description=(
            "Score modifier FIELD=WEIGHT (repeatable): score + WEIGHT·log1p(FIELD), e.g. popularity=0.05."))] = None,
    ) -> SearchResponse:
        """Products for a text query, optionally filtered and boosted."""
        options = SearchOptions(filter=filter_, modifiers=parse_modifiers(boost or [], flag="boost") or None)
        return run_search(state, q, None, k, rerank_, options, channel)

    @routes.post("/search", response_model=SearchResponse, responses=ERRORS, openapi_extra=_post_body(state))
    async def search_post(request: Request) -> SearchResponse:
        """Products for a photo, text, or both: multipart (``image`` file, ``text``, ``k``, ``rerank``, ``channel``)
        or JSON (``image`` as base64)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind in ("multipart/form-data", "application/x-www-form-urlencoded"):
            query, photo = await _from_form(request, state)
        elif kind == "application/json":
            query, photo = _from_json(await request.body(), state)
        else:
            raise HTTPException(415, "send the search as multipart/form-data (image file), application/json "
                                     "(image as base64) or an urlencoded form (text only)")
        return await run_in_threadpool(run_search, state, query.text, photo, query.k, query.rerank, _options(query),
                                       query.channel)

    return routes


def run_search(state: ServiceState, text: str | None, photo: bytes | None, k: int, choice: str,
               options: SearchOptions | None = None, channel: str = channels.VECTOR) -> SearchResponse:
    """Check the query, wait for a model slot, decode the photo, search; with timings per stage."""
    started = time.perf_counter()
    config, engine = state.config, state.engine
    text = text if text and text.strip() else None
    if text is None and photo is None:
        raise VitrineError("a search needs text, a photo, or both")
    if text is not None and len(text) > config.max_query_chars:
        raise VitrineError(f"query text is {len(text)} characters; the limit is {config.max_query_chars}")
    if not 1 <= k <= config.max_k:
        raise VitrineError(f"k must be between 1 and {config.max_k}, got {k}")
    choice = rerank.checked(choice, engine)
    channel = channels.checked(channel, engine)
    with state.slots.hold() as waited:
        timings = {"queue": waited}
        image = None
        if photo is not None:
            decoding = time.perf_counter()
            image = decode_photo(photo, "photo", config)
            timings["decode"] = time.perf_counter() - decoding
        result = engine.search_timed(text=text, image=image, k=k, rerank=rerank.engine_choice(choice), options=options,
                                     channel=channel)
    timings.update(result.timings)
    timings["total"] = time.perf_counter() - started
    state.metrics.observe_stages(timings)
    return SearchResponse(
        query={"text": text, "photo": photo is not None, "k": k, "rerank": choice, "channel": channel,
               **({"filter": options.filter} if options and options.filter else {}),
               **({"weights": options.weights} if options and options.weights else {}),
               **({"modifiers": options.modifiers} if options and options.modifiers else {})},
        results=[Hit(rank=hit.rank, score=hit.score, product=ProductOut.of(hit.product)) for hit in result.hits],
        timings_ms={stage: round(seconds * 1000, 3) for stage, seconds in timings.items()})


async def _from_form(request: Request, state: ServiceState) -> tuple[SearchJSON, bytes | None]:
    try:
        form = await request.form(max_files=1, max_fields=12)
    except HTTPException:
        raise
    except Exception as exc:  # noqa: BLE001 - a malformed multipart body is the sender's mistake
        raise HTTPException(400, f"unreadable multipart body ({exc})") from None
    try:
        upload = form.get("image")
        photo = None
        if isinstance(upload, UploadFile):
            photo = check_size(await upload.read(state.config.max_upload_bytes + 1), "photo",
                               state.config.max_upload_bytes)
        elif upload:
            raise VitrineError("the image field must be a file upload")
        fields = {name: form.get(name) for name in ("text", "k", "rerank", "channel", "filter", "weights", "modifiers")
                  if isinstance(form.get(name), str)}
        text = fields.get("text") or (form.get("q") if isinstance(form.get("q"), str) else None)
        query = _validated({"text": text, "k": fields.get("k", 10), "rerank": fields.get("rerank", rerank.NONE),
                            "channel": fields.get("channel") or channels.VECTOR, "filter": fields.get("filter") or None,
                            "weights": _json_field(fields, "weights"), "modifiers": _json_field(fields, "modifiers")})
        return query, photo
    finally:
        await form.close()


def _json_field(fields: dict, name: str) -> object:
    """A form field holding a JSON object (``weights``, ``modifiers``); pydantic checks its shape."""
    if not fields.get(name):
        return None
    try:
        return json.loads(fields[name])
    except ValueError:
        raise VitrineError(f"form field {name!r} must be a JSON object like {{\"popularity\": 0.05}}") from None


def _options(query: SearchJSON) -> SearchOptions:
    return SearchOptions(filter=query.filter, weights=query.weights, modifiers=query.modifiers)


def _from_json(body: bytes, state: ServiceState) -> tuple[SearchJSON, bytes | None]:
    try:
        query = SearchJSON.model_validate_json(body)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]) from None
    photo = decode_base64(query.image, "image", state.config.max_upload_bytes) if query.image else None
    return query, photo


def _validated(fields: dict) -> SearchJSON:
    try:
        return SearchJSON.model_validate(fields)
    except ValidationError as exc:
        raise RequestValidationError([{**error, "loc": ("body", *error["loc"])} for error in exc.errors()]) from None


def _post_body(state: ServiceState) -> dict:
    config = state.config
    fields = {
        "text": {"type": "string", "maxLength": config.max_query_chars},
        "k": {"type": "integer", "minimum": 1, "maximum": config.max_k, "default": 10},
        "rerank": {"type": "string", "default": rerank.NONE},
        "channel": {"type": "string", "default": channels.VECTOR},
        "filter": {"type": "string", "maxLength": 1000},
    }
    return {"requestBody": {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "properties": {
            **fields, "image": {"type": "string", "format": "binary", "description": "JPEG, PNG or WebP photo"}}}},
        "application/x-www-form-urlencoded": {"schema": {"type": "object", "properties": fields}},
        "application/json": {"schema": {"type": "object", "additionalProperties": False, "properties": {
            **fields, "image": {"type": "string", "description": "base64 JPEG, PNG or WebP photo"},
            "weights": {"type": "object", "additionalProperties": {"type": "number"}},
            "modifiers": {"type": "object", "additionalProperties": {"type": "number"}}}}},
    }}}
