"""API keys: writes always need one; reads only when ``serve.read_requires_key`` says so."""

from __future__ import annotations

import os
import secrets
from collections.abc import Callable

from fastapi import Security
from fastapi.security import APIKeyHeader
from starlette.exceptions import HTTPException

from vitrine.config import ServeConfig

HEADER = "X-API-Key"
_header = APIKeyHeader(name=HEADER, auto_error=False, description="The key given to 'vitrine serve'.")


def resolve_key(config: ServeConfig, given: str | None = None) -> str | None:
    """The key: given explicitly (``--api-key``), else the environment variable the config names."""
    key = given if given is not None else os.environ.get(config.api_key_env, "")
    return key or None


def guard(key: str | None, *, required: bool, action: str) -> Callable[..., None]:
    """A dependency that lets a request through only with the right key (if ``required``)."""

    def check(sent: str | None = Security(_header)) -> None:
        if not required:
            return
        if key is None:
            raise HTTPException(403, f"{action} is disabled: start the server with an API key "
                                     f"(--api-key or the environment variable it names)")
        if sent is None:
            raise HTTPException(401, f"{action} needs an API key in the {HEADER} header",
                                headers={"WWW-Authenticate": HEADER})
        if not secrets.compare_digest(sent.encode(), key.encode()):
            raise HTTPException(401, f"wrong API key in the {HEADER} header", headers={"WWW-Authenticate": HEADER})

    return check
