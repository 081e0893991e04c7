"""LLM: the built-in engine. `LLM(path_or_model).generate(prompts, SamplingParams(...))`, vLLM style.

One step = admit waiting requests into free cache slots (one prefill per request, forked to its n samples), then
one batched decode step for every running sequence. Finished sequences free their slot at once, so a long
generation never holds the others back (continuous batching).
"""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Union

import torch
from torch import Tensor

from ..checkpoint.io import load_state_dict_into
from ..model import NemotronHForCausalLM
from ..tokenizer import Tokenizer
from .model_runner import ModelRunner
from .outputs import CompletionOutput, RequestOutput
from .sampler import sample
from .sampling_params import SamplingParams
from .scheduler import Scheduler
from .sequence import Sequence

Prompt = Union[str, list[int], list[dict[str, Any]]]


@dataclass
class StepEvent:
    seq: Sequence
    token_id: int
    finished: bool


class LLM:
    def __init__(self, model: str | Path | NemotronHForCausalLM, tokenizer: Tokenizer | str | Path | None = None,
                 dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu",
                 max_num_seqs: int = 16, max_model_len: int = 2048):
        if not isinstance(model, NemotronHForCausalLM):
            path = Path(model)
            model = NemotronHForCausalLM.from_pretrained(path, dtype=dtype, device=device)
            if tokenizer is None and (path / "tokenizer.json").exists():
                tokenizer = path
        if tokenizer is not None and not isinstance(tokenizer, Tokenizer):
            tokenizer = Tokenizer.from_pretrained(tokenizer)
        self.model, self.tokenizer = model, tokenizer
        self.runner = ModelRunner(model, max_num_seqs, max_model_len)
        self.scheduler = Scheduler(max_num_seqs)
        self.max_model_len = max_model_len
        self.eos_ids = set(model.config.eos_token_ids)
        if tokenizer is not None and tokenizer.eos_token_id is not None:
            self.eos_ids.add(tokenizer.eos_token_id)
        self.think_start = tokenizer.think_start_id if tokenizer else None
        self.think_end = tokenizer.think_end_id if tokenizer else None
        self._req_ids = itertools.count()
        self.requests: dict[str, tuple[str | None, list[Sequence]]] = {}

    # ---- requests ----------------------------------------------------------------------------------------
    def encode_prompt(self, prompt: Prompt, chat_template_kwargs: dict[str, Any] | None = None,
                      tools: list[dict] | None = None) -> tuple[str | None, list[int]]:
        return encode_prompt(self.tokenizer, prompt, chat_template_kwargs, tools)

    def add_request(self, prompt: Prompt, params: SamplingParams | None = None, request_id: str | None = None,
                    chat_template_kwargs: dict[str, Any] | None = None, tools: list[dict] | None = None) -> str:
        params = params or SamplingParams()
        text, ids = self.encode_prompt(prompt, chat_template_kwargs, tools)
        if len(ids) >= self.max_model_len:
            raise ValueError(f"prompt: {len(ids)} tokens leave no room in the context of {self.max_model_len} tokens")
        rid = request_id or f"req-{next(self._req_ids)}"
        thinking = self.ends_in_thought(ids)
        group = []
        for i in range(params.n):
            g = torch.Generator(device=self.model.device)
            g.manual_seed(params.seed + i if params.seed is not None else int(torch.randint(0, 2**62, ()).item()))
            group.append(Sequence(rid, i, ids, params, generator=g, thinking=thinking))
        self.scheduler.add(group)
        self.requests[rid] = (text, group)
        return rid

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

    # ---- one engine step ----------------------------------------------------------------------------------
    def step(self) -> list[StepEvent]:
        events: list[StepEvent] = []
        fresh: set[int] = set()
        admitted = self.scheduler.admit()
        if admitted:  # one batched prefill for the first sample of every new request; the others fork from it
            firsts = [g[0] for g in admitted]
            want = any(s.params.return_routed_experts for s in firsts)
            logits, routing = self.runner.prefill([s.prompt_token_ids for s in firsts], [s.slot for s in firsts], want)
            for j, group in enumerate(admitted):
                self.runner.fork(group[0].slot, [s.slot for s in group[1:]])
                for seq in group:
                    if routing is not None and seq.params.return_routed_experts:
                        seq.routed_experts.append(routing[j])
                    fresh.add(seq.seq_id)
                events += self._sample_and_append(group, logits[j].expand(len(group), -1), None)
        # in slot order, so that a full or contiguous batch reads the cache through views
        running = sorted((s for s in self.scheduler.running if s.seq_id not in fresh), key=lambda s: s.slot)
        if running:
            want = any(s.params.return_routed_experts for s in running)
            logits, routing = self.runner.decode([s.last_token for s in running], [s.slot for s in running], want)
            events += self._sample_and_append(running, logits, routing)
        return events

    def _sample_and_append(self, seqs: list[Sequence], logits: Tensor, routing: Tensor | None) -> list[StepEvent]:
        banned = [self._banned(s) for s in seqs]
        tokens, token_lp, all_lp = sample(logits.float(), seqs, banned)
        events = []
        for i, seq in enumerate(seqs):
            tok = int(tokens[i])
            p = seq.params
            if seq.thinking and p.max_thinking_tokens is not None and seq.thinking_tokens >= p.max_thinking_tokens \
                    and self.think_end is not None:
                tok = self.think_end  # reasoning budget spent: close the thought, the answer follows
            seq.output_token_ids.append(tok)
            seq.logprobs.append(float(all_lp[i, tok]) if tok != int(tokens[i]) else float(token_lp[i]))
            if p.logprobs:
                top = all_lp[i].topk(p.logprobs)
                seq.top_logprobs.append(dict(zip(top.indices.tolist(), top.values.tolist())))
            if routing is not None and p.return_routed_experts:
                seq.routed_experts.append(routing[:, i:i + 1])
            self._track_thinking(seq, tok)
            reason = self._stop_reason(seq, tok)
            if reason is not None:
                self.scheduler.finish(seq, reason)
            events.append(StepEvent(seq, tok, reason is not None))
        return events

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
        if tok in self.eos_ids and not p.ignore_eos:
            return "stop"
        if tok in p.stop_token_ids:
            seq.stop_reason = tok
            return "stop"
        if p.stop and self.tokenizer is not None:
            text = self.tokenizer.decode(seq.output_token_ids, skip_special_tokens=p.skip_special_tokens)
            for s in p.stop:
                at = text.find(s, max(0, len(seq.text) - len(s)))
                if at >= 0:
                    seq.text = text[: at + len(s)] if p.include_stop_str_in_output else text[:at]
                    seq.stop_reason = s
                    return "stop"
            seq.text = text
        if p.max_tokens is not None and len(seq.output_token_ids) >= p.max_tokens:
            return "length"
        if seq.num_tokens >= self.max_model_len:
            return "length"
        return None

    # ---- results ------------------------------------------------------------------------------------------
    def completion(self, seq: Sequence) -> CompletionOutput:
        p = seq.params
        if seq.stop_reason is not None and isinstance(seq.stop_reason, str):
            text = seq.text
        elif self.tokenizer is not None:
            text = self.tokenizer.decode(seq.output_token_ids, skip_special_tokens=p.skip_special_tokens)
        else:
            text = ""
        routed = torch.cat(seq.routed_experts, dim=1)[:, : seq.num_tokens - 1] if seq.routed_experts else None
        return CompletionOutput(seq.index, text, list(seq.output_token_ids), list(seq.logprobs), seq.finish_reason,
                                seq.stop_reason, list(seq.top_logprobs) if p.logprobs else None, routed)

    def output(self, request_id: str) -> RequestOutput:
        text, group = self.requests[request_id]
        return RequestOutput(request_id, text, group[0].prompt_token_ids, [self.completion(s) for s in group],
                             finished=all(s.is_finished for s in group))

    def generate(self, prompts: Prompt | list[Prompt], sampling_params: SamplingParams | list[SamplingParams] | None = None,
                 use_progress: bool = False, chat_template_kwargs: dict[str, Any] | None = None) -> list[RequestOutput]:
        """One RequestOutput per prompt, in order. A single string / token-id list / message list is one prompt."""
        single = isinstance(prompts, str) or (isinstance(prompts, list) and prompts and
                                              (isinstance(prompts[0], int) or isinstance(prompts[0], dict)))
        prompts = [prompts] if single else list(prompts)
        params = sampling_params if isinstance(sampling_params, list) else [sampling_params or SamplingParams()] * len(prompts)
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


def encode_prompt(tokenizer: Tokenizer | None, prompt: Prompt, chat_template_kwargs: dict[str, Any] | None = None,
                  tools: list[dict] | None = None) -> tuple[str | None, list[int]]:
    """A prompt (text, token ids or chat messages) -> (rendered text or None, token ids), as the engine sees it."""
    if isinstance(prompt, list) and all(isinstance(t, int) for t in prompt) and prompt:
        return None, list(prompt)
    if tokenizer is None:
        raise ValueError("prompt: this engine has no tokenizer; pass token ids")
    if isinstance(prompt, str):
        text = prompt
    elif isinstance(prompt, list) and prompt and all(isinstance(m, dict) for m in prompt):
        text = tokenizer.apply_chat_template(prompt, tools=tools, add_generation_prompt=True,
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
