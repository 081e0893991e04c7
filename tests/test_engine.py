"""The built-in engine: exact greedy decoding, training-equal logprobs, continuous batching, seeds, stops, R3."""
import pytest
import torch

from nemoh import LLM, NemotronHForCausalLM, SamplingParams
from nemoh.model.tiny import init_tiny


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("engine") / "tiny"
    init_tiny(path, seed=3)
    # sharpen the random model so that sampling and stops see peaked distributions
    model = NemotronHForCausalLM.from_pretrained(path, dtype=torch.float32)
    with torch.no_grad():
        model.lm_head.weight.mul_(40.0)
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def llm(ckpt):
    return LLM(ckpt, max_num_seqs=4, max_model_len=256)


def _train_logprobs(model, prompt, out, temperature=1.0):
    ids = torch.tensor([prompt + out])
    with torch.no_grad():
        lp = torch.log_softmax(model(ids).logits[0] / temperature, -1)
    pos = torch.arange(len(prompt) - 1, len(prompt) + len(out) - 1)
    return lp[pos, torch.tensor(out)]


def test_greedy_equals_plain_forward(llm):
    prompt = llm.tokenizer.encode("The quick brown fox")
    out = llm.generate(prompt, SamplingParams(temperature=0, max_tokens=12, ignore_eos=True))[0].outputs[0]
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(12):
            seq.append(int(llm.model(torch.tensor([seq])).logits[0, -1].argmax()))
    assert out.token_ids == seq[len(prompt):] and out.finish_reason == "length"


@pytest.mark.parametrize("temperature", [0.0, 0.7, 1.3])
def test_logprobs_equal_training_forward(llm, temperature):
    prompt = llm.tokenizer.encode("Logprobs must match")
    out = llm.generate(prompt, SamplingParams(temperature=temperature, max_tokens=10, seed=5,
                                              ignore_eos=True))[0].outputs[0]
    want = _train_logprobs(llm.model, prompt, out.token_ids, temperature or 1.0)
    assert (torch.tensor(out.logprobs) - want).abs().max() < 1e-4


def test_continuous_batching_equals_one_at_a_time(ckpt):
    prompts = [f"prompt number {i} " * (i + 1) for i in range(7)]
    params = [SamplingParams(temperature=0.9, seed=i, max_tokens=4 + 3 * i, ignore_eos=True) for i in range(7)]
    batched = LLM(ckpt, max_num_seqs=3).generate(prompts, params)      # 7 requests through 3 slots
    single = LLM(ckpt, max_num_seqs=1)
    alone = [single.generate(p, sp)[0] for p, sp in zip(prompts, params)]
    for a, b in zip(batched, alone):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        assert (torch.tensor(a.outputs[0].logprobs) - torch.tensor(b.outputs[0].logprobs)).abs().max() < 1e-4
    assert [len(o.outputs[0].token_ids) for o in batched] == [4 + 3 * i for i in range(7)]


def test_seeds_and_n_samples(llm):
    p = SamplingParams(n=3, temperature=1.0, seed=11, max_tokens=8, ignore_eos=True)
    a = llm.generate("seeded", p)[0].outputs
    b = llm.generate("seeded", p)[0].outputs
    assert [o.token_ids for o in a] == [o.token_ids for o in b] and len(a) == 3
    assert len({tuple(o.token_ids) for o in a}) > 1  # the n samples differ
    # sample i of an n-request equals a single request seeded with seed + i (shared prefill is exact)
    one = llm.generate("seeded", SamplingParams(temperature=1.0, seed=12, max_tokens=8, ignore_eos=True))[0].outputs[0]
    assert one.token_ids == a[1].token_ids


def test_stops_and_limits(llm):
    base = llm.generate("stop here", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0].outputs[0]
    tok = base.token_ids[5]
    o = llm.generate("stop here", SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[tok],
                                                 ignore_eos=True))[0].outputs[0]
    assert o.token_ids == base.token_ids[: base.token_ids.index(tok) + 1] and o.stop_reason == tok
    o = llm.generate("stop here", SamplingParams(temperature=0, max_tokens=20, stop_token_ids=[tok], min_tokens=8,
                                                 ignore_eos=True))[0].outputs[0]
    assert len(o.token_ids) >= 8 and tok not in o.token_ids[:8]
    text = base.text
    stop = text[6:9]
    if stop and stop.isprintable():
        o = llm.generate("stop here", SamplingParams(temperature=0, max_tokens=20, stop=[stop],
                                                     ignore_eos=True))[0].outputs[0]
        assert o.text == text[: text.find(stop)] and o.finish_reason == "stop" and o.stop_reason == stop
        o = llm.generate("stop here", SamplingParams(temperature=0, max_tokens=20, stop=[stop], ignore_eos=True,
                                                     include_stop_str_in_output=True))[0].outputs[0]
        assert o.text.endswith(stop)
    with pytest.raises(ValueError, match="max_tokens"):
        SamplingParams(max_tokens=-1)
    with pytest.raises(ValueError, match="prompt"):
        llm.generate(list(range(300)), SamplingParams())


