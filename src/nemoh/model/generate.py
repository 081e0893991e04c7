"""Greedy decoding with the hybrid cache: one chunked-scan prefill, then one-token steps (gpt-fast style).
The batching engine with sampling lives in nemoh.engine; this is the model-level check that decode works."""
from __future__ import annotations

import torch
from torch import Tensor

from .cache import HybridCache
from .model import NemotronHForCausalLM


@torch.no_grad()
def greedy_generate(model: NemotronHForCausalLM, input_ids: Tensor, max_new_tokens: int,
                    eos_token_ids: list[int] | None = None) -> Tensor:
    """input_ids (b,T) -> new tokens (b, <=max_new_tokens); a row that emits an EOS keeps emitting it."""
    b, T = input_ids.shape
    cache = HybridCache(model.config, b, T + max_new_tokens, dtype=model.lm_head.weight.dtype, device=input_ids.device)
    eos = torch.tensor(eos_token_ids or [], dtype=torch.long, device=input_ids.device)
    done = torch.zeros(b, dtype=torch.bool, device=input_ids.device)
    logits = model(input_ids, cache=cache, logits_to_keep=1).logits[:, -1]
    out: list[Tensor] = []
    for _ in range(max_new_tokens):
        nxt = logits.argmax(-1)
        if out and eos.numel():
            nxt = torch.where(done, out[-1], nxt)
        out.append(nxt)
        done |= torch.isin(nxt, eos)
        if bool(done.all()):
            break
        logits = model(nxt[:, None], cache=cache).logits[:, -1]
    return torch.stack(out, dim=1)
