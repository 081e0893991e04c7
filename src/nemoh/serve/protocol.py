"""Request parsing for the OpenAI-compatible API: JSON body -> SamplingParams, with errors that name the field."""
from __future__ import annotations

from typing import Any

from ..engine import SamplingParams


class APIError(Exception):
    """Becomes an OpenAI-style error object: {"error": {"message", "type", "param", "code"}}."""

    def __init__(self, status: int, message: str, param: str | None = None, type_: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.type, self.code = status, message, param, type_, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def from_value_error(e: ValueError) -> APIError:
    """nemoh's ValueErrors start with the field name ("max_tokens: must be ..."): keep it as `param`."""
    msg = str(e)
    param = msg.split(":", 1)[0] if ":" in msg and " " not in msg.split(":", 1)[0] else None
    return APIError(400, msg, param)


def _get(body: dict, key: str, types: tuple, default: Any = None) -> Any:
    value = body.get(key, default)
    if value is None:
        return default
    if isinstance(value, bool) and bool not in types:
        raise APIError(400, f"{key}: expected {types[0].__name__}, got a boolean", key)
    if not isinstance(value, types):
        raise APIError(400, f"{key}: expected {' or '.join(t.__name__ for t in types)}, got {type(value).__name__}", key)
    return value


def sampling_params(body: dict[str, Any], chat: bool) -> SamplingParams:
    max_tokens = _get(body, "max_completion_tokens", (int,)) if chat else None
    max_tokens = max_tokens if max_tokens is not None else _get(body, "max_tokens", (int,))
    stop = _get(body, "stop", (str, list))
    if chat:
        logprobs = _get(body, "top_logprobs", (int,), 0) if _get(body, "logprobs", (bool,), False) else None
    else:
        logprobs = _get(body, "logprobs", (int,))
    try:
        return SamplingParams(
            n=_get(body, "n", (int,), 1),
            temperature=float(_get(body, "temperature", (int, float), 1.0)),
            top_p=float(_get(body, "top_p", (int, float), 1.0)),
            top_k=_get(body, "top_k", (int,), -1),
            min_p=float(_get(body, "min_p", (int, float), 0.0)),
            max_tokens=max_tokens if max_tokens is not None else (None if chat else 16),
            min_tokens=_get(body, "min_tokens", (int,), 0),
            stop=stop,
            stop_token_ids=_get(body, "stop_token_ids", (list,), []),
            ignore_eos=_get(body, "ignore_eos", (bool,), False),
            include_stop_str_in_output=_get(body, "include_stop_str_in_output", (bool,), False),
            seed=_get(body, "seed", (int,)),
            logprobs=logprobs,
            max_thinking_tokens=_get(body, "max_thinking_tokens", (int,)),
            skip_special_tokens=_get(body, "skip_special_tokens", (bool,), True),
        )
    except ValueError as e:
        raise from_value_error(e) from e