def test_eos_stops_unless_ignored(ckpt):
    model = NemotronHForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    base = LLM(model, tokenizer=ckpt).generate("x", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))
    tokens = base[0].outputs[0].token_ids
    eos = tokens[4]
    model.config.eos_token_id = [eos]  # the config's EOS list drives stopping
    llm = LLM(model, tokenizer=ckpt)
    out = llm.generate("x", SamplingParams(temperature=0, max_tokens=20))[0].outputs[0]
    assert out.token_ids == tokens[: tokens.index(eos) + 1] and out.finish_reason == "stop"
    out = llm.generate("x", SamplingParams(temperature=0, max_tokens=20, ignore_eos=True))[0].outputs[0]
    assert out.token_ids == tokens and out.finish_reason == "length"


def test_reasoning_budget_closes_the_thought(llm):
    msgs = [{"role": "user", "content": "think"}]
    out = llm.generate(msgs, SamplingParams(temperature=0, max_tokens=30, max_thinking_tokens=5, ignore_eos=True,
                                            skip_special_tokens=False))[0].outputs[0]
    end = llm.tokenizer.think_end_id
    assert end in out.token_ids[:6]  # at most 5 thinking tokens, then </think>
    assert len(out.token_ids) == 30  # the answer continues within max_tokens
    off = llm.generate(msgs, SamplingParams(temperature=0, max_tokens=30, max_thinking_tokens=0, ignore_eos=True),
                       chat_template_kwargs={"enable_thinking": True})[0].outputs[0]
    assert off.token_ids[0] == end


def test_routed_experts_replay_reproduces_logprobs(llm):
    prompt = llm.tokenizer.encode("route me")
    out = llm.generate(prompt, SamplingParams(temperature=1.0, seed=3, max_tokens=9, return_routed_experts=True,
                                              ignore_eos=True))[0].outputs[0]
    r = out.routed_experts
    n = len(prompt) + len(out.token_ids)
    assert r.shape == (len(llm.model.moe_layers), n - 1, llm.model.config.num_experts_per_tok)
    full = torch.cat([r, torch.full_like(r[:, :1], -1)], 1)[:, None]      # (m, 1, n, k); last position: live
    ids = torch.tensor([prompt + out.token_ids])
    with torch.no_grad():
        own = llm.model(ids, return_routing=True)
        replay = llm.model(ids, routed_experts=full)
    assert torch.equal(own.routed_experts[:, 0, :-1], r)
    lp = torch.log_softmax(replay.logits[0], -1)[torch.arange(len(prompt) - 1, n - 1), torch.tensor(out.token_ids)]
    assert (lp - torch.tensor(out.logprobs)).abs().max() < 1e-4


def test_update_weights_in_place(ckpt):
    llm = LLM(ckpt)
    p = SamplingParams(temperature=0, max_tokens=6, ignore_eos=True)
    before = llm.generate("update", p)[0].outputs[0].token_ids
    other = NemotronHForCausalLM.from_pretrained(ckpt, dtype=torch.float32)
    with torch.no_grad():
        other.lm_head.weight.copy_(torch.randn_like(other.lm_head.weight) * 3)
    ptr = llm.model.lm_head.weight.data_ptr()
    llm.update_weights(other)
    assert llm.model.lm_head.weight.data_ptr() == ptr  # in place
    after = llm.generate("update", p)[0].outputs[0].token_ids
    fresh = LLM(other, tokenizer=ckpt).generate("update", p)[0].outputs[0].token_ids
    assert after == fresh and after != before
    with pytest.raises(ValueError, match="update_weights"):
        llm.update_weights({"lm_head.weight": torch.zeros(1)})


def test_step_profile_splits_the_step(llm):
    from nemoh.engine.profiler import PHASES, StepProfile
    llm.profile = StepProfile()
    try:
        llm.generate("profile me", SamplingParams(temperature=0, max_tokens=5, ignore_eos=True, stop=["zz"]))
        split, steps = llm.profile.split(), llm.profile.steps
    finally:
        llm.profile = None
    assert steps == 5 and all(split[p] > 0 for p in PHASES) and split["other"] >= 0
