"""LLM: the built-in engine. `LLM(path_or_model).generate(prompts, SamplingParams(...))`, vLLM style.

One step = admit waiting requests into free cache slots, prefill the next chunk of every new prompt (at most
`max_prefill_tokens` in all; a prompt's last chunk gives its first token and is forked to its n samples), then one
batched decode step for every running sequence. Finished sequences free their slot at once, so a long generation
never holds the others back (continuous batching), and a long prompt never stalls the running ones for more than
one chunk (chunked prefill).
"""
from __future__ import annotations

import contextlib
import itertools
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor

from ..checkpoint.io import load_state_dict_into
from ..model import NemotronHForCausalLM
from ..tokenizer import Tokenizer
from .detokenizer import IncrementalDetokenizer, find_stop, special_skip_ids
from .model_runner import ModelRunner
from .outputs import CompletionOutput, RequestOutput
from .profiler import StepProfile
from .sampler import sample
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .sequence import Sequence
from .sequence import Status as SeqStatus

Prompt = str | list[int] | list[dict[str, Any]]


@dataclass
class StepEvent:
    seq: Sequence
    token_id: int
    finished: bool


class LLM:
    def __init__(self, model: str | Path | NemotronHForCausalLM, tokenizer: Tokenizer | str | Path | None = None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 max_num_seqs: int = 16, max_model_len: int = 2048, max_prefill_tokens: int | None = 2048,
                 compile: bool = False):
        """`compile`: the one-token decode step through torch.compile, one static-shape graph per batch-size bucket,
        compiled at start-up (minutes on a CPU; see bench/RESULTS.md for when it pays)."""
        if max_prefill_tokens is not None and (not isinstance(max_prefill_tokens, int) or max_prefill_tokens < 1):
            raise ValueError(f"max_prefill_tokens: must be a positive integer or None, got {max_prefill_tokens!r}")
        if not isinstance(model, NemotronHForCausalLM):
            path = Path(model)
            model = NemotronHForCausalLM.from_pretrained(path, dtype=dtype, device=device)
            if tokenizer is None and (path / "tokenizer.json").exists():
                tokenizer = path
        if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
            tokenizer = Tokenizer.from_pretrained(tokenizer)
        self.model, self.tokenizer = model, tokenizer
        self.runner = ModelRunner(model, max_num_seqs, max_model_len, compile=compile)
        self.scheduler = Scheduler(max_num_seqs)
        self.max_model_len, self.max_prefill_tokens = max_model_len, max_prefill_tokens
        self.eos_ids = set(model.config.eos_token_ids)
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        self.think_start = tokenizer.think_start_id if tokenizer else None
        self.think_end = tokenizer.think_end_id if tokenizer else None
        self._special_ids = special_skip_ids(tokenizer) if tokenizer else frozenset()
        self._req_ids = itertools.count()
        self.profile: StepProfile | None = None   # set to a StepProfile to record where step time goes
        self.requests: dict[str, tuple[str | None, list[Sequence]]] = {}
        self.errors: dict[str, str] = {}          # request id -> why it failed (finish_reason "error"); caller pops
        self._pending_aborts: deque[str] = deque()

    # ---- requests ----------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt, chat_template_kwargs: dict[str, Any] | None = None,
                      tools: list[dict] | None = None) -> tuple[str | None, list[int]]:
        return encode_prompt(self.tokenizer, prompt, chat_template_kwargs, tools)

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None,
                    chat_template_kwargs: dict[str, Any] | None = None, tools: list[dict] | None = None) -> str:
        params = params or SamplingParams()
        text, ids = self.encode_prompt(prompt, chat_template_kwargs, tools)
        self.validate_request(ids, params)
        rid = request_id or f"req-{next(self._req_ids)}"
        thinking = self.ends_in_thought(ids)
        group = []
        for i in range(params.n):
            g = torch.Generator(device=self.model.device)
            g.manual_seed(params.seed + i if params.seed is not None else int(torch.randint(0, 2**62, ()).item()))
            group.append(Sequence(rid, i, ids, params, generator=g, thinking=thinking, detok=self._detokenizer(params)))
        self.scheduler.add(group)
        self.requests[rid] = (text, group)
        return rid

    def _detokenizer(self, params: SamplingParams) -> IncrementalDetokenizer | None:
        if self.tokenizer is None:
            return None
        return IncrementalDetokenizer(self.tokenizer, self._special_ids if params.skip_special_tokens else frozenset())

    def ends_in_thought(self, ids: list[int]) -> bool:
        """True when the prompt leaves the model inside <think> (the template opened a thought)."""
        if self.think_start is None:
            return False
        last_open = max((i for i, t in enumerate(ids) if t == self.think_start), default=-1)
        last_close = max((i for i, t in enumerate(ids) if t == self.think_end), default=-1)
        return last_open > last_close

    def abort(self, request_id: str) -> None:
        _, group = self.requests.pop(request_id, (None, []))
        for seq in group:
            if seq in self.scheduler.running:
                self.scheduler.finish(seq, "abort")
        for g in list(self.scheduler.waiting):
            if g and g[0].request_id == request_id:
                self.scheduler.waiting.remove(g)

    # ---- admission checks, aborts, per-request failures --------------------------------------------------------
    def validate_request(self, ids: list[int], params: SamplingParams) -> None:
        """Everything one request carries that could later fail the batch it shares, checked before it joins."""
        vocab = self.model.config.vocab_size
        if not ids:
            raise ValueError("prompt: empty after tokenisation")
        if not all(_is_int(t) and 0 <= t < vocab for t in ids):
            raise ValueError(f"prompt: token ids must be integers in [0, {vocab})")
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt: {len(ids)} tokens leave no room in the context of {self.max_model_len} tokens")
        stop_ids = params.stop_token_ids
        if not isinstance(stop_ids, (list, tuple)) or not all(_is_int(t) and 0 <= t < vocab for t in stop_ids):
            raise ValueError(f"stop_token_ids: must be a list of integers in [0, {vocab}), got {stop_ids!r:.80}")
        if params.n > self.scheduler.num_slots:
            raise ValueError(f"n: {params.n} exceeds the engine's max_num_seqs={self.scheduler.num_slots}")
        if params.seed is not None and not (_is_int(params.seed) and -2**63 <= params.seed < 2**63):
            raise ValueError(f"seed: must be an integer in [-2**63, 2**63), got {params.seed!r:.40}")
        if params.logprobs is not None and params.logprobs > vocab:
            raise ValueError(f"logprobs: {params.logprobs} exceeds the vocabulary size {vocab}")

    def abort_request(self, request_id: str) -> None:
        """Thread-safe: the request's sequences leave the batch and free their cache slots at the next step."""
        self._pending_aborts.append(request_id)

    def _apply_aborts(self) -> None:
        while self._pending_aborts:
            self.abort(self._pending_aborts.popleft())

    def fail_request(self, request_id: str, message: str) -> None:
        """Finish every sequence of one request with finish_reason "error"; the other requests run on."""
        self.errors[request_id] = message
        _, group = self.requests.get(request_id, (None, []))
        for seq in group:
            if seq in self.scheduler.running:
                self.scheduler.finish(seq, "error")
            seq.status, seq.finish_reason = SeqStatus.FINISHED, "error"
        for g in list(self.scheduler.waiting):
            if g and g[0].request_id == request_id:
                self.scheduler.waiting.remove(g)

    # ---- one engine step ----------------------------------------------------------------------------------
    def step(self) -> list[StepEvent]:
        self._apply_aborts()
        if self.profile is not None:
            self.profile.steps += 1
        with self._phase("step"):
            events: list[StepEvent] = []
            with self._phase("scheduling"):
                self.scheduler.admit()
            fresh = self._prefill(events)
            with self._phase("scheduling"):
                # in slot order, so that a full or contiguous batch reads the cache through views
                running = sorted((s for s in self.scheduler.running if s.is_prefilled and s.seq_id not in fresh),
                                 key=lambda s: s.slot)
            if running:
                want = any(s.params.return_routed_experts for s in running)
                with self._phase("model"):
                    try:
                        logits, routing = self.runner.decode([s.last_token for s in running],
                                                             [s.slot for s in running], want, self.scheduler.free_slots)
                    except Exception:  # isolation: find the sequence that raises, fail its request, keep the rest
                        running, logits, routing = self._decode_isolated(running, want)
                if running:
                    events += self._sample_and_append(running, logits, routing)
        return events

    # ---- a batched forward that raised: each sequence alone ------------------------------------------------------
    # The failed forward may have advanced some layers' Mamba states (they update in place, layer by layer), so a
    # sequence's slot is first rebuilt from its own tokens (recompute, as vLLM does after preemption); one that
    # still raises alone fails its request, the others continue with the tokens a run without it would give.
    def _decode_isolated(self, running: list[Sequence], want: bool) -> tuple[list[Sequence], Tensor, Tensor | None]:
        rows: list[tuple[Sequence, Tensor, Tensor | None]] = []
        for seq in running:
            if seq.is_finished:                    # a sibling sample failed its request
                continue
            try:
                self.runner.prefill([(seq.prompt_token_ids + seq.output_token_ids)[:-1]], [seq.slot], [0], False)
                logits, routing = self.runner.decode([seq.last_token], [seq.slot], want, self.scheduler.free_slots)
                rows.append((seq, logits[0], routing))
            except Exception as e:
                self.fail_request(seq.request_id, f"engine error in this request ({type(e).__name__}: {e})")
        rows = [r for r in rows if not r[0].is_finished]
        if not rows:
            return [], torch.empty(0), None
        routes = [r for _, _, r in rows if r is not None]
        return ([s for s, _, _ in rows], torch.stack([lg for _, lg, _ in rows]),
                torch.cat(routes, dim=1) if want and routes else None)

    def _prefill_isolated(self, plan: list[tuple[list[Sequence], int, int]],
                          want: bool) -> tuple[list[Tensor | None], list[Tensor] | None]:
        """Each group's prompt up to this chunk's end, alone, from an empty slot: (logits row or None, routing)."""
        rows: list[Tensor | None] = []
        routing: list[Tensor] = []
        for group, _, end in plan:
            first = group[0]
            try:
                logits, route = self.runner.prefill([first.prompt_token_ids[:end]], [first.slot], [0], want)
            except Exception as e:
                self.fail_request(first.request_id, f"engine error in this request ({type(e).__name__}: {e})")
                rows.append(None)
                routing.append(torch.empty(0))
                continue
            rows.append(logits[0])
            if route is not None:
                first.routed_experts.clear()       # the routing now covers the whole prompt so far
                routing.append(route[0])
            else:
                routing.append(torch.empty(0))
        return rows, routing if want else None

    def _phase(self, name: str) -> contextlib.AbstractContextManager[None]:
        return self.profile.phase(name) if self.profile is not None else contextlib.nullcontext()

    def _prefill(self, events: list[StepEvent]) -> set[int]:
        """One batched prefill of the next prompt chunks (first sample of each new request). A request whose prompt
        is complete samples its first tokens and forks its cache to its other samples. Returns their sequence ids."""
        with self._phase("scheduling"):
            plan = self.scheduler.schedule_prefill(self.max_prefill_tokens)
        if not plan:
            return set()
        firsts = [g[0] for g, _, _ in plan]
        want = any(s.params.return_routed_experts for s in firsts)
        with self._phase("model"):
            try:
                logits, routing = self.runner.prefill([s.prompt_token_ids[a:b] for s, (_, a, b) in zip(firsts, plan)],
                                                      [s.slot for s in firsts], [a for _, a, _ in plan], want)
                rows: list[Tensor | None] = list(logits)
            except Exception:  # isolation: find the prompt that raises, fail its request, keep the rest
                rows, routing = self._prefill_isolated(plan, want)
        fresh: set[int] = set()
        for j, (group, _, end) in enumerate(plan):
            first, row = group[0], rows[j]
            if row is None:
                continue
            first.num_prefilled = end
            if routing is not None and first.params.return_routed_experts:
                first.routed_experts.append(routing[j])
            if not first.is_prefilled:
                continue
            self.runner.fork(first.slot, [s.slot for s in group[1:]])
            for seq in group:
                seq.num_prefilled = end
                seq.routed_experts = list(first.routed_experts)
                fresh.add(seq.seq_id)
            events += self._sample_and_append(group, row.expand(len(group), -1), None)
        return fresh

    def _sample_and_append(self, seqs: list[Sequence], logits: Tensor, routing: Tensor | None) -> list[StepEvent]:
        """Sample one token per sequence and append it; an error in one sequence fails its request only."""
        with self._phase("sampling"):
            rows = self._sample_isolated(seqs, logits)
        events = []
        for i, seq in enumerate(seqs):
            row = rows[i]
            if row is None or seq.is_finished:   # failed here, or a sibling's failure finished it
                continue
            try:
                events.append(self._append(seq, *row, routing[:, i:i + 1] if routing is not None else None))
            except Exception as e:  # isolation: whatever went wrong is this request's, not the batch's
                self.fail_request(seq.request_id, f"engine error in this request ({type(e).__name__}: {e})")
        return events

    def _sample_isolated(self, seqs: list[Sequence], logits: Tensor) -> list[tuple[int, float, Tensor] | None]:
        """(token, its logprob, the row's logprobs) per sequence: one batched draw; if that raises, each row alone
        from the same generator states (same tokens), failing only the rows that still raise."""
        states = [s.generator.get_state() if s.generator is not None else None for s in seqs]
        try:
            tokens, token_lp, all_lp = sample(logits.float(), seqs, [self._banned(s) for s in seqs])
            return [(int(tokens[i]), float(token_lp[i]), all_lp[i]) for i in range(len(seqs))]
        except Exception:
            pass
        rows: list[tuple[int, float, Tensor] | None] = []
        for i, seq in enumerate(seqs):
            state = states[i]
            if state is not None:
                assert seq.generator is not None  # its state was read above
                seq.generator.set_state(state)
            try:
                tok, tok_lp, lp = sample(logits[i:i + 1].float(), [seq], [self._banned(seq)])
                rows.append((int(tok[0]), float(tok_lp[0]), lp[0]))
            except Exception as e:
                self.fail_request(seq.request_id, f"engine error in this request ({type(e).__name__}: {e})")
                rows.append(None)
        return rows

    def _append(self, seq: Sequence, sampled: int, sampled_lp: float, lp: Tensor, routing: Tensor | None) -> StepEvent:
        """Append one sampled token (lp: the row's logprobs (V,)) and apply the stop rules."""
        p, tok = seq.params, sampled
        if seq.thinking and p.max_thinking_tokens is not None and seq.thinking_tokens >= p.max_thinking_tokens \
                and self.think_end is not None:
            tok = self.think_end  # reasoning budget spent: close the thought, the answer follows
        seq.output_token_ids.append(tok)
        seq.logprobs.append(float(lp[tok]) if tok != sampled else sampled_lp)
        if p.logprobs:
            top = lp.topk(p.logprobs)
            seq.top_logprobs.append(dict(zip(top.indices.tolist(), top.values.tolist())))
        if routing is not None and p.return_routed_experts:
            seq.routed_experts.append(routing)
        self._track_thinking(seq, tok)
        reason = self._stop_reason(seq, tok)
        if reason is not None:
            self.scheduler.finish(seq, reason)
        return StepEvent(seq, tok, reason is not None)

    def _banned(self, seq: Sequence) -> list[int]:
        p = seq.params
        if len(seq.output_token_ids) >= p.min_tokens:
            return []
        return list(p.stop_token_ids) + ([] if p.ignore_eos else list(self.eos_ids))

    def _track_thinking(self, seq: Sequence, tok: int) -> None:
        if tok == self.think_start:
            seq.thinking = True
        elif tok == self.think_end:
            seq.thinking = False
        elif seq.thinking:
            seq.thinking_tokens += 1

    def _stop_reason(self, seq: Sequence, tok: int) -> str | None:
        p = seq.params
        hit = self._detokenize(seq, tok)
        if tok in self.eos_ids and not p.ignore_eos:
            return "stop"
        if tok in p.stop_token_ids:
            seq.stop_reason = tok
            return "stop"
        if hit is not None:
            at, s = hit
            assert seq.detok is not None, "a stop string hit needs the sequence's text"
            seq.text = seq.detok.text[: at + len(s)] if p.include_stop_str_in_output else seq.detok.text[:at]
            seq.stop_reason = s
            return "stop"
        if p.max_tokens is not None and len(seq.output_token_ids) >= p.max_tokens:
            return "length"
        if seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    def _detokenize(self, seq: Sequence, tok: int) -> tuple[int, str] | None:
        """Add the token to the sequence's text; a stop string that the new text completes: (start, string)."""
        if seq.detok is None:
            return None
        with self._phase("detokenisation"):
            before = len(seq.detok.text)
            seq.detok.add(tok)
            stops = cast(list[str], seq.params.stop)  # SamplingParams.__post_init__ makes it a list
            return find_stop(seq.detok.text, len(seq.detok.text) - before, stops) if stops else None

    # ---- results ------------------------------------------------------------------------------------------
    def completion(self, seq: Sequence) -> CompletionOutput:
        p = seq.params
        if isinstance(seq.stop_reason, str):
            text = seq.text                       # cut at the stop string
        elif seq.detok is not None:
            if seq.is_finished:
                seq.detok.flush()                 # an incomplete UTF-8 tail shows as U+FFFD, as in a full decode
            text = seq.detok.text
        else:
            text = ""
        routed = torch.cat(seq.routed_experts, dim=1)[:, : seq.num_tokens - 1] if seq.routed_experts else None
        return CompletionOutput(seq.index, text, list(seq.output_token_ids), list(seq.logprobs), seq.finish_reason,
                                seq.stop_reason, list(seq.top_logprobs) if p.logprobs else None, routed)

    def output(self, request_id: str) -> RequestOutput:
        text, group = self.requests[request_id]
        return RequestOutput(request_id, text, group[0].prompt_token_ids, [self.completion(s) for s in group],
                             finished=all(s.is_finished for s in group))

    def generate(self, prompts: Prompt | list[Prompt],
                 sampling_params: SamplingParams | list[SamplingParams] | None = None, use_progress: bool = False,
                 chat_template_kwargs: dict[str, Any] | None = None) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order. A single string / token-id list / message list is one prompt."""
        single = isinstance(prompts, str) or (isinstance(prompts, list) and prompts and
                                              (isinstance(prompts[0], int) or isinstance(prompts[0], dict)))
        prompts = cast(list[Prompt], [prompts] if single else list(prompts))
        params = (sampling_params if isinstance(sampling_params, list)
                  else [sampling_params or SamplingParams()] * len(prompts))
        if len(params) != len(prompts):
            raise ValueError(f"sampling_params: {len(params)} given for {len(prompts)} prompts")
        rids = [self.add_request(p, sp, chat_template_kwargs=chat_template_kwargs) for p, sp in zip(prompts, params)]
        total = sum(sp.n for sp in params)
        progress = _progress(use_progress, total)
        while self.scheduler.has_work():
            done = sum(e.finished for e in self.step())
            if progress is not None and done:
                progress[0].advance(progress[1], done)
        if progress is not None:
            progress[0].stop()
        outs = [self.output(r) for r in rids]
        for r in rids:
            self.requests.pop(r, None)
        return outs

    # ---- weights -------------------------------------------------------------------------------------------
    def reload_weights(self, path: str | Path) -> None:
        """Load a Hub-layout checkpoint of the same architecture into the engine's model (server weight sync)."""
        load_state_dict_into(self.model, path)

    @torch.no_grad()
    def update_weights(self, source: NemotronHForCausalLM | dict[str, Tensor]) -> None:
        """Copy new weights into the engine's model in place (RL calls this after every optimizer step)."""
        state = source.state_dict() if isinstance(source, torch.nn.Module) else source
        params = dict(self.model.named_parameters())
        unknown = sorted(set(state) - set(params))
        missing = sorted(set(params) - set(state))
        if unknown or missing:
            raise ValueError(f"update_weights: unknown {unknown[:10]}, missing {missing[:10]}")
        for name, p in params.items():
            src = state[name]
            if src.shape != p.shape:
                raise ValueError(f"update_weights: {name} has shape {tuple(src.shape)}, engine has {tuple(p.shape)}")
            p.copy_(src)


def _is_int(x: object) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def encode_prompt(tokenizer: Tokenizer | None, prompt: Prompt, chat_template_kwargs: dict[str, Any] | None = None,
                  tools: list[dict] | None = None) -> tuple[str | None, list[int]]:
    """A prompt (text, token ids or chat messages) -> (rendered text or None, token ids), as the engine sees it."""
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt) and prompt:
        return None, list(cast(list[int], prompt))
    if tokenizer is None:
        raise ValueError("prompt: this engine has no tokenizer; pass token ids")
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        text = tokenizer.apply_chat_template(cast(list[dict[str, Any]], prompt), tools=tools,
                                             add_generation_prompt=True,
                                             **(chat_template_kwargs or {}))
    else:
        raise ValueError("prompt: expected a string, a non-empty list of token ids, or a list of chat messages")
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("prompt: empty after tokenisation")
    return text, ids


def _progress(enabled: bool, total: int):
    if not enabled:
        return None
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn
    prog = Progress(TextColumn("generating"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                    TimeRemainingColumn())
    prog.start()
    return prog, prog.add_task("gen", total=total)
