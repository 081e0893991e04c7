"""ParallelConfig, process-group set-up and `parallelize(model, ...)`.

Order (torchtitan's): tensor parallel -> expert parallel -> activation checkpointing -> FSDP2 per block, then the
root. This version implements data-parallel sharding (FSDP2 `fully_shard`, optional bf16 params with fp32 reduce,
optional CPU offload) and activation checkpointing; `tp > 1` or `ep > 1` are rejected when the config is built."""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from ..model.config import NemotronHConfig


@dataclass
class ParallelConfig:
    dp_shard: int = -1                 # -1: all ranks not used by tp/ep
    tp: int = 1
    ep: int = 1
    mixed_precision: bool = False      # bf16 compute params, fp32 gradient reduction
    cpu_offload: bool = False
    activation_checkpointing: bool = False

    def resolve(self, world_size: int, model: NemotronHConfig | None = None) -> "ParallelConfig":
        """Fill dp_shard and check the layout against the world size and the model's shapes."""
        if self.tp < 1 or self.ep < 1:
            raise ValueError(f"parallel: tp={self.tp} and ep={self.ep} must be >= 1")
        dp = self.dp_shard if self.dp_shard != -1 else world_size // (self.tp * self.ep)
        if dp * self.tp * self.ep != world_size:
            raise ValueError(f"parallel: dp_shard={dp} x tp={self.tp} x ep={self.ep} = {dp * self.tp * self.ep} "
                             f"does not match the world size {world_size}")
        if model is not None:
            if model.num_attention_heads % self.tp or model.num_key_value_heads % self.tp:
                raise ValueError(f"parallel.tp: {self.tp} must divide num_attention_heads={model.num_attention_heads} "
                                 f"and num_key_value_heads={model.num_key_value_heads}")
            if "mamba" in model.block_types and model.n_groups % self.tp:
                raise ValueError(f"parallel.tp: {self.tp} must divide the Mamba n_groups={model.n_groups}")
            if "moe" in model.block_types and model.n_routed_experts % self.ep:
                raise ValueError(f"parallel.ep: {self.ep} must divide n_routed_experts={model.n_routed_experts}")
        if self.tp > 1 or self.ep > 1:
            raise NotImplementedError("parallel: tensor and expert parallelism are not implemented yet; use dp_shard")
        return ParallelConfig(dp, self.tp, self.ep, self.mixed_precision, self.cpu_offload,
                              self.activation_checkpointing)


def init_distributed() -> tuple[int, int]:
    """Join the process group when launched by torchrun (gloo on CPU, NCCL on GPUs). Returns (rank, world)."""
    import torch.distributed as dist
    if "RANK" not in os.environ:
        return 0, 1
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        dist.init_process_group(backend)
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    return dist.get_rank(), dist.get_world_size()


def parallelize(model: nn.Module, cfg: ParallelConfig, world_size: int) -> nn.Module:
    """Shard `model` in place over a 1-D data-parallel mesh (FSDP2 per block, then the root)."""
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard
    cfg = cfg.resolve(world_size, getattr(model, "config", None))
    if cfg.activation_checkpointing:
        model.set_gradient_checkpointing(True)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    mesh = init_device_mesh(device, (cfg.dp_shard,), mesh_dim_names=("dp_shard",))
    kwargs: dict = {"mesh": mesh}
    if cfg.mixed_precision:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cfg.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    for block in model.backbone.layers:
        fully_shard(block, **kwargs)
    fully_shard(model, **kwargs)
    return model


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """Gather a sharded model's parameters (every rank must call it); plain tensors on CPU."""
    out = {}
    for name, t in model.state_dict().items():
        full = t.full_tensor() if hasattr(t, "full_tensor") else t
        out[name] = full.detach().cpu()
    return out
