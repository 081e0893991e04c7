"""The error contract: every non-2xx answer is `{"error": {"message", "type", "param", "code"}}` (OpenAI's shape).

`install_error_handlers(app)` makes that hold app-wide: our own APIErrors, pydantic validation errors (400 naming
the field as `messages[0].content`), unknown paths (404) and methods (405), and any unexpected exception (500, the
traceback goes to the server log, never to the client).
"""
from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("nemoh.serve")

ERROR_TYPES = {400: "invalid_request_error", 404: "not_found_error", 405: "invalid_request_error",
               413: "invalid_request_error", 500: "server_error", 503: "server_error"}


class APIError(Exception):
    """Becomes an OpenAI-style error object: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, type_: str | None = None,
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type_ or ERROR_TYPES.get(status, "invalid_request_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def from_value_error(e: ValueError) -> APIError:
    """nemoh's ValueErrors start with the field name ("max_tokens: must be ..."): keep it as `param`."""
    msg = str(e)
    head = msg.split(":", 1)[0]
    param = head if ":" in msg and " " not in head else None
    return APIError(400, msg, param)


# pydantic puts union members and validator names into `loc` ("str", "list[TextPart]", "function-after[...]"):
# they are not fields, so the path a client sees leaves them out.
_TYPE_TAGS = {"str", "int", "float", "bool", "dict", "list", "none", "bytes"}
_TAG_RE = re.compile(r"[\[\-(]")


def field_path(loc: tuple[Any, ...]) -> str:
    """('body', 'messages', 0, 'content', 'str') -> 'messages[0].content'."""
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        elif part == "body" and not out:
            continue
        elif isinstance(part, str) and part not in _TYPE_TAGS and not _TAG_RE.search(part):
            out += f".{part}" if out else part
    return out


def from_validation_errors(errors: Sequence[Mapping[str, Any]]) -> APIError:
    """The first pydantic error, as a 400 naming its field; other errors of the same field are summarised."""
    first = errors[0]
    path = field_path(tuple(first.get("loc", ())))
    same = [e for e in errors if field_path(tuple(e.get("loc", ()))) == path]
    why = first["msg"] if len(same) == 1 else "; or ".join(dict.fromkeys(e["msg"] for e in same))
    why = why.removeprefix("Value error, ")
    if not path:  # a model-level check names its field itself ("top_logprobs: requires ...")
        return from_value_error(ValueError(why))
    message = f"{path}: {why}"
    if len(errors) > len(same):
        message += f" (and {len(errors) - len(same)} more error(s))"
    return APIError(400, message, path or None)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(ValueError)
    async def _value_error(_: Request, e: ValueError) -> JSONResponse:
        return from_value_error(e).response()

    @app.exception_handler(ValidationError)
    async def _pydantic_error(_: Request, e: ValidationError) -> JSONResponse:
        return from_validation_errors(e.errors(include_url=False)).response()

    @app.exception_handler(RequestValidationError)
    async def _request_validation(_: Request, e: RequestValidationError) -> JSONResponse:
        errors = list(e.errors()) or [{"loc": (), "msg": "invalid request"}]
        return from_validation_errors(errors).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> JSONResponse:
        if e.status_code == 404:
            msg = f"Invalid URL ({request.method} {request.url.path})"
        elif e.status_code == 405:
            msg = f"Method Not Allowed ({request.method} {request.url.path})"
        else:
            msg = str(e.detail)
        return APIError(e.status_code, msg).response()

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        log.exception("unexpected error in %s %s", request.method, request.url.path)
        return APIError(500, f"internal error ({type(e).__name__})", type_="server_error").response()


def strict_dumps(obj: Any) -> str:
    """JSON with no NaN/Infinity (not JSON); a non-finite float reaching here is a bug and raises ValueError."""
    return json.dumps(obj, ensure_ascii=False, allow_nan=False)
