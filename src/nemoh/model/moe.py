"""Sigmoid-routed mixture of experts with a shared expert and optional latent projections.

Legend: n tokens (b*T flattened), D hidden, L expert input size (moe_latent_size or D), E experts, k experts per
token, F expert intermediate size. Experts are stacked: up_proj (E,F,L), down_proj (E,L,F), the layout grouped GEMMs
and expert parallelism want; the Hub's per-expert tensors are mapped in checkpoint/adapter.py.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import BlockKind, ShardSpec, ShardSpecs, TPWiring, register_block_kind
from .config import NemotronHConfig
from .context import ForwardContext
from .layers import MLP, mlp_specs, mlp_tp_narrow, relu2


def select_experts(scores: Tensor, bias: Tensor, k: int, n_group: int, topk_group: int) -> Tensor:
    """Group-limited top-k on bias-corrected scores (n,E) -> ids (n,k). The bias steers selection only."""
    n, E = scores.shape
    corrected = scores + bias
    if n_group > 1:
        grouped = corrected.view(n, n_group, E // n_group)
        group_score = grouped.topk(2, dim=-1).values.sum(-1)                # (n, n_group)
        keep = group_score.topk(topk_group, dim=-1, sorted=False).indices
        group_mask = torch.zeros_like(group_score, dtype=torch.bool).scatter_(1, keep, True)
        corrected = grouped.masked_fill(~group_mask[..., None], float("-inf")).view(n, E)
    return corrected.topk(k, dim=-1, sorted=False).indices


class Router(nn.Module):
    """fp32 sigmoid router. Weights are the *uncorrected* scores at the chosen experts, optionally normalised to
    sum 1, times routed_scaling_factor (leaving that at 1.0 is the known MoE logprob drift)."""

    def __init__(self, config: NemotronHConfig):
        super().__init__()
        c = config
        self.weight = nn.Parameter(torch.zeros(c.n_routed_experts, c.hidden_size))
        self.e_score_correction_bias = nn.Parameter(torch.zeros(c.n_routed_experts), requires_grad=False)
        self.k, self.n_group, self.topk_group = c.num_experts_per_tok, c.n_group, c.topk_group
        self.norm_topk_prob, self.scale = c.norm_topk_prob, c.routed_scaling_factor

    def forward(self, x: Tensor, replay_ids: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """x (n,D) -> weights (n,k) fp32, ids (n,k). With replay_ids the ids are given, the weights still come from
        the live router so it keeps its gradient (rollout routing replay)."""
        scores = torch.sigmoid(x.float() @ self.weight.float().t())        # (n,E)
        with torch.no_grad():
            ids = select_experts(scores, self.e_score_correction_bias.float(), self.k, self.n_group, self.topk_group)
        if replay_ids is not None:
            if replay_ids.shape != (x.shape[0], self.k):
                raise ValueError(f"routed_experts: expected shape {(x.shape[0], self.k)} for this layer, "
                                 f"got {tuple(replay_ids.shape)}")
            # rows of -1 (e.g. the last token, which the rollout never fed) keep the live choice
            replay_ids = replay_ids.to(device=x.device, dtype=torch.long)
            ids = torch.where(replay_ids[:, :1] >= 0, replay_ids, ids)
        w = scores.gather(1, ids)
        if self.norm_topk_prob:
            w = w / (w.sum(-1, keepdim=True) + 1e-20)
        return w * self.scale, ids


def experts_loop(x: Tensor, ids: Tensor, w: Tensor, up: Tensor, down: Tensor) -> Tensor:
    """Sort (token, expert) pairs by expert, run each used expert on its contiguous slice, un-sort, sum the k.
    x (n,L), ids/w (n,k), up (E,F,L), down (E,L,F) -> (n,L). The router weight scales the expert's hidden (F)
    before down_proj (linear, so the same sum, on the narrower tensor); the k outputs are summed in fp32."""
    n, k = ids.shape
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)                               # (n*k,) grouped by expert
    counts = torch.bincount(flat, minlength=up.shape[0]).tolist()          # one host sync per layer
    # embedding = a fast gather with a fast backward; split (not slicing) and unbind keep autograd from
    # zero-filling a full-size gradient buffer per expert
    xs = torch.split(F.embedding(order // k, x), counts)                   # E x (count_e, L)
    ws = torch.split(w.reshape(-1)[order], counts)
    ups, downs = up.unbind(0), down.unbind(0)
    outs = [(relu2(xe @ ups[e].t()) * ws[e][:, None].to(x.dtype)) @ downs[e].t()
            for e, xe in enumerate(xs) if xe.shape[0]]
    ys = torch.cat(outs) if outs else x.new_zeros(0, x.shape[1])           # (n*k, L), sorted by expert
    unsort = torch.argsort(order)
    return F.embedding(unsort, ys).view(n, k, -1).sum(1, dtype=torch.float32).to(x.dtype)


def experts_padded(x: Tensor, ids: Tensor, w: Tensor, up: Tensor, down: Tensor) -> Tensor:
    """Few tokens (decode): scatter the (token, expert) pairs into a zero-padded (E, C, L) buffer, C = the busiest
    expert's count, and run all experts as two batched GEMMs, reading each expert's weights once in one call
    instead of 2E small ones. Same math as experts_loop; the padding rows compute zeros."""
    n, k = ids.shape
    E, L = up.shape[0], x.shape[1]
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    expert = flat[order]                                                   # (n*k,) sorted expert of each pair
    counts = torch.bincount(flat, minlength=E)
    starts = torch.cumsum(counts, 0) - counts
    slot = torch.arange(n * k, device=x.device) - starts[expert]          # position within its expert
    C = int(counts.max())
    buf = x.new_zeros(E, C, L)
    buf[expert, slot] = x[order // k]
    wbuf = x.new_zeros(E, C, 1)
    wbuf[expert, slot, 0] = w.reshape(-1)[order].to(x.dtype)
    # weights stay in their stored (out, in) layout: W @ bufᵀ, so only the small activations are transposed
    h = relu2(torch.bmm(up, buf.transpose(1, 2))) * wbuf.transpose(1, 2)  # (E, F, C)
    ys = torch.bmm(down, h).transpose(1, 2)[expert, slot]                 # (n*k, L), sorted by expert
    return F.embedding(torch.argsort(order), ys).view(n, k, -1).sum(1, dtype=torch.float32).to(x.dtype)


def experts_static(x: Tensor, ids: Tensor, w: Tensor, up: Tensor, down: Tensor) -> Tensor:
    """Static shapes and no host sync, for a compiled decode step. Fewer (token, expert) pairs than experts: gather
    the chosen experts' weights (reads only those); else run every expert on every token, weighted by the dense
    (n,E) routing matrix (zero for the experts not chosen). Same math as experts_loop."""
    n, k = ids.shape
    E = up.shape[0]
    if n * k < E:
        h = relu2(torch.einsum("nl,nkfl->nkf", x, up[ids])) * w[..., None].to(x.dtype)    # (n,k,F)
        ys = torch.einsum("nkf,nklf->nkl", h, down[ids])                                  # (n,k,L)
        return ys.sum(1, dtype=torch.float32).to(x.dtype)
    dense = torch.zeros(n, E, dtype=w.dtype, device=w.device).scatter(1, ids, w).to(x.dtype)  # (n,E)
    h = relu2(torch.matmul(up, x.t())) * dense.t()[:, None, :]                            # (E,F,n)
    return torch.matmul(down, h).sum(0, dtype=torch.float32).t().to(x.dtype)              # (E,L,n) -> (n,L)


def experts_auto(x: Tensor, ids: Tensor, w: Tensor, up: Tensor, down: Tensor) -> Tensor:
    """Padded batched GEMMs for decode-sized batches (up to 8 pairs per expert) that touch about every expert
    anyway; the sorted loop otherwise: with fewer pairs than experts it reads only the experts in use, and for
    prefill and training it wastes no padding. Under torch.compile (the compiled decode step): static shapes."""
    E = up.shape[0]
    if torch.compiler.is_compiling() and not torch.is_grad_enabled():
        return experts_static(x, ids, w, up, down)
    if E <= ids.numel() <= 8 * E and not torch.is_grad_enabled():
        return experts_padded(x, ids, w, up, down)
    return experts_loop(x, ids, w, up, down)


# Token-dispatch implementations, chosen by name (a grouped-GEMM kernel slots in here).
EXPERT_IMPLS: dict[str, Callable[[Tensor, Tensor, Tensor, Tensor, Tensor], Tensor]] = {
    "auto": experts_auto, "loop": experts_loop, "padded": experts_padded, "static": experts_static}


class Experts(nn.Module):
    def __init__(self, config: NemotronHConfig, impl: str = "auto"):
        super().__init__()
        c = config
        E, F, L = c.n_routed_experts, c.moe_intermediate_size, c.moe_input_size
        self.up_proj = nn.Parameter(torch.empty(E, F, L).normal_(std=c.initializer_range))
        self.down_proj = nn.Parameter(torch.empty(E, L, F).normal_(std=c.initializer_range))
        self.impl = EXPERT_IMPLS[impl]
        # LoRA (nemoh.lora.ExpertsLoRA): (up, down) -> adapted (up, down), so the dispatch sees W_e + scale * B_e A_e
        self.lora: nn.Module | None = None

    def forward(self, x: Tensor, ids: Tensor, w: Tensor) -> Tensor:
        up, down = self.up_proj, self.down_proj
        if self.lora is not None:
            up, down = self.lora(up, down)
        return self.impl(x, ids, w, up, down)


class MoE(nn.Module):
    def __init__(self, config: NemotronHConfig, layer_idx: int):
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.gate = Router(c)
        self.experts = Experts(c)
        self.shared_experts = MLP(c.hidden_size, c.moe_shared_expert_intermediate_size, c.mlp_bias)
        self.latent = c.moe_latent_size is not None
        if c.moe_latent_size is not None:  # == self.latent
            self.fc1_latent_proj = nn.Linear(c.hidden_size, c.moe_latent_size, bias=c.mlp_bias)
            self.fc2_latent_proj = nn.Linear(c.moe_latent_size, c.hidden_size, bias=c.mlp_bias)

    def forward(self, x: Tensor, ctx: ForwardContext) -> Tensor:
        shape = x.shape
        flat = x.reshape(-1, shape[-1])                                    # (n,D)
        replay = ctx.replay.get(self.layer_idx) if ctx.replay is not None else None
        w, ids = self.gate(flat, replay)
        if ctx.capture_routing:
            ctx.routing[self.layer_idx] = ids.detach()
        h = self.fc1_latent_proj(flat) if self.latent else flat            # (n,L)
        h = self.experts(h, ids, w)
        if self.latent:
            h = self.fc2_latent_proj(h)
        return (h + self.shared_experts(flat)).view(shape)


# ---- the MoE block kind (`E`): see model/blocks.py -------------------------------------------------------------
def _macs(c: NemotronHConfig, seq: int) -> float:
    D, L = c.hidden_size, c.moe_input_size
    macs = D * c.n_routed_experts + 2 * D * c.moe_shared_expert_intermediate_size
    macs += c.num_experts_per_tok * 2 * L * c.moe_intermediate_size      # active experts only
    return macs + (2 * D * L if c.moe_latent_size else 0)


def _specs(m: nn.Module, c: NemotronHConfig) -> ShardSpecs:
    """The shared expert is tensor-parallel like a dense MLP; the routed experts are split over ep."""
    assert isinstance(m, MoE)
    shared = {f"shared_experts.{k}": s for k, s in mlp_specs(m.shared_experts, c).items()}
    return shared | {f"experts.{p}": ShardSpec("ep", 0, (c.n_routed_experts,)) for p in ("up_proj", "down_proj")}


def _tp_narrow(m: nn.Module, size: int) -> TPWiring:
    assert isinstance(m, MoE)
    return mlp_tp_narrow(m.shared_experts, size)


def _check_parallel(c: NemotronHConfig, tp: int, ep: int) -> str | None:
    return f"parallel.ep: {ep} must divide n_routed_experts={c.n_routed_experts}" if c.n_routed_experts % ep else None


MOE = register_block_kind(BlockKind(
    name="moe", char="E", hub_names=("moe",), mixer=MoE, macs_per_token=_macs, shard_specs=_specs,
    tp_narrow=_tp_narrow, check_parallel=_check_parallel, routes_experts=True))
