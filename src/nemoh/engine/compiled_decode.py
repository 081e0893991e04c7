"""The one-token decode step through torch.compile, with static shapes per batch-size bucket.

The running batch is padded up to the next bucket with free cache slots (their state is garbage afterwards and
they are reset, as every slot is on admission); the running sequences' slots stay where they are. Attention reads
all `max_model_len` positions under a length mask, MoE uses its static dispatch (`experts_static`), so one graph
serves a bucket for the whole generation. A batch whose slots form the run 0..B-1 is read through views; any other
set of slots through a gather (a second graph for that bucket, compiled when first met).

Legend: B bucket size, V vocab.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

from ..model import HybridCache, NemotronHForCausalLM
from ..model.context import ForwardContext


def decode_forward(model: NemotronHForCausalLM, ids: Tensor, cache: HybridCache) -> Tensor:
    """ids (B,1) over the cache rows `cache.begin` selected -> next-token logits (B,V) fp32. No host syncs."""
    h = model.backbone(ids, ForwardContext(cache=cache))
    return model.lm_head(h[:, -1]).float()


def buckets_for(max_num_seqs: int) -> list[int]:
    """Powers of two below max_num_seqs, and max_num_seqs itself."""
    sizes, b = [], 1
    while b < max_num_seqs:
        sizes.append(b)
        b *= 2
    return sizes + [max_num_seqs]


class CompiledDecode:
    def __init__(self, model: NemotronHForCausalLM, cache: HybridCache, max_num_seqs: int):
        self.model, self.cache = model, cache
        self.buckets = buckets_for(max_num_seqs)
        # two graphs per bucket (slots 0..B-1 as views, any others gathered) must not hit dynamo's recompile limit
        torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 2 * len(self.buckets) + 2)
        self.step: Callable[[NemotronHForCausalLM, Tensor, HybridCache], Tensor] = torch.compile(
            decode_forward, dynamic=False, fullgraph=True)

    def bucket(self, n: int) -> int:
        return next(b for b in self.buckets if b >= n)

    @torch.inference_mode()
    def warm_up(self) -> None:
        """Compile every bucket's graph (slots 0..B-1, all free at start-up) so that no request pays for it."""
        for b in self.buckets:
            self.run([0] * b, list(range(b)), [])
        self.cache.reset()

    @torch.inference_mode()
    def run(self, last_tokens: list[int], slots: list[int], free_slots: list[int]) -> Tensor:
        """Logits (n,V) for the n running slots; the batch is padded to its bucket with free slots."""
        n = len(slots)
        pad = sorted(free_slots)[: self.bucket(n) - n]
        assert len(pad) == self.bucket(n) - n, "a bucket never exceeds max_num_seqs, so free slots suffice"
        order = sorted(range(n + len(pad)), key=lambda i: (slots + pad)[i])  # slot order: 0..B-1 reads as views
        all_slots = [(slots + pad)[i] for i in order]
        ids = torch.tensor([(last_tokens + [0] * len(pad))[i] for i in order], device=self.model.device)[:, None]
        if pad:
            self.cache.reset(pad)
        self.cache.begin(torch.tensor(all_slots, device=ids.device), 1, static=True)
        logits = self.step(self.model, ids, self.cache)
        self.cache.end()
        if pad:
            self.cache.reset(pad)  # free slots hold no state
        back = torch.empty(len(order), dtype=torch.long)
        back[torch.tensor(order)] = torch.arange(len(order))
        return logits[back[:n].to(logits.device)]
