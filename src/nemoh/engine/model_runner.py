"""ModelRunner: owns the model and its HybridCache (one row per sequence slot) and runs prefill and decode."""
from __future__ import annotations

import torch
from torch import Tensor

from ..model import HybridCache, NemotronHForCausalLM
from .compiled_decode import CompiledDecode


class ModelRunner:
    def __init__(self, model: NemotronHForCausalLM, max_num_seqs: int, max_model_len: int, compile: bool = False):
        self.model = model.eval()
        self.max_num_seqs, self.max_model_len = max_num_seqs, max_model_len
        dtype = next(p.dtype for n, p in model.named_parameters() if n.endswith("lm_head.weight"))
        self.cache = HybridCache(model.config, max_num_seqs, max_model_len, dtype=dtype, device=model.device)
        self.compiled = CompiledDecode(model, self.cache, max_num_seqs) if compile else None
        if self.compiled is not None:
            self.compiled.warm_up()

    @torch.inference_mode()
    def prefill(self, prompts: list[list[int]], slots: list[int], starts: list[int],
                want_routing: bool) -> tuple[Tensor, list[Tensor] | None]:
        """Run prompt chunks into their slots in one right-padded batch, after the `starts[i]` tokens slot i already
        holds (a slot starting at 0 is reset first). Returns each chunk's last-position logits (b,V) and, when asked,
        each chunk's routing (m, T_i, k)."""
        assert all(int(self.cache.lengths[s]) == a for s, a in zip(slots, starts) if a), "a chunk must follow its slot"
        if fresh := [s for s, a in zip(slots, starts) if a == 0]:
            self.cache.reset(fresh)
        lengths = [len(p) for p in prompts]
        T = max(lengths)
        ids = torch.zeros(len(prompts), T, dtype=torch.long, device=self.model.device)
        for i, p in enumerate(prompts):
            ids[i, : len(p)] = torch.tensor(p)
        out = self.model(ids, cache=self.cache, cache_slots=torch.tensor(slots, device=ids.device),
                         lengths=torch.tensor(lengths, device=ids.device), return_routing=want_routing)
        routing = None
        if out.routed_experts is not None:
            routing = [out.routed_experts[:, i, :n] for i, n in enumerate(lengths)]
        return out.logits[:, -1], routing

    @torch.inference_mode()
    def decode(self, last_tokens: list[int], slots: list[int], want_routing: bool,
               free_slots: list[int] = ()) -> tuple[Tensor, Tensor | None]:  # type: ignore[assignment]
        """One token for each running slot. Returns logits (b,V) and routing (m, b, k). The compiled step (no
        routing capture) pads the batch with `free_slots`."""
        if self.compiled is not None and not want_routing:
            return self.compiled.run(last_tokens, slots, list(free_slots)), None
        ids = torch.tensor(last_tokens, device=self.model.device)[:, None]
        out = self.model(ids, cache=self.cache, cache_slots=torch.tensor(slots, device=ids.device),
                         return_routing=want_routing)
        routing = out.routed_experts[:, :, 0] if out.routed_experts is not None else None
        return out.logits[:, -1], routing

    @torch.no_grad()
    def fork(self, src: int, dsts: list[int]) -> None:
        """Copy a prefilled slot into others: n samples of one prompt share its prefill."""
        for d in dsts:
            self.cache.copy_slot(src, d)
