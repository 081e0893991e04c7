"""NemotronHForCausalLM: embeddings -> hybrid blocks (Mamba2 | attention | MLP | MoE) -> norm_f -> lm_head,
with an optional multi-token-prediction (MTP) head. Module names equal the Hub's tensor names, except the stacked
experts (see checkpoint/adapter.py). No distributed code here: parallelism is applied from outside.

Legend: b batch, T tokens, D hidden, V vocab, m MoE layers, k experts per token.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from . import attention, layers, mamba, moe  # noqa: F401  (each registers its block kind)
from .blocks import block_kind
from .cache import HybridCache
from .config import NemotronHConfig
from .context import ForwardContext, cu_seqlens_to_seq_idx
from .layers import RMSNorm

if TYPE_CHECKING:
    from ..parallel.parallelize import Layout

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}

# Parameters that stay float32 whatever dtype the model is cast to (the SSM dynamics and the router).
FP32_PARAM_SUFFIXES = ("A_log", "D", "dt_bias", "gate.weight", "gate.e_score_correction_bias")

class Block(nn.Module):
    """Pre-norm residual block: h + mixer(RMSNorm(h))."""

    def __init__(self, config: NemotronHConfig, kind: str, layer_idx: int):
        super().__init__()
        self.kind = kind
        self.norm = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.mixer = block_kind(kind).mixer(config, layer_idx)

    def forward(self, h: Tensor, ctx: ForwardContext) -> Tensor:
        return h + self.mixer(self.norm(h), ctx=ctx)

class Backbone(nn.Module):
    def __init__(self, config: NemotronHConfig):
        super().__init__()
        self.embeddings = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(Block(config, kind, i) for i, kind in enumerate(config.block_types))
        self.norm_f = RMSNorm(config.hidden_size, config.layer_norm_epsilon)
        self.gradient_checkpointing = False

    def forward(self, input_ids: Tensor, ctx: ForwardContext) -> Tensor:
        h = self.embeddings(input_ids)
        for layer in self.layers:
            if self.gradient_checkpointing and self.training:
                h = torch.utils.checkpoint.checkpoint(layer, h, ctx, use_reentrant=False)
            else:
                h = layer(h, ctx)
        return self.norm_f(h)

class MTPLayer(Block):
    """One MTP block. The first of a step fuses [enorm(embed(next token)), hnorm(h)] through eh_proj; the last of a
    step ends with final_layernorm (Hub names: mtp.layers.{i}.enorm / hnorm / eh_proj / final_layernorm)."""

    def __init__(self, config: NemotronHConfig, kind: str, layer_idx: int, first: bool, last: bool):
        super().__init__(config, kind, layer_idx)
        D, eps = config.hidden_size, config.layer_norm_epsilon
        self.first, self.last = first, last
        if first:
            self.enorm, self.hnorm = RMSNorm(D, eps), RMSNorm(D, eps)
            self.eh_proj = nn.Linear(2 * D, D, bias=False)
        if last:
            self.final_layernorm = RMSNorm(D, eps)

    def forward(self, h: Tensor, ctx: ForwardContext, emb: Tensor | None = None) -> Tensor:
        if self.first:
            h = self.eh_proj(torch.cat([self.enorm(emb), self.hnorm(h)], dim=-1))
        h = super().forward(h, ctx)
        return self.final_layernorm(h) if self.last else h

class MTP(nn.Module):
    def __init__(self, config: NemotronHConfig):
        super().__init__()
        pattern, n = config.mtp_block_types, len(config.mtp_block_types)
        base = config.num_hidden_layers  # MTP layer indices continue after the backbone's (cache/routing keys)
        self.layers = nn.ModuleList(
            MTPLayer(config, pattern[i % n], base + i, first=i % n == 0, last=i % n == n - 1)
            for i in range(config.num_nextn_predict_layers * n))
        self.pattern_len = n

@dataclass
class CausalLMOutput:
    logits: Tensor                      # (b, T, V) float32
    hidden_states: Tensor               # (b, T, D) after norm_f
    routed_experts: Tensor | None = None  # (m, b, T, k) expert ids per MoE layer, when asked
    mtp_logits: Tensor | None = None    # (b, T-1, V): logits for token t+2 from h_t and token t+1, when asked

class NemotronHForCausalLM(nn.Module):
    config_class = NemotronHConfig                  # what checkpoint/ builds from config.json
    keep_in_fp32: tuple[str, ...] = FP32_PARAM_SUFFIXES

    def __init__(self, config: NemotronHConfig):
        super().__init__()
        self.config = config
        self.backbone = Backbone(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.backbone.embeddings.weight
        self.mtp = MTP(config) if config.num_nextn_predict_layers > 0 else None
        self.moe_layers = [i for i, kind in enumerate(config.block_types) if block_kind(kind).routes_experts]
        self.source_dir: Path | None = None           # the directory it was loaded from (tokenizer files)
        self.parallel_layout: Layout | None = None    # set by parallel.parallelize (None: one process, unsharded)

    # ---- forward ----------------------------------------------------------------------------------------
    def forward(
        self,
        input_ids: Tensor,
        *,
        cu_seqlens: Tensor | None = None,
        seq_idx: Tensor | None = None,
        cache: HybridCache | None = None,
        cache_slots: Tensor | None = None,
        lengths: Tensor | None = None,
        routed_experts: Tensor | None = None,
        return_routing: bool = False,
        return_mtp: bool = False,
        logits_to_keep: int = 0,
    ) -> CausalLMOutput:
        """input_ids (b,T). Packed documents: `cu_seqlens` (one row) or `seq_idx` (b,T). Decode: `cache` (+ rows
        `cache_slots`; right-padded rows give their real `lengths` (b,) and get logits for their last real token only,
        (b,1,V)). R3: `routed_experts` (m,b,T,k) replaces each MoE layer's top-k (positions holding -1 keep the
        router's own choice); `return_routing` returns the chosen ids in the same layout. `logits_to_keep=n` computes
        logits for the last n positions only."""
        b, T = input_ids.shape
        if cu_seqlens is not None:
            if b != 1:
                raise ValueError(f"cu_seqlens: packed input must be one row, got batch {b}")
            seq_idx = cu_seqlens_to_seq_idx(cu_seqlens, T)
        if seq_idx is not None and seq_idx.shape != (b, T):
            raise ValueError(f"seq_idx: expected shape {(b, T)}, got {tuple(seq_idx.shape)}")
        replay = None
        if routed_experts is not None:
            m, k = len(self.moe_layers), self.config.num_experts_per_tok
            if tuple(routed_experts.shape) != (m, b, T, k):
                raise ValueError(f"routed_experts: expected shape {(m, b, T, k)} (moe layers, batch, tokens, top-k), "
                                 f"got {tuple(routed_experts.shape)}")
            replay = {layer: routed_experts[j].reshape(b * T, k) for j, layer in enumerate(self.moe_layers)}
        if lengths is not None and cache is None:
            raise ValueError("lengths: right-padded rows are only supported with a cache (prefill)")
        ctx = ForwardContext(seq_idx=seq_idx, lengths=lengths, cache=cache, replay=replay,
                             capture_routing=return_routing)
        if cache is not None:
            cache.begin(cache_slots, T, lengths)
        h = self.backbone(input_ids, ctx)
        if cache is not None:
            cache.end()
        if lengths is not None:
            hk = h[torch.arange(b, device=h.device), lengths - 1][:, None]
        else:
            hk = h[:, -logits_to_keep:] if logits_to_keep else h
        out = CausalLMOutput(logits=self.lm_head(hk).float(), hidden_states=h)
        if return_routing and self.moe_layers:
            out.routed_experts = torch.stack([ctx.routing[i].view(b, T, -1) for i in self.moe_layers])
        if return_mtp:
            out.mtp_logits = self.mtp_forward(input_ids, h, seq_idx)
        return out

    __call__: Any

    def mtp_forward(self, input_ids: Tensor, h: Tensor, seq_idx: Tensor | None = None) -> Tensor:
        """First MTP step: logits for token t+2 from backbone state h_t and the embedding of token t+1."""
        if self.mtp is None:
            raise ValueError("return_mtp: this config has num_nextn_predict_layers=0")
        ctx = ForwardContext(seq_idx=seq_idx[:, :-1] if seq_idx is not None else None)
        u = h[:, :-1]
        emb = self.backbone.embeddings(input_ids[:, 1:])
        for layer in self.mtp.layers[: self.mtp.pattern_len]:
            u = layer(u, ctx, emb=emb)
        return self.lm_head(u).float()

    # ---- helpers ----------------------------------------------------------------------------------------
    def to_dtype(self, dtype: torch.dtype) -> NemotronHForCausalLM:
        """Cast to `dtype`, keeping the SSM dynamics and the router in fp32."""
        for name, p in self.named_parameters():
            keep = name.endswith(FP32_PARAM_SUFFIXES)
            p.data = p.data.to(torch.float32 if keep else dtype)
        return self

    def set_gradient_checkpointing(self, enabled: bool = True) -> None:
        self.backbone.gradient_checkpointing = enabled

    @property
    def device(self) -> torch.device:
        return self.lm_head.weight.device

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # ---- Hub checkpoints --------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, config: NemotronHConfig, dtype: torch.dtype = torch.float32,
                    device: str | torch.device = "cpu", seed: int | None = None) -> NemotronHForCausalLM:
        """A randomly initialised model (for tests, the tiny demo, or training from scratch)."""
        from .init import init_weights
        if seed is not None:
            torch.manual_seed(seed)
        with torch.device(device):
            model = cls(config)
        init_weights(model)
        return model.to_dtype(dtype)

    @classmethod
    def from_pretrained(cls, path: str | Path, dtype: torch.dtype = torch.bfloat16,
                        device: str | torch.device = "cpu", **config_overrides: Any) -> NemotronHForCausalLM:
        """Load a Hub-layout directory (config.json + safetensors, sharded or not, bf16 or ModelOpt FP8)."""
        from ..checkpoint import load_pretrained
        return load_pretrained(cls, path, dtype=dtype, device=device, **config_overrides)

    def save_pretrained(self, path: str | Path, max_shard_size: int | str = "5GB",
                        dtype: torch.dtype | None = None, tokenizer_dir: str | Path | None = None) -> None:
        """Write the Hub layout (same key names and shapes), sharded above `max_shard_size`, atomically."""
        from ..checkpoint import save_pretrained
        save_pretrained(self, path, max_shard_size=max_shard_size, dtype=dtype, tokenizer_dir=tokenizer_dir,
                        keep_in_fp32=self.keep_in_fp32)
