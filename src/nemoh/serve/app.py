"""The OpenAI-compatible HTTP server: /v1/chat/completions, /v1/completions, /v1/models, /health.

Reasoning (`<think>`) is split at the token level into `reasoning_content`; tool calls in the qwen3_coder XML form
become `tool_calls`; a reasoning budget (`max_thinking_tokens`) closes the thought inside the same request.
"""
from __future__ import annotations

import json
import time
import uuid
from typing import Any, AsyncIterator

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from ..engine import LLM, SamplingParams
from .async_engine import AsyncEngine, DoneEvent, TokenEvent
from .protocol import APIError, from_value_error, sampling_params
from .reasoning import ChannelDecoder, ReasoningSplitter
from .sglang_api import sglang_router
from .tool_parser import parse_tool_calls


def _sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"


def visible_text(text: str, params: SamplingParams, finished: bool, stop_reason: Any) -> str:
    """The part of `text` safe to show: cut at a matched stop string when finished; while running, hold back
    the last len(longest stop) - 1 characters, which could still turn out to be the start of a stop string."""
    if finished:
        if isinstance(stop_reason, str) and stop_reason in text:
            at = text.find(stop_reason)
            return text[: at + len(stop_reason)] if params.include_stop_str_in_output else text[:at]
        return text
    hold = max((len(st) for st in params.stop), default=1) - 1
    return text[: len(text) - hold] if hold else text


