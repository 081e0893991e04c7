"""What every HTTP rollout backend shares: the server pool, retries, token-id prompts, scoring, disk weight sync.

A subclass says how one sample is requested and read back (`_sample`, the server's protocol) and how a server
reloads weights from a folder (`_reload`). Everything else is here, once:

- each sample is one request with its own seed (seed + j for sample j, as the in-process engine seeds sample j of a
  request); a request that meets a connection error or a 5xx is retried on the next server with backoff; every
  sample has one slot, filled once, so a server that dies mid-rollout neither loses nor duplicates a sample;
- a reply that is not what the protocol sends is a `ServerReplyError` naming the server;
- weight sync goes through disk: the policy is saved as a Hub-layout checkpoint (atomic, one folder per version,
  older versions removed once every server has the new one) and each server is told to load it;
- after every sync each server scores a fixed probe sequence and its log-probs must equal the trainer's within
  `rollout.probe_tolerance`: a server that dropped or mangled a parameter on reload (vLLM once dropped Mamba's `D`:
  NaN logits) stops the run at the sync, naming the server, instead of training on its samples.
"""
from __future__ import annotations

import math
import shutil
import time
from abc import abstractmethod
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
import torch

from ...engine.llm_engine import encode_prompt
from ...engine.scoring import sequence_logprobs
from ..rewards import reward_text
from ..rollout import Sample
from .base import BackendContext, RolloutBackend
from .launch import LaunchedServers, launch_servers

if TYPE_CHECKING:
    from ...data.prompts import PromptExample
    from ...model import NemotronHForCausalLM

RETRIES_PER_SERVER = 3
PROBE_TOKENS = 32

# One sample read back from a server: output token ids, their log-probs, finish reason ("stop" | "length"), and the
# routed experts as (MoE layers, positions, top_k) when routing replay asked for them.
SampleReply = tuple[list[int], list[float], str, "torch.Tensor | None"]


class ServerReplyError(ValueError):
    """A server answered something that is not its protocol's reply (or refused the request)."""


class HttpRolloutBackend(RolloutBackend):
    """Rollouts on a pool of inference servers given by `[rollout] urls`."""

    def __init__(self, ctx: BackendContext):
        super().__init__(ctx)
        r = ctx.cfg.rollout
        if ctx.world > 1:
            raise NotImplementedError(f"rollout.backend = {r.backend} runs in one trainer process (no torchrun)")
        if r.launch and r.urls:
            raise ValueError("rollout.launch: give rollout.urls (running servers) or rollout.launch (start them), "
                             "not both")
        if not r.urls and not r.launch:
            raise ValueError(f"rollout.urls: the {r.backend} backend needs at least one server URL (http://host:port)"
                             " or rollout.launch = N")
        self.sync_dir = Path(r.weight_sync_dir or Path(ctx.cfg.checkpoint.dir) / "weights")
        self.launched: LaunchedServers | None = None
        if r.launch:                             # servers of our own, started on the trainer's current weights
            start = self.sync_dir / "v000000"
            ctx.model.save_pretrained(start)
            self.launched = launch_servers(r.launch, start, r.launch_engine, r.launch_args,
                                           Path(ctx.cfg.checkpoint.dir) / "servers")
        self.urls = [u.rstrip("/") for u in (self.launched.urls if self.launched else r.urls)]
        self.client = httpx.Client(timeout=httpx.Timeout(600.0, connect=10.0))
        self.pool = ThreadPoolExecutor(max_workers=max(1, r.concurrency) * len(self.urls))
        self.moe_layers = list(ctx.model.moe_layers)
        self.num_layers = ctx.model.config.num_hidden_layers
        try:
            self.sync_weights(ctx.model, 0)      # the servers start from the trainer's weights (after its warm start)
        except BaseException:
            self.close()
            raise

    # ---- the protocol, per subclass ----------------------------------------------------------------------
    @abstractmethod
    def _sample(self, ids: list[int], seed: int, j: int, greedy: bool = False) -> SampleReply:
        """Request sample j of the prompt `ids` (seeded with seed + j) and read it back."""

    @abstractmethod
    def _reload(self, url: str, path: Path, version: int) -> None:
        """Tell the server at `url` to load the Hub-layout checkpoint at `path` as weight version `version`."""

    @abstractmethod
    def _probe_logprobs(self, url: str, ids: list[int]) -> list[float]:
        """The server at `url`'s log p(ids[t] | ids[:t]) for t = 1 .. len(ids)-1, at temperature 1."""

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
            self._reload(url, path, version)
        self._check_probe(model, version)
        for old in self.sync_dir.glob("v*"):                            # every server has the new one
            if old != path:
                shutil.rmtree(old, ignore_errors=True)
        self.weight_version = version

    def _check_probe(self, model: NemotronHForCausalLM, version: int) -> None:
        tol = self.ctx.cfg.rollout.probe_tolerance
        if tol <= 0:
            return
        gen = torch.Generator().manual_seed(0)          # a fixed sequence over the whole vocabulary
        ids = torch.randint(0, model.config.vocab_size, (PROBE_TOKENS,), generator=gen).tolist()
        want = sequence_logprobs(model, ids)
        for url in self.urls:
            try:
                got = self._probe_logprobs(url, ids)
            except (KeyError, TypeError, IndexError, ValueError) as e:
                raise ServerReplyError(f"{url}: malformed reply to the weight probe ({type(e).__name__}: {e})") from e
            if len(got) != len(want):
                raise ServerReplyError(f"{url}: the weight probe got {len(got)} log-probs for {len(want)} tokens")
            diff = max((abs(g - w) if math.isfinite(g) else math.inf) for g, w in zip(got, want))
            if diff > tol:
                raise ServerReplyError(
                    f"{url}: after loading weight version {version} its log-probs of the probe sequence differ from "
                    f"the trainer's by {diff:.3g} (rollout.probe_tolerance = {tol:g}): the server is not running the "
                    "trainer's weights (a parameter dropped or changed on reload?)")

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.client.close()
        if self.launched is not None:
            self.launched.stop()
            self.launched = None
