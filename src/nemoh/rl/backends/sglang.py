"""Rollouts on SGLang servers through SGLang's native API (`[rollout] backend = "sglang"`, `urls = [...]`).

Token ids in, token ids out: each sample is one `POST /generate` with the prompt's `input_ids`, its own
`sampling_seed` (seed + j for sample j, as the in-process engine seeds sample j of a request), `return_logprob` and,
with R3, `return_routed_experts` (base64 int32 over all layers; the MoE layers are picked out). A request that meets
a connection error or a 5xx is retried on the next server with backoff; every sample has one slot, filled once, so
a server that dies mid-rollout neither loses nor duplicates a sample. A reply that is not what SGLang sends is an
error naming the server. `nemoh serve` speaks the same protocol (nemoh/serve/sglang_api.py), which is how this is
tested on a CPU.

Weight sync (`sync_weights`) goes through disk: the policy is saved as a Hub-layout checkpoint (atomic, one folder
per version, older versions removed) and every server loads it with `POST /update_weights_from_disk`.
"""
from __future__ import annotations

import base64
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import numpy as np
import torch

from ...engine.llm_engine import encode_prompt
from ..rewards import reward_text
from ..rollout import Sample
from .base import BackendContext, RolloutBackend, register_backend

if TYPE_CHECKING:
    from ...data.prompts import PromptExample
    from ...model import NemotronHForCausalLM

RETRIES_PER_SERVER = 3


class ServerReplyError(ValueError):
    """A server answered something that is not SGLang's reply (or refused the request)."""


@register_backend("sglang")
class SGLangBackend(RolloutBackend):
    def __init__(self, ctx: BackendContext):
        super().__init__(ctx)
        r = ctx.cfg.rollout
        if not r.urls:
            raise ValueError("rollout.urls: the sglang backend needs at least one server URL (http://host:port)")
        if ctx.world > 1:
            raise NotImplementedError("rollout.backend = sglang runs in one trainer process for now (no torchrun)")
        self.urls = [u.rstrip("/") for u in r.urls]
        self.sync_dir = Path(r.weight_sync_dir or Path(ctx.cfg.checkpoint.dir) / "weights")
        self.client = httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0))
        self.pool = ThreadPoolExecutor(max_workers=max(1, r.concurrency) * len(self.urls))
        self.moe_layers = list(ctx.model.moe_layers)
        self.num_layers = ctx.model.config.num_hidden_layers
        self.sync_weights(ctx.model, 0)          # the servers start from the trainer's weights (after its warm start)

    # ---- one request, retried on the other servers ---------------------------------------------------------
    def _post(self, path: str, body: dict[str, Any], first: int) -> tuple[str, Any]:
        last: Exception | None = None
        for attempt in range(RETRIES_PER_SERVER * len(self.urls)):
            url = self.urls[(first + attempt) % len(self.urls)]
            try:
                resp = self.client.post(url + path, json=body)
            except httpx.TransportError as e:           # refused, reset, timed out: try the next server
                last = e
            else:
                if resp.status_code < 500:
                    try:
                        data = resp.json()
                    except ValueError as e:
                        raise ServerReplyError(f"{url}{path}: reply is not JSON ({resp.text[:120]!r})") from e
                    if resp.status_code >= 400:
                        raise ServerReplyError(f"{url}{path}: HTTP {resp.status_code}: {str(data)[:300]}")
                    return url, data
                last = RuntimeError(f"HTTP {resp.status_code}")
            time.sleep(min(2.0, 0.1 * 2 ** (attempt // len(self.urls))))
        raise RuntimeError(f"{path}: every server failed ({', '.join(self.urls)}); last error: {last}")

    def _sample(self, ids: list[int], seed: int, j: int, greedy: bool = False) -> tuple[list[int], list[float], str,
                                                                                          torch.Tensor | None]:
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

    def _prompt_ids(self, prompt: Any) -> list[int]:
        cfg = self.ctx.cfg
        kwargs = self.ctx.chat_kwargs if cfg.data.apply_chat_template else None
        return encode_prompt(self.ctx.tokenizer, prompt, kwargs)[1]

    # ---- the backend interface ---------------------------------------------------------------------------
    def generate(self, prompts: list[PromptExample], seed: int) -> tuple[list[list[Sample]], int]:
        n = self.ctx.cfg.rollout.n_samples_per_prompt
        ids = [self._prompt_ids(p.prompt) for p in prompts]
        jobs = {(i, j): self.pool.submit(self._sample, ids[i], seed, j) for i in range(len(prompts)) for j in range(n)}
        tok, algo = self.ctx.tokenizer, self.ctx.cfg.algo
        groups, tokens = [], 0
        for i, p in enumerate(prompts):
            outs = [jobs[i, j].result() for j in range(n)]          # each slot filled exactly once
            texts = [reward_text(t, tok.decode, tok.think_end_id) for t, _, _, _ in outs]
            scores = self.ctx.reward(texts, p.label, p.prompt)
            group = []
            for (t, lp, finish, routed), text, s in zip(outs, texts, scores):
                truncated = finish == "length"
                if truncated and algo.overlong == "penalty":
                    s = algo.overlong_penalty
                group.append(Sample(ids[i], t, lp, s, truncated, routed, text, weight_version=self.weight_version))
                tokens += len(t)
            groups.append(group)
        return groups, tokens

    def evaluate(self, prompts: list[PromptExample], max_tokens: int) -> list[str] | None:
        tok = self.ctx.tokenizer
        futures = [self.pool.submit(self._sample, self._prompt_ids(p.prompt), 0, 0, True) for p in prompts]
        return [reward_text(f.result()[0], tok.decode, tok.think_end_id) for f in futures]

    def sync_weights(self, model: NemotronHForCausalLM, version: int) -> None:
        path = self.sync_dir / f"v{version:06d}"
        model.save_pretrained(path)                                     # atomic: temp dir + rename
        for url in self.urls:
            try:
                resp = self.client.post(url + "/update_weights_from_disk",
                                        json={"model_path": str(path), "weight_version": str(version)})
            except httpx.TransportError as e:
                raise RuntimeError(f"{url}/update_weights_from_disk: {e}") from e
            if resp.status_code != 200 or not resp.json().get("success", False):
                raise ServerReplyError(f"{url}/update_weights_from_disk: {resp.text[:300]}")
        for old in self.sync_dir.glob("v*"):                            # every server has the new one
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
        self.weight_version = version

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
