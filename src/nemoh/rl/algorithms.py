"""GRPO-family formulas: advantage estimators, KL estimators, policy losses, loss aggregation. Each variant is a
small function in a registry, chosen by name once at start-up. Written down in docs/rl.md; unit-tested against hand
computations in tests/test_rl_algorithms.py.

Legend: B sequences, T response tokens (padded), mask (B,T) 1 on real response tokens, G samples per prompt.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


# ---- advantages: rewards (B,) in prompt-major order (G consecutive samples per prompt) -> advantages (B,) ------
def adv_grpo(rewards: Tensor, group: int, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """A_i = (r_i - mean_group) / (std_group + eps); without std normalisation (Dr.GRPO) just r_i - mean_group."""
    r = rewards.view(-1, group)
    a = r - r.mean(-1, keepdim=True)
    if normalize_std:
        a = a / (r.std(-1, keepdim=True) + eps)
    return a.reshape(-1)


def adv_reinforce_pp(rewards: Tensor, group: int, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """REINFORCE++: returns whitened over the whole batch (no group baseline)."""
    return (rewards - rewards.mean()) / (rewards.std() + eps)


def adv_reinforce_pp_baseline(rewards: Tensor, group: int, normalize_std: bool = True, eps: float = 1e-6) -> Tensor:
    """REINFORCE++-baseline: subtract the group mean, then whiten over the whole batch."""
    a = (rewards.view(-1, group) - rewards.view(-1, group).mean(-1, keepdim=True)).reshape(-1)
    return (a - a.mean()) / (a.std() + eps)


ADVANTAGES: dict[str, Callable[..., Tensor]] = {
    "grpo": adv_grpo,
    "gspo": adv_grpo,   # GSPO keeps GRPO's group advantages; its difference is the sequence-level ratio
    "reinforce_plus_plus": adv_reinforce_pp,
    "reinforce_plus_plus_baseline": adv_reinforce_pp_baseline,
}


# ---- KL estimators of KL(pi || ref) per token, from log pi and log ref ---------------------------------------------
def kl_k1(logp: Tensor, ref: Tensor) -> Tensor:
    return logp - ref


def kl_k2(logp: Tensor, ref: Tensor) -> Tensor:
    return 0.5 * (logp - ref) ** 2


def kl_low_var(logp: Tensor, ref: Tensor) -> Tensor:
    """k3 (Schulman): exp(ref - logp) - (ref - logp) - 1, non-negative and unbiased; clamped like miles."""
    d = (ref - logp).clamp(-20, 20)
    return (torch.exp(d) - d - 1).clamp(-10, 10)


KL_ESTIMATORS: dict[str, Callable[[Tensor, Tensor], Tensor]] = {"k1": kl_k1, "k2": kl_k2, "low_var_kl": kl_low_var,
                                                                 "k3": kl_low_var}


# ---- importance ratios ----------------------------------------------------------------------------------------------
def ratio_token(logp: Tensor, old: Tensor, mask: Tensor) -> Tensor:
    return torch.exp(logp - old)


def ratio_sequence(logp: Tensor, old: Tensor, mask: Tensor) -> Tensor:
    """GSPO: exp(mean over the sequence's tokens of (logp - old)), the same for every token of a sequence; the
    gradient flows through each token as in GSPO-token (sg[s] * pi / sg[pi])."""
    n = mask.sum(-1, keepdim=True).clamp(min=1)
    seq = ((logp - old) * mask).sum(-1, keepdim=True) / n
    return torch.exp(seq.detach() + logp - logp.detach())


RATIOS = {"token": ratio_token, "sequence": ratio_sequence}


def policy_loss(ratio: Tensor, adv: Tensor, eps_clip: float, eps_clip_high: float,
                eps_clip_c: float | None = None) -> tuple[Tensor, Tensor]:
    """PPO clip with clip-higher: max(-A r, -A clip(r, 1-eps, 1+eps_high)); dual clip for A < 0 caps it at -c A.
    adv (B,1) broadcasts over tokens. Returns per-token loss (B,T) and where clipping was active (B,T) bool."""
    l1 = -adv * ratio
    l2 = -adv * ratio.clamp(1 - eps_clip, 1 + eps_clip_high)
    loss = torch.maximum(l1, l2)
    clipped = l2 > l1
    if eps_clip_c is not None:
        capped = torch.minimum(loss, -adv * eps_clip_c)
        loss = torch.where(adv < 0, capped, loss)
    return loss, clipped


# ---- aggregation over the global batch: per-token values (B,T) -> scalar ------------------------------------------
def agg_token_mean(x: Tensor, mask: Tensor, total_tokens: float, num_seqs: int, max_len: int) -> Tensor:
    return (x * mask).sum() / total_tokens


def agg_sequence_mean(x: Tensor, mask: Tensor, total_tokens: float, num_seqs: int, max_len: int) -> Tensor:
    per_seq = (x * mask).sum(-1) / mask.sum(-1).clamp(min=1)
    return per_seq.sum() / num_seqs


def agg_constant(x: Tensor, mask: Tensor, total_tokens: float, num_seqs: int, max_len: int) -> Tensor:
    """Dr.GRPO: a constant normaliser (sequences x max response length), no length bias."""
    return (x * mask).sum() / (num_seqs * max_len)


AGGREGATIONS = {"token-mean": agg_token_mean, "sequence-mean": agg_sequence_mean,
                "constant-normaliser": agg_constant}


def tis_weights(old_logp: Tensor, rollout_logp: Tensor, cap: float) -> tuple[Tensor, Tensor]:
    """Truncated importance sampling between the trainer's and the rollout engine's distributions:
    w = min(exp(old - rollout), cap), detached. Returns weights and where the cap bit."""
    w = torch.exp(old_logp - rollout_logp)
    return w.clamp(max=cap).detach(), w > cap
