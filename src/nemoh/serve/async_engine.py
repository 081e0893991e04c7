"""AsyncEngine: runs `LLM.step()` in one background thread and hands tokens to asyncio handlers.

Requests from many HTTP handlers land in one engine, so concurrent requests are batched together. The engine thread
owns the LLM; handlers talk to it only through the inbox queue and receive events on their own asyncio queue.
"""
from __future__ import annotations

import asyncio
import itertools
import queue
import threading
from dataclasses import dataclass
from collections.abc import Callable
from typing import Any

from ..engine import LLM, RequestOutput, SamplingParams


@dataclass
class TokenEvent:
    index: int              # choice index (sample of the request)
    token_id: int
    finished: bool
    finish_reason: str | None
    stop_reason: str | int | None = None


@dataclass
class DoneEvent:
    output: RequestOutput | None
    error: str | None = None


class AsyncEngine:
    def __init__(self, llm: LLM):
        self.llm = llm
        self.inbox: queue.Queue = queue.Queue()
        self.streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue]] = {}
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="nemoh-engine", daemon=True)
        self._thread.start()

    def submit(self, token_ids: list[int], params: SamplingParams) -> tuple[str, asyncio.Queue]:
        """Queue a tokenised prompt (already validated); returns its id and the queue its events arrive on."""
        if len(token_ids) >= self.llm.max_model_len:
            raise ValueError(f"prompt: {len(token_ids)} tokens leave no room in the context of "
                             f"{self.llm.max_model_len} tokens")
        if params.n > self.llm.scheduler.num_slots:
            raise ValueError(f"n: {params.n} exceeds the server's max_num_seqs={self.llm.scheduler.num_slots}")
        rid = f"req-{next(self._ids)}"
        q: asyncio.Queue = asyncio.Queue()
        self.streams[rid] = (asyncio.get_running_loop(), q)
        self.inbox.put(("add", rid, token_ids, params))
        return rid, q

    def abort(self, rid: str) -> None:
        self.inbox.put(("abort", rid, None, None))

    def call(self, fn: Callable[[LLM], Any]) -> asyncio.Future:
        """Run `fn(llm)` on the engine thread between two steps (weight reloads, scoring); await the result."""
        fut = asyncio.get_running_loop().create_future()
        self.inbox.put(("call", fut, fn, None))
        return fut

    def pause(self, abort: bool) -> None:
        """Stop stepping (requests stay queued); with `abort`, finish every request in flight as "abort"."""
        self.inbox.put(("pause", None, abort, None))

    def resume(self) -> None:
        self.inbox.put(("resume", None, None, None))

    def _emit(self, rid: str, event: Any) -> None:
        target = self.streams.get(rid)
        if target is not None:
            loop, q = target
            loop.call_soon_threadsafe(q.put_nowait, event)

    def _run(self) -> None:
        llm = self.llm
        paused = False
        while True:
            block = paused or not llm.scheduler.has_work()
            try:
                while True:
                    kind, rid, ids, params = self.inbox.get(block=block)
                    block = False
                    if kind == "add":
                        try:
                            llm.add_request(ids, params, request_id=rid)
                        except ValueError as e:
                            self._emit(rid, DoneEvent(None, str(e)))
                            self.streams.pop(rid, None)
                    elif kind == "abort" and rid in llm.requests:
                        llm.abort(rid)
                        self.streams.pop(rid, None)
                    elif kind in ("pause", "resume"):
                        paused = kind == "pause"
                        if paused and ids:
                            self._abort_all()
                    elif kind == "call":
                        self._call(rid, ids)
            except queue.Empty:
                pass
            if paused or not llm.scheduler.has_work():
                continue
            try:
                events = llm.step()
            except Exception as e:  # never let one bad step kill the server: fail the requests in flight
                for rid in list(llm.requests):
                    self._emit(rid, DoneEvent(None, f"engine error: {e!r}"))
                    llm.abort(rid)
                    self.streams.pop(rid, None)
                continue
            for ev in events:
                rid = ev.seq.request_id
                self._emit(rid, TokenEvent(ev.seq.index, ev.token_id, ev.finished, ev.seq.finish_reason,
                                           ev.seq.stop_reason))
                if ev.finished and rid in llm.requests and llm.output(rid).finished:
                    self._emit(rid, DoneEvent(llm.output(rid)))
                    llm.requests.pop(rid, None)
                    self.streams.pop(rid, None)

    def _call(self, fut: asyncio.Future, fn: Callable[[LLM], Any]) -> None:
        loop = fut.get_loop()
        try:
            result = fn(self.llm)
        except Exception as e:  # the caller gets the error, the engine thread goes on
            loop.call_soon_threadsafe(fut.set_exception, e)
        else:
            loop.call_soon_threadsafe(fut.set_result, result)

    def _abort_all(self) -> None:
        """Every request in flight ends now; its partial output comes back with finish_reason "abort"."""
        llm = self.llm
        for rid in list(llm.requests):
            text, group = llm.requests[rid]
            llm.abort(rid)
            outs = [llm.completion(s) for s in group]
            for c in outs:
                c.finish_reason = c.finish_reason or "abort"
            self._emit(rid, DoneEvent(RequestOutput(rid, text, group[0].prompt_token_ids, outs)))
            self.streams.pop(rid, None)
