"""Layout-independent views of a (possibly) parallelised model: training-checkpoint state, the gathered Hub
weights, and the global gradient norm.

A checkpoint names every tensor by its canonical (single-process) parameter name; a fused tp-split parameter is
stored as its segments (`...in_proj.weight.part0` = z, ... `part4` = dt) so that every entry is one contiguous
split across ranks. Split entries are DTensors over the tp or ep mesh dimension, everything else is a plain or
FSDP-sharded tensor; torch.distributed.checkpoint then reshards between any two layouts, 1 process included.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING, TypeGuard

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .parallelize import layout_of
from .specs import ShardSpec, shard_specs

if TYPE_CHECKING:
    from torch.distributed.tensor import DTensor


def _is_dtensor(t: object) -> TypeGuard[DTensor]:
    return hasattr(t, "full_tensor")


def _local(t: Tensor) -> Tensor:
    """This rank's part of a DTensor; a plain tensor as it is."""
    return t.to_local() if _is_dtensor(t) else t


def _split_over(model: nn.Module, name: str, specs: dict[str, ShardSpec]) -> int:
    """0 when `name`'s tensor is canonical as it is (FSDP's DTensor or a plain tensor); else the size of the
    mesh dimension splitting it (1 for a fused parameter that is not split but is still stored by segment)."""
    spec = specs.get(name)
    n = layout_of(model).size(spec.group) if spec is not None else 1
    return 0 if spec is None or (n == 1 and len(spec.parts) == 1) else n


def _keys(model: nn.Module, name: str, specs: dict[str, ShardSpec]) -> list[str]:
    parts = len(specs[name].parts) if _split_over(model, name, specs) else 1
    return [name] if parts == 1 else [f"{name}.part{i}" for i in range(parts)]


def _pieces(model: nn.Module, name: str, t: Tensor, specs: dict[str, ShardSpec]) -> dict[str, Tensor]:
    """`name`'s canonical entries, built from this rank's tensor `t` (a parameter or its optimizer state)."""
    n = _split_over(model, name, specs)
    if n == 0:
        return {name: t}
    from torch.distributed.tensor import DTensor, Shard
    spec = specs[name]
    local = t.full_tensor() if _is_dtensor(t) else t             # this tp/ep rank's whole share
    segs = local.split(spec.local_parts(n), spec.dim)
    layout = layout_of(model)
    mesh = layout.mesh[spec.group] if n > 1 and layout.mesh is not None else None  # n > 1: there is a mesh
    out = {}
    for key, seg in zip(_keys(model, name, specs), segs):
        seg = seg.contiguous()
        out[key] = DTensor.from_local(seg, mesh, [Shard(spec.dim)], run_check=False) if n > 1 else seg
    return out


def _restore(model: nn.Module, name: str, dst: Tensor, pieces: list[Tensor], specs: dict[str, ShardSpec]) -> None:
    """Put loaded canonical entries back into `dst` (an FSDP DTensor, or a plain tensor)."""
    with torch.no_grad():
        if _split_over(model, name, specs) == 0:
            if pieces[0] is not dst:
                _local(dst).copy_(_local(pieces[0]))
            return
        local = torch.cat([_local(p) for p in pieces], specs[name].dim)   # this tp/ep rank's whole share
        if _is_dtensor(dst):                                         # then this data rank's FSDP shard of it
            from torch.distributed.tensor import distribute_tensor
            local = distribute_tensor(local, dst.device_mesh, dst.placements, src_data_rank=None).to_local()
            dst = dst.to_local()
        dst.copy_(local)


