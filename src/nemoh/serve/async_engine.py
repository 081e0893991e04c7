"""AsyncEngine: runs `LLM.step()` in one background thread and hands tokens to asyncio handlers.

Requests from many HTTP handlers land in one engine, so concurrent requests are batched together. The engine thread
owns the LLM; handlers talk to it only through the inbox queue (add, abort) and receive events on their own asyncio
queue: TokenEvents, then exactly one DoneEvent (the output, or the error that ended this request alone).
"""
from __future__ import annotations

import asyncio
import itertools
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from ..engine import LLM, RequestOutput, SamplingParams

log = logging.getLogger("nemoh.serve")


@dataclass
class TokenEvent:
    index: int              # choice index (sample of the request)
    token_id: int
    finished: bool
    finish_reason: str | None
    stop_reason: str | int | None = None
    logprob: float | None = None
    top_logprobs: dict[int, float] | None = None


@dataclass
class DoneEvent:
    output: RequestOutput | None
    error: str | None = None


@dataclass
class EngineStats:
    """Counters behind GET /metrics (read from the event loop while the engine thread writes: monotonic ints)."""
    requests_total: int = 0
    requests_aborted_total: int = 0
    requests_failed_total: int = 0
    generation_tokens_total: int = 0
    step_errors_total: int = 0


class AsyncEngine:
    def __init__(self, llm: LLM):
        self.llm = llm
        self.inbox: queue.Queue = queue.Queue()
        self.streams: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue, int]] = {}  # rid -> loop, q, index0
        self.stats = EngineStats()
        self.paused = False                     # /pause_generation: queued requests wait until /continue_generation
        self._ids = itertools.count()
        self._thread = threading.Thread(target=self._run, name="nemoh-engine", daemon=True)
        self._thread.start()

    def submit(self, token_ids: list[int], params: SamplingParams, q: asyncio.Queue | None = None,
               first_index: int = 0) -> tuple[str, asyncio.Queue]:
        """Queue a tokenised prompt (already checked by `LLM.validate_request`); returns its id and event queue.
        Several requests may share one queue (a batch of prompts): their TokenEvents then carry choice indices
        starting at `first_index`, and the queue receives one DoneEvent per request."""
        rid = f"req-{next(self._ids)}"
        q = q if q is not None else asyncio.Queue()
        self.streams[rid] = (asyncio.get_running_loop(), q, first_index)
        self.inbox.put(("add", rid, token_ids, params))
        return rid, q

    def abort(self, rid: str) -> None:
        """The client went away: its sequences leave the batch at the engine's next step."""
        self.inbox.put(("abort", rid, None, None))

    def metrics(self) -> dict[str, int]:
        sched = self.llm.scheduler
        return {**asdict(self.stats), "num_requests_running": len(self.llm.requests),
                "num_sequences_running": len(sched.running),
                "num_requests_waiting": len(sched.waiting), "num_free_slots": len(sched.free_slots)}

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

    # ---- the engine thread --------------------------------------------------------------------------------------
    def _emit(self, rid: str, event: Any) -> None:
        target = self.streams.get(rid)
        if target is not None:
            loop, q, first = target
            if isinstance(event, TokenEvent):
                event.index += first
            loop.call_soon_threadsafe(q.put_nowait, event)

    def _finish(self, rid: str, event: DoneEvent) -> None:
        self._emit(rid, event)
        self.llm.requests.pop(rid, None)
        self.llm.errors.pop(rid, None)
        self.streams.pop(rid, None)

    def _drain_inbox(self, block: bool) -> None:
        llm = self.llm
        try:
            while True:
                kind, rid, ids, params = self.inbox.get(block=block)
                block = False
                if kind == "add":
                    try:
                        llm.add_request(ids, params, request_id=rid)
                        self.stats.requests_total += 1
                    except Exception as e:  # a request the engine refuses ends alone, with the reason
                        self._finish(rid, DoneEvent(None, str(e)))
                elif kind == "abort":
                    if rid in llm.requests:
                        llm.abort_request(rid)
                        self.stats.requests_aborted_total += 1
                    self.streams.pop(rid, None)
                elif kind in ("pause", "resume"):
                    self.paused = kind == "pause"
                    if self.paused and ids:
                        self._abort_all()
                elif kind == "call":
                    self._call(rid, ids)
        except queue.Empty:
            pass

    def _run(self) -> None:
        llm = self.llm
        while True:
            self._drain_inbox(block=self.paused or not llm.scheduler.has_work())
            if self.paused or not llm.scheduler.has_work():
                continue
            try:
                events = llm.step()
            except Exception as e:  # a failure isolation could not pin on one request: fail those in flight
                log.exception("engine step failed")
                self.stats.step_errors_total += 1
                for rid in list(llm.requests):
                    llm.abort(rid)
                    self._finish(rid, DoneEvent(None, f"engine error: {type(e).__name__}: {e}"))
                continue
            touched: dict[str, None] = {}
            for ev in events:  # every token event first, then the Done events: no choice loses its last chunk
                seq, rid = ev.seq, ev.seq.request_id
                top = seq.top_logprobs[-1] if seq.params.logprobs and seq.top_logprobs else None
                self._emit(rid, TokenEvent(seq.index, ev.token_id, ev.finished, seq.finish_reason, seq.stop_reason,
                                           seq.logprobs[-1] if seq.logprobs else None, top))
                self.stats.generation_tokens_total += 1
                touched[rid] = None
            for rid, why in list(llm.errors.items()):
                self.stats.requests_failed_total += 1
                self._finish(rid, DoneEvent(None, why))
            for rid in touched:
                if rid in llm.requests and llm.output(rid).finished:
                    self._finish(rid, DoneEvent(llm.output(rid)))

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
            self._finish(rid, DoneEvent(RequestOutput(rid, text, group[0].prompt_token_ids, outs)))
