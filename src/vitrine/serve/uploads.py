"""Untrusted bytes in: body size caps, base64 images, photos checked by content before decoding."""

from __future__ import annotations

import base64
import binascii
import re

from PIL import Image
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from vitrine.catalog.images import WEB_FORMATS, open_image
from vitrine.config import ServeConfig
from vitrine.errors import VitrineError


class TooLarge(VitrineError):
    """An upload over a byte limit (answered 413)."""


_DATA_URL = re.compile(r"^data:[\w/+.-]*;base64,", re.IGNORECASE)


def decode_base64(text: str, what: str, limit: int) -> bytes:
    """The bytes of a base64 string (a ``data:`` URL prefix is allowed), refused past ``limit`` bytes."""
    text = _DATA_URL.sub("", text.strip(), count=1)
    if len(text) * 3 // 4 > limit + 3:  # judged before decoding, so a huge string costs nothing
        raise TooLarge(f"{what} is larger than the limit of {limit:,} bytes")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise VitrineError(f"{what} is not valid base64") from None
    if not data:
        raise VitrineError(f"{what} is empty")
    return data


def check_size(data: bytes, what: str, limit: int) -> bytes:
    if len(data) > limit:
        raise TooLarge(f"{what} is {len(data):,} bytes, more than the limit of {limit:,}")
    if not data:
        raise VitrineError(f"{what} is empty")
    return data


def decode_photo(data: bytes, what: str, config: ServeConfig) -> Image.Image:
    """An RGB image from uploaded bytes: JPEG, PNG or WebP by content, within the byte and pixel limits."""
    check_size(data, what, config.max_upload_bytes)
    return open_image(data, what, max_pixels=config.max_pixels, formats=WEB_FORMATS)


class BodyLimit:
    """ASGI middleware: refuse a request body past ``limit`` bytes before it is all read.

    A declared Content-Length over the limit is answered at once; a body that streams past it
    (chunked, or lying about its length) is cut off where it crosses the limit. (FastAPI's own
    ``max_body_size`` answers in plain text; every error of this API is JSON.)
    """

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.limit:
            await _send_413(send, self.limit)
            return
        received = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.limit:
                    raise _BodyOverflow(self.limit)
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _BodyOverflow:
            if not started:
                await _send_413(send, self.limit)


class _BodyOverflow(HTTPException):
    # An HTTPException, so that the framework's body parsing lets it through to the JSON error handler.
    def __init__(self, limit: int) -> None:
        super().__init__(413, f"request body is larger than the limit of {limit:,} bytes")


async def _send_413(send: Send, limit: int) -> None:
    body = f'{{"error": "request body is larger than the limit of {limit:,} bytes"}}'.encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
