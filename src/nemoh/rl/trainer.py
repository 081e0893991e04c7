"""The GRPO-family RL job on the shared training loop (nemoh/train/loop.py), one iteration top to bottom:
rollouts (the backend: nemoh/rl/backends/) -> rewards -> advantages -> the policy update (nemoh/rl/train_step.py:
old/ref log-probs, micro-batch losses, optimizer steps) -> new weights into the rollout engines -> metrics.

Under torchrun the policy is parallelised like SFT (FSDP2 / tp / ep, the `[parallel]` section); where the rollout
engines sit and how samples reach every rank is the backend's business (`[rollout] backend`, `engines`). Each data
rank trains on its share of every global batch (tp ranks on the same share), with the loss normalised over the
global batch.
"""
from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from ..data import ErrorLog, load_prompt_examples, read_rows
from ..parallel.parallelize import Layout, build_layout
from ..tokenizer import Tokenizer
from ..train.loop import LoopSchedule, build_training, start_run, train
from ..train.sft import token_loss
from .algorithms import ADVANTAGES
from .backends import BackendContext, RolloutBackend, build_backend
from .config import RLConfig
from .rewards import RewardFn
from .rollout import PromptSampler, Sample, accuracy_of, collect, group_stats
from .stats import advantage_stats, effective_tokens
from .tasks import TASKS, task_reward
from .train_step import policy_update, response_logprobs

if TYPE_CHECKING:
    from ..model import NemotronHForCausalLM

__all__ = ["RLTrainer", "response_logprobs"]


