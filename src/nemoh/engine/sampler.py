"""Sampling from next-token logits with per-row parameters: temperature, top-k, top-p, min-p, seeded generators.

Logprobs are those of the temperature-scaled distribution, before top-k/top-p/min-p filtering: exactly what a
training forward computes as log_softmax(logits / T) for the same tokens (T = 1 for greedy rows).
Legend: b rows, V vocab.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .sequence import Sequence


def _filter(logits: Tensor, seqs: list[Sequence]) -> Tensor:
    """Apply top-k, top-p and min-p per row (rows without them are untouched). logits (b,V), already scaled."""
    top_k = [s.params.top_k for s in seqs]
    top_p = [s.params.top_p for s in seqs]
    min_p = [s.params.min_p for s in seqs]
    if any(k > 0 for k in top_k):
        V = logits.shape[-1]
        k = torch.tensor([k if k > 0 else V for k in top_k], device=logits.device).clamp(max=V)
        kth = logits.sort(-1, descending=True).values.gather(1, (k - 1)[:, None])
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if any(p < 1.0 for p in top_p):
        p = torch.tensor(top_p, device=logits.device)[:, None]
        sorted_logits, idx = logits.sort(-1, descending=True)
        probs = sorted_logits.softmax(-1)
        drop = probs.cumsum(-1) - probs > p                                # keep the smallest prefix reaching p
        logits = logits.masked_fill(drop.scatter(1, idx, drop), float("-inf"))
    if any(m > 0 for m in min_p):
        m = torch.tensor(min_p, device=logits.device)[:, None]
        probs = logits.softmax(-1)
        logits = logits.masked_fill(probs < m * probs.max(-1, keepdim=True).values, float("-inf"))
    return logits


def sample(logits: Tensor, seqs: list[Sequence], banned: list[list[int]]) -> tuple[Tensor, Tensor, Tensor]:
    """logits (b,V) fp32 -> (tokens (b,), logprob of each token (b,), full logprobs (b,V) for top-k alternatives).
    `banned[i]` token ids are excluded for row i (EOS and stop ids before min_tokens)."""
    temps = torch.tensor([s.params.temperature or 1.0 for s in seqs], device=logits.device)[:, None]
    scaled = logits / temps
    logprobs = torch.log_softmax(scaled, dim=-1)
    for i, ids in enumerate(banned):
        if ids:
            scaled[i, ids] = float("-inf")
    greedy = torch.tensor([s.params.greedy for s in seqs], device=logits.device)
    tokens = scaled.argmax(-1)
    if not bool(greedy.all()):
        filtered = _filter(scaled, seqs)
        probs = filtered.softmax(-1)
        # Exponential race (Gumbel-max) with one noise draw per row, so each seeded row has its own stream.
        noise = torch.stack([torch.empty_like(probs[i]).exponential_(generator=s.generator)
                             for i, s in enumerate(seqs)])
        sampled = (probs / noise).argmax(-1)
        tokens = torch.where(greedy, tokens, sampled)
    return tokens, logprobs.gather(1, tokens[:, None])[:, 0], logprobs
