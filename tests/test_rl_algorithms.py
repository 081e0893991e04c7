"""Each RL formula against a hand computation."""
import math

import pytest
import torch

from nemoh.rl.algorithms import (
    ADVANTAGES,
    AGGREGATIONS,
    KL_ESTIMATORS,
    policy_loss,
    ratio_sequence,
    ratio_token,
    tis_weights,
)
from nemoh.rl.config import RLConfig, translate_miles_flags
from nemoh.rl.rewards import RewardFn, dapo_reward, exact_match, math_reward
from nemoh.train.config import load_config


def test_grpo_and_dr_grpo_advantages():
    r = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
    a = ADVANTAGES["grpo"](r, 4)
    std = torch.tensor([1.0, 0, 0, 1]).std()  # unbiased, as torch.std
    assert torch.allclose(a[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]) / (std + 1e-6))
    assert torch.equal(a[4:], torch.zeros(4))  # a group whose rewards agree carries no signal
    assert torch.allclose(ADVANTAGES["grpo"](r, 4, normalize_std=False)[:4], torch.tensor([0.5, -0.5, -0.5, 0.5]))


def test_reinforce_plus_plus_variants():
    r = torch.tensor([1.0, 0.0, 3.0, 1.0])
    assert torch.allclose(ADVANTAGES["reinforce_plus_plus"](r, 2), (r - 1.25) / (r.std() + 1e-6))
    base = torch.tensor([0.5, -0.5, 1.0, -1.0])
    assert torch.allclose(ADVANTAGES["reinforce_plus_plus_baseline"](r, 2), (base - base.mean()) / (base.std() + 1e-6))


def test_kl_estimators():
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    assert torch.allclose(KL_ESTIMATORS["k1"](logp, ref), torch.tensor([0.5, -1.0]))
    assert torch.allclose(KL_ESTIMATORS["k2"](logp, ref), torch.tensor([0.125, 0.5]))
    want = torch.tensor([math.exp(-0.5) + 0.5 - 1, math.exp(1.0) - 1.0 - 1])
    assert torch.allclose(KL_ESTIMATORS["low_var_kl"](logp, ref), want)
    assert torch.equal(KL_ESTIMATORS["k3"](logp, logp), torch.zeros(2))


def test_clip_higher_and_dual_clip():
    ratio = torch.tensor([[0.5, 1.0, 1.3, 5.0]])
    pos, clipped = policy_loss(ratio, torch.tensor([[1.0]]), 0.2, 0.28)
    assert torch.allclose(pos, torch.tensor([[-0.5, -1.0, -1.28, -1.28]]))
    assert clipped.tolist() == [[False, False, True, True]]
    neg, _ = policy_loss(ratio, torch.tensor([[-1.0]]), 0.2, 0.28)
    assert torch.allclose(neg, torch.tensor([[0.8, 1.0, 1.3, 5.0]]))
    dual, _ = policy_loss(ratio, torch.tensor([[-1.0]]), 0.2, 0.28, eps_clip_c=3.0)
    assert torch.allclose(dual, torch.tensor([[0.8, 1.0, 1.3, 3.0]]))


def test_token_and_sequence_ratios():
    logp = torch.tensor([[-1.0, -2.0, 0.0]], requires_grad=True)
    old = torch.tensor([[-1.5, -1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    assert torch.allclose(ratio_token(logp, old, mask), torch.exp(logp - old))
    seq = ratio_sequence(logp, old, mask)
    assert torch.allclose(seq[0, :2], torch.full((2,), math.exp((0.5 - 1.0) / 2)))
    seq[0, :2].sum().backward()  # the gradient reaches every token (GSPO-token form)
    assert torch.allclose(logp.grad[0, :2], torch.full((2,), math.exp(-0.25)))


def test_loss_aggregations():
    x = torch.tensor([[1.0, 2.0, 0.0], [3.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert AGGREGATIONS["token-mean"](x, mask, 3.0, 2, 3) == pytest.approx(2.0)
    assert AGGREGATIONS["sequence-mean"](x, mask, 3.0, 2, 3) == pytest.approx((1.5 + 3.0) / 2)
    assert AGGREGATIONS["constant-normaliser"](x, mask, 3.0, 2, 3) == pytest.approx(6.0 / 6)


def test_tis_weights_are_capped():
    w, capped = tis_weights(torch.tensor([0.0, 0.0]), torch.tensor([-0.1, -2.0]), cap=2.0)
    assert torch.allclose(w, torch.tensor([math.exp(0.1), 2.0])) and capped.tolist() == [False, True]


def test_rewards():
    assert math_reward("<think>\\boxed{3}</think> so \\boxed{\\frac{1}{2}}", "0.5") == 1.0
    assert math_reward("\\boxed{2}</think> no box after thinking", "2") == 0.0
    assert dapo_reward("\\boxed{7}", "8") == -1.0 and dapo_reward("\\boxed{8}", "8") == 1.0
    assert exact_match(" 42 ", 42) == 1.0


def _raises(response, label):
    raise RuntimeError("grader crashed")


async def _async_group(responses, label):
    return [float(r == str(label)) for r in responses]


def test_user_rewards_sync_async_and_failing():
    assert RewardFn(f"{__name__}:_async_group")(["3", "4"], 3) == [1.0, 0.0]
    bad = RewardFn(f"{__name__}:_raises")
    assert bad(["a", "b"], 1) == [0.0, 0.0] and bad.failures == 2
    with pytest.raises(ValueError, match="reward.function"):
        RewardFn("no_such_reward")


def test_batch_size_rule_and_miles_flags():
    with pytest.raises(ValueError, match="batch sizes"):
        load_config(None, ["--rollout.rollout_batch_size", "3"], cls=RLConfig)
    flags = translate_miles_flags(["--eps-clip-high", "0.28", "--kl-loss-type", "low_var_kl", "--use-tis",
                                   "--n-samples-per-prompt", "4", "--global-batch-size", "32"])
    cfg = load_config(None, flags, cls=RLConfig)
    assert (cfg.algo.eps_clip_high, cfg.algo.kl_loss_type, cfg.algo.use_tis) == (0.28, "low_var_kl", True)
    with pytest.raises(ValueError, match="kl_loss_type"):
        load_config(None, ["--algo.kl_loss_type", "k9"], cls=RLConfig)


def test_reasoning_boundary_survives_skipped_special_tokens(tmp_path):
    """`CompletionOutput.text` skips special tokens and `</think>` is one: the reward text finds the boundary by id."""
    from nemoh.cli.model_cmds import init_tiny
    from nemoh.rl.rewards import number_match, reward_text
    from nemoh.tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(init_tiny(tmp_path / "tiny"))
    ids = tok.encode("<think>\nmaybe 12, no: 5+2\n</think>\n7<|im_end|>")
    assert "</think>" not in tok.decode(ids)                      # what the engine's text holds
    assert number_match(tok.decode(ids), 7) == 0.0                 # so the old reward saw no answer part
    text = reward_text(ids, tok.decode, tok.think_end_id)
    assert text.endswith("</think>\n7") and number_match(text, 7) == 1.0
    assert reward_text(ids[:5], tok.decode, tok.think_end_id) == tok.decode(ids[:5])  # no boundary: plain decode
