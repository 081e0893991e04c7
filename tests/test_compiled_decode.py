"""The compiled decode step (torch.compile, static shapes per batch bucket) equals the eager step: logits within
1e-5 in fp32 for padded, contiguous and scattered slot sets, the same cache afterwards, identical greedy tokens."""
import pytest
import torch

from nemoh import LLM, NemotronHForCausalLM, SamplingParams
from nemoh.engine.compiled_decode import buckets_for
from nemoh.engine.model_runner import ModelRunner
from nemoh.model import presets

pytestmark = pytest.mark.slow  # compiles four graphs: minutes on a loaded CPU

# fp32: the compiled graph fuses and reorders elementwise work and reads masked cache positions; 1e-5 is the
# issue's bound, ~10x above the reassociation error seen (~1e-6) and far below a wrong state or position.
TOL = 1e-5


def test_buckets():
    assert buckets_for(1) == [1] and buckets_for(4) == [1, 2, 4] and buckets_for(6) == [1, 2, 4, 6]


@pytest.fixture(scope="module")
def model():
    cfg = presets.tiny()
    return NemotronHForCausalLM.from_config(cfg, seed=1).eval()


def _state(r: ModelRunner, slots: list[int]) -> list[torch.Tensor]:
    c = r.cache
    return [c.lengths[slots]] + [t[slots] for layers in c.states.values() for t in layers.values()]


def test_compiled_step_equals_eager(model):
    eager, comp = ModelRunner(model, 4, 48), ModelRunner(model, 4, 48, compile=True)
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(3, 500, (n,), generator=g).tolist() for n in (5, 11, 3, 8)]
    for r in (eager, comp):
        r.prefill(prompts, [0, 1, 2, 3], [0, 0, 0, 0], False)
    # (running slots, free slots): padded 3 -> 4 over a contiguous run, a scattered pair, one alone, all four
    for slots, free in [([0, 1, 2], [3]), ([0, 3], [1, 2]), ([2], [0, 1, 3]), ([3, 1, 0, 2], [])]:
        for r in (eager, comp):  # free slots are empty, as in the engine
            r.cache.reset(free) if free else None
        tokens = torch.randint(3, 500, (len(slots),), generator=g).tolist()
        a, _ = eager.decode(tokens, slots, False)
        b, _ = comp.decode(tokens, slots, False, free)
        assert a.shape == b.shape and (a - b).abs().max() < TOL, slots
        for x, y in zip(_state(eager, slots), _state(comp, slots), strict=True):
            assert (x.float() - y.float()).abs().max() < TOL
        for s in free:  # padding rows leave free slots empty; then refill them for the next round
            assert int(comp.cache.lengths[s]) == 0
            for r in (eager, comp):
                r.prefill([prompts[s]], [s], [0], False)


def test_compiled_engine_greedy_tokens_identical(model):
    g = torch.Generator().manual_seed(3)
    prompts = [torch.randint(3, 500, (n,), generator=g).tolist() for n in (6, 13, 4)]
    sp = [SamplingParams(temperature=0, max_tokens=n, ignore_eos=True) for n in (18, 5, 11)]
    a = LLM(model, max_num_seqs=4, max_model_len=48).generate(prompts, sp)
    b = LLM(model, max_num_seqs=4, max_model_len=48, compile=True).generate(prompts, sp)
    for x, y in zip(a, b):
        assert x.outputs[0].token_ids == y.outputs[0].token_ids
        assert (torch.tensor(x.outputs[0].logprobs) - torch.tensor(y.outputs[0].logprobs)).abs().max() < TOL
