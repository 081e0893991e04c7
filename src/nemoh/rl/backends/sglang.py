"""Rollouts on SGLang servers through SGLang's native API (`[rollout] backend = "sglang"`, `urls = [...]`).

Token ids in, token ids out: each sample is one `POST /generate` with the prompt's `input_ids`, its own
`sampling_seed`, `return_logprob` and, with R3, `return_routed_experts` (base64 int32 over all layers; the MoE
layers are picked out). Weights are reloaded with `POST /update_weights_from_disk`. The pool, retries and
accounting are `http.HttpRolloutBackend`'s. `nemoh serve` speaks the same protocol (nemoh/serve/sglang_api.py),
which is how this is tested on a CPU.
"""
from __future__ import annotations

import base64
import math
from pathlib import Path

import httpx
import numpy as np
import torch

from .base import register_backend
from .http import HttpRolloutBackend, SampleReply, ServerReplyError

__all__ = ["SGLangBackend", "ServerReplyError"]


@register_backend("sglang")
class SGLangBackend(HttpRolloutBackend):
    def _sample(self, ids: list[int], seed: int, j: int, greedy: bool = False) -> SampleReply:
        r, replay = self.ctx.cfg.rollout, self.ctx.cfg.algo.use_rollout_routing_replay and not greedy
        body = {"input_ids": ids, "return_logprob": True, "return_routed_experts": replay,
                "sampling_params": {"temperature": 0.0 if greedy else r.rollout_temperature,
                                    "top_p": 1.0 if greedy else r.rollout_top_p,
                                    "max_new_tokens": r.rollout_max_response_len, "sampling_seed": seed + j}}
        url, out = self._post("/generate", body, first=seed + j)
        try:
            meta = out["meta_info"]
            tokens = [int(t) for t in out["output_ids"]]
            logps = [float(row[0]) for row in meta["output_token_logprobs"]]
            finish = meta["finish_reason"]["type"] if isinstance(meta["finish_reason"], dict) else "stop"
            routed = self._routed(meta["routed_experts"], len(ids) + len(tokens) - 1) if replay else None
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise ServerReplyError(f"{url}/generate: malformed reply ({type(e).__name__}: {e})") from e
        if len(logps) != len(tokens):
            raise ServerReplyError(f"{url}/generate: {len(tokens)} output ids but {len(logps)} log-probs")
        return tokens, logps, finish, routed

    def _routed(self, b64: str, positions: int) -> torch.Tensor:
        """base64 int32 (positions, all layers, k) -> (MoE layers, positions, k), as the engine records it."""
        flat = np.frombuffer(base64.b64decode(b64), dtype="<i4")
        k = flat.size // max(1, positions * self.num_layers)
        if k == 0 or flat.size != positions * self.num_layers * k:
            raise ValueError(f"routed_experts: {flat.size} ids do not fill ({positions}, {self.num_layers}, k)")
        full = torch.from_numpy(flat.copy()).view(positions, self.num_layers, k).long()
        return full[:, self.moe_layers].permute(1, 0, 2).contiguous()

    def _probe_logprobs(self, url: str, ids: list[int]) -> list[float]:
        """`input_token_logprobs` from position 0 (SGLang sends null for the first token, which has none)."""
        body = {"input_ids": ids, "return_logprob": True, "logprob_start_len": 0,
                "sampling_params": {"temperature": 1.0, "max_new_tokens": 1}}
        try:
            resp = self.client.post(url + "/generate", json=body)
        except httpx.TransportError as e:
            raise RuntimeError(f"{url}/generate (weight probe): {e}") from e
        if resp.status_code != 200:
            raise ServerReplyError(f"{url}/generate (weight probe): HTTP {resp.status_code}: {resp.text[:300]}")
        rows = resp.json()["meta_info"]["input_token_logprobs"]
        return [float(row[0]) if row[0] is not None else math.nan for row in rows[1:]]

    def _reload(self, url: str, path: Path, version: int) -> None:
        try:
            resp = self.client.post(url + "/update_weights_from_disk",
                                    json={"model_path": str(path), "weight_version": str(version)})
        except httpx.TransportError as e:
            raise RuntimeError(f"{url}/update_weights_from_disk: {e}") from e
        if resp.status_code != 200 or not resp.json().get("success", False):
            raise ServerReplyError(f"{url}/update_weights_from_disk: {resp.text[:300]}")
