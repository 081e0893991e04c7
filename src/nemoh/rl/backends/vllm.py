"""Rollouts on vLLM servers through `/v1/completions` (`[rollout] backend = "vllm"`, `urls` or `launch`).

Token ids in, token ids out, as TRL/verl-style clients drive vLLM: each sample is one completion request with the
prompt's token ids, `n = 1`, its own `seed`, `logprobs = 0` (the sampled token's log-prob), `return_token_ids`
(`choices[].token_ids`) and, with R3, vLLM's `choices[].routed_experts` (base64 of a `.npy` file, uint8 up to 256
experts, uint16 above, shape (num_tokens - 1, layers, top_k); server flag `--enable-return-routed-experts`).
Weights: vLLM's dev-mode `POST /reload_weights` with `weights_path` (server env `VLLM_SERVER_DEV_MODE=1`). The
probe after every sync reads `prompt_logprobs`. Shapes from vllm/entrypoints/openai (CompletionResponseChoice,
CompletionLogProbs) and vllm/entrypoints/serve/dev reload_weights. The pool, retries and accounting are
`http.HttpRolloutBackend`'s. No `nemoh serve` speaks this yet: it is tested against vLLM's reply shapes only.
"""
from __future__ import annotations

import base64
import io
import math
from pathlib import Path

import httpx
import numpy as np
import torch

from .base import register_backend
from .http import HttpRolloutBackend, SampleReply, ServerReplyError

__all__ = ["VLLMBackend", "ServerReplyError"]


@register_backend("vllm")
class VLLMBackend(HttpRolloutBackend):
    def _sample(self, ids: list[int], seed: int, j: int, greedy: bool = False) -> SampleReply:
        r, replay = self.ctx.cfg.rollout, self.ctx.cfg.algo.use_rollout_routing_replay and not greedy
        body = {"prompt": ids, "n": 1, "seed": seed + j, "logprobs": 0, "return_token_ids": True,
                "max_tokens": r.rollout_max_response_len, "temperature": 0.0 if greedy else r.rollout_temperature,
                "top_p": 1.0 if greedy else r.rollout_top_p, "skip_special_tokens": False}
        url, out = self._post("/v1/completions", body, first=seed + j)
        try:
            choice = out["choices"][0]
            tokens = [int(t) for t in choice["token_ids"]]
            logps = [float(x) for x in choice["logprobs"]["token_logprobs"]]
            finish = "length" if choice["finish_reason"] == "length" else "stop"
            routed = self._routed(choice["routed_experts"], len(ids) + len(tokens) - 1) if replay else None
        except (KeyError, TypeError, IndexError, ValueError) as e:
            raise ServerReplyError(f"{url}/v1/completions: malformed reply ({type(e).__name__}: {e})") from e
        if len(logps) != len(tokens):
            raise ServerReplyError(f"{url}/v1/completions: {len(tokens)} token ids but {len(logps)} log-probs")
        return tokens, logps, finish, routed

    def _routed(self, b64: str, positions: int) -> torch.Tensor:
        """base64 .npy (positions, layers, k) -> (MoE layers, positions, k); `layers` may be every model layer
        (the MoE ones are picked out) or the MoE layers only."""
        arr = np.load(io.BytesIO(base64.b64decode(b64)), allow_pickle=False)
        if arr.ndim != 3 or arr.shape[0] != positions or arr.dtype.kind not in "iu":
            raise ValueError(f"routed_experts: expected ({positions}, layers, k) integer ids, got "
                             f"{arr.dtype}{list(arr.shape)}")
        full = torch.from_numpy(arr.astype(np.int64))
        if full.shape[1] == self.num_layers:
            full = full[:, self.moe_layers]
        elif full.shape[1] != len(self.moe_layers):
            raise ValueError(f"routed_experts: {full.shape[1]} layers, the model has {self.num_layers} "
                             f"({len(self.moe_layers)} MoE)")
        return full.permute(1, 0, 2).contiguous()

    def _probe_logprobs(self, url: str, ids: list[int]) -> list[float]:
        """`prompt_logprobs` with 0 alternatives: the log-prob of each given token (null for the first)."""
        body = {"prompt": ids, "max_tokens": 1, "temperature": 1.0, "prompt_logprobs": 0}
        try:
            resp = self.client.post(url + "/v1/completions", json=body)
        except httpx.TransportError as e:
            raise RuntimeError(f"{url}/v1/completions (weight probe): {e}") from e
        if resp.status_code != 200:
            raise ServerReplyError(f"{url}/v1/completions (weight probe): HTTP {resp.status_code}: {resp.text[:300]}")
        rows = resp.json()["choices"][0]["prompt_logprobs"]
        return [float(row[str(t)]["logprob"]) if row is not None else math.nan for row, t in zip(rows[1:], ids[1:])]

    def _reload(self, url: str, path: Path, version: int) -> None:
        try:
            resp = self.client.post(url + "/reload_weights", json={"weights_path": str(path)})
        except httpx.TransportError as e:
            raise RuntimeError(f"{url}/reload_weights: {e}") from e
        if resp.status_code != 200 or resp.json().get("status") != "ok":
            raise ServerReplyError(f"{url}/reload_weights (needs VLLM_SERVER_DEV_MODE=1): {resp.text[:300]}")
