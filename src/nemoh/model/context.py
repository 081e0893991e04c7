"""What one forward pass needs to know besides the hidden states: documents, cache, routing replay."""
from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from .cache import HybridCache


@dataclass
class ForwardContext:
    """Built once per forward by the model and handed to every block.

    seq_idx: (b, T) document index per token for packed rows (non-decreasing), or None for one document per row.
    cache: decode state; when set, attention reads/writes KV and Mamba reads/writes conv + SSM state.
    lengths: (b,) real lengths of right-padded rows (batched prefill into a cache).
    replay: per MoE layer index, expert ids (b*T, k) to use instead of the router's own top-k.
    routing: filled by MoE layers when `capture_routing`: layer index -> chosen ids (b*T, k).
    """

    seq_idx: Tensor | None = None
    lengths: Tensor | None = None
    cache: HybridCache | None = None
    replay: dict[int, Tensor] | None = None
    capture_routing: bool = False
    routing: dict[int, Tensor] = field(default_factory=dict)
    _attn_mask: Tensor | None = None

    def packed_attention_mask(self) -> Tensor | None:
        """(b, 1, T, T) bool: causal and same-document. Built once, shared by all attention layers."""
        if self.seq_idx is None:
            return None
        if self._attn_mask is None:
            s = self.seq_idx
            T = s.shape[1]
            causal = torch.ones(T, T, dtype=torch.bool, device=s.device).tril()
            self._attn_mask = (causal & (s[:, :, None] == s[:, None, :]))[:, None]
        return self._attn_mask


def cu_seqlens_to_seq_idx(cu_seqlens: Tensor, total: int) -> Tensor:
    """cu_seqlens [0, l0, l0+l1, ..., total] -> (1, total) document index per token."""
    cu = cu_seqlens.tolist()
    if cu[0] != 0 or cu[-1] != total or any(b <= a for a, b in zip(cu, cu[1:])):
        raise ValueError(f"cu_seqlens: must rise strictly from 0 to the row length {total}, got {cu}")
    lengths = torch.tensor([b - a for a, b in zip(cu, cu[1:])], device=cu_seqlens.device)
    return torch.repeat_interleave(torch.arange(len(lengths), device=cu_seqlens.device), lengths)[None]
