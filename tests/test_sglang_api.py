"""`nemoh serve` speaking SGLang's native protocol: a live subprocess on 127.0.0.1 driven with httpx, compared with
the in-process engine on the same checkpoint."""
import base64
import time

import httpx
import net
import numpy as np
import pytest
import torch
from net import free_port

from nemoh import LLM, NemotronHForCausalLM, SamplingParams
from nemoh.cli.model_cmds import init_tiny
from nemoh.engine.scoring import sequence_logprobs


def start_server(path, port, *extra):
    """A server with this file's engine limits (test_rollout_sglang starts its servers through this too)."""
    return net.start_server(path, "--max-model-len", "256", "--max-num-seqs", "8", *extra, port=port)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return init_tiny(tmp_path_factory.mktemp("sgl") / "tiny", seed=0)


@pytest.fixture(scope="module")
def server(ckpt):
    proc, base = start_server(ckpt, free_port())
    yield base
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture(scope="module")
def llm(ckpt):
    return LLM(ckpt, max_model_len=256)


PROMPT = [5, 17, 42, 99, 7, 3]


def gen(base, **body):
    r = httpx.post(base + "/generate", json={"input_ids": PROMPT, **body}, timeout=120)
    return r.status_code, r.json()


def test_generate_matches_the_engine_token_for_token(server, llm):
    code, out = gen(server, sampling_params={"max_new_tokens": 12, "temperature": 1.0, "sampling_seed": 3,
                                             "ignore_eos": True},
                    return_logprob=True, return_routed_experts=True, logprob_start_len=0)
    assert code == 200, out
    ref = llm.generate(PROMPT, SamplingParams(max_tokens=12, seed=3, ignore_eos=True,
                                              return_routed_experts=True))[0].outputs[0]
    meta = out["meta_info"]
    assert out["output_ids"] == ref.token_ids
    assert meta["finish_reason"] == {"type": "length", "length": 12}
    assert meta["prompt_tokens"] == len(PROMPT) and meta["completion_tokens"] == 12
    # [logprob, token_id, text]: SGLang's triples; text is null unless return_text_in_logprobs
    assert [row[1] for row in meta["output_token_logprobs"]] == ref.token_ids
    assert all(row[2] is None for row in meta["output_token_logprobs"])
    # same fp32 model and kernels on both sides, only the batch composition differs: float32 rounding
    assert np.allclose([row[0] for row in meta["output_token_logprobs"]], ref.logprobs, atol=1e-5)
    # input log-probs: first token null, then log p(ids[t] | ids[:t])
    model = llm.model
    inp = meta["input_token_logprobs"]
    assert inp[0][0] is None and [r[1] for r in inp] == PROMPT
    assert np.allclose([r[0] for r in inp[1:]], sequence_logprobs(model, PROMPT), atol=1e-5)
    # routed experts: int32 over all layers, MoE rows = the engine's choice, other rows zero
    cfg = model.config
    T = len(PROMPT) + 12 - 1
    arr = np.frombuffer(base64.b64decode(meta["routed_experts"]), dtype=np.int32).reshape(
        T, cfg.num_hidden_layers, cfg.num_experts_per_tok)
    moe = model.moe_layers
    assert np.array_equal(arr[:, moe, :].transpose(1, 0, 2), ref.routed_experts.numpy())
    others = [i for i in range(cfg.num_hidden_layers) if i not in moe]
    assert not arr[:, others, :].any()
    assert meta["weight_version"] == "default"


def test_routed_experts_start_len_and_n(server):
    code, out = gen(server, sampling_params={"max_new_tokens": 4, "n": 2, "sampling_seed": 1, "ignore_eos": True},
                    return_routed_experts=True, routed_experts_start_len=4)
    assert code == 200 and isinstance(out, list) and len(out) == 2
    n_bytes = len(base64.b64decode(out[0]["meta_info"]["routed_experts"]))
    assert n_bytes % 4 == 0 and n_bytes // 4 % (len(PROMPT) + 4 - 1 - 4) == 0


def test_greedy_and_eos_finish_reason(server, llm):
    code, out = gen(server, sampling_params={"max_new_tokens": 40, "temperature": 0})
    ref = llm.generate(PROMPT, SamplingParams(max_tokens=40, temperature=0))[0].outputs[0]
    assert code == 200 and out["output_ids"] == ref.token_ids and out["text"] == ref.text


