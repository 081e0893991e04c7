"""Mamba2 mixer: in_proj -> causal depthwise conv + SiLU -> SSD scan (or one decode step) -> gated RMSNorm -> out_proj.

Legend: b batch, T tokens, D hidden, H heads, P head dim, G groups, N state, K conv kernel,
I = H*P, C = I + 2*G*N (the conv channels: x, B, C).
"""
from __future__ import annotations

import functools
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import BlockKind, ShardSpec, ShardSpecs, TPWiring, register_block_kind
from .config import NemotronHConfig
from .context import ForwardContext
from .layers import GatedRMSNorm, gated_rms_norm
from .ssd import ssd_scan, ssd_step


class _ShiftConv(torch.autograd.Function):
    """out[:, t] = bias + sum_k w[:, k] * xp[:, t+k] * mask[:, t, k]: a depthwise conv as K multiply-adds into one
    buffer, channels-last. Hand-written backward: autograd on slices would zero-fill a full-size gradient per tap."""

    @staticmethod
    def forward(ctx, xp: Tensor, w: Tensor, bias: Tensor | None, mask: Tensor | None) -> Tensor:
        K = w.shape[-1]
        T = xp.shape[1] - K + 1
        out = torch.empty_like(xp[:, :T]) if bias is None else bias.to(xp.dtype).expand_as(xp[:, :T]).clone()
        if bias is None:
            out.zero_()
        for k in range(K):
            tap = xp[:, k:k + T] if mask is None else xp[:, k:k + T] * mask[:, :, k, None]
            out.addcmul_(tap, w[:, k])
        ctx.save_for_backward(xp, w, mask)
        ctx.has_bias = bias is not None
        return out

    @staticmethod
    def backward(ctx, g: Tensor):
        xp, w, mask = ctx.saved_tensors
        K = w.shape[-1]
        T = g.shape[1]
        g = g.contiguous()
        gxp = torch.zeros_like(xp) if ctx.needs_input_grad[0] else None
        gw = torch.empty_like(w) if ctx.needs_input_grad[1] else None
        for k in range(K):
            gk = g if mask is None else g * mask[:, :, k, None]
            if gxp is not None:
                gxp[:, k:k + T].addcmul_(gk, w[:, k])
            if gw is not None:
                gw[:, k] = (gk * xp[:, k:k + T]).sum((0, 1))
        gb = g.sum((0, 1)) if ctx.has_bias and ctx.needs_input_grad[2] else None
        return gxp, gw, gb, None


