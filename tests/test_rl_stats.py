"""The learning diagnostics (nemoh.rl.stats) against hand computations."""
import torch

from nemoh.rl.stats import (
    advantage_stats,
    clip_fractions,
    effective_tokens,
    flat_group_reason,
    sampling_stats,
)


def test_advantage_stats_counts_the_samples_with_signal():
    adv = torch.tensor([0.0, 0.0, 1.5, -0.5])
    s = advantage_stats(adv)
    assert s["adv_nonzero_share"] == 0.5 and s["adv_abs_max"] == 1.5 and abs(s["adv_abs_mean"] - 0.5) < 1e-7


def test_effective_tokens_leave_out_zero_advantage_samples():
    s = effective_tokens([2, 3, 5, 10], [0.0, 1.0, -1.0, 0.0], steps=2)
    assert s["effective_tokens_per_update"] == 4.0 and s["effective_token_share"] == 0.4  # (3 + 5) / 2, 8 / 20


def test_clip_fractions_by_side():
    ratio = torch.tensor([[0.5, 1.0, 1.5, 0.7], [1.5, 0.5, 1.0, 1.0]])
    adv = torch.tensor([[-1.0], [1.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 1.0, 1.0, 1.0]])
    s = clip_fractions(ratio, adv, mask, 0.2, 0.28)
    # low: row 0 token 0 (0.5 < 0.8 with A < 0; token 3 is padding); high: row 1 token 0 (1.5 > 1.28 with A > 0)
    # float32 division: equal to 1/7 within float32 rounding
    assert abs(s["pg_clipfrac_low"] - 1 / 7) < 1e-7 and abs(s["pg_clipfrac_high"] - 1 / 7) < 1e-7


def test_flat_groups_are_classified():
    assert flat_group_reason([1.0, 0.0]) is None
    assert flat_group_reason([1.0, 1.0]) == "all_correct"
    assert flat_group_reason([0.0, 0.0]) == "all_wrong" and flat_group_reason([-1.0, -1.0]) == "all_wrong"
    assert flat_group_reason([0.5, 0.5]) == "all_equal_partial"
    s = sampling_stats([[1, 1], [0, 0], [0, 1], [0.5, 0.5]], [[0, 1], [1, 1]])
    assert s["zero_signal_share"] == 0.75 and s["flat_all_correct_share"] == 0.25
    assert s["flat_all_wrong_share"] == 0.25 and s["flat_all_equal_partial_share"] == 0.25
    assert s["batch_zero_signal_share"] == 0.5 and s["groups_sampled"] == 4