class Server:
    def __init__(self, llm: LLM, served_model_name: str):
        if llm.tokenizer is None:
            raise ValueError("serve: the checkpoint has no tokenizer.json")
        self.llm, self.name, self.tok = llm, served_model_name, llm.tokenizer
        self.engine = AsyncEngine(llm)
        self.created = int(time.time())

    # ---- request -> prompt ------------------------------------------------------------------------------
    async def _body(self, request: Request) -> dict[str, Any]:
        try:
            body = json.loads(await request.body())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise APIError(400, f"request body is not valid JSON: {e}") from e
        if not isinstance(body, dict):
            raise APIError(400, "request body must be a JSON object")
        model = body.get("model")
        if model is not None and model != self.name:
            raise APIError(404, f"model: '{model}' does not exist; this server serves '{self.name}'", "model",
                           code="model_not_found")
        return body

    def _chat_prompt(self, body: dict[str, Any]) -> tuple[list[int], list[dict] | None, bool]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) and "role" in m for m in messages):
            raise APIError(400, "messages: expected a non-empty list of {role, content} objects", "messages")
        tools = body.get("tools")
        if tools is not None and not isinstance(tools, list):
            raise APIError(400, "tools: expected a list", "tools")
        if body.get("tool_choice") == "none":
            tools = None
        kwargs = body.get("chat_template_kwargs") or {}
        if not isinstance(kwargs, dict):
            raise APIError(400, "chat_template_kwargs: expected an object", "chat_template_kwargs")
        try:
            text = self.tok.apply_chat_template(messages, tools=tools, add_generation_prompt=True, **kwargs)
        except Exception as e:  # template errors are the request's fault
            raise APIError(400, f"messages: the chat template could not render them ({e})", "messages") from e
        ids = self.tok.encode(text)
        return ids, tools, self.llm.ends_in_thought(ids)

    def _completion_prompt(self, body: dict[str, Any]) -> list[int]:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
            prompt = prompt[0]
        if isinstance(prompt, str) and prompt:
            return self.tok.encode(prompt)
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) and not isinstance(t, bool) for t in prompt):
            if max(prompt) >= self.llm.model.config.vocab_size or min(prompt) < 0:
                raise APIError(400, "prompt: token id out of the vocabulary", "prompt")
            return prompt
        raise APIError(400, "prompt: expected a non-empty string or a list of token ids", "prompt")

    def _submit(self, ids: list[int], params: SamplingParams, field: str):
        try:
            return self.engine.submit(ids, params)
        except ValueError as e:
            err = from_value_error(e)
            if err.param == "prompt":
                err.param = field
            raise err from e

    # ---- helpers ------------------------------------------------------------------------------------------
    def _logprob_entries(self, token_ids: list[int], logprobs: list[float], tops: list[dict[int, float]] | None):
        out = []
        for i, (t, lp) in enumerate(zip(token_ids, logprobs)):
            s = self.tok.decode([t], skip_special_tokens=False)
            entry = {"token": s, "logprob": lp, "bytes": list(s.encode()), "top_logprobs": []}
            if tops:
                entry["top_logprobs"] = [{"token": self.tok.decode([k], skip_special_tokens=False), "logprob": v,
                                          "bytes": list(self.tok.decode([k], skip_special_tokens=False).encode())}
                                         for k, v in tops[i].items()]
            out.append(entry)
        return out

    @staticmethod
    def _usage(prompt_len: int, completion_tokens: int) -> dict[str, int]:
        return {"prompt_tokens": prompt_len, "completion_tokens": completion_tokens,
                "total_tokens": prompt_len + completion_tokens}

    # ---- /v1/chat/completions -----------------------------------------------------------------------------
    async def chat(self, request: Request):
        body = await self._body(request)
        ids, tools, in_thought = self._chat_prompt(body)
        params = sampling_params(body, chat=True)
        rid, q = self._submit(ids, params, "messages")
        reasoning_on = bool(body.get("separate_reasoning", True))
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            return StreamingResponse(self._chat_stream(rid, q, params, len(ids), tools, in_thought and reasoning_on,
                                                       reasoning_on, include_usage, request),
                                     media_type="text/event-stream")
        done = await self._wait(rid, q, request)
        choices, completion_tokens = [], 0
        for c in done.output.outputs:
            split = ReasoningSplitter(self.tok, in_thought and reasoning_on, reasoning_on)
            for t in c.token_ids:
                split.add(t)
            text = visible_text(split.content.text, params, True, c.stop_reason)
            content, calls = parse_tool_calls(text, tools) if tools else (text, [])
            message: dict[str, Any] = {"role": "assistant", "content": content or (None if calls else ""),
                                       "reasoning_content": split.reasoning.text or None}
            finish = c.finish_reason
            if calls:
                message["tool_calls"], finish = calls, "tool_calls"
            choice = {"index": c.index, "message": message, "finish_reason": finish,
                      "logprobs": {"content": self._logprob_entries(c.token_ids, c.logprobs, c.top_logprobs)}
                      if params.logprobs is not None else None}
            choices.append(choice)
            completion_tokens += len(c.token_ids)
        return {"id": f"chatcmpl-{uuid.uuid4().hex}", "object": "chat.completion", "created": int(time.time()),
                "model": self.name, "choices": choices, "usage": self._usage(len(ids), completion_tokens)}

    async def _chat_stream(self, rid: str, q, params: SamplingParams, prompt_len: int, tools, in_thought: bool,
                           reasoning_on: bool, include_usage: bool, request: Request) -> AsyncIterator[str]:
        cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
        base = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": self.name}
        splits = [ReasoningSplitter(self.tok, in_thought, reasoning_on) for _ in range(params.n)]
        tool_mode = [False] * params.n     # once a <tool_call> starts, content is held back and parsed at the end
        counts = [0] * params.n
        sent = [0] * params.n              # characters of content already streamed per choice
        for i in range(params.n):
            yield _sse({**base, "choices": [{"index": i, "delta": {"role": "assistant", "content": ""},
                                             "finish_reason": None}]})
        async for ev in self._events(rid, q, request):
            if isinstance(ev, str):
                yield ev
                continue
            i = ev.index
            counts[i] += 1
            r_delta, _ = splits[i].add(ev.token_id)
            if tools and ("<tool_call>" in splits[i].content.text):
                tool_mode[i] = True
            delta: dict[str, Any] = {}
            if r_delta:
                delta["reasoning_content"] = r_delta
            if not tool_mode[i]:
                shown = visible_text(splits[i].content.text, params, ev.finished, ev.stop_reason)
                if len(shown) > sent[i]:
                    delta["content"], sent[i] = shown[sent[i]:], len(shown)
            finish = None
            if ev.finished:
                finish = ev.finish_reason
                if tool_mode[i]:
                    _, calls = parse_tool_calls(splits[i].content.text, tools)
                    if calls:
                        delta["tool_calls"] = [{"index": j, **c} for j, c in enumerate(calls)]
                        finish = "tool_calls"
            if delta or finish:
                yield _sse({**base, "choices": [{"index": i, "delta": delta, "finish_reason": finish}]})
        if include_usage:
            yield _sse({**base, "choices": [], "usage": self._usage(prompt_len, sum(counts))})
        yield "data: [DONE]\n\n"

    # ---- /v1/completions ----------------------------------------------------------------------------------
    async def completions(self, request: Request):
        body = await self._body(request)
        ids = self._completion_prompt(body)
        params = sampling_params(body, chat=False)
        rid, q = self._submit(ids, params, "prompt")
        if body.get("stream"):
            return StreamingResponse(self._completion_stream(rid, q, params, request), media_type="text/event-stream")
        done = await self._wait(rid, q, request)
        choices = []
        for c in done.output.outputs:
            lp = None
            if params.logprobs is not None:
                toks = [self.tok.decode([t], skip_special_tokens=False) for t in c.token_ids]
                lp = {"tokens": toks, "token_logprobs": c.logprobs,
                      "top_logprobs": [{self.tok.decode([k], skip_special_tokens=False): v for k, v in d.items()}
                                       for d in (c.top_logprobs or [])] or None,
                      "text_offset": [sum(len(t) for t in toks[:j]) for j in range(len(toks))]}
            choices.append({"index": c.index, "text": c.text, "finish_reason": c.finish_reason, "logprobs": lp})
        return {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.name, "choices": choices,
                "usage": self._usage(len(ids), sum(len(c.token_ids) for c in done.output.outputs))}

    async def _completion_stream(self, rid: str, q, params: SamplingParams, request: Request) -> AsyncIterator[str]:
        base = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
                "model": self.name}
        decoders = [ChannelDecoder(self.tok, set()) for _ in range(params.n)]
        sent = [0] * params.n
        async for ev in self._events(rid, q, request):
            if isinstance(ev, str):
                yield ev
                continue
            i = ev.index
            decoders[i].add(ev.token_id)
            shown = visible_text(decoders[i].text, params, ev.finished, ev.stop_reason)
            text, sent[i] = shown[sent[i]:], max(sent[i], len(shown))
            if text or ev.finished:
                yield _sse({**base, "choices": [{"index": i, "text": text, "logprobs": None,
                                                 "finish_reason": ev.finish_reason if ev.finished else None}]})
        yield "data: [DONE]\n\n"

    async def _events(self, rid: str, q, request: Request) -> AsyncIterator[TokenEvent | str]:
        """A request's token events until it is done; an engine error arrives as an SSE error line; a client that
        went away has its request aborted."""
        while True:
            ev = await q.get()
            if isinstance(ev, DoneEvent):
                if ev.error:
                    yield _sse({"error": {"message": ev.error, "type": "server_error", "param": None, "code": None}})
                return
            if await request.is_disconnected():
                self.engine.abort(rid)
                return
            yield ev

    async def _wait(self, rid: str, q, request: Request) -> DoneEvent:
        while True:
            ev = await q.get()
            if isinstance(ev, DoneEvent):
                if ev.error:
                    raise APIError(500, ev.error, type_="server_error")
                return ev


def build_app(llm: LLM, served_model_name: str) -> FastAPI:
    server = Server(llm, served_model_name)
    app = FastAPI(title="nemoh", version="0.1.0")
    app.state.server = server

    @app.exception_handler(APIError)
    async def _api_error(_: Request, e: APIError):
        return JSONResponse(e.body(), status_code=e.status)

    @app.exception_handler(ValueError)
    async def _value_error(_: Request, e: ValueError):
        err = from_value_error(e)
        return JSONResponse(err.body(), status_code=err.status)

    @app.get("/health")
    async def health():
        return {"status": "ok"}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": served_model_name, "object": "model", "created": server.created,
                                             "owned_by": "nemoh", "max_model_len": llm.max_model_len}]}

    app.post("/v1/chat/completions")(server.chat)
    app.post("/v1/completions")(server.completions)
    app.include_router(sglang_router(server))  # SGLang's native /generate, weight sync and control routes
    return app
