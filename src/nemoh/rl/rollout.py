"""Rollouts: prompts -> n samples each through the engine (logprobs and routed experts recorded) -> rewards.
Dynamic sampling drops groups whose rewards all agree and samples more prompts to refill the batch."""
from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from ..data.prompts import PromptExample
from ..engine import LLM, SamplingParams
from .config import RLConfig
from .rewards import RewardFn, is_correct, reward_text
from .stats import sampling_stats

if TYPE_CHECKING:
    from ..engine.llm_engine import Prompt
    from .backends.base import RolloutBackend


@dataclass
class Sample:
    prompt_ids: list[int]
    response_ids: list[int]
    rollout_logp: list[float]
    reward: float
    truncated: bool
    routed: Tensor | None         # (m, len(prompt)+len(response)-1, k) or None
    response_text: str
    advantage: float = 0.0
    weight_version: int = 0       # optimizer steps in the weights that sampled it


class PromptSampler:
    """Endless seeded shuffles of the training prompts."""

    def __init__(self, prompts: list[PromptExample], seed: int):
        self.prompts, self.rng = prompts, random.Random(seed)
        self.queue: list[PromptExample] = []

    def take(self, n: int) -> list[PromptExample]:
        out: list[PromptExample] = []
        while len(out) < n:
            if not self.queue:
                self.queue = list(self.prompts)
                self.rng.shuffle(self.queue)
            out.append(self.queue.pop())
        return out


def sample_groups(llm: LLM, prompts: list[PromptExample], cfg: RLConfig, reward: RewardFn, seed: int,
                  chat_kwargs: dict[str, Any] | None) -> tuple[list[list[Sample]], int]:
    """One group of n samples per prompt. Returns the groups and the number of generated tokens."""
    r = cfg.rollout
    params = SamplingParams(n=r.n_samples_per_prompt, temperature=r.rollout_temperature, top_p=r.rollout_top_p,
                            max_tokens=r.rollout_max_response_len, seed=seed,
                            return_routed_experts=cfg.algo.use_rollout_routing_replay)
    inputs: list[Prompt] = [p.prompt for p in prompts]
    outs = llm.generate(inputs, [params] * len(prompts),
                        chat_template_kwargs=chat_kwargs if cfg.data.apply_chat_template else None)
    groups, tokens = [], 0
    for p, out in zip(prompts, outs):
        tok = llm.tokenizer
        texts = [reward_text(c.token_ids, tok.decode, tok.think_end_id) if tok is not None else c.text
                 for c in out.outputs]
        scores = reward(texts, p.label, p.prompt)
        group = []
        for c, s in zip(out.outputs, scores):
            truncated = c.finish_reason == "length"
            if truncated and cfg.algo.overlong == "penalty":
                s = cfg.algo.overlong_penalty
            group.append(Sample(out.prompt_token_ids, c.token_ids, c.logprobs, s, truncated, c.routed_experts, c.text))
            tokens += len(c.token_ids)
        groups.append(group)
    return groups, tokens


def collect(backend: RolloutBackend, sampler: PromptSampler, cfg: RLConfig, seed: int,
            ) -> tuple[list[list[Sample]], dict[str, float]]:
    """rollout_batch_size groups from `backend.generate`; with dynamic sampling, only groups whose rewards differ
    (refilled by sampling more prompts, up to max_sampling_rounds; if still short, zero-signal groups fill the
    rest). Every rank calls it with the same sampler state (backends spread the work and gather the groups)."""
    need = cfg.rollout.rollout_batch_size
    t0 = time.perf_counter()
    kept: list[list[Sample]] = []
    dropped: list[list[Sample]] = []
    sampled: list[list[float]] = []
    tokens, rounds = 0, 0
    while len(kept) < need:
        groups, n_tok = backend.generate(sampler.take(need - len(kept) if rounds else need), seed * 1000 + rounds)
        tokens, rounds = tokens + n_tok, rounds + 1
        for g in groups:
            sampled.append([s.reward for s in g])
            flat = len({s.reward for s in g}) == 1
            (dropped if cfg.algo.dynamic_sampling and flat else kept).append(g)
        if not cfg.algo.dynamic_sampling or rounds >= cfg.algo.max_sampling_rounds:
            break
    kept = (kept + dropped)[:need]
    dt = time.perf_counter() - t0
    stats = {"rollout_tokens_per_s": tokens / dt, "time_rollout": dt, "sampling_rounds": rounds,
             "dropped_groups": len(dropped),
             **sampling_stats(sampled, [[s.reward for s in g] for g in kept])}
    return kept, stats


def accuracy_of(texts: list[str], prompts: list[PromptExample], reward: RewardFn) -> float:
    """The share of held-out prompts whose response text (one per prompt, greedy: `RolloutBackend.evaluate`)
    scores as correct (reward >= 1)."""
    if not prompts:
        return float("nan")
    scores = [reward([t], p.label)[0] for t, p in zip(texts, prompts, strict=True)]
    return sum(bool(is_correct(s)) for s in scores) / len(scores)


def group_stats(groups: list[list[Sample]]) -> dict[str, float]:
    rewards = torch.tensor([s.reward for g in groups for s in g])
    lengths = torch.tensor([len(s.response_ids) for g in groups for s in g], dtype=torch.float)
    zero_std = sum(len({s.reward for s in g}) == 1 for g in groups) / max(1, len(groups))
    return {"reward_mean": float(rewards.mean()), "reward_std": float(rewards.std()) if len(rewards) > 1 else 0.0,
            "accuracy": float(is_correct(rewards).float().mean()), "response_len_mean": float(lengths.mean()),
            "response_len_max": float(lengths.max()),
            "truncation_ratio": sum(s.truncated for g in groups for s in g) / max(1, len(rewards)),
            "zero_std_groups": zero_std}
