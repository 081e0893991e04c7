"""Chunked prefill: a prompt run into the cache in chunks (Mamba conv/SSM state carried, KV appended) equals a
one-shot prefill, with chunk boundaries inside, on and across the SSD chunk size; in the engine, a long prompt is
prefilled across steps while running requests keep decoding, with the same tokens as without chunks."""
import pytest
import torch

from nemoh import LLM, NemotronHForCausalLM, SamplingParams
from nemoh.engine.model_runner import ModelRunner
from nemoh.model import presets

# fp32, 2 layers deep per kind: the chunked SSD regroups sums over the chunk; 1e-4 leaves room for that
# reassociation (observed ~1e-6) and is far below a wrong state (order 1e-1).
TOL = 1e-4


@pytest.fixture(scope="module")
def model():
    cfg = presets.tiny()  # chunk_size 16
    return NemotronHForCausalLM.from_config(cfg, seed=0).eval()


def _states(runner: ModelRunner, slot: int) -> list[torch.Tensor]:
    c, n = runner.cache, int(runner.cache.lengths[slot])
    return ([c.states[s][i][slot, :, :n] for s in ("k", "v") for i in c.states[s]]
            + [c.states[s][i][slot] for s in ("conv", "ssm") for i in c.states[s]])


@pytest.mark.parametrize("chunk", [5, 16, 17, 32, 40])  # inside / on / across / twice / not dividing the SSD chunk
def test_chunks_equal_one_shot(model, chunk):
    assert model.config.chunk_size == 16
    g = torch.Generator().manual_seed(chunk)
    prompt = torch.randint(3, model.config.vocab_size, (77,), generator=g).tolist()
    one = ModelRunner(model, 2, 128)
    want, _ = one.prefill([prompt], [0], [0], False)
    many = ModelRunner(model, 2, 128)
    many.prefill([[7, 8, 9]], [0], [0], False)  # stale state in the slot: a fresh prompt must reset it
    for a in range(0, len(prompt), chunk):
        got, _ = many.prefill([prompt[a:a + chunk]], [0], [a], False)
    assert (got - want).abs().max() < TOL
    for x, y in zip(_states(many, 0), _states(one, 0), strict=True):
        assert x.shape == y.shape and (x.float() - y.float()).abs().max() < TOL
    # the next decode step agrees too
    a, _ = one.decode([5], [0], False)
    b, _ = many.decode([5], [0], False)
    assert (a - b).abs().max() < TOL


def test_ragged_chunks_near_the_cache_end(model):
    """Rows at different offsets in one right-padded batch; one row's padding would run past the cache's end."""
    g = torch.Generator().manual_seed(1)
    long = torch.randint(3, model.config.vocab_size, (60,), generator=g).tolist()
    short = torch.randint(3, model.config.vocab_size, (30,), generator=g).tolist()
    ref = ModelRunner(model, 2, 64)
    want_long, _ = ref.prefill([long], [0], [0], False)
    want_short, _ = ref.prefill([short], [1], [0], False)
    r = ModelRunner(model, 2, 64)
    r.prefill([long[:58]], [0], [0], False)
    got, _ = r.prefill([long[58:], short], [0, 1], [58, 0], False)   # row 0: 2 tokens at 58 (+28 padding > 64)
    assert (got[0] - want_long[0]).abs().max() < TOL and (got[1] - want_short[0]).abs().max() < TOL
    for x, y in zip(_states(r, 0) + _states(r, 1), _states(ref, 0) + _states(ref, 1), strict=True):
        assert (x.float() - y.float()).abs().max() < TOL


def test_engine_interleaves_and_matches_unchunked(model):
    g = torch.Generator().manual_seed(2)
    V = model.config.vocab_size
    prompts = [torch.randint(3, V, (n,), generator=g).tolist() for n in (90, 7, 41)]
    sp = [SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
          SamplingParams(temperature=0, max_tokens=12, ignore_eos=True),
          SamplingParams(n=2, temperature=0.8, seed=4, max_tokens=12, ignore_eos=True, return_routed_experts=True)]
    whole = LLM(model, max_num_seqs=4, max_model_len=128, max_prefill_tokens=None).generate(prompts, sp)
    llm = LLM(model, max_num_seqs=4, max_model_len=128, max_prefill_tokens=16)
    chunked = llm.generate(prompts, sp)
    for a, b in zip(whole, chunked):
        for x, y in zip(a.outputs, b.outputs, strict=True):
            assert x.token_ids == y.token_ids
            assert (torch.tensor(x.logprobs) - torch.tensor(y.logprobs)).abs().max() < TOL
            if x.routed_experts is not None:
                assert torch.equal(x.routed_experts, y.routed_experts)
    # a running request keeps decoding, one token per step, while a long prompt is prefilled 16 tokens a step
    llm.add_request(prompts[1], sp[1], request_id="short")
    llm.step()
    llm.add_request(prompts[0], sp[0], request_id="long")
    seen = {"long": 0, "short": 0}
    while seen["long"] == 0:
        for ev in llm.step():
            seen[ev.seq.request_id] += 1
    assert seen["short"] == -(-90 // 16)  # one per step, through every chunk of the long prompt
    with pytest.raises(ValueError, match="max_prefill_tokens"):
        LLM(model, max_prefill_tokens=0)


def test_cli_max_prefill_tokens(tmp_path):
    import subprocess
    import sys

    from nemoh.cli.model_cmds import init_tiny
    init_tiny(tmp_path / "tiny", seed=0)
    prompt = "a prompt longer than four tokens"
    want = LLM(tmp_path / "tiny", max_prefill_tokens=None).generate(
        prompt, SamplingParams(temperature=0, max_tokens=6))[0].outputs[0].text

    def run(*extra):
        return subprocess.run([sys.executable, "-m", "nemoh.cli.main", "generate", str(tmp_path / "tiny"), prompt,
                               "--max-tokens", "6", *extra], capture_output=True, text=True, timeout=300, check=False)
    r = run("--max-prefill-tokens", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(want + "\n")
    bad = run("--max-prefill-tokens", "0")
    assert bad.returncode != 0 and "max_prefill_tokens" in bad.stderr + bad.stdout and "Traceback" not in bad.stderr
