"""Request bodies before validation: a size limit for every route (ASGI middleware) and strict JSON parsing.

Strict means: UTF-8, no NaN/Infinity literals, nesting at most `max_depth` deep, no lone surrogates in strings
(`"\\ud800"` parses in Python but cannot be encoded or tokenised). Parsing runs in a worker thread (see app.py), so a
large body never holds the event loop.
"""
from __future__ import annotations

import json
import re
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import APIError

_SURROGATE = re.compile("[\ud800-\udfff]")


class BodyLimit:
    """Answers 413 (OpenAI error shape) once a body exceeds `max_bytes`, by Content-Length or while it streams."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            return await self._reject(send)
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:
                raise self._error()
            return message

        await self.app(scope, limited, send)

    def _error(self) -> APIError:
        return APIError(413, f"request body: larger than the server's limit of {self.max_bytes} bytes "
                             "(nemoh serve --max-body-bytes)", "body", code="body_too_large")

    async def _reject(self, send: Send) -> None:
        body = json.dumps(self._error().body()).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


def _no_constants(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def parse_json(raw: bytes, max_depth: int) -> Any:
    """bytes -> JSON value, or APIError(400) saying what is wrong and where."""
    try:
        value = json.loads(raw.decode("utf-8"), parse_constant=_no_constants)
    except UnicodeDecodeError as e:
        raise APIError(400, f"request body: not valid UTF-8 ({e.reason} at byte {e.start})", "body") from e
    except RecursionError as e:
        raise APIError(400, f"request body: JSON nested deeper than {max_depth} levels", "body") from e
    except ValueError as e:  # JSONDecodeError, NaN/Infinity, integers beyond Python's digit limit
        raise APIError(400, f"request body is not valid JSON: {e}", "body") from e
    check_tree(value, max_depth)
    return value


def check_tree(value: Any, max_depth: int) -> None:
    """Depth and lone-surrogate check over a parsed JSON tree, iteratively (no recursion limit to hit)."""
    stack: list[tuple[Any, str, int]] = [(value, "", 0)]
    while stack:
        node, path, depth = stack.pop()
        if depth > max_depth:
            raise APIError(400, f"{path or 'body'}: JSON nested deeper than {max_depth} levels", path or "body")
        if isinstance(node, str):
            if _SURROGATE.search(node):
                raise APIError(400, f"{path or 'body'}: contains a lone UTF-16 surrogate (not valid Unicode)",
                               path or "body")
        elif isinstance(node, dict):
            for k, v in node.items():
                if _SURROGATE.search(k):
                    raise APIError(400, f"{path or 'body'}: a key contains a lone UTF-16 surrogate", path or "body")
                stack.append((v, f"{path}.{k}" if path else k, depth + 1))
        elif isinstance(node, list):
            stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(node) if isinstance(v, (str, dict, list)))
