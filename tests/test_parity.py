"""nemoh vs transformers' NemotronHForCausalLM on random tiny configs: logits within 1e-4 (float32), both ways."""

import pytest
import torch
from reference import save_reference

from nemoh import NemotronHForCausalLM

CASES = {
    # name: (pattern, overrides)
    "all-blocks": ("M*-E", {}),
    "groups": ("ME*M-E", {"n_group": 4, "topk_group": 2, "num_experts_per_tok": 3}),
    "latent": ("MEM*E-", {"moe_latent_size": 16}),
    "no-norm-topk": ("E*ME", {"norm_topk_prob": False, "routed_scaling_factor": 1.0}),
    "legacy-pattern-chunk16": ("M-M*", {"chunk_size": 16}),
}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("seq_len", [8, 21])  # a multiple of chunk_size=8 and not
def test_logits_match_reference(tmp_path, case, seq_len):
    pattern, overrides = CASES[case]
    ref = save_reference(tmp_path / "ref", pattern, **overrides)
    # transformers clamps dt >= time_step_min in its chunked prefill; reproduce that exactly
    ours = NemotronHForCausalLM.from_pretrained(tmp_path / "ref", dtype=torch.float32, mamba_dt_clamp=True)
    ids = torch.randint(0, ref.config.vocab_size, (3, seq_len))
    with torch.no_grad():
        want = ref(ids).logits
        got = ours(ids).logits
    assert got.shape == want.shape == (3, seq_len, ref.config.vocab_size)
    assert (got - want).abs().max().item() < 1e-4

    # and the way back: nemoh's save_pretrained read by the reference
    ours.save_pretrained(tmp_path / "ours", max_shard_size="20KB")
    assert (tmp_path / "ours" / "model.safetensors.index.json").exists()
    from transformers import NemotronHForCausalLM as RefModel

    back = RefModel.from_pretrained(tmp_path / "ours", dtype=torch.float32).eval()
    with torch.no_grad():
        assert (back(ids).logits - want).abs().max().item() < 1e-5


def test_dt_clamp_option(tmp_path):
    """Default (no clamp) follows vLLM/NVIDIA; `mamba_dt_clamp=True` reproduces transformers' prefill clamp."""
    ref = save_reference(tmp_path / "ref", "M*", time_step_min=0.5)  # a clamp that bites
    ids = torch.randint(0, 96, (2, 13))
    with torch.no_grad():
        want = ref(ids).logits
        plain = NemotronHForCausalLM.from_pretrained(tmp_path / "ref", dtype=torch.float32)(ids).logits
        clamped = NemotronHForCausalLM.from_pretrained(tmp_path / "ref", dtype=torch.float32, mamba_dt_clamp=True)(
            ids
        ).logits
    assert (clamped - want).abs().max().item() < 1e-4
    assert (plain - want).abs().max().item() > 1e-3