def _trainable(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


def _init_adam_state(opt: torch.optim.Optimizer) -> None:
    """AdamW creates its state at the first step; a resume needs it now to load into."""
    for group in opt.param_groups:
        for p in group["params"]:
            if not opt.state[p]:
                opt.state[p] = {"step": torch.tensor(0.0), "exp_avg": torch.zeros_like(p),
                                "exp_avg_sq": torch.zeros_like(p)}


def checkpoint_state(model: nn.Module, opt: torch.optim.Optimizer) -> dict[str, Tensor]:
    """Trainable parameters and their AdamW moments under canonical names (`model/...`, `optim/.../exp_avg`)."""
    specs = shard_specs(model)
    _init_adam_state(opt)
    state: dict[str, Tensor] = {}
    for name, p in _trainable(model):
        for k, v in _pieces(model, name, p.detach(), specs).items():
            state[f"model/{k}"] = v
        for key, v in opt.state[p].items():
            if key == "step":
                state[f"optim/{name}/step"] = v
            else:
                for k, piece in _pieces(model, name, v, specs).items():
                    state[f"optim/{k}/{key}"] = piece
    return state


def load_checkpoint_state(model: nn.Module, opt: torch.optim.Optimizer, state: dict[str, Tensor]) -> None:
    """Inverse of checkpoint_state: `state` (as built by it, then filled by dcp.load) goes back into the model."""
    specs = shard_specs(model)
    for name, p in _trainable(model):
        keys = _keys(model, name, specs)
        _restore(model, name, p, [state[f"model/{k}"] for k in keys], specs)
        for key, v in opt.state[p].items():
            if key == "step":
                v.copy_(state[f"optim/{name}/step"])
            else:
                _restore(model, name, v, [state[f"optim/{k}/{key}"] for k in keys], specs)


def full_state_dict(model: nn.Module, grads: bool = False) -> dict[str, Tensor]:
    """The canonical full weights (or, with `grads`, the gradients) on every rank (every rank must call it), plain
    CPU tensors: what a single process would hold. Used for the Hub export, for refreshing a rollout engine and by
    the tests that compare a parallel backward with a single-process one."""
    specs = shard_specs(model)
    out = {}
    items = ((n, p.grad) for n, p in model.named_parameters() if p.grad is not None) if grads \
        else model.state_dict().items()
    for name, t in items:
        pieces = _pieces(model, name, t, specs)
        full = [p.full_tensor() if _is_dtensor(p) else p for p in pieces.values()]
        out[name] = (full[0] if len(full) == 1 else torch.cat(full, specs[name].dim)).detach().cpu()
    return out


def sync_replicated_grads(model: nn.Module) -> None:
    """Sum over the data ranks the gradients FSDP does not reduce (the fp32-by-design parameters it leaves alone)."""
    layout = layout_of(model)
    if layout.mesh is None or layout.data_world == 1:
        return
    group = layout.group("dp")
    for p in model.parameters():
        if p.grad is not None and not _is_dtensor(p.grad):
            dist.all_reduce(p.grad, group=group)


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Finish the gradients (sync_replicated_grads), then the global 2-norm over all ranks, then clip. Each distinct
    gradient value counts once: a tensor's local sum of squares is divided by how many ranks hold the same values
    (the data ranks over those that FSDP or ep split it across, times the tp ranks unless tp splits it)."""
    sync_replicated_grads(model)
    layout = layout_of(model)
    specs = shard_specs(model)
    tp, ep, data = layout.size("tp"), layout.size("ep"), layout.data_world
    grads = [(n, p.grad) for n, p in model.named_parameters() if p.grad is not None]
    total = torch.zeros((), dtype=torch.float64)
    for name, g in grads:
        sq = _local(g).detach().double().pow(2).sum().cpu()
        spec = specs.get(name)
        distinct = 1                    # how many data ranks hold different values of this tensor
        if _is_dtensor(g):              # FSDP shards (HSDP: over its shard dim only; replicas hold copies)
            distinct = math.prod(g.device_mesh.size(i) for i, pl in enumerate(g.placements) if pl.is_shard())
        if spec is not None and spec.group == "ep":
            distinct *= ep
        copies = data // distinct * (1 if spec is not None and spec.group == "tp" else tp)
        total += sq / copies
    if layout.mesh is not None:
        t = total.to("cuda" if torch.cuda.is_available() else "cpu")
        dist.all_reduce(t)
        total = t.cpu()
    norm = float(total.sqrt())
    coef = max_norm / (norm + 1e-6)
    if coef < 1.0:
        with torch.no_grad():
            for _, g in grads:
                _local(g).mul_(coef)
    return norm
