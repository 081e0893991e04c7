"""Request body -> validated request and prompt token ids, off the event loop.

JSON parsing, the lone-surrogate scan, pydantic's string copies, jinja rendering and tokenisation are C calls that
hold the GIL for their whole length: on a multi-MB body together 0.1-0.4 s, and a worker *thread* doing them stalls
the event loop (and /health) that long (`bench/bench_serve_load.py --health` measures it). Bodies above
`process_body_bytes` are therefore prepared in a process pool (spawned workers, each with its own copy of the
tokenizer; started on the first large body); smaller ones in a thread, where a process round trip costs more than
it saves. What depends on the loaded model (vocabulary, slots, max_tokens vs context) is checked afterwards in the
server process, on the ids alone.
"""
from __future__ import annotations

import asyncio
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from typing import Generic, TypeVar

from pydantic import ValidationError

from ..tokenizer import Tokenizer
from ..tokenizer.tokenizer import THINK_END, THINK_START
from .body import parse_json
from .errors import APIError, from_validation_errors, from_value_error
from .protocol import ChatCompletionRequest, CompletionRequest
from .tool_parser import call_opening

M = TypeVar("M", ChatCompletionRequest, CompletionRequest)


@dataclass
class Prepared(Generic[M]):
    request: M                 # validated; its prompt text left out (the ids carry it back from a worker process)
    ids: list[list[int]]       # one id list per prompt (chat: one)
    fields: list[str]          # the field each prompt came from, for errors: messages, prompt, prompt[i]
    assistant_prefix: str = ""  # what the server wrote into the assistant turn (a forced tool call's opening)
    in_process: bool = False   # prepared in a worker process


@dataclass
class _Failure:
    """An APIError crossing the process boundary (exceptions with their own __init__ do not unpickle)."""
    status: int
    message: str
    param: str | None
    code: str | None

    def error(self) -> APIError:
        return APIError(self.status, self.message, self.param, code=self.code)


class RequestPrep:
    """The work itself, the same in a thread and in a worker process."""

    def __init__(self, tok: Tokenizer, max_json_depth: int, max_prompt_chars: int, context: int):
        self.tok, self.max_json_depth = tok, max_json_depth
        self.max_prompt_chars, self.context = max_prompt_chars, context

    def parse(self, raw: bytes, model: type[M]) -> M:
        body = parse_json(raw, self.max_json_depth)
        if not isinstance(body, dict):
            raise APIError(400, "request body: must be a JSON object", "body")
        try:
            return model.model_validate(body)
        except ValidationError as e:
            raise from_validation_errors(e.errors(include_url=False)) from None

    def encode(self, text: str, field: str) -> list[int]:
        # no token spans more characters than the longest vocabulary entry: a longer text cannot fit the context
        if len(text) > self.max_prompt_chars:
            raise APIError(400, f"{field}: {len(text)} characters cannot fit the context of {self.context} tokens",
                           field)
        ids = self.tok.encode(text)
        if len(ids) >= self.context:   # checked here too, so that no over-long id list travels back
            raise APIError(400, f"{field}: {len(ids)} tokens leave no room in the context of {self.context} tokens",
                           field)
        return ids

    def render(self, req: ChatCompletionRequest) -> str:
        try:
            return self.tok.apply_chat_template(req.template_messages(), tools=req.template_tools(),
                                                add_generation_prompt=True, **(req.chat_template_kwargs or {}))
        except (ValueError, TypeError, LookupError, AttributeError) as e:  # the template rejected this request
            err = from_value_error(ValueError(str(e)))
            raise APIError(400, err.message if err.param else f"messages: the chat template could not render "
                                                               f"them ({e})", err.param or "messages") from e
        except Exception as e:  # jinja errors (TemplateError, SecurityError) are the request's fault too
            raise APIError(400, f"messages: the chat template could not render them ({type(e).__name__}: {e})",
                           "messages") from e

    def chat(self, raw: bytes) -> Prepared[ChatCompletionRequest]:
        req = self.parse(raw, ChatCompletionRequest)
        text, prefix = self.render(req), ""
        forced = req.forced_function()
        if forced is not None:   # tool_choice "required" or named: the answer starts as that tool call
            prefix = call_opening(forced)
            if text.rfind(THINK_START) > text.rfind(THINK_END):
                text += THINK_END + "\n"         # a thought the template opened is closed: the call is the answer
        ids = self.encode(text + prefix, "messages")
        # the text stays here, the ids carry it (a worker process pickles only what it returns)
        return Prepared(req.model_copy(update={"messages": []}), [ids], ["messages"], prefix)

    def completion(self, raw: bytes) -> Prepared[CompletionRequest]:
        req = self.parse(raw, CompletionRequest)
        prompts = req.prompts()
        ids = [self.encode(p, field) if isinstance(p, str) else list(p) for field, p in prompts]
        return Prepared(req.model_copy(update={"prompt": [[0]] * len(ids)}), ids, [f for f, _ in prompts])


