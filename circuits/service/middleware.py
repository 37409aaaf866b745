"""ASGI middleware of the service: a bounded, timely, shallow request body; the bearer token."""
from __future__ import annotations

import asyncio
import hmac
import json

OPEN_PATHS = ("/docs", "/docs/oauth2-redirect", "/openapi.json")
BODY_TIMEOUT_S = 5.0  # the most a request body may take to arrive
MAX_DEPTH = 32  # how deeply a JSON body may nest (a job request needs 3)


def json_depth(data: bytes) -> int:
    """How deeply ``data``'s JSON arrays and objects nest (strings skipped), without parsing it."""
    depth = deepest = 0
    in_string = escaped = False
    for byte in data:
        if in_string:
            if escaped:
                escaped = False
            elif byte == 0x5C:  # backslash
                escaped = True
            elif byte == 0x22:  # quote
                in_string = False
        elif byte == 0x22:
            in_string = True
        elif byte in (0x5B, 0x7B):  # [ {
            depth += 1
            deepest = max(deepest, depth)
        elif byte in (0x5D, 0x7D):
            depth -= 1
    return deepest


class BodyLimit:
    """ASGI middleware: a body over ``limit`` bytes gets 413 (by its Content-Length, or as it streams in).

    The body is read here, at most ``limit`` bytes, and handed on whole."""

    def __init__(self, app, limit: int) -> None:
        self.app, self.limit = app, limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        too_large = f"request body too large (limit {self.limit} bytes)"
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            return await _plain(send, 413, too_large)
        if scope.get("method") not in ("POST", "PUT", "PATCH"):
            return await self.app(scope, receive, send)
        chunks, size, more = [], 0, True
        while more:
            try:
                message = await asyncio.wait_for(receive(), BODY_TIMEOUT_S)
            except asyncio.TimeoutError:
                return await _plain(send, 408, f"body: it did not arrive within {BODY_TIMEOUT_S:g} s (shorter than "
                                               "its Content-Length?); send the whole body at once")
            if message["type"] != "http.request":
                return  # the client went away
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                return await _plain(send, 413, too_large)
            chunks.append(chunk)
            more = message.get("more_body", False)
        if json_depth(b"".join(chunks)) > MAX_DEPTH:
            return await _plain(send, 422, f"body: JSON nested more than {MAX_DEPTH} levels deep; a job request is "
                                           "an object whose options are an object of names and values")
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        return await self.app(scope, replay, send)


class Bearer:
    """ASGI middleware: every request but the API docs needs ``Authorization: Bearer TOKEN``."""

    def __init__(self, app, token: str) -> None:
        self.app, self.token = app, token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope.get("path") in OPEN_PATHS:
            return await self.app(scope, receive, send)
        header = dict(scope.get("headers") or []).get(b"authorization", b"")
        scheme, _, given = header.partition(b" ")
        if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), self.token):
            return await _plain(send, 401, "missing or wrong bearer token (send 'Authorization: Bearer TOKEN')",
                                extra=[(b"www-authenticate", b"Bearer")])
        return await self.app(scope, receive, send)


async def _plain(send, status: int, detail: str, extra=()) -> None:
    body = json.dumps({"detail": detail}).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()), *extra]})
    await send({"type": "http.response.body", "body": body})


