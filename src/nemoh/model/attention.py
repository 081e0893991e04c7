"""GQA self-attention with no positional encoding, through scaled_dot_product_attention.

Legend: b batch, T new tokens, S keys (cached + new), nh query heads, nkv kv heads, hd head dim.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import BlockKind, ShardSpec, ShardSpecs, TPWiring, register_block_kind
from .config import NemotronHConfig
from .context import ForwardContext


class Attention(nn.Module):
    def __init__(self, config: NemotronHConfig, layer_idx: int):
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.nh, self.nkv, self.hd = c.num_attention_heads, c.num_key_value_heads, c.head_dim
        self.q_proj = nn.Linear(c.hidden_size, self.nh * self.hd, bias=c.attention_bias)
        self.k_proj = nn.Linear(c.hidden_size, self.nkv * self.hd, bias=c.attention_bias)
        self.v_proj = nn.Linear(c.hidden_size, self.nkv * self.hd, bias=c.attention_bias)
        self.o_proj = nn.Linear(self.nh * self.hd, c.hidden_size, bias=c.attention_bias)

    def forward(self, x: Tensor, ctx: ForwardContext) -> Tensor:
        b, T, _ = x.shape
        q = self.q_proj(x).view(b, T, self.nh, self.hd).transpose(1, 2)    # (b,nh,T,hd)
        k = self.k_proj(x).view(b, T, self.nkv, self.hd).transpose(1, 2)   # (b,nkv,T,hd)
        v = self.v_proj(x).view(b, T, self.nkv, self.hd).transpose(1, 2)
        cache = ctx.cache
        if cache is not None:
            k, v, mask = self._update_cache(cache, k, v)
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, enable_gqa=True)
        elif ctx.seq_idx is not None:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.packed_attention_mask(), enable_gqa=True)
        else:
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
        return self.o_proj(out.transpose(1, 2).reshape(b, T, self.nh * self.hd))

    def _update_cache(self, cache, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Write the new K/V at each row's own offset; return all keys so far and the causal mask (b,1,T,S)."""
        T = k.shape[2]
        slots = cache.slots
        start = cache.lengths[slots]                                         # (b,)
        pos = start[:, None] + torch.arange(T, device=k.device)              # (b,T) absolute positions
        kc, vc = cache.states["k"][self.layer_idx], cache.states["v"][self.layer_idx]   # (slots,nkv,T_max,hd)
        # advanced indices (slot, pos) around a slice put their dims first: value is (b,T,nkv,hd)
        rows = slots[:, None].expand(-1, T)
        kn, vn = k.transpose(1, 2).to(kc.dtype), v.transpose(1, 2).to(vc.dtype)   # (b,T,nkv,hd)
        if isinstance(cache.new_tokens, Tensor):  # right-padded rows: write real positions only (padding may run
            real = torch.arange(T, device=k.device) < cache.new_tokens[:, None]   # past the cache's end)
            rows, pos_w, kn, vn = rows[real], pos[real], kn[real], vn[real]
            S = int((start + cache.new_tokens).max())
        elif torch.compiler.is_compiling():  # the compiled decode step: static shapes, every position (masked)
            pos_w, S = pos, kc.shape[2]
        else:
            pos_w, S = pos, int(pos.max()) + 1
        kc[rows, :, pos_w] = kn
        vc[rows, :, pos_w] = vn
        keys = torch.arange(S, device=k.device)
        mask = (keys[None, None, :] <= pos[:, :, None])[:, None]            # (b,1,T,S)
        # a view for a contiguous run of slots, else a gather of the first S positions only
        return kc[cache.index, :, :S].to(k.dtype), vc[cache.index, :, :S].to(v.dtype), mask


# ---- the attention block kind (`*`): see model/blocks.py -------------------------------------------------------
def _kv_cache(c: NemotronHConfig, slots: int, max_len: int, dtype: torch.dtype,
              device: torch.device | str) -> dict[str, Tensor]:
    shape = (slots, c.num_key_value_heads, max_len, c.head_dim)
    return {"k": torch.zeros(shape, dtype=dtype, device=device), "v": torch.zeros(shape, dtype=dtype, device=device)}


def _macs(c: NemotronHConfig, seq: int) -> float:
    hd = c.head_dim
    return (c.hidden_size * hd * (2 * c.num_attention_heads + 2 * c.num_key_value_heads)
            + c.num_attention_heads * hd * seq)                      # q·k and p·v, causal half of 2*seq


def _specs(m: nn.Module, c: NemotronHConfig) -> ShardSpecs:
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    specs = {f"{proj}.{p}": ShardSpec("tp", 0, (size,))
             for proj, size in (("q_proj", q), ("k_proj", kv), ("v_proj", kv)) for p in ("weight", "bias")}
    return specs | {"o_proj.weight": ShardSpec("tp", 1, (q,))}


def _tp_narrow(m: nn.Module, size: int) -> TPWiring:
    assert isinstance(m, Attention)
    m.nh, m.nkv = m.nh // size, m.nkv // size
    return [(m, m.o_proj)]


def _check_parallel(c: NemotronHConfig, tp: int, ep: int) -> str | None:
    if c.num_attention_heads % tp or c.num_key_value_heads % tp:
        return (f"parallel.tp: {tp} must divide num_attention_heads={c.num_attention_heads} "
                f"and num_key_value_heads={c.num_key_value_heads}")
    return None


ATTENTION = register_block_kind(BlockKind(
    name="attention", char="*", hub_names=("full_attention", "attention"), mixer=Attention, macs_per_token=_macs,
    cache_state=_kv_cache, shard_specs=_specs, tp_narrow=_tp_narrow, check_parallel=_check_parallel))