KINDS: dict[str, Callable[[RequestPrep, bytes], Prepared]] = {
    "chat": RequestPrep.chat, "completion": RequestPrep.completion}

_WORKER: RequestPrep | None = None       # a worker process's own RequestPrep (set by _init_worker)


def _exit_with_parent(parent: int) -> None:
    """A server killed without its shutdown (SIGKILL, a crash) cannot stop its workers: each worker leaves when its
    parent is gone instead of waiting on a queue nobody writes to (hundreds of MB each)."""
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(0)


def _init_worker(prep: RequestPrep) -> None:
    global _WORKER
    _WORKER = prep
    threading.Thread(target=_exit_with_parent, args=(os.getppid(),), daemon=True).start()
    os.nice(5)   # preparing a body is batch work: on a busy CPU the server's event loop and engine thread go first
    try:  # compile the chat template once per worker, not on its first request
        prep.tok.apply_chat_template([{"role": "user", "content": "hi"}])
    except Exception:  # no template, or one that wants more: requests will say so
        pass


def _in_worker(kind: str, raw: bytes) -> Prepared | _Failure:
    assert _WORKER is not None, "_init_worker runs first in every worker process"
    try:
        prepared = KINDS[kind](_WORKER, raw)
    except APIError as e:
        return _Failure(e.status, e.message, e.param, e.code)
    prepared.in_process = True
    return prepared


class Preparer:
    """Chooses where a body is prepared: a thread for small bodies, the process pool for large ones."""

    def __init__(self, prep: RequestPrep, processes: int, process_body_bytes: int):
        self.prep, self.processes, self.process_body_bytes = prep, processes, process_body_bytes
        self._pool: ProcessPoolExecutor | None = None
        self.counts = {"requests_prepared_in_thread_total": 0, "requests_prepared_in_process_total": 0}

    def _executor(self) -> ProcessPoolExecutor:
        if self._pool is None:  # spawn, not fork: the server process runs threads (engine, uvicorn)
            self._pool = ProcessPoolExecutor(self.processes, mp_context=multiprocessing.get_context("spawn"),
                                             initializer=_init_worker, initargs=(self.prep,))
        return self._pool

    async def __call__(self, kind: str, raw: bytes) -> Prepared:
        if not self.processes or len(raw) <= self.process_body_bytes:
            self.counts["requests_prepared_in_thread_total"] += 1
            return await asyncio.to_thread(KINDS[kind], self.prep, raw)
        self.counts["requests_prepared_in_process_total"] += 1
        try:
            result = await asyncio.get_running_loop().run_in_executor(self._executor(), _in_worker, kind, raw)
        except BrokenProcessPool as e:    # a worker died (killed, out of memory): a fresh pool for the next body
            self._pool = None
            raise APIError(500, "request preparation: the worker process died; retry", type_="server_error") from e
        if isinstance(result, _Failure):
            raise result.error()
        return result

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)