def causal_conv(x: Tensor, weight: Tensor, bias: Tensor | None, state: Tensor | None,
                seq_idx: Tensor | None, lengths: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Depthwise causal conv over time. x (b,T,C), weight (C,K), state (b,K-1,C) = inputs before x (zeros if None).
    With seq_idx (b,T), taps never reach into an earlier document. Returns out (b,T,C) and the new state (b,K-1,C)."""
    b, T, Cdim = x.shape
    K = weight.shape[-1]
    if state is None:
        xp = F.pad(x, (0, 0, K - 1, 0))                                    # (b, K-1+T, C)
    else:
        xp = torch.cat([state.to(x.dtype), x], dim=1)
    mask = None
    if seq_idx is not None:  # the cached state belongs to the row's first document
        sp = torch.cat([seq_idx[:, :1].expand(b, K - 1), seq_idx], dim=1)  # (b, K-1+T)
        mask = (sp.unfold(1, K, 1) == seq_idx[..., None]).to(x.dtype)     # (b, T, K)
    out = _ShiftConv.apply(xp, weight.to(x.dtype), bias, mask)
    if lengths is not None:  # right-padded rows: the last K-1 *real* inputs
        idx = lengths[:, None] + torch.arange(K - 1, device=x.device)      # (b, K-1) positions in xp
        new_state = xp[torch.arange(b, device=x.device)[:, None], idx]
    else:
        new_state = xp[:, T:]                                              # last K-1 inputs
    if seq_idx is not None:
        new_state = new_state * (sp[:, T:] == seq_idx[:, -1:])[..., None].to(x.dtype)
    return out, new_state


class Mamba2Mixer(nn.Module):
    def __init__(self, config: NemotronHConfig, layer_idx: int):
        super().__init__()
        c = config
        self.layer_idx = layer_idx
        self.H, self.P, self.G, self.N = c.mamba_num_heads, c.mamba_head_dim, c.n_groups, c.ssm_state_size
        self.I, self.C = c.mamba_intermediate, c.mamba_conv_dim
        self.dims = (self.H, self.P, self.G, self.N, c.chunk_size)
        if c.scan_impl not in SCAN_IMPLS:
            raise ValueError(f"scan_impl: unknown {c.scan_impl!r}; choose from {', '.join(SCAN_IMPLS)}")
        self.scan = SCAN_IMPLS[c.scan_impl]()
        self.dt_limit = c.time_step_limit
        self.dt_clamp_min = c.time_step_min if c.mamba_dt_clamp else None
        self.in_proj = nn.Linear(c.hidden_size, self.I + self.C + self.H, bias=c.mamba_proj_bias)
        self.conv1d = nn.Conv1d(self.C, self.C, c.conv_kernel, groups=self.C, bias=c.use_conv_bias)
        # A_log, D, dt_bias stay fp32 whatever the model dtype (model.FP32_PARAM_SUFFIXES).
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.H + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(self.H))
        self.dt_bias = nn.Parameter(torch.ones(self.H))
        self.norm = GatedRMSNorm(self.I, self.G, c.layer_norm_epsilon)
        self.out_proj = nn.Linear(self.I, c.hidden_size, bias=c.mamba_proj_bias)

    def forward(self, u: Tensor, ctx: ForwardContext) -> Tensor:
        cache = ctx.cache
        zxbcdt = self.in_proj(u)
        conv_state = cache.read(cache.states["conv"][self.layer_idx]) if cache is not None else None
        ssm_state = cache.read(cache.states["ssm"][self.layer_idx]) if cache is not None else None
        inner = self.scan if cache is None else mamba_inner
        y, conv_state, ssm_state = inner(
            zxbcdt, self.conv1d.weight[:, 0], self.conv1d.bias, self.dt_bias, self.A_log, self.D, self.norm.weight,
            conv_state, ssm_state, ctx.seq_idx, self.dims, self.dt_limit, self.dt_clamp_min, self.norm.eps,
            decode=cache is not None and u.shape[1] == 1, lengths=ctx.lengths)
        if cache is not None:
            cache.write(cache.states["conv"][self.layer_idx], conv_state)
            cache.write(cache.states["ssm"][self.layer_idx], ssm_state)
        return self.out_proj(y)


def mamba_inner(zxbcdt: Tensor, conv_w: Tensor, conv_b: Tensor | None, dt_bias: Tensor, A_log: Tensor, D: Tensor,
                norm_w: Tensor, conv_state: Tensor | None, ssm_state: Tensor | None, seq_idx: Tensor | None,
                dims: tuple[int, int, int, int, int], dt_limit: tuple[float, float], dt_clamp_min: float | None,
                eps: float, decode: bool = False, lengths: Tensor | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """Everything between in_proj and out_proj, as one function so that it can be compiled as a whole.
    zxbcdt (b,T,I+C+H) -> y (b,T,I) in the input dtype, new conv state (b,K-1,C), new SSM state (b,H,P,N).
    `lengths` (b,): right-padded rows; padding gets dt = 0 (no decay, no input) and the conv state is taken at each
    row's real end."""
    H, P, G, N, chunk = dims
    b, T, _ = zxbcdt.shape
    I = H * P
    z, xBC, dt = zxbcdt.split([I, I + 2 * G * N, H], dim=-1)
    xBC, conv_state = causal_conv(xBC, conv_w, conv_b, conv_state, seq_idx, lengths)
    xBC = F.silu(xBC)
    x, B, C = xBC.split([I, G * N, G * N], dim=-1)
    x = x.view(b, T, H, P)
    B, C = B.view(b, T, G, N), C.view(b, T, G, N)
    dt = F.softplus(dt.float() + dt_bias.float())                          # (b,T,H) fp32
    lo, hi = dt_limit
    if lo > 0.0 or hi != float("inf"):
        dt = dt.clamp(lo, hi)
    if dt_clamp_min is not None and not decode:  # transformers' prefill-only clamp, kept for exact parity
        dt = dt.clamp(min=dt_clamp_min)
    if lengths is not None:  # after the clamp: padding must get dt = 0 exactly
        dt = dt * (torch.arange(T, device=dt.device) < lengths[:, None])[..., None]
    A = -torch.exp(A_log.float())
    if decode:
        assert ssm_state is not None  # decode only with a cache, which always passes its SSM state
        y, ssm_state = ssd_step(ssm_state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D.float())
        y = y[:, None]
    else:
        y, ssm_state = ssd_scan(x, dt, A, B, C, chunk, D.float(), ssm_state, seq_idx)
    return gated_rms_norm(y.reshape(b, T, I), z, norm_w, G, eps, zxbcdt.dtype), conv_state, ssm_state


@functools.cache
def _compiled_inner() -> Callable[..., tuple[Tensor, Tensor, Tensor]]:
    return torch.compile(mamba_inner, dynamic=None)      # built once per process, on first use


# The scan implementations a config may name (`scan_impl`) -> the function run between in_proj and out_proj for a
# prefill or training forward. Decode steps (one token, with a cache) always take the eager `mamba_inner`.
SCAN_IMPLS: dict[str, Callable[[], Callable[..., tuple[Tensor, Tensor, Tensor]]]] = {
    "torch": lambda: mamba_inner,          # eager PyTorch: the chunked SSD scan of ssd.py
    "compile": _compiled_inner,            # the same function through torch.compile (fuses its elementwise work)
}


# ---- the Mamba2 block kind (`M`): see model/blocks.py ----------------------------------------------------------
def _mamba_cache(c: NemotronHConfig, slots: int, max_len: int, dtype: torch.dtype,
                 device: torch.device | str) -> dict[str, Tensor]:
    """The last K-1 conv inputs (S, K-1, C) in the model dtype and the SSM state (S, H, P, N) in fp32."""
    return {"conv": torch.zeros(slots, c.conv_kernel - 1, c.mamba_conv_dim, dtype=dtype, device=device),
            "ssm": torch.zeros(slots, c.mamba_num_heads, c.mamba_head_dim, c.ssm_state_size, dtype=torch.float32,
                               device=device)}


def _macs(c: NemotronHConfig, seq: int) -> float:
    D = c.hidden_size
    macs = D * (c.mamba_intermediate + c.mamba_conv_dim + c.mamba_num_heads) + c.mamba_intermediate * D
    # SSD: intra-chunk C·B and y, chunk states, state output (per token, approximately)
    return macs + c.mamba_num_heads * (c.chunk_size * (c.ssm_state_size / (c.mamba_num_heads // c.n_groups)
                                                       + c.mamba_head_dim)
                                       + 2 * c.mamba_head_dim * c.ssm_state_size)


def _specs(m: nn.Module, c: NemotronHConfig) -> ShardSpecs:
    I, H, GN = c.mamba_intermediate, c.mamba_num_heads, c.n_groups * c.ssm_state_size
    fused = ShardSpec("tp", 0, (I, I, GN, GN, H))                  # z, x, B, C, dt
    conv = ShardSpec("tp", 0, (I, GN, GN))                         # x, B, C
    return {"in_proj.weight": fused, "in_proj.bias": fused, "conv1d.weight": conv, "conv1d.bias": conv,
            **{p: ShardSpec("tp", 0, (H,)) for p in ("A_log", "D", "dt_bias")},
            "norm.weight": ShardSpec("tp", 0, (I,)), "out_proj.weight": ShardSpec("tp", 1, (I,))}


def _tp_narrow(m: nn.Module, size: int) -> TPWiring:
    assert isinstance(m, Mamba2Mixer)
    m.H, m.G = m.H // size, m.G // size
    m.I, m.C = m.H * m.P, m.H * m.P + 2 * m.G * m.N
    m.dims = (m.H, m.P, m.G, m.N, m.dims[-1])
    m.norm.groups = m.G
    return [(m, m.out_proj)]


def _check_parallel(c: NemotronHConfig, tp: int, ep: int) -> str | None:
    return f"parallel.tp: {tp} must divide the Mamba n_groups={c.n_groups}" if c.n_groups % tp else None


MAMBA = register_block_kind(BlockKind(
    name="mamba", char="M", hub_names=("linear_attention", "mamba"), mixer=Mamba2Mixer, macs_per_token=_macs,
    cache_state=_mamba_cache, recurrent_states=("conv", "ssm"), shard_specs=_specs, tp_narrow=_tp_narrow,
    check_parallel=_check_parallel))
