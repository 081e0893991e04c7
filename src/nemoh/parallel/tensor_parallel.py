"""Megatron-style tensor parallelism on local shards.

Each mixer (attention, Mamba2, dense MLP, the MoE's shared expert) runs on this rank's heads / columns only:
    x --copy--> column-parallel in-projections -> local heads -> row-parallel out-projection --reduce--> y
`copy` is the identity forward and an all-reduce of the gradient backward; `reduce` is an all-reduce forward and
the identity backward. Every tp rank sees the same tokens and computes the same loss, so parameters outside the
mixers (embeddings, norms, router, LM head) get identical gradients on every tp rank without further communication.

Mamba2 splits by heads with whole groups per rank (n_groups % tp == 0): the conv channels, the SSM and the gated
norm's groups stay local, so the only communication per mixer is the one all-reduce after out_proj. The routed
experts are not tensor-parallel: they are expert-parallel (expert_parallel.py) and replicated over tp.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from ..model.blocks import block_kind
from ..model.model import Block
from .specs import shard_specs


class _CopyToTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        ctx.group = group
        return x

    @staticmethod
    def backward(ctx, g: Tensor):
        g = g.contiguous().clone()
        dist.all_reduce(g, group=ctx.group)
        return g, None


class _ReduceFromTP(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, group) -> Tensor:
        x = x.contiguous().clone()
        dist.all_reduce(x, group=group)
        return x

    @staticmethod
    def backward(ctx, g: Tensor):
        return g, None


class RowParallelLinear(nn.Linear):
    """An nn.Linear whose weight holds this rank's input columns: the partial products are summed over tp, then
    the (replicated) bias is added once."""
    tp_group: dist.ProcessGroup

    def forward(self, x: Tensor) -> Tensor:
        y = _ReduceFromTP.apply(F.linear(x, self.weight), self.tp_group)
        return y if self.bias is None else y + self.bias


def _copy_input_hook(group):
    def hook(module, args, kwargs):
        return (_CopyToTP.apply(args[0], group), *args[1:]), kwargs
    return hook


def apply_tp(model: nn.Module, group: dist.ProcessGroup) -> None:
    """Slice every tp-split parameter to this rank's share in place and wire the mixers' communication."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    specs = {k: s for k, s in shard_specs(model).items() if s.group == "tp"}
    with torch.no_grad():
        for name, spec in specs.items():
            owner, attr = _owner(model, name)
            p = getattr(owner, attr)
            setattr(owner, attr, nn.Parameter(spec.local(p.data, rank, size), requires_grad=p.requires_grad))
    for block in model.modules():
        if not isinstance(block, Block):
            continue
        for module, row_parallel in block_kind(block.kind).tp_narrow(block.mixer, size):   # model/blocks.py
            _row_parallel(row_parallel, group)
            module.register_forward_pre_hook(_copy_input_hook(group), with_kwargs=True)


def _row_parallel(linear: nn.Linear, group) -> None:
    linear.__class__ = RowParallelLinear
    linear.tp_group = group


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return model.get_submodule(path), attr
