"""The SGLang rollout client against SGLang's reply as SGLang writes it (not as `nemoh serve` does): a stand-in
server on 127.0.0.1 answers with bodies shaped after sglang/srt/managers/tokenizer_manager.py (`meta_info`:
`output_token_logprobs` as [logprob, token_id, text] rows, `finish_reason` as FINISH_LENGTH/FINISH_MATCHED_TOKEN's
`to_json()` dicts, `routed_experts` as base64 of raw int32 over (prompt + output - 1, num_hidden_layers, top_k),
rows of non-MoE layers padding) and http_server.py's `/update_weights_from_disk` reply. Each damaged reply must be
an error that names the server, never a silent zero reward."""
from __future__ import annotations

import base64
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
        body = {"success": True, "message": "Succeeded to update model weights."} \
            if self.path == "/update_weights_from_disk" else type(self).reply
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
    backend = build_backend("sglang", BackendContext(cfg, trainer.reward, trainer.tok, trainer.chat_kwargs,
                                                     trainer.model))
    yield backend, url, trainer.model.config
    backend.close()
    httpd.shutdown()


def _reply(prompt_len: int, out: list[int], layers: int, k: int, finish: dict) -> dict:
    routed = np.arange((prompt_len + len(out) - 1) * layers * k, dtype="<i4") % 7
    return {"text": "ab", "output_ids": out,
            "meta_info": {"id": "0f3c", "finish_reason": finish, "prompt_tokens": prompt_len,
                          "completion_tokens": len(out), "cached_tokens": 0, "weight_version": "0",
                          "output_token_logprobs": [[-0.25 * (i + 1), t, None] for i, t in enumerate(out)],
                          "routed_experts": base64.b64encode(routed.tobytes()).decode(), "e2e_latency": 0.1}}


def test_the_client_reads_sglangs_reply(setup):
    backend, url, c = setup
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
    backend, url, c = setup
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
