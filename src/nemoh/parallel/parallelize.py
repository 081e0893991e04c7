"""ParallelConfig, process-group set-up and `parallelize(model, ...)`.

Order (torchtitan's): tensor parallel -> expert parallel -> activation checkpointing -> FSDP2 per block, then the
root. Tensor parallelism and expert parallelism work on local shards (tensor_parallel.py, expert_parallel.py);
FSDP2 then shards what each rank holds over the data ranks."""
from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from ..model.blocks import block_kind
from ..model.config import NemotronHConfig
from ..model.model import NemotronHForCausalLM

if TYPE_CHECKING:
    from torch.distributed.device_mesh import DeviceMesh


@dataclass
class ParallelConfig:
    dp_shard: int = -1                 # -1: all ranks not used by dp_replicate, tp, ep
    tp: int = 1
    ep: int = 1
    mixed_precision: bool = False      # bf16 compute params, fp32 gradient reduction
    cpu_offload: bool = False
    activation_checkpointing: bool = False
    dp_replicate: int = 1              # > 1: HSDP, FSDP inside groups of dp_shard x ep ranks (a node), replicas across

    def resolve(self, world_size: int, model: NemotronHConfig | None = None) -> ParallelConfig:
        """Fill dp_shard and check the layout against the world size and the model's shapes."""
        if self.tp < 1 or self.ep < 1 or self.dp_replicate < 1:
            raise ValueError(f"parallel: tp={self.tp}, ep={self.ep} and dp_replicate={self.dp_replicate} must be >= 1")
        fixed = self.dp_replicate * self.tp * self.ep
        named = ([f"dp_replicate={self.dp_replicate}"] if self.dp_replicate > 1 else []) + [f"tp={self.tp}",
                                                                                            f"ep={self.ep}"]
        if self.dp_shard == -1 and world_size % fixed:
            raise ValueError(f"parallel: the world size {world_size} is not divisible by {' x '.join(named)}")
        dp = self.dp_shard if self.dp_shard != -1 else world_size // fixed
        if dp * fixed != world_size:
            raise ValueError(f"parallel: dp_replicate={self.dp_replicate} x dp_shard={dp} x tp={self.tp} x "
                             f"ep={self.ep} = {dp * fixed} does not match the world size {world_size}")
        if model is not None:
            kinds = set(model.block_types) | (set(model.mtp_block_types) if model.num_nextn_predict_layers else set())
            for name in sorted(kinds):                  # each kind says what divides it (model/blocks.py)
                problem = block_kind(name).check_parallel(model, self.tp, self.ep)
                if problem:
                    raise ValueError(problem)
        return dataclasses.replace(self, dp_shard=dp)


