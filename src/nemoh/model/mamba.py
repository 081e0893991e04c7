"""Mamba2 mixer: in_proj -> causal depthwise conv + SiLU -> SSD scan (or one decode step) -> gated RMSNorm -> out_proj.

Legend: b batch, T tokens, D hidden, H heads, P head dim, G groups, N state, K conv kernel,
I = H*P, C = I + 2*G*N (the conv channels: x, B, C).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .config import NemotronHConfig
from .context import ForwardContext
from .layers import GatedRMSNorm
from .ssd import get_scan, ssd_step


class _ShiftConv(torch.autograd.Function):
    """out[:, t] = bias + sum_k w[:, k] * xp[:, t+k] * mask[:, t, k]: a depthwise conv as K multiply-adds into one
    buffer, channels-last. Hand-written backward: autograd on slices would zero-fill a full-size gradient per tap."""

    @staticmethod
    def forward(ctx, xp: Tensor, w: Tensor, bias: Tensor | None, mask: Tensor | None) -> Tensor:  # type: ignore[override]
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
    def backward(ctx, g: Tensor):  # type: ignore[override]
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
                seq_idx: Tensor | None) -> tuple[Tensor, Tensor]:
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
    new_state = xp[:, T:]                                                  # last K-1 inputs
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
        self.chunk_size = c.chunk_size
        self.scan_impl = c.scan_impl
        self.dt_limit = c.time_step_limit
        self.dt_clamp_min = c.time_step_min if c.mamba_dt_clamp else None
        self.in_proj = nn.Linear(c.hidden_size, self.I + self.C + self.H, bias=c.mamba_proj_bias)
        self.conv1d = nn.Conv1d(self.C, self.C, c.conv_kernel, groups=self.C, bias=c.use_conv_bias)
        # A_log, D, dt_bias stay fp32 whatever the model dtype (see model.py `_keep_fp32`).
        self.A_log = nn.Parameter(torch.log(torch.arange(1, self.H + 1, dtype=torch.float32)))
        self.D = nn.Parameter(torch.ones(self.H))
        self.dt_bias = nn.Parameter(torch.ones(self.H))
        self.norm = GatedRMSNorm(self.I, self.G, c.layer_norm_epsilon)
        self.out_proj = nn.Linear(self.I, c.hidden_size, bias=c.mamba_proj_bias)

    def forward(self, u: Tensor, ctx: ForwardContext) -> Tensor:
        b, T, _ = u.shape
        cache = ctx.cache
        z, xBC, dt = self.in_proj(u).split([self.I, self.C, self.H], dim=-1)
        conv_state = cache.conv[self.layer_idx][cache.slots] if cache is not None else None
        xBC, conv_state = causal_conv(xBC, self.conv1d.weight[:, 0], self.conv1d.bias, conv_state, ctx.seq_idx)
        xBC = F.silu(xBC)
        x, B, C = xBC.split([self.I, self.G * self.N, self.G * self.N], dim=-1)
        x = x.view(b, T, self.H, self.P)
        B, C = B.view(b, T, self.G, self.N), C.view(b, T, self.G, self.N)

        dt = F.softplus(dt.float() + self.dt_bias.float())                 # (b,T,H) fp32
        lo, hi = self.dt_limit
        if lo > 0.0 or hi != float("inf"):
            dt = dt.clamp(lo, hi)
        A = -torch.exp(self.A_log.float())
        D = self.D.float()
        ssm_state = cache.ssm[self.layer_idx][cache.slots] if cache is not None else None
        if cache is not None and T == 1:
            y, ssm_state = ssd_step(ssm_state, x[:, 0], dt[:, 0], A, B[:, 0], C[:, 0], D)
            y = y[:, None]
        else:
            if self.dt_clamp_min is not None:  # transformers' prefill-only clamp, kept for exact parity
                dt = dt.clamp(min=self.dt_clamp_min)
            y, ssm_state = get_scan(self.scan_impl)(x, dt, A, B, C, self.chunk_size, D, ssm_state, ctx.seq_idx)
        if cache is not None:
            cache.conv[self.layer_idx][cache.slots] = conv_state.to(cache.conv[self.layer_idx].dtype)
            cache.ssm[self.layer_idx][cache.slots] = ssm_state
        y = self.norm(y.reshape(b, T, self.I), z, u.dtype)                 # (b,T,I)
        return self.out_proj(y)
