"""The OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, /v1/models, /health, /metrics.

A request goes: body (size-limited) -> strict JSON, pydantic model (protocol.py), template rendering and
tokenisation (prepare.py: in a worker thread, or a worker process for large bodies, so the event loop keeps
answering) -> `LLM.validate_request` -> the engine thread. Reasoning (`<think>`) is split at the token level into
`reasoning_content`; tool calls in the qwen3_coder XML form become `tool_calls`; a client that disconnects has its
request aborted.
"""
from __future__ import annotations

import asyncio
import contextlib
import math
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from fastapi import FastAPI, Request
from fastapi.responses import (
    JSONResponse,
    PlainTextResponse,
    Response,
    StreamingResponse,
)
from starlette.background import BackgroundTask

from ..engine import LLM, SamplingParams
from .async_engine import AsyncEngine, DoneEvent, TokenEvent
from .body import BodyLimit
from .errors import APIError, from_value_error, install_error_handlers, strict_dumps
from .prepare import Prepared, Preparer, RequestPrep
from .protocol import ChatCompletionRequest, CompletionRequest
from .reasoning import ChannelDecoder, ReasoningSplitter
from .sglang_api import sglang_router
from .tool_parser import parse_tool_calls

MIN_LOGPROB = -9999.0        # OpenAI's stand-in for log(0): -inf is not JSON


@dataclass
class ServeLimits:
    max_body_bytes: int = 8 * 2**20      # larger bodies get 413 before they are read
    max_json_depth: int = 64             # deeper JSON gets 400 (tool schemas need a few levels, not hundreds)
    prepare_processes: int = 2           # worker processes preparing large bodies (0: all in threads)
    process_body_bytes: int = 256 * 2**10  # bodies above this are prepared in a worker process (see prepare.py)

    def __post_init__(self) -> None:
        if self.max_body_bytes < 1024:
            raise ValueError(f"max_body_bytes: must be >= 1024, got {self.max_body_bytes}")
        if not 8 <= self.max_json_depth <= 512:
            raise ValueError(f"max_json_depth: must be in [8, 512], got {self.max_json_depth}")
        if not 0 <= self.prepare_processes <= 64:
            raise ValueError(f"prepare_processes: must be in [0, 64], got {self.prepare_processes}")
        if self.process_body_bytes < 0:
            raise ValueError(f"process_body_bytes: must be >= 0, got {self.process_body_bytes}")


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {strict_dumps(obj)}\n\n"


def _lp(x: float) -> float:
    return x if math.isfinite(x) else MIN_LOGPROB


def visible_text(text: str, params: SamplingParams, finished: bool, stop_reason: Any) -> str:
    """The part of `text` safe to show: cut at a matched stop string when finished; while running, hold back
    the last len(longest stop) - 1 characters, which could still turn out to be the start of a stop string."""
    if finished:
        if isinstance(stop_reason, str) and stop_reason in text:
            at = text.find(stop_reason)
            return text[: at + len(stop_reason)] if params.include_stop_str_in_output else text[:at]
        return text
    stops = cast(list[str], params.stop)  # SamplingParams.__post_init__ makes it a list
    hold = max((len(st) for st in stops), default=1) - 1
    return text[: len(text) - hold] if hold else text