def shutdown_distributed() -> None:
    """Leave the process group cleanly (all ranks together): exiting with gloo's threads still running can abort
    a rank at interpreter exit."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


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


@dataclass
class Layout:
    """Where this rank sits: the mesh (dp_replicate, dp_shard, ep, tp), and which data it reads. Ranks that differ
    only in tp see the same tokens; the `dp_replicate x dp_shard x ep` ranks (the data ranks) each read their own
    share of a step."""
    cfg: ParallelConfig
    mesh: DeviceMesh | None = None           # None in a single process

    def size(self, dim: str) -> int:
        return 1 if self.mesh is None else self.mesh[dim].size()

    def group(self, dim: str):
        assert self.mesh is not None  # callers check mesh / the dim's size first
        return self.mesh[dim].get_group()

    @property
    def data_rank(self) -> int:
        return 0 if self.mesh is None else self.mesh["dp"].get_local_rank()

    @property
    def data_world(self) -> int:
        return self.size("dp")

    def all_reduce_data(self, x: float, op: str = "sum") -> float:
        """Sum (or max) a per-rank float over the data ranks; every rank gets the result."""
        if self.mesh is None or self.data_world == 1:
            return x
        import torch.distributed as dist
        t = torch.tensor([x], dtype=torch.float64, device=_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX if op == "max" else dist.ReduceOp.SUM, group=self.group("dp"))
        return float(t)


SINGLE = Layout(ParallelConfig(dp_shard=1))


def layout_of(model: nn.Module) -> Layout:
    layout = model.parallel_layout if isinstance(model, NemotronHForCausalLM) else None
    return layout if layout is not None else SINGLE


def _device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def build_layout(cfg: ParallelConfig, world_size: int, model: NemotronHConfig | None = None) -> Layout:
    """The device mesh (dp_replicate, dp_shard, ep, tp) for this job, checked against the world size and the model;
    every rank calls it. Built before `parallelize` when something (the RL rollout engines) needs to know its data
    rank while the model is still whole."""
    from torch.distributed.device_mesh import init_device_mesh
    cfg = cfg.resolve(world_size, model)
    mesh = init_device_mesh(_device(), (cfg.dp_replicate, cfg.dp_shard, cfg.ep, cfg.tp),
                            mesh_dim_names=("dp_replicate", "dp_shard", "ep", "tp"))
    mesh["dp_replicate", "dp_shard", "ep"]._flatten("dp")       # every data rank
    mesh["dp_shard", "ep"]._flatten("dp_shard_ep")               # what FSDP shards non-expert parameters over
    return Layout(cfg, mesh)


def parallelize(model: nn.Module, cfg: ParallelConfig, world_size: int, layout: Layout | None = None) -> Layout:
    """In place: tensor parallel -> expert parallel -> activation checkpointing -> FSDP2 (experts over dp_shard,
    everything else over dp_shard x ep, each block then the root). Gradients are summed, not averaged, across data
    ranks: the loss is already a mean over the global batch's tokens. `layout`: one `build_layout` made earlier."""
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

    from ..model.moe import Experts
    from .expert_parallel import apply_ep
    from .tensor_parallel import apply_tp
    lm = cast(NemotronHForCausalLM, model)
    if layout is None:
        layout = build_layout(cfg, world_size, lm.config)
    cfg, mesh = layout.cfg, layout.mesh
    assert mesh is not None  # build_layout always builds a mesh
    hsdp = cfg.dp_replicate > 1                                   # then FSDP meshes are 2-D: (replicate, shard)
    dense_mesh = mesh["dp_replicate", "dp_shard_ep"] if hsdp else mesh["dp_shard_ep"]
    expert_mesh = mesh["dp_replicate", "dp_shard"] if hsdp else mesh["dp_shard"]
    if cfg.tp > 1:
        apply_tp(model, layout.group("tp"))
    if cfg.ep > 1:
        apply_ep(model, layout.group("ep"))
    if cfg.activation_checkpointing:
        lm.set_gradient_checkpointing(True)
    kwargs: dict = {}
    if cfg.mixed_precision:
        kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    if cfg.cpu_offload:
        kwargs["offload_policy"] = CPUOffloadPolicy()
    # FSDP2 wants one dtype per group and would cast every parameter for compute under mixed precision; the
    # parameters that are fp32 by design (Mamba's A_log/D/dt_bias, the router) are small, so FSDP leaves them alone:
    # replicated over the data ranks, their gradients summed by sync_replicated_grads (called by clip_grad_norm)
    fp32 = {p for n, p in model.named_parameters() if n.endswith(lm.keep_in_fp32)}
    sharded = []
    blocks = list(lm.backbone.layers) + (list(lm.mtp.layers) if lm.mtp is not None else [])
    for block in blocks:
        for m in block.modules():  # experts first, over dp_shard only: ep already splits them
            if isinstance(m, Experts):
                sharded.append(fully_shard(m, mesh=expert_mesh, **kwargs))
        sharded.append(fully_shard(block, mesh=dense_mesh, ignored_params=fp32, **kwargs))
    sharded.append(fully_shard(model, mesh=dense_mesh, ignored_params=fp32, **kwargs))
    for unit in sharded:  # a plain SUM (gloo has no PREMUL_SUM)
        unit.set_gradient_divide_factor(1.0)
        unit.set_force_sum_reduction_for_comms(True)
    lm.parallel_layout = layout
    return layout
