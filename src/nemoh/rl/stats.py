"""Per-iteration diagnostics that show what limits learning: how much signal the advantages carry, how many tokens
an update really trains on, which way the clip bites, and why dynamic sampling dropped groups.

Legend: B samples (prompt-major, G consecutive per prompt), T response tokens (padded), mask (B,T).
"""
from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from .rewards import is_correct


def advantage_stats(adv: Tensor) -> dict[str, float]:
    """adv (B,): the share of samples that carry any signal (|A| > 0) and the size of the signal."""
    nonzero = adv.abs() > 1e-8
    return {"adv_abs_mean": float(adv.abs().mean()), "adv_std": float(adv.std()) if len(adv) > 1 else 0.0,
            "adv_abs_max": float(adv.abs().max()), "adv_nonzero_share": float(nonzero.float().mean())}


def effective_tokens(lengths: Sequence[int], adv: Sequence[float], steps: int) -> dict[str, float]:
    """Response tokens per optimizer step that have a non-zero advantage (the rest add nothing to the policy
    gradient, only to a token-mean denominator), and their share of all response tokens."""
    total = sum(lengths)
    useful = sum(n for n, a in zip(lengths, adv) if abs(a) > 1e-8)
    return {"effective_tokens_per_update": useful / max(1, steps), "effective_token_share": useful / max(1, total)}


def clip_fractions(ratio: Tensor, adv: Tensor, mask: Tensor, eps_clip: float, eps_clip_high: float) -> dict[str, float]:
    """Which side of the PPO clip is active, as a share of real tokens: `low` where A < 0 and the ratio fell below
    1 - eps (the update wants to push the token down further), `high` where A > 0 and the ratio rose above
    1 + eps_high (it wants to push it up further). ratio (B,T), adv (B,1), mask (B,T)."""
    n = mask.sum().clamp(min=1.0)
    low = (ratio < 1 - eps_clip) & (adv < 0)
    high = (ratio > 1 + eps_clip_high) & (adv > 0)
    return {"pg_clipfrac_low": float((low * mask).sum() / n), "pg_clipfrac_high": float((high * mask).sum() / n)}


def flat_group_reason(rewards: Sequence[float]) -> str | None:
    """None if the group's rewards differ (it carries signal); else why it does not: every sample correct, every
    sample wrong, or all equal partial credit."""
    if len(set(rewards)) > 1:
        return None
    r = rewards[0]
    if is_correct(r):
        return "all_correct"
    return "all_wrong" if r <= 0 else "all_equal_partial"


def sampling_stats(sampled: Sequence[Sequence[float]], batch: Sequence[Sequence[float]]) -> dict[str, float]:
    """Why groups carry no signal. `sampled`: the rewards of every group generated this iteration (all sampling
    rounds); `batch`: those of the groups trained on (zero-signal groups fill it when dynamic sampling runs out of
    rounds, or always without dynamic sampling)."""
    reasons = [flat_group_reason(g) for g in sampled]
    n = max(1, len(sampled))
    out = {"groups_sampled": float(len(sampled)), "zero_signal_share": sum(r is not None for r in reasons) / n,
           "batch_zero_signal_share": sum(flat_group_reason(g) is not None for g in batch) / max(1, len(batch))}
    for why in ("all_correct", "all_wrong", "all_equal_partial"):
        out[f"flat_{why}_share"] = sum(r == why for r in reasons) / n
    return out
