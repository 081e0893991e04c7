"""A new block kind touches one place: registering it (model/blocks.py) is enough for the config, the model, the
cache, the FLOP count and the shard specs to handle it."""
from __future__ import annotations

import pytest
import torch
from torch import Tensor, nn

from nemoh.model import HybridCache, NemotronHConfig, NemotronHForCausalLM
from nemoh.model.blocks import BlockKind, ShardSpec, block_kind, register_block_kind, unregister_block_kind
from nemoh.model.flops import flops_per_token
from nemoh.model.presets import tiny
from nemoh.parallel.specs import shard_specs


class CumSum(nn.Module):
    """A toy recurrent mixer: a running sum of a projection, carried in the cache between calls."""

    def __init__(self, c: NemotronHConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.proj = nn.Linear(c.hidden_size, c.hidden_size, bias=False)

    def forward(self, x: Tensor, ctx) -> Tensor:
        y = self.proj(x).cumsum(1)
        if ctx.cache is not None:
            state = ctx.cache.read(ctx.cache.states["sum"][self.layer_idx])
            y = y + state[:, None]
            ctx.cache.write(ctx.cache.states["sum"][self.layer_idx], y[:, -1])
        return y * 0.01


TOY = BlockKind(
    name="cumsum", char="C", hub_names=("cumsum",), mixer=CumSum,
    macs_per_token=lambda c, seq: c.hidden_size ** 2,
    cache_state=lambda c, slots, max_len, dtype, device: {"sum": torch.zeros(slots, c.hidden_size, dtype=dtype)},
    recurrent_states=("sum",),
    shard_specs=lambda m, c: {"proj.weight": ShardSpec("tp", 0, (c.hidden_size,))})


@torch.no_grad()
def test_a_registered_kind_works_everywhere():
    register_block_kind(TOY)
    try:
        c = tiny()
        c2 = NemotronHConfig.from_dict({**c.to_dict(), "hybrid_override_pattern": None,
                                        "layers_block_type": ["linear_attention", "cumsum", "full_attention"],
                                        "num_hidden_layers": 3})
        assert c2.block_types == ["mamba", "cumsum", "attention"] and c2.hybrid_override_pattern == "MC*"
        assert NemotronHConfig.from_dict(c2.to_dict()).block_types == c2.block_types      # written back by name
        torch.manual_seed(0)
        model = NemotronHForCausalLM(c2).eval()
        ids = torch.randint(0, c2.vocab_size, (1, 9))
        full = model(ids).logits
        cache = HybridCache(c2, num_slots=2, max_seq_len=16)
        assert set(cache.states) == {"k", "v", "conv", "ssm", "sum"}
        slot = torch.tensor([0])
        step = torch.cat([model(ids[:, :5], cache=cache, cache_slots=slot).logits] +
                         [model(ids[:, t:t + 1], cache=cache, cache_slots=slot).logits for t in range(5, 9)], 1)
        # the same float32 computation split into a prefill and decode steps: equal up to summation order
        torch.testing.assert_close(step, full, atol=1e-4, rtol=1e-4)
        cache.reset([0])
        assert float(cache.states["sum"][1][0].abs().sum()) == 0.0 and int(cache.lengths[0]) == 0
        base = NemotronHConfig.from_dict({**c2.to_dict(), "layers_block_type": ["linear_attention", "full_attention"],
                                          "num_hidden_layers": 2})
        assert flops_per_token(c2, 9) - flops_per_token(base, 9) == 2 * c2.hidden_size ** 2
        assert shard_specs(model)["backbone.layers.1.mixer.proj.weight"] == ShardSpec("tp", 0, (c2.hidden_size,))
    finally:
        unregister_block_kind("cumsum")
    assert "cumsum" not in NemotronHConfig.from_dict(c.to_dict()).block_types
    assert block_kind("moe").routes_experts and not block_kind("mamba").routes_experts


def test_scan_impls_is_the_registry_the_config_names():
    from nemoh.model.mamba import SCAN_IMPLS, mamba_inner

    assert SCAN_IMPLS["torch"]() is mamba_inner and SCAN_IMPLS["compile"]() is SCAN_IMPLS["compile"]()  # built once
    with pytest.raises(ValueError, match="scan_impl: unknown 'fast'; choose from torch, compile"):
        NemotronHForCausalLM(tiny().replace(scan_impl="fast"))
