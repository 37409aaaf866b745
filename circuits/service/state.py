"""What the routes share: the server's state (store, dispatcher) and configuration, kept on the app."""
from __future__ import annotations

from typing import Any, Dict

from fastapi import HTTPException, Request

from circuits.service.store import Store

MAX_ECHO = 64  # the most of a client's id an error message repeats


def state_of(request: Request) -> Dict[str, Any]:
    return request.app.state.service


def config_of(request: Request):
    return request.app.state.config


def store_of(request: Request) -> Store:
    return request.app.state.service["store"]


def short(text: str) -> str:
    return text if len(text) <= MAX_ECHO else text[:MAX_ECHO] + "..."


def not_found(what: str, name: str) -> HTTPException:
    return HTTPException(404, f"no {what} {short(name)!r}")
