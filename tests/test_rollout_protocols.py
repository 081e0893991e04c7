"""The SGLang and vLLM rollout clients against those servers' replies as they write them (not as `nemoh serve`
does), from a stand-in server on 127.0.0.1. SGLang: bodies shaped after sglang/srt/managers/tokenizer_manager.py
(`meta_info`: `output_token_logprobs` as [logprob, token_id, text] rows, `finish_reason` as FINISH_LENGTH /
FINISH_MATCHED_TOKEN's `to_json()` dicts, `routed_experts` as base64 of raw int32 over (prompt + output - 1,
num_hidden_layers, top_k), rows of non-MoE layers padding) and http_server.py's `/update_weights_from_disk` reply.
vLLM: `/v1/completions` choices as vllm/entrypoints/openai's CompletionResponseChoice writes them (`token_ids`,
`logprobs.token_logprobs`, `routed_experts` as base64 `.npy`, uint8 up to 256 experts, uint16 above) and the
dev-mode `/reload_weights` reply. Each damaged reply must be an error that names the server, never a silent zero
reward."""
from __future__ import annotations

import base64
import io
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import torch
from net import free_port, send_json

from nemoh.rl.backends import BackendContext, build_backend
from nemoh.rl.backends.sglang import ServerReplyError
from nemoh.rl.config import RLConfig
from nemoh.rl.trainer import RLTrainer
from nemoh.train.config import load_config


class StandIn(BaseHTTPRequestHandler):
    reply: dict = {}

    def do_POST(self):  # noqa: N802 (http.server's name)
        self.rfile.read(int(self.headers["Content-Length"]))
        body = {"/update_weights_from_disk": {"success": True, "message": "Succeeded to update model weights."},
                "/reload_weights": {"status": "ok", "weights_path": "..."}}.get(self.path, type(self).reply)
        send_json(self, body)

    def log_message(self, *args):
        pass


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    port = free_port()
    httpd = ThreadingHTTPServer(("127.0.0.1", port), StandIn)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{port}"
    cfg = load_config(None, ["--checkpoint.dir", str(tmp_path_factory.mktemp("r")), "--rollout.backend", "sglang",
                             "--rollout.urls", json.dumps([url]), "--rollout.probe_tolerance", "0",
                             "--algo.use_rollout_routing_replay", "true"], cls=RLConfig)
    trainer = RLTrainer(cfg, show_progress=False)
    ctx = BackendContext(cfg, trainer.reward, trainer.tok, trainer.chat_kwargs, trainer.model)
    backends = {name: build_backend(name, ctx) for name in ("sglang", "vllm")}
    yield backends, url, trainer.model.config
    for b in backends.values():
        b.close()
    httpd.shutdown()


def _reply(prompt_len: int, out: list[int], layers: int, k: int, finish: dict) -> dict:
    routed = np.arange((prompt_len + len(out) - 1) * layers * k, dtype="<i4") % 7
    return {"text": "ab", "output_ids": out,
            "meta_info": {"id": "0f3c", "finish_reason": finish, "prompt_tokens": prompt_len,
                          "completion_tokens": len(out), "cached_tokens": 0, "weight_version": "0",
                          "output_token_logprobs": [[-0.25 * (i + 1), t, None] for i, t in enumerate(out)],
                          "routed_experts": base64.b64encode(routed.tobytes()).decode(), "e2e_latency": 0.1}}


def test_the_client_reads_sglangs_reply(setup):
    backends, url, c = setup
    backend = backends["sglang"]
    ids, out, k = [1, 72, 101], [104, 105, 2], c.num_experts_per_tok
    StandIn.reply = _reply(len(ids), out, c.num_hidden_layers, k, {"type": "length", "length": 3})
    tokens, logps, finish, routed = backend._sample(ids, seed=0, j=0)
    assert tokens == out and logps == [-0.25, -0.5, -0.75] and finish == "length"
    full = (np.arange((len(ids) + len(out) - 1) * c.num_hidden_layers * k) % 7).reshape(-1, c.num_hidden_layers, k)
    want = torch.from_numpy(full[:, backend.moe_layers]).permute(1, 0, 2)      # (MoE layers, positions, k)
    assert routed is not None and torch.equal(routed, want.long())
    StandIn.reply = _reply(len(ids), out, c.num_hidden_layers, k, {"type": "stop", "matched": 2})
    assert backend._sample(ids, seed=0, j=0)[2] == "stop"


