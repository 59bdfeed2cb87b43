"""Every error becomes a JSON ``{"error": "..."}`` with a 4xx status that says what was wrong."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from vitrine.errors import ProductExistsError, StoreError, UnknownProductError, VitrineError
from vitrine.serve.state import Busy
from vitrine.serve.uploads import TooLarge

log = logging.getLogger(__name__)

STATUS: list[tuple[type[Exception], int]] = [  # first match wins: subclasses before their bases
    (UnknownProductError, 404),
    (ProductExistsError, 409),
    (TooLarge, 413),
    (Busy, 503),
    (StoreError, 503),
    (VitrineError, 400),
]


def install(app: FastAPI) -> None:
    app.add_exception_handler(VitrineError, _vitrine_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(HTTPException, _http_error)
    app.add_exception_handler(Exception, _unexpected)


def error(status: int, message: str, **extra: Any) -> JSONResponse:
    headers = {"Retry-After": "1"} if status == 503 else None
    return JSONResponse({"error": message, **extra}, status_code=status, headers=headers)


async def _vitrine_error(request: Request, exc: Exception) -> JSONResponse:
    status = next(code for kind, code in STATUS if isinstance(exc, kind))
    return error(status, str(exc))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    problems = [describe(problem) for problem in exc.errors()]
    return error(422, "; ".join(problems) or "invalid request",
                 detail=[{"loc": list(map(str, p.get("loc", ()))), "msg": str(p.get("msg", ""))} for p in exc.errors()])


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, HTTPException)
    response = error(exc.status_code, str(exc.detail))
    response.headers.update(exc.headers or {})
    return response


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.exception("unexpected error answering %s %s", request.method, request.url.path)
    return error(500, "internal error; it has been logged")


def describe(problem: dict[str, Any]) -> str:
    """``{"loc": ("query", "k"), "msg": "..."}`` → ``"query parameter k: ..."``."""
    where = [str(part) for part in problem.get("loc", ())]
    place = {"query": "query parameter", "path": "path parameter", "body": "body field", "header": "header"}
    if where and where[0] in place:
        kind, rest = place[where[0]], where[1:]
        label = f"{kind} {'.'.join(rest)}" if rest else ("body" if kind == "body field" else kind)
    else:
        label = ".".join(where) or "request"
    return f"{label}: {problem.get('msg', 'invalid')}"
