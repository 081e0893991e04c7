"""Decode vs full forward, packed documents, routing capture/replay, MTP, bf16."""
import pytest
import torch

from nemoh import HybridCache, NemotronHForCausalLM, get_preset
from nemoh.model.generate import greedy_generate


@pytest.fixture(scope="module")
def model():
    cfg = get_preset("tiny").replace(chunk_size=8)
    m = NemotronHForCausalLM.from_config(cfg, seed=0).eval()
    with torch.no_grad():  # make the SSM and router non-trivial
        for name, p in m.named_parameters():
            if name.endswith(("A_log", "dt_bias")):
                p.normal_()
            elif name.endswith("e_score_correction_bias"):
                p.normal_(std=0.1)
            elif p.dim() >= 2:
                p.mul_(8.0)
    return m


def test_prefill_then_decode_equals_full_forward(model):
    ids = torch.randint(0, model.config.vocab_size, (3, 29))
    with torch.no_grad():
        full = model(ids).logits
        cache = HybridCache(model.config, 3, 40)
        got = [model(ids[:, :13], cache=cache).logits]            # prefill (not a chunk multiple)
        got.append(model(ids[:, 13:20], cache=cache).logits)      # a second chunked prefill on top of the cache
        for t in range(20, 29):                                    # one-token steps
            got.append(model(ids[:, t:t + 1], cache=cache).logits)
    assert (torch.cat(got, 1) - full).abs().max().item() < 1e-4
    assert cache.lengths.tolist() == [29, 29, 29]


def test_decode_rows_at_different_lengths(model):
    """Slots of one cache hold sequences of different lengths; one decode step serves them all."""
    a, b = torch.randint(0, 300, (1, 11)), torch.randint(0, 300, (1, 5))
    with torch.no_grad():
        cache = HybridCache(model.config, 2, 32)
        model(a, cache=cache, cache_slots=torch.tensor([0]))
        model(b, cache=cache, cache_slots=torch.tensor([1]))
        nxt = torch.tensor([[7], [9]])
        step = model(nxt, cache=cache).logits[:, -1]
        ref_a = model(torch.cat([a, nxt[:1]], 1)).logits[0, -1]
        ref_b = model(torch.cat([b, nxt[1:]], 1)).logits[0, -1]
    assert (step[0] - ref_a).abs().max() < 1e-4 and (step[1] - ref_b).abs().max() < 1e-4
    cache.reset([0])
    assert cache.lengths.tolist() == [0, 6]


def test_greedy_generate_matches_argmax_of_full_forward(model):
    ids = torch.randint(0, 300, (2, 9))
    new = greedy_generate(model, ids, 6)
    seq = ids
    with torch.no_grad():
        for _ in range(6):
            seq = torch.cat([seq, model(seq).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(new, seq[:, 9:])


@pytest.mark.parametrize("lengths", [[7, 12, 10], [16, 8, 5, 3]])
def test_packed_documents_equal_separate_runs(model, lengths):
    docs = [torch.randint(0, 300, (1, n)) for n in lengths]
    cu = torch.tensor([0] + list(torch.tensor(lengths).cumsum(0)))
    with torch.no_grad():
        packed = model(torch.cat(docs, 1), cu_seqlens=cu).logits
        alone = torch.cat([model(d).logits for d in docs], 1)
        unmasked = model(torch.cat(docs, 1)).logits
    assert (packed - alone).abs().max().item() < 1e-4
    assert (unmasked - alone).abs().max().item() > 1e-2  # the test would catch a missing reset


def test_routing_capture_and_replay(model):
    ids = torch.randint(0, 300, (2, 17))
    with torch.no_grad():
        out = model(ids, return_routing=True)
        r = out.routed_experts
        assert r.shape == (2, 2, 17, 2)  # (moe layers, batch, tokens, top-k)
        assert torch.equal(model(ids, routed_experts=r).logits, out.logits)
        other = (r + 1) % model.config.n_routed_experts
        assert (model(ids, routed_experts=other).logits - out.logits).abs().max() > 1e-3
    with pytest.raises(ValueError, match="routed_experts"):
        model(ids, routed_experts=r[:, :, :5])


def test_replay_keeps_router_gradient(model):
    ids = torch.randint(0, 300, (1, 9))
    r = model(ids, return_routing=True).routed_experts
    model.zero_grad()
    model(ids, routed_experts=r).logits.square().mean().backward()
    g = model.backbone.layers[2].mixer.gate.weight.grad
    assert g is not None and g.abs().sum() > 0
    model.zero_grad()


def test_mtp_head():
    m = NemotronHForCausalLM.from_config(get_preset("tiny-latent"), seed=1)
    ids = torch.randint(0, 300, (2, 10))
    out = m(ids, return_mtp=True)
    assert out.mtp_logits.shape == (2, 9, m.config.vocab_size)
    names = {n for n, _ in m.named_parameters() if n.startswith("mtp.")}
    assert {"mtp.layers.0.eh_proj.weight", "mtp.layers.0.enorm.weight", "mtp.layers.1.final_layernorm.weight",
            "mtp.layers.1.mixer.experts.up_proj"} <= names


def test_bfloat16_keeps_ssm_and_router_fp32(model):
    m = NemotronHForCausalLM.from_config(model.config, seed=0, dtype=torch.bfloat16)
    mixer = m.backbone.layers[0].mixer
    assert mixer.A_log.dtype == mixer.D.dtype == mixer.dt_bias.dtype == torch.float32
    assert m.backbone.layers[2].mixer.gate.weight.dtype == torch.float32
    assert mixer.in_proj.weight.dtype == torch.bfloat16
    ids = torch.randint(0, 300, (2, 19))
    ref = NemotronHForCausalLM.from_config(model.config, seed=0)
    with torch.no_grad():
        lo, hi = m(ids).logits, ref(ids).logits
    assert lo.dtype == torch.float32 and torch.isfinite(lo).all()
    assert (lo - hi).abs().max() < 0.1 * hi.abs().max() + 0.05


def test_compiled_scan_matches_eager(model):
    m = NemotronHForCausalLM.from_config(model.config.replace(scan_impl="compile"), seed=0)
    m.load_state_dict(model.state_dict())
    ids = torch.randint(0, 300, (2, 24))
    with torch.no_grad():
        assert (m(ids).logits - model(ids).logits).abs().max() < 1e-4


@pytest.mark.parametrize("impl", ["padded", "loop"])
def test_expert_dispatch_implementations_agree(impl):
    from nemoh.model.moe import EXPERT_IMPLS, relu2
    E, L, Fd, n, k = 6, 8, 5, 7, 2
    x, up, down = torch.randn(n, L), torch.randn(E, Fd, L), torch.randn(E, L, Fd)
    ids = torch.stack([torch.randperm(E)[:k] for _ in range(n)])
    w = torch.rand(n, k)
    want = torch.zeros(n, L)
    for t in range(n):  # the definition, token by token
        for j in range(k):
            e = int(ids[t, j])
            want[t] += w[t, j] * (relu2(x[t] @ up[e].t()) @ down[e].t())
    assert (EXPERT_IMPLS[impl](x, ids, w, up, down) - want).abs().max() < 1e-4
