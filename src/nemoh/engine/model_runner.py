"""ModelRunner: owns the model and its HybridCache (one row per sequence slot) and runs prefill and decode."""
from __future__ import annotations

import torch
from torch import Tensor

from ..model import HybridCache, NemotronHForCausalLM


class ModelRunner:
    def __init__(self, model: NemotronHForCausalLM, max_num_seqs: int, max_model_len: int):
        self.model = model.eval()
        self.max_num_seqs, self.max_model_len = max_num_seqs, max_model_len
        dtype = next(p.dtype for n, p in model.named_parameters() if n.endswith("lm_head.weight"))
        self.cache = HybridCache(model.config, max_num_seqs, max_model_len, dtype=dtype, device=model.device)

    @torch.inference_mode()
    def prefill(self, token_ids: list[int], slot: int, want_routing: bool) -> tuple[Tensor, Tensor | None]:
        """Run one prompt into `slot` (reset first). Returns last-position logits (V,) and routing (m, T, k)."""
        self.cache.reset([slot])
        ids = torch.tensor([token_ids], device=self.model.device)
        out = self.model(ids, cache=self.cache, cache_slots=torch.tensor([slot], device=ids.device),
                         return_routing=want_routing, logits_to_keep=1)
        routing = out.routed_experts[:, 0] if out.routed_experts is not None else None
        return out.logits[0, -1], routing

    @torch.inference_mode()
    def decode(self, last_tokens: list[int], slots: list[int], want_routing: bool) -> tuple[Tensor, Tensor | None]:
        """One token for each running slot. Returns logits (b,V) and routing (m, b, k)."""
        ids = torch.tensor(last_tokens, device=self.model.device)[:, None]
        out = self.model(ids, cache=self.cache, cache_slots=torch.tensor(slots, device=ids.device),
                         return_routing=want_routing)
        routing = out.routed_experts[:, :, 0] if out.routed_experts is not None else None
        return out.logits[:, -1], routing

    @torch.no_grad()
    def fork(self, src: int, dsts: list[int]) -> None:
        """Copy a prefilled slot into others: n samples of one prompt share its prefill."""
        c, n = self.cache, int(self.cache.lengths[src])
        for d in dsts:
            for i in c.k:
                c.k[i][d, :, :n] = c.k[i][src, :, :n]
                c.v[i][d, :, :n] = c.v[i][src, :, :n]
            for i in c.conv:
                c.conv[i][d] = c.conv[i][src]
                c.ssm[i][d] = c.ssm[i][src]
            c.lengths[d] = n