class Server:
    def __init__(self, llm: LLM, served_model_name: str, limits: ServeLimits):
        if llm.tokenizer is None:
            raise ValueError("serve: the checkpoint has no tokenizer.json")
        self.llm, self.name, self.tok, self.limits = llm, served_model_name, llm.tokenizer, limits
        self.engine = AsyncEngine(llm)
        self.created = int(time.time())
        # No token spans more characters than the longest vocabulary entry, so a text longer than
        # context x that (x 4 for normalisers that shorten text) cannot fit: refused before tokenising.
        try:  # compile the chat template now: the first compile takes ~1 s holding the GIL, i.e. the event loop
            self.tok.apply_chat_template([{"role": "user", "content": "hi"}])
        except ValueError:
            pass                                   # no template, or one that wants more: requests will say so
        longest = max(len(self.tok.decode([i], skip_special_tokens=False)) for i in range(self.tok.vocab_size))
        self.max_prompt_chars = 4 * llm.max_model_len * max(longest, 1)
        self.prepare = Preparer(RequestPrep(self.tok, limits.max_json_depth, self.max_prompt_chars,
                                            llm.max_model_len), limits.prepare_processes, limits.process_body_bytes)

    # ---- request -> prompt ids (in a worker thread or, for large bodies, a worker process) ----------------------
    async def _request(self, request: Request, kind: str) -> Prepared:
        prepared = await self.prepare(kind, await request.body())
        req = prepared.request
        if req.model is not None and req.model != self.name:
            raise APIError(404, f"model: '{req.model}' does not exist; this server serves '{self.name}'", "model",
                           code="model_not_found")
        return prepared

    def _check(self, ids: list[int], params: SamplingParams, field: str) -> None:
        """What depends on the loaded model: vocabulary, context, slots (LLM.validate_request), max_tokens."""
        try:
            self.llm.validate_request(ids, params)
        except ValueError as e:
            err = from_value_error(e)
            if err.param == "prompt":
                err.param, err.message = field, field + err.message[len("prompt"):]
            raise err from e
        if params.max_tokens is not None and len(ids) + params.max_tokens > self.llm.max_model_len:
            raise APIError(400, f"max_tokens: {params.max_tokens} + {len(ids)} prompt tokens exceed the context "
                                f"of {self.llm.max_model_len} tokens", "max_tokens")

    def _check_chat(self, ids: list[int], params: SamplingParams) -> bool:
        """_check, then whether the prompt leaves the model inside a thought."""
        self._check(ids, params, "messages")
        return self.llm.ends_in_thought(ids)

    # ---- helpers -----------------------------------------------------------------------------------------------
    def _token(self, t: int) -> str:
        return self.tok.decode([t], skip_special_tokens=False)

    def _chat_logprob(self, t: int, lp: float, top: dict[int, float] | None) -> dict[str, Any]:
        s = self._token(t)
        return {"token": s, "logprob": _lp(lp), "bytes": list(s.encode()),
                "top_logprobs": [{"token": self._token(k), "logprob": _lp(v), "bytes": list(self._token(k).encode())}
                                 for k, v in (top or {}).items()]}

    @staticmethod
    def _usage(prompt_len: int, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_len, "completion_tokens": completion_tokens,
                "total_tokens": prompt_len + completion_tokens}

    def _splitter(self, req: ChatCompletionRequest, in_thought: bool) -> ReasoningSplitter:
        return ReasoningSplitter(self.tok, in_thought and req.separate_reasoning, req.separate_reasoning)

    # ---- /v1/chat/completions ----------------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        prepared = await self._request(request, "chat")
        req, ids = cast(ChatCompletionRequest, prepared.request), prepared.ids[0]
        params = req.sampling_params()
        in_thought = await asyncio.to_thread(self._check_chat, ids, params)   # loops over up to a context of ids
        rid, q = self.engine.submit(ids, params)
        if req.stream:
            return self._stream([rid], self._chat_stream(q, req, params, len(ids), in_thought,
                                                         prepared.assistant_prefix))
        dones = await self._wait([rid], q, request)
        if dones is None:
            return Response(status_code=499)
        done = dones[0]
        assert done.output is not None  # _wait raised if the request failed; otherwise the engine set its output
        tools = req.template_tools()
        choices, completion_tokens = [], 0
        for c in done.output.outputs:
            split = self._splitter(req, in_thought)
            for t in c.token_ids:
                split.add(t)
            # a forced tool call's opening was written by the server: the answer is that and what the model added
            text = prepared.assistant_prefix + visible_text(split.content.text, params, True, c.stop_reason)
            content, calls = parse_tool_calls(text, tools) if tools else (text, [])
            message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else ""),
                                       "reasoning_content": split.reasoning.text or None}
            finish = c.finish_reason
            if calls:
                message["tool_calls"], finish = calls, "tool_calls"
            logprobs = None
            if params.logprobs is not None:
                tops: Sequence[dict[int, float] | None] = c.top_logprobs or [None] * len(c.token_ids)
                logprobs = {"content": [self._chat_logprob(t, lp, top)
                                        for t, lp, top in zip(c.token_ids, c.logprobs, tops)]}
            choices.append({"index": c.index, "message": message, "finish_reason": finish, "logprobs": logprobs})
            completion_tokens += len(c.token_ids)
        return JSONResponse({"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion",
                             "created": int(time.time()), "model": self.name, "choices": choices,
                             "usage": self._usage(len(ids), completion_tokens)})

    async def _chat_stream(self, q: asyncio.Queue, req: ChatCompletionRequest, params: SamplingParams,
                           prompt_len: int, in_thought: bool, prefix: str) -> AsyncIterator[str]:
        base = {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion.chunk", "created": int(time.time()),
                "model": self.name}
        tools = req.template_tools()
        splits = [self._splitter(req, in_thought) for _ in range(params.n)]
        tool_mode = [False] * params.n     # once a <tool_call> starts, content is held back and parsed at the end
        counts, sent = [0] * params.n, [0] * params.n   # tokens seen, content characters streamed, per choice
        for i in range(params.n):
            yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                             "logprobs": None, "finish_reason": None}]})
        async for ev in self._events(q):
            if isinstance(ev, str):
                yield ev
                continue
            i = ev.index
            counts[i] += 1
            r_delta, _ = splits[i].add(ev.token_id)
            text = prefix + splits[i].content.text
            tool_mode[i] = tool_mode[i] or bool(tools and "<tool_call>" in text)
            delta: dict[str, Any] = {}
            if r_delta:
                delta["reasoning_content"] = r_delta
            finish = ev.finish_reason if ev.finished else None
            calls: list[dict[str, Any]] = []
            if tool_mode[i]:
                shown = parse_tool_calls(text, tools)[0] if ev.finished else ""
                if ev.finished:
                    calls = parse_tool_calls(text, tools)[1]
            else:
                shown = visible_text(text, params, ev.finished, ev.stop_reason)
                if tools and not ev.finished:
                    shown = shown.rstrip()     # the non-streamed content is cut before a tool call, trailing space too
            if len(shown) > sent[i]:
                delta["content"], sent[i] = shown[sent[i]:], len(shown)
            if calls:
                delta["tool_calls"] = [{"index": j, **c} for j, c in enumerate(calls)]
                finish = "tool_calls"
            logprobs = None
            if params.logprobs is not None:
                logprobs = {"content": [self._chat_logprob(ev.token_id, ev.logprob or 0.0, ev.top_logprobs)]}
            if delta or finish or logprobs:
                yield _sse({**base, "choices": [{"index": i, "delta": delta, "logprobs": logprobs,
                                                 "finish_reason": finish}]})
        if req.include_usage:
            yield _sse({**base, "choices": [], "usage": self._usage(prompt_len, sum(counts))})
        yield "data: [DONE]\n\n"

    # ---- /v1/completions ---------------------------------------------------------------------------------------
    async def completions(self, request: Request) -> Response:
        prepared = await self._request(request, "completion")
        req, batch = cast(CompletionRequest, prepared.request), prepared.ids
        params = req.sampling_params()
        for ids, field in zip(batch, prepared.fields):
            await asyncio.to_thread(self._check, ids, params, field)
        q: asyncio.Queue = asyncio.Queue()       # one queue for the batch; choice index = prompt index * n + sample
        rids = [self.engine.submit(ids, params, q, first_index=i * params.n)[0] for i, ids in enumerate(batch)]
        prompt_tokens = sum(len(ids) for ids in batch)
        if req.stream:
            return self._stream(rids, self._completion_stream(q, req, params, prompt_tokens, len(rids)))
        dones = await self._wait(rids, q, request)
        if dones is None:
            return Response(status_code=499)
        outputs = {d.output.request_id: d.output for d in dones if d.output is not None}  # _wait raised on errors
        choices, completion_tokens = [], 0
        for i, rid in enumerate(rids):
            for c in outputs[rid].outputs:
                lp = None
                if params.logprobs is not None:
                    toks = [self._token(t) for t in c.token_ids]
                    lp = {"tokens": toks, "token_logprobs": [_lp(x) for x in c.logprobs],
                          "top_logprobs": [{self._token(k): _lp(v) for k, v in d.items()}
                                           for d in (c.top_logprobs or [])] or None,
                          "text_offset": [sum(len(t) for t in toks[:j]) for j in range(len(toks))]}
                choices.append({"index": i * params.n + c.index, "text": c.text, "finish_reason": c.finish_reason,
                                "logprobs": lp})
                completion_tokens += len(c.token_ids)
        return JSONResponse({"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion",
                             "created": int(time.time()), "model": self.name, "choices": choices,
                             "usage": self._usage(prompt_tokens, completion_tokens)})

    async def _completion_stream(self, q: asyncio.Queue, req: CompletionRequest, params: SamplingParams,
                                 prompt_tokens: int, num_prompts: int) -> AsyncIterator[str]:
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.name}
        keep = set() if params.skip_special_tokens else set(self.tok.special_ids)
        num_choices = num_prompts * params.n
        decoders = [ChannelDecoder(self.tok, keep) for _ in range(num_choices)]
        sent, counts = [0] * num_choices, [0] * num_choices
        async for ev in self._events(q, num_prompts):
            if isinstance(ev, str):
                yield ev
                continue
            i = ev.index
            decoders[i].add(ev.token_id)
            counts[i] += 1
            shown = visible_text(decoders[i].text, params, ev.finished, ev.stop_reason)
            text, sent[i] = shown[sent[i]:], max(sent[i], len(shown))
            lp = None
            if params.logprobs is not None:
                tok = self._token(ev.token_id)
                lp = {"tokens": [tok], "token_logprobs": [_lp(ev.logprob or 0.0)],
                      "top_logprobs": [{self._token(k): _lp(v) for k, v in (ev.top_logprobs or {}).items()}],
                      "text_offset": [0]}
            if text or ev.finished or lp:
                yield _sse({**base, "choices": [{"index": i, "text": text, "logprobs": lp,
                                                 "finish_reason": ev.finish_reason if ev.finished else None}]})
        if req.include_usage:
            yield _sse({**base, "choices": [], "usage": self._usage(prompt_tokens, sum(counts))})
        yield "data: [DONE]\n\n"

    # ---- events from the engine ----------------------------------------------------------------------------------
    def _stream(self, rids: list[str], chunks: AsyncIterator[str]) -> StreamingResponse:
        """SSE response. When the client goes away Starlette cancels the stream, then runs the background task:
        the abort frees the requests' sequences (a no-op for a request that already finished)."""
        return StreamingResponse(chunks, media_type="text/event-stream",
                                 background=BackgroundTask(self._abort, rids))

    def _abort(self, rids: list[str]) -> None:
        for rid in rids:
            self.engine.abort(rid)

    @staticmethod
    async def _events(q: asyncio.Queue, requests: int = 1) -> AsyncIterator[TokenEvent | str]:
        """Token events until all `requests` sharing the queue are done; an engine error arrives as an SSE error
        event and ends the stream (the other requests are aborted when the stream closes)."""
        while requests:
            ev = await q.get()
            if isinstance(ev, DoneEvent):
                if ev.error:
                    yield _sse({"error": {"message": ev.error, "type": "server_error", "param": None, "code": None}})
                    return
                requests -= 1
                continue
            yield ev

    async def _wait(self, rids: list[str], q: asyncio.Queue, request: Request) -> list[DoneEvent] | None:
        """The requests' DoneEvents, or None if the client disconnected first (its requests are then aborted)."""
        async def finished() -> list[DoneEvent]:
            dones: list[DoneEvent] = []
            while len(dones) < len(rids):
                ev = await q.get()
                if isinstance(ev, DoneEvent):
                    if ev.error:
                        raise APIError(500, ev.error, type_="server_error")
                    dones.append(ev)
            return dones

        async def gone() -> None:
            while (await request.receive())["type"] != "http.disconnect":
                pass

        waiter, watcher = asyncio.ensure_future(finished()), asyncio.ensure_future(gone())
        try:
            await asyncio.wait({waiter, watcher}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            watcher.cancel()
            if not waiter.done():
                waiter.cancel()
                self._abort(rids)
            elif waiter.exception() is not None:
                self._abort(rids)                  # one request of a batch failed: the others are not waited for
        if not waiter.done() or waiter.cancelled():
            return None
        return waiter.result()


def build_app(llm: LLM, served_model_name: str, limits: ServeLimits | None = None) -> FastAPI:
    limits = limits or ServeLimits()
    server = Server(llm, served_model_name, limits)
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        server.prepare.close()                 # the worker processes end with the server

    app = FastAPI(title="nemoh", version="0.1.0", lifespan=lifespan)
    app.state.server = server
    install_error_handlers(app)
    app.add_middleware(BodyLimit, max_bytes=limits.max_body_bytes)

    @app.get("/health")
    async def health() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/metrics")
    async def metrics() -> PlainTextResponse:
        lines = []
        for key, value in {**server.engine.metrics(), **server.prepare.counts}.items():
            kind = "counter" if key.endswith("_total") else "gauge"
            lines += [f"# TYPE nemoh:{key} {kind}", f"nemoh:{key} {value}"]
        return PlainTextResponse("\n".join(lines) + "\n")

    @app.get("/v1/models")
    async def models() -> dict[str, Any]:
        return {"object": "list", "data": [{"id": served_model_name, "object": "model", "created": server.created,
                                             "owned_by": "nemoh", "max_model_len": llm.max_model_len}]}

    app.post("/v1/chat/completions")(server.chat)
    app.post("/v1/completions")(server.completions)
    app.include_router(sglang_router(server))  # SGLang's native /generate, weight sync and control routes
    return app
