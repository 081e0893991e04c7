"""Mamba2 state-space duality (SSD): the chunked scan for prefill/training and the one-step decode update.

Legend: b batch, T tokens, c chunks, Q chunk length, H heads, P head dim, G groups (B/C shared by r = H/G heads),
N state size. The recurrence, per head h with group g = h // r:
    S_t = exp(dt_t * A_h) * S_{t-1} + dt_t * x_t ⊗ B_t        S: (P, N)
    y_t = S_t · C_t + D_h * x_t
`ssd_scan` computes it for a whole sequence in four steps (mamba's ssd_minimal), vectorised over chunks;
`seq_idx` (b, T), non-decreasing per row, marks packed documents: the state is reset where it changes.
`ssd_step` is one recurrent step; `ssd_ref` is the token-by-token loop both are tested against.
Everything here runs in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def _segsum_exp(a_cs: Tensor, mask: Tensor) -> Tensor:
    """exp(a_cs[..., l] - a_cs[..., s]) where mask[l, s] (l >= s implied by mask), else 0. -> (..., L, S)"""
    diff = a_cs[..., :, None] - a_cs[..., None, :]
    return torch.exp(diff.masked_fill(~mask, float("-inf")))


def ssd_scan(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, chunk_size: int,
    D: Tensor | None = None, initial_state: Tensor | None = None, seq_idx: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """x (b,T,H,P), dt (b,T,H) after softplus, A (H,) negative, B/C (b,T,G,N), D (H,), initial_state (b,H,P,N).
    Returns y (b,T,H,P) float32 and the final state (b,H,P,N) float32 (of the last document of each row)."""
    b, T, H, P = x.shape
    G, N = B.shape[-2:]
    r, Q = H // G, chunk_size
    x, dt, B, C = x.float(), dt.float(), B.float(), C.float()
    pad = (-T) % Q
    if pad:  # zero dt/x on padding: no decay, no input, so the final state is untouched
        x, dt, B, C = (F.pad(t, (0, 0) * (t.dim() - 2) + (0, pad)) for t in (x, dt, B, C))
        if seq_idx is not None:
            seq_idx = torch.cat([seq_idx, seq_idx[:, -1:].expand(b, pad)], dim=1)
    c = (T + pad) // Q
    xc = (x * dt[..., None]).view(b, c, Q, G, r, P)                       # dt-scaled input
    Bc, Cc = B.view(b, c, Q, G, N), C.view(b, c, Q, G, N)
    a = (dt * A.float()).view(b, c, Q, G, r).permute(0, 3, 4, 1, 2)        # (b,G,r,c,Q) log-decay per step
    a_cs = torch.cumsum(a, dim=-1)

    causal = torch.ones(Q, Q, dtype=torch.bool, device=x.device).tril()
    if seq_idx is None:
        intra_mask = causal
    else:
        sc = seq_idx.view(b, c, Q)
        intra_mask = causal & (sc[:, :, :, None] == sc[:, :, None, :])    # (b,c,Q,Q)
        intra_mask = intra_mask[:, None, None]                             # (b,1,1,c,Q,Q)

    # 1. intra-chunk output (the quadratic, attention-like part); C·B once per group, not per head.
    CB = torch.einsum("bclgn,bcsgn->bgcls", Cc, Bc)                        # (b,G,c,Q,Q)
    L = _segsum_exp(a_cs, intra_mask)                                       # (b,G,r,c,Q,Q)
    y = torch.einsum("bgrcls,bcsgrp->bclgrp", L * CB[:, :, None], xc)

    # 2. state at the end of each chunk from its own inputs
    decay_to_end = torch.exp(a_cs[..., -1:] - a_cs)                        # (b,G,r,c,Q)
    if seq_idx is not None:  # only tokens of the chunk's last document reach its end state
        decay_to_end = decay_to_end * (sc == sc[:, :, -1:])[:, None, None]
    states = torch.einsum("bclgn,bgrcl,bclgrp->bcgrpn", Bc, decay_to_end, xc)

    # 3. pass states across chunks: start_state[j] = sum_{i<=j} decay(i->j) * [init, states][i]
    init = (initial_state.float().view(b, 1, G, r, P, N) if initial_state is not None
            else states.new_zeros(b, 1, G, r, P, N))
    states = torch.cat([init, states], dim=1)                              # (b,c+1,G,r,P,N)
    chunk_a_cs = torch.cumsum(F.pad(a_cs[..., -1], (1, 0)), dim=-1)       # (b,G,r,c+1)
    chunk_mask = torch.ones(c + 1, c + 1, dtype=torch.bool, device=x.device).tril()
    if seq_idx is not None:  # a state survives only while the document does
        end_seq = torch.cat([seq_idx[:, :1], sc[:, :, -1]], dim=1)         # (b,c+1) doc of each state
        chunk_mask = (chunk_mask & (end_seq[:, :, None] == end_seq[:, None, :]))[:, None, None]
    decay_chunk = _segsum_exp(chunk_a_cs, chunk_mask)                      # (b,G,r,c+1,c+1)
    states = torch.einsum("bgrji,bigrpn->bjgrpn", decay_chunk, states)
    start_states, final_state = states[:, :-1], states[:, -1]

    # 4. contribution of the incoming state to each position
    decay_in = torch.exp(a_cs)                                             # (b,G,r,c,Q)
    if seq_idx is not None:
        decay_in = decay_in * (sc == end_seq[:, :-1, None])[:, None, None]
    y = y + torch.einsum("bclgn,bcgrpn,bgrcl->bclgrp", Cc, start_states, decay_in)

    y = y.reshape(b, c * Q, H, P)[:, :T]
    if D is not None:
        y = y + D.float()[:, None] * x[:, :T]
    return y, final_state.reshape(b, H, P, N)


def ssd_step(
    state: Tensor, x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """One token, updating `state` in place. state (b,H,P,N) fp32, x (b,H,P), dt (b,H) after softplus,
    B/C (b,G,N). Returns y (b,H,P) and the state."""
    b, H, P, N = state.shape
    r = H // B.shape[1]
    x, dt = x.float(), dt.float()
    Bh = B.float().repeat_interleave(r, dim=1).view(b * H, 1, N)
    Ch = C.float().repeat_interleave(r, dim=1).view(b * H, N, 1)
    flat = state.view(b * H, P, N)
    flat.mul_(torch.exp(dt * A.float()).view(b * H, 1, 1))                 # decay
    flat.baddbmm_((dt[..., None] * x).view(b * H, P, 1), Bh)               # + dt x ⊗ B
    y = torch.bmm(flat, Ch).view(b, H, P)                                  # S · C
    if D is not None:
        y = y + D.float()[:, None] * x
    return y, state


def ssd_ref(
    x: Tensor, dt: Tensor, A: Tensor, B: Tensor, C: Tensor, D: Tensor | None = None,
    initial_state: Tensor | None = None, seq_idx: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Token-by-token reference for tests: the recurrence written out, resetting at document starts."""
    b, T, H, P = x.shape
    N = B.shape[-1]
    state = initial_state.float().clone() if initial_state is not None else x.new_zeros(b, H, P, N, dtype=torch.float32)
    ys = []
    for t in range(T):
        if seq_idx is not None and t > 0:
            keep = (seq_idx[:, t] == seq_idx[:, t - 1]).float()[:, None, None, None]
            state = state * keep
        y, state = ssd_step(state.clone(), x[:, t], dt[:, t], A, B[:, t], C[:, t], D)
        ys.append(y)
    return torch.stack(ys, dim=1), state