@pytest.mark.parametrize("damage", ["no meta_info", "truncated routed_experts", "logprobs short", "ids not ints"])
def test_a_damaged_reply_is_an_error_naming_the_server(setup, damage):
    backends, url, c = setup
    backend = backends["sglang"]
    ids, out = [1, 72, 101], [104, 105, 2]
    r = _reply(len(ids), out, c.num_hidden_layers, c.num_experts_per_tok, {"type": "length", "length": 3})
    if damage == "no meta_info":
        del r["meta_info"]
    elif damage == "truncated routed_experts":
        raw = base64.b64decode(r["meta_info"]["routed_experts"])
        r["meta_info"]["routed_experts"] = base64.b64encode(raw[:-8]).decode()
    elif damage == "logprobs short":
        r["meta_info"]["output_token_logprobs"].pop()
    else:
        r["output_ids"] = ["h", "i"]
    StandIn.reply = r
    with pytest.raises(ServerReplyError, match=url):
        backend._sample(ids, seed=0, j=0)


def _npy(arr: np.ndarray) -> str:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode()


def _vllm_reply(out: list[int], routed: np.ndarray | None, finish: str = "length") -> dict:
    choice = {"index": 0, "text": "ab", "finish_reason": finish, "stop_reason": None, "token_ids": out,
              "prompt_token_ids": None, "prompt_logprobs": None,
              "logprobs": {"text_offset": [0, 1, 2][: len(out)], "tokens": ["a", "b", "c"][: len(out)],
                           "token_logprobs": [-0.5 * (i + 1) for i in range(len(out))],
                           "top_logprobs": [None] * len(out)},
              "routed_experts": None if routed is None else _npy(routed)}
    return {"id": "cmpl-1", "object": "text_completion", "created": 0, "model": "m", "choices": [choice],
            "usage": {"prompt_tokens": 3, "completion_tokens": len(out), "total_tokens": 3 + len(out)}}


@pytest.mark.parametrize("dtype,all_layers", [("uint8", True), ("uint16", False)])
def test_the_client_reads_vllms_reply(setup, dtype, all_layers):
    backends, url, c = setup
    backend = backends["vllm"]
    ids, out, k = [1, 72, 101], [104, 105, 2], c.num_experts_per_tok
    layers = c.num_hidden_layers if all_layers else len(backend.moe_layers)
    routed = (np.arange((len(ids) + len(out) - 1) * layers * k) % 5).reshape(-1, layers, k).astype(dtype)
    if dtype == "uint16":
        routed = routed + 300                       # > 256 experts (Super has 512): ids above uint8
    StandIn.reply = _vllm_reply(out, routed)
    tokens, logps, finish, got = backend._sample(ids, seed=0, j=0)
    assert tokens == out and logps == [-0.5, -1.0, -1.5] and finish == "length"
    want = torch.from_numpy((routed[:, backend.moe_layers] if all_layers else routed).astype(np.int64))
    assert got is not None and torch.equal(got, want.permute(1, 0, 2))
    StandIn.reply = _vllm_reply(out, routed, finish="stop")
    assert backend._sample(ids, seed=0, j=0)[2] == "stop"


@pytest.mark.parametrize("damage", ["no choices", "no token_ids", "routed rows short", "logprobs short"])
def test_a_damaged_vllm_reply_is_an_error_naming_the_server(setup, damage):
    backends, url, c = setup
    ids, out, k = [1, 72, 101], [104, 105, 2], c.num_experts_per_tok
    routed = np.zeros((len(ids) + len(out) - 1, c.num_hidden_layers, k), dtype="uint8")
    r = _vllm_reply(out, routed[:-1] if damage == "routed rows short" else routed)
    if damage == "no choices":
        r["choices"] = []
    elif damage == "no token_ids":
        r["choices"][0]["token_ids"] = None
    elif damage == "logprobs short":
        r["choices"][0]["logprobs"]["token_logprobs"].pop()
    StandIn.reply = r
    with pytest.raises(ServerReplyError, match=url):
        backends["vllm"]._sample(ids, seed=0, j=0)