class RLTrainer:
    """`RLTrainer(cfg).run()`. Built: the model, tokenizer, reward and prompts (what tests and warm start use);
    `run()` adds the rollout backend, the reference model and the optimizer, then hands itself to the loop."""

    exports_adapter = False

    def __init__(self, cfg: RLConfig, show_progress: bool = True):
        self.cfg, self.show_progress = cfg, show_progress
        self.run_ = start_run(cfg.model, Path(cfg.checkpoint.dir), cfg.train.seed)
        self.model = self.run_.model
        self.tok = Tokenizer.from_pretrained(self.run_.base_path)
        self.chat_kwargs: dict[str, Any] = {"enable_thinking": cfg.data.enable_thinking}
        self.reward = RewardFn(task_reward(cfg.data.prompts, cfg.reward.function))
        self.train_prompts, self.eval_prompts = self._load_prompts()
        self.sampler = PromptSampler(self.train_prompts, cfg.train.seed)
        self.advantage = ADVANTAGES[cfg.algo.advantage_estimator]
        self.backend: RolloutBackend | None = None
        self.ref: NemotronHForCausalLM | None = None  # the frozen reference is built only when a KL loss needs it
        self.accuracy_before = float("nan")

    def _load_prompts(self):
        d = self.cfg.data
        if d.prompts.startswith("builtin:"):
            task = TASKS.get(d.prompts.split(":", 1)[1])
            if task is None:
                raise ValueError(f"data.prompts: unknown built-in task {d.prompts!r}; have "
                                 f"{['builtin:' + t for t in TASKS]}")
            return task(2048, self.cfg.train.seed), task(d.num_eval, 10_000, held_out=True)
        errors = ErrorLog(d.on_error)
        train = load_prompt_examples(list(read_rows(d.prompts, errors)), errors, d.input_key, d.label_key)
        evals = load_prompt_examples(list(read_rows(d.eval_prompts, errors)), errors, d.input_key, d.label_key) \
            if d.eval_prompts else []
        if not train:
            raise ValueError(f"{d.prompts}: no usable prompts")
        return train, evals[: d.num_eval]

    # ---- SFT warm start on the task's training split -----------------------------------------------------------
    def warm_start(self) -> None:
        ws = self.cfg.warm_start
        if ws.steps <= 0:
            return
        from ..data import collate, pack, tokenize_chat
        from ..data.chat import Example
        examples = []
        for p in self.train_prompts[: ws.examples]:
            msgs = p.prompt if isinstance(p.prompt, list) else [{"role": "user", "content": p.prompt}]
            ids, mask = tokenize_chat(self.tok, msgs + [{"role": "assistant", "content": str(p.label)}],
                                      **self.chat_kwargs)
            examples.append(Example(ids, mask, p.where))
        rows = pack(examples, 256)
        opt = torch.optim.AdamW(self.model.parameters(), lr=ws.lr, foreach=False)
        g = torch.Generator().manual_seed(self.cfg.train.seed)
        for _ in range(ws.steps):
            pick = torch.randint(0, len(rows), (4,), generator=g).tolist()
            batch = collate([rows[i] for i in pick], 256)
            loss = token_loss(self.model, batch, batch.num_tokens)
            opt.zero_grad()
            loss.backward()
            opt.step()
        self.model.zero_grad(set_to_none=True)  # else the first RL step would add the last warm-start gradient

    # ---- set-up, then the shared loop -------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg, run = self.cfg, self.run_
        self.warm_start()  # before sharding; under torchrun every rank runs the same seeded warm start
        layout = build_layout(cfg.parallel, run.world, self.model.config) if run.world > 1 else None
        self.backend = self._build_backend(layout)
        if cfg.algo.kl_loss_coef > 0 or cfg.algo.log_kl:   # log_kl: the metric only (coefficient 0)
            self.ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        build_training(run, cfg.parallel, cfg.optim, cfg.train.rollouts * cfg.train.num_steps_per_rollout,
                       layout=layout)
        if cfg.train.global_batch_size % run.layout.data_world:
            raise ValueError(f"train.global_batch_size: {cfg.train.global_batch_size} is not divisible by the "
                             f"{run.layout.data_world} data-parallel ranks")
        try:
            out = train(run, self, LoopSchedule(cfg.train.rollouts, cfg.train.eval_every), cfg.checkpoint,
                        self.show_progress)
        finally:
            self.backend.close()
        if out.get("already_finished"):
            return out
        return {**out, "eval_accuracy_before": self.accuracy_before, "eval_accuracy_after": out["eval_accuracy"]}

    def _build_backend(self, layout: Layout | None = None) -> RolloutBackend:
        run = self.run_
        return build_backend(self.cfg.rollout.backend, BackendContext(
            self.cfg, self.reward, self.tok, self.chat_kwargs, self.model, run.rank, run.world, layout))

    def held_out_accuracy(self) -> float:
        """Greedy held-out accuracy of the policy as it is now (reward >= 1 counts as correct), through the rollout
        backend's `evaluate`; nan without held-out prompts or off rank 0. Before `run()` (a warm start alone, or a
        checkpoint loaded to be measured: the benches) it builds the backend from the current weights."""
        if not self.eval_prompts:
            return float("nan")
        if self.backend is None:
            self.backend = self._build_backend()
        texts = self.backend.evaluate(self.eval_prompts, self.cfg.rollout.rollout_max_response_len)
        return float("nan") if texts is None else accuracy_of(texts, self.eval_prompts, self.reward)

    # ---- what the loop calls ------------------------------------------------------------------------------------
    def step(self, it: int) -> dict[str, Any]:
        """One RL iteration: rollouts -> advantages -> policy update -> weights into the rollout engines."""
        cfg, backend = self.cfg, self.backend
        assert backend is not None, "run() builds the backend"
        groups, roll = collect(backend, self.sampler, cfg, cfg.train.seed + it)
        roll["reward_failures"] = backend.reward_failures()
        samples = [s for g in groups for s in g]
        roll["weight_version_lag"] = self.version_lag(samples, it * cfg.train.num_steps_per_rollout)
        adv = self.advantage(torch.tensor([s.reward for s in samples]), cfg.rollout.n_samples_per_prompt,
                             cfg.algo.normalize_advantage_std)
        for s, v in zip(samples, adv.tolist()):
            s.advantage = v
        stats = policy_update(self.run_, self.ref, samples, cfg)
        stats.update(advantage_stats(adv))
        stats.update(effective_tokens([len(s.response_ids) for s in samples], adv.tolist(),
                                      cfg.train.num_steps_per_rollout))
        t0 = time.perf_counter()
        backend.sync_weights(self.model, (it + 1) * cfg.train.num_steps_per_rollout)
        return {**group_stats(groups), **roll, **stats, "time_weight_update": time.perf_counter() - t0}

    def version_lag(self, samples: list[Sample], version: int) -> int:
        """Optimizer steps between the stalest sample's weights and the policy about to be updated; above
        `rollout.max_off_policy_lag` the samples are refused (their log-probs belong to another policy)."""
        lag = max(version - s.weight_version for s in samples)
        if lag > self.cfg.rollout.max_off_policy_lag:
            stale = min(s.weight_version for s in samples)
            raise RuntimeError(f"rollout.max_off_policy_lag: samples from weight version {stale} reached the policy at "
                               f"version {version} (lag {lag} > {self.cfg.rollout.max_off_policy_lag}): the rollout "
                               "weights were not synced; raise max_off_policy_lag to train off-policy on purpose")
        return lag

    def evaluate(self) -> dict[str, Any]:
        """Greedy accuracy on the held-out prompts (rank 0; {} elsewhere)."""
        if not self.run_.lead:
            return {}
        return {"eval_accuracy": self.held_out_accuracy()}

    def first_metrics(self, start: int) -> dict[str, Any]:
        self.accuracy_before = self.held_out_accuracy() if self.run_.lead else float("nan")
        return {"eval_accuracy": self.accuracy_before}

    def final_metrics(self, last: dict[str, Any]) -> dict[str, Any]:
        if "eval_accuracy" in last:
            return {"eval_accuracy": last["eval_accuracy"]}
        return {"eval_accuracy": self.held_out_accuracy() if self.run_.lead else float("nan")}

    def data_state(self) -> dict[str, int]:
        return {}

    def restore(self, trainer_state: dict[str, Any]) -> None:
        assert self.backend is not None
        self.backend.sync_weights(self.model, int(trainer_state["step"]) * self.cfg.train.num_steps_per_rollout)
