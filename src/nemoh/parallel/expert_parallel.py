"""Expert parallelism: each ep rank holds E/ep consecutive experts; tokens travel to their experts and back.

Per MoE layer (n tokens on this rank, k experts each, m = n*k (token, expert) pairs):
    router (replicated, local) -> sort pairs by expert == by owning rank -> all-to-all the split sizes
    -> all-to-all the rows (m,L) and their router weights (m,) -> local experts (the same sorted loop as one
    process) -> all-to-all the outputs back -> un-sort -> sum the k outputs in fp32.
The all-to-alls are autograd functions (their backward is the reverse all-to-all), so the router weight keeps its
gradient and routing replay (R3) works unchanged: replayed ids are dispatched like live ones.
"""
from __future__ import annotations

from typing import cast

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributed.nn.functional import all_to_all_single

from ..model.moe import Experts, experts_loop
from .specs import shard_specs


class ExpertParallelExperts(Experts):
    """Experts whose up_proj/down_proj hold experts [first, first + E_local) of the layer."""
    ep_group: dist.ProcessGroup
    first: int

    def forward(self, x: Tensor, ids: Tensor, w: Tensor) -> Tensor:
        n, k = ids.shape
        E_local = self.up_proj.shape[0]
        size = dist.get_world_size(self.ep_group)
        flat = ids.reshape(-1)
        order = torch.argsort(flat, stable=True)                          # pairs grouped by expert, so by rank
        expert = flat[order]
        send = torch.bincount(expert // E_local, minlength=size)          # pairs for each ep rank
        recv = torch.empty_like(send)
        dist.all_to_all_single(recv, send, group=self.ep_group)
        send_sizes, recv_sizes = send.tolist(), recv.tolist()
        m = sum(recv_sizes)

        def exchange(t: Tensor, out_rows: int, out_sizes: list[int], in_sizes: list[int]) -> Tensor:
            out = t.new_empty((out_rows, *t.shape[1:]))
            return all_to_all_single(out, t.contiguous(), out_sizes, in_sizes, group=self.ep_group)

        xs = exchange(F.embedding(order // k, x), m, recv_sizes, send_sizes)           # (m, L)
        ws = exchange(w.reshape(-1)[order], m, recv_sizes, send_sizes)                  # (m,) fp32, with grad
        local_ids = torch.empty(m, dtype=expert.dtype, device=expert.device)
        dist.all_to_all_single(local_ids, (expert % E_local).contiguous(), recv_sizes, send_sizes,
                               group=self.ep_group)
        ys = experts_loop(xs, local_ids[:, None], ws[:, None], self.up_proj, self.down_proj)  # (m, L)
        back = exchange(ys, n * k, send_sizes, recv_sizes)                             # (n*k, L), sorted
        return F.embedding(torch.argsort(order), back).view(n, k, -1).sum(1, dtype=torch.float32).to(x.dtype)


def apply_ep(model: nn.Module, group: dist.ProcessGroup) -> None:
    """Keep this rank's experts only and switch the layers to all-to-all dispatch."""
    size, rank = dist.get_world_size(group), dist.get_rank(group)
    specs = shard_specs(model)
    with torch.no_grad():
        for name, m in model.named_modules():
            if not isinstance(m, Experts):
                continue
            if m.lora is not None:
                raise NotImplementedError("parallel.ep: LoRA on routed experts is single-process for now")
            for attr in ("up_proj", "down_proj"):
                p = getattr(m, attr)
                setattr(m, attr, nn.Parameter(specs[f"{name}.{attr}"].local(p.data, rank, size)))
            m.__class__ = ExpertParallelExperts
            ep = cast(ExpertParallelExperts, m)  # the class switch above
            ep.ep_group, ep.first = group, rank * ep.up_proj.shape[0]
