"""`nemoh plan`: memory per GPU for a training layout — parameters, gradients, optimizer state, activations —
and whether it fits. Activations assume full activation checkpointing when asked (one block's worth kept)."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..model import NemotronHForCausalLM
from ..model.config import NemotronHConfig

GiB = 2**30


@dataclass
class MemoryPlan:
    params: float
    grads: float
    optimizer: float
    activations: float
    total: float
    fits: bool
    num_params: int

    def table(self) -> str:
        rows = [("parameters", self.params), ("gradients", self.grads), ("optimizer (AdamW fp32 m, v, master)",
                self.optimizer), ("activations", self.activations), ("total", self.total)]
        return "\n".join(f"{k:<40} {v / GiB:8.1f} GiB" for k, v in rows)


def plan_memory(config: NemotronHConfig, gpus: int, gpu_mem_gib: float, tp: int = 1, ep: int = 1,
                micro_batch_tokens: int = 8192, param_bytes: int = 2, activation_checkpointing: bool = True,
                optimizer_offload: bool = False, dp_replicate: int = 1) -> MemoryPlan:
    if gpus % (tp * ep * dp_replicate):
        raise ValueError(f"--gpus: {gpus} is not divisible by dp_replicate x tp x ep = {dp_replicate * tp * ep}")
    with torch.device("meta"):
        model = NemotronHForCausalLM(config)
    expert = sum(p.numel() for n, p in model.named_parameters()
                 if ".experts." in n or n.endswith(("experts.up_proj", "experts.down_proj")))
    dense = model.num_parameters() - expert
    # experts split over ep (and sharded over the rest), everything else sharded over all GPUs (FSDP) / tp;
    # HSDP shards within a group of gpus / dp_replicate and keeps a full copy per group
    group = gpus // dp_replicate
    per_gpu = dense / group + expert / group
    params = per_gpu * param_bytes
    grads = per_gpu * param_bytes
    optimizer = 0.0 if optimizer_offload else per_gpu * 12          # fp32 master + m + v
    D = config.hidden_size
    # per token per block: the residual stream in and a few mixer-sized intermediates (empirical factor 16 x D bytes)
    per_layer = micro_batch_tokens * D * 16 / tp
    layers = config.num_hidden_layers
    acts = per_layer * (1 if activation_checkpointing else layers) + micro_batch_tokens * D * 2 * layers / tp
    acts += micro_batch_tokens * config.vocab_size * 4 / tp           # fp32 logits
    total = params + grads + optimizer + acts
    return MemoryPlan(params, grads, optimizer, acts, total, total < gpu_mem_gib * GiB * 0.9, model.num_parameters())