@pytest.mark.parametrize("body, field", [
    ({"input_ids": PROMPT, "sampling_params": {"max_new_tokens": 0}}, "sampling_params.max_new_tokens"),
    ({"input_ids": PROMPT, "sampling_params": {"temprature": 1.0}}, "sampling_params.temprature"),
    ({"input_ids": PROMPT, "sampling_params": {"repetition_penalty": 1.3}}, "sampling_params.repetition_penalty"),
    ({"input_ids": [1, 10**9]}, "input_ids"),
    ({"input_ids": []}, "input_ids"),
    ({"input_ids": "12"}, "input_ids"),
    ({"input_ids": PROMPT, "stream": True}, "stream"),
    ({"input_ids": PROMPT, "return_routed_experts": True, "routed_experts_start_len": 99},
     "routed_experts_start_len"),
    ({"sampling_params": {}}, "input_ids"),
    ({"input_ids": PROMPT, "bogus": 1}, "bogus"),
])
def test_bad_requests_name_the_field(server, body, field):
    r = httpx.post(server + "/generate", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert r.json()["error"]["message"].startswith(field), r.json()


def test_weight_reload_from_disk(server, ckpt, tmp_path):
    other = init_tiny(tmp_path / "other", seed=7)
    before = gen(server, sampling_params={"max_new_tokens": 6, "temperature": 0}, return_logprob=True)[1]
    r = httpx.post(server + "/update_weights_from_disk", json={"model_path": str(other), "weight_version": "7"},
                   timeout=60)
    assert r.status_code == 200 and r.json()["success"] is True
    after = gen(server, sampling_params={"max_new_tokens": 6, "temperature": 0}, return_logprob=True,
                logprob_start_len=0)[1]
    model = NemotronHForCausalLM.from_pretrained(other, dtype=torch.float32)
    assert np.allclose([r[0] for r in after["meta_info"]["input_token_logprobs"][1:]],
                       sequence_logprobs(model, PROMPT), atol=1e-5)
    assert after["meta_info"]["weight_version"] == "7"
    assert httpx.get(server + "/get_model_info").json()["weight_version"] == "7"
    assert [r[0] for r in before["meta_info"]["output_token_logprobs"]] != \
        [r[0] for r in after["meta_info"]["output_token_logprobs"]]
    bad = httpx.post(server + "/update_weights_from_disk", json={"model_path": str(tmp_path / "nope")}, timeout=30)
    assert bad.status_code == 400 and bad.json()["success"] is False and "nope" in bad.json()["message"]
    assert httpx.post(server + "/update_weights_from_disk", json={"model_path": str(ckpt), "weight_version": "0"},
                      timeout=60).json()["success"]


def test_pause_continue_and_abort(server):
    with httpx.Client(base_url=server, timeout=60) as c:
        assert c.post("/pause_generation", json={"mode": "in_place"}).status_code == 200
        from concurrent.futures import ThreadPoolExecutor
        with ThreadPoolExecutor(1) as pool:
            fut = pool.submit(gen, server, sampling_params={"max_new_tokens": 3, "ignore_eos": True})
            time.sleep(0.5)
            assert not fut.done()              # paused: the request waits
            assert c.post("/continue_generation", json={}).status_code == 200
            assert fut.result()[1]["meta_info"]["finish_reason"]["type"] == "length"
            c.post("/pause_generation", json={"mode": "in_place"})
            fut = pool.submit(gen, server, sampling_params={"max_new_tokens": 200, "ignore_eos": True})
            time.sleep(0.5)                    # queued behind the pause; abort ends it with what it has (nothing)
            assert c.post("/pause_generation", json={"mode": "abort"}).status_code == 200
            out = fut.result()[1]
            c.post("/continue_generation", json={})
        assert out["meta_info"]["finish_reason"]["type"] == "abort" and out["output_ids"] == []
        assert c.post("/pause_generation", json={"mode": "sideways"}).status_code == 400
        assert c.post("/flush_cache").status_code == 200
        info = c.get("/get_model_info").json()
        assert info["is_generation"] is True and info["num_hidden_layers"] > 0
