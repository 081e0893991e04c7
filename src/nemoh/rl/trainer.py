"""The GRPO-family RL loop, top to bottom:
rollouts (engine) -> rewards -> advantages -> trainer logprobs (old, ref) -> optimizer steps over micro-batches ->
weights into the engine in place -> log / eval / checkpoint.

Under torchrun the policy is parallelised like SFT (FSDP2 / tp / ep, the `[parallel]` section). With
`rollout.engines = "rank0"` (default) rank 0 owns the one rollout engine: it generates and scores the whole batch on
the gathered full weights and broadcasts the samples, so rollouts are exactly those of a single process (tested).
With `"data_ranks"` every data rank has an engine, generates and scores its share of each round's prompts (its own
sampling seed) and the groups are all-gathered: generation and reward computation scale with the ranks. Either way
each data rank then trains on its share of every global batch (tp ranks on the same share), with the loss normalised
over the global batch, and after the update all ranks gather the weights for the engines.

Legend: b sequences in a micro-batch, T padded prompt+response length, R padded response length, m MoE layers.
"""
from __future__ import annotations

import copy
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from ..data import ErrorLog, load_prompt_examples, read_rows
from ..engine import LLM
from ..model import NemotronHForCausalLM
from ..tokenizer import Tokenizer
from ..train.metrics import MetricsLogger
from ..train.optim import build_optimizer, build_scheduler
from ..train.setup import build_model
from ..train.sft import export_sharded, token_loss
from ..parallel import init_distributed, parallelize
from ..parallel.parallelize import SINGLE
from ..parallel.state_dict import clip_grad_norm, full_state_dict
from ..train.state import checkpoints, load_state, save_state
from .algorithms import ADVANTAGES, AGGREGATIONS, KL_ESTIMATORS, RATIOS, policy_loss, tis_weights
from .config import RLConfig
from .rewards import RewardFn
from .rollout import PromptSampler, Sample, collect, group_stats, held_out_accuracy
from .stats import advantage_stats, clip_fractions, effective_tokens
from .tasks import TASKS, task_reward



def response_logprobs(model: NemotronHForCausalLM, samples: list[Sample], temperature: float, replay: bool,
                      need_entropy: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """Training-side log-probs of each sample's response tokens under softmax(logits / temperature).
    Returns logp (b,R), mask (b,R) and entropy (b,R) if asked. With `replay`, the forward uses the experts the
    rollout chose (R3); the last position, never fed to the engine, keeps its live routing."""
    b = len(samples)
    lens = [len(s.prompt_ids) + len(s.response_ids) for s in samples]
    T, R = max(lens), max(len(s.response_ids) for s in samples)
    ids = torch.zeros(b, T, dtype=torch.long)
    for i, s in enumerate(samples):
        ids[i, : lens[i]] = torch.tensor(s.prompt_ids + s.response_ids)
    routed = None
    if replay and samples[0].routed is not None:
        m, _, k = samples[0].routed.shape
        routed = torch.full((m, b, T, k), -1, dtype=torch.long)
        for i, s in enumerate(samples):
            routed[:, i, : s.routed.shape[1]] = s.routed
    dev = model.device
    logits = model(ids.to(dev), routed_experts=None if routed is None else routed.to(dev)).logits / temperature
    pos = torch.zeros(b, R, dtype=torch.long)                                  # logits: (b,T,V)
    tgt = torch.zeros(b, R, dtype=torch.long)
    mask = torch.zeros(b, R)
    for i, s in enumerate(samples):
        n, p = len(s.response_ids), len(s.prompt_ids)
        pos[i, :n] = torch.arange(p - 1, p - 1 + n)
        tgt[i, :n] = torch.tensor(s.response_ids)
        mask[i, :n] = 1
    pos, tgt, mask = pos.to(dev), tgt.to(dev), mask.to(dev)
    picked = logits.gather(1, pos[..., None].expand(-1, -1, logits.shape[-1]))  # (b,R,V)
    logp_all = torch.log_softmax(picked.float(), -1)
    logp = logp_all.gather(-1, tgt[..., None])[..., 0]
    entropy = -(logp_all.exp() * logp_all).sum(-1) if need_entropy else None
    return logp, mask, entropy


def _pad(values: list[list[float]], R: int) -> Tensor:
    out = torch.zeros(len(values), R)
    for i, v in enumerate(values):
        out[i, : len(v)] = torch.tensor(v)
    return out


class RLTrainer:
    def __init__(self, cfg: RLConfig, show_progress: bool = True):
        self.cfg, self.show_progress = cfg, show_progress
        self.run_dir = Path(cfg.checkpoint.dir)
        torch.manual_seed(cfg.train.seed)
        random.seed(cfg.train.seed)
        self.rank, self.world = init_distributed()
        self.layout = SINGLE
        self.model, self.base_path = build_model(cfg.model, self.run_dir, cfg.train.seed)
        self.tok = Tokenizer.from_pretrained(self.base_path)
        self.chat_kwargs = {"enable_thinking": cfg.data.enable_thinking}
        self.reward = RewardFn(task_reward(cfg.data.prompts, cfg.reward.function))
        self.train_prompts, self.eval_prompts = self._load_prompts()
        self.sampler = PromptSampler(self.train_prompts, cfg.train.seed)
        self.advantage = ADVANTAGES[cfg.algo.advantage_estimator]
        self.ratio = RATIOS["sequence" if cfg.algo.advantage_estimator == "gspo" else "token"]
        self.kl = KL_ESTIMATORS[cfg.algo.kl_loss_type]
        self.aggregate = AGGREGATIONS[cfg.algo.loss_agg]
        self.ref = None  # the frozen reference is loaded only when a KL loss needs it

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

    # ---- evaluation ------------------------------------------------------------------------------------------
    def evaluate(self, llm: LLM) -> float:
        """Greedy accuracy on the held-out prompts."""
        return held_out_accuracy(llm, self.eval_prompts, self.reward, self.cfg.rollout.rollout_max_response_len,
                                 self.chat_kwargs if self.cfg.data.apply_chat_template else None)

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

    # ---- one policy update over a rollout batch ---------------------------------------------------------------
    def train_step(self, samples: list[Sample], opt, sched) -> dict[str, float]:
        cfg, a = self.cfg, self.cfg.algo
        temp = cfg.rollout.rollout_temperature
        mb = cfg.train.micro_batch_size
        replay = a.use_rollout_routing_replay
        # old log-probs (the trainer's, before this update) and reference log-probs, no grad
        gbs, D, r = cfg.train.global_batch_size, self.layout.data_world, self.layout.data_rank
        # this data rank's share of every global batch; shares are equal in size, so every rank runs the same
        # number of forwards (FSDP's collectives pair up)
        shares = [list(range(step * gbs, (step + 1) * gbs))[r::D] for step in range(cfg.train.num_steps_per_rollout)]
        mine = [i for share in shares for i in share]
        t_lp = time.perf_counter()
        old: dict[int, list[float]] = {}
        ref: dict[int, list[float]] = {}
        with torch.no_grad():
            for j in range(0, len(mine), mb):
                idx = mine[j:j + mb]
                chunk = [samples[i] for i in idx]
                lp, mask, _ = response_logprobs(self.model, chunk, temp, replay)
                old.update({i: lp[n, : int(mask[n].sum())].tolist() for n, i in enumerate(idx)})
                if self.ref is not None:
                    rl, _, _ = response_logprobs(self.ref, chunk, temp, False)
                    ref.update({i: rl[n, : int(mask[n].sum())].tolist() for n, i in enumerate(idx)})
        diffs = torch.tensor([o - q for i in mine for o, q in zip(old[i], samples[i].rollout_logp)])
        kl_tr = KL_ESTIMATORS["low_var_kl"](-diffs, torch.zeros_like(diffs))
        n_diff = self.layout.all_reduce_data(float(len(diffs)))
        stats: dict[str, float] = {
            "logprob_diff_mean": self.layout.all_reduce_data(float(diffs.abs().sum())) / max(1.0, n_diff),
            "logprob_diff_max": self.layout.all_reduce_data(float(diffs.abs().max()) if len(diffs) else 0.0, "max"),
            "train_rollout_kl": self.layout.all_reduce_data(float(kl_tr.sum())) / max(1.0, n_diff),
            "time_logprobs": time.perf_counter() - t_lp,
        }
        acc: dict[str, list[float]] = {k: [] for k in ("pg_loss", "pg_clipfrac", "kl", "entropy", "tis_clipfrac")}
        tokens, t0 = 0, time.perf_counter()
        for step, share in enumerate(shares):
            batch = range(step * gbs, (step + 1) * gbs)
            keep = {i for i in batch if not (a.overlong == "mask" and samples[i].truncated)}
            total_tokens = max(1.0, float(sum(len(samples[i].response_ids) for i in keep)))  # the global batch's
            for j in range(0, len(share), mb):
                idx = share[j:j + mb]
                chunk = [samples[i] for i in idx]
                logp, mask, ent = response_logprobs(self.model, chunk, temp, replay, need_entropy=True)
                R = mask.shape[1]
                dev = logp.device
                old_t = _pad([old[i] for i in idx], R).to(dev)
                adv = torch.tensor([samples[i].advantage for i in idx], device=dev)[:, None]
                ratio = self.ratio(logp, old_t, mask)
                mask = mask * torch.tensor([float(i in keep) for i in idx], device=dev)[:, None]  # overlong: weight 0
                n_tok = mask.sum().clamp(min=1.0)
                pg, clipped = policy_loss(ratio, adv, a.eps_clip, a.eps_clip_high, a.eps_clip_c or None)
                if a.use_tis:
                    w, capped = tis_weights(old_t, _pad([samples[i].rollout_logp for i in idx], R).to(dev), a.tis_cap)
                    pg = pg * w
                    acc["tis_clipfrac"].append(float((capped * mask).sum() / n_tok))
                loss_tok = pg
                if self.ref is not None:
                    kl = self.kl(logp, _pad([ref[i] for i in idx], R).to(dev))
                    loss_tok = loss_tok + a.kl_loss_coef * kl
                    acc["kl"].append(float((kl * mask).sum() / n_tok))
                if a.entropy_coef > 0:
                    loss_tok = loss_tok - a.entropy_coef * ent
                loss = self.aggregate(loss_tok, mask, total_tokens, len(batch), cfg.rollout.rollout_max_response_len)
                loss.backward()
                tokens += sum(len(s.prompt_ids) + len(s.response_ids) for s in chunk)
                acc["pg_loss"].append(float(self.aggregate(pg.detach(), mask, float(n_tok), len(idx), R)))
                acc["pg_clipfrac"].append(float((clipped * mask).sum() / n_tok))
                for k, v in clip_fractions(ratio, adv, mask, a.eps_clip, a.eps_clip_high).items():
                    acc.setdefault(k, []).append(v)
                acc["entropy"].append(float((ent.detach() * mask).sum() / n_tok))
            stats["grad_norm"] = clip_grad_norm(self.model, cfg.optim.grad_clip)
            opt.step()
            sched.step()
            opt.zero_grad(set_to_none=True)
        dt = time.perf_counter() - t0
        stats.update({k: self.layout.all_reduce_data(sum(v) / len(v)) / D for k, v in acc.items() if v})
        tokens = self.layout.all_reduce_data(float(tokens))
        stats.update({"train_tokens_per_s": tokens / dt, "time_train": dt})
        return stats

    # ---- the loop ----------------------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        lead = self.rank == 0
        self.warm_start()  # before sharding; under torchrun every rank runs the same seeded warm start
        llm = None
        if self._holds_engine():
            llm = LLM(copy.deepcopy(self.model).eval(), tokenizer=self.tok, max_num_seqs=cfg.rollout.max_num_seqs,
                      max_model_len=cfg.rollout.rollout_max_prompt_len + cfg.rollout.rollout_max_response_len)
        if cfg.algo.kl_loss_coef > 0 or cfg.algo.log_kl:   # log_kl: the metric only (coefficient 0)
            self.ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        if self.world > 1:
            self.layout = parallelize(self.model, cfg.parallel, self.world)
            if cfg.train.global_batch_size % self.layout.data_world:
                raise ValueError(f"train.global_batch_size: {cfg.train.global_batch_size} is not divisible by the "
                                 f"{self.layout.data_world} data-parallel ranks")
        opt = build_optimizer([p for p in self.model.parameters() if p.requires_grad], cfg.optim)
        sched = build_scheduler(opt, cfg.train.rollouts * cfg.train.num_steps_per_rollout, cfg.optim)
        start = 0
        if cfg.checkpoint.resume and checkpoints(self.run_dir):
            start = load_state(checkpoints(self.run_dir)[-1], self.model, opt, sched)["step"]
            self._sync_engine(llm)
        acc_before = self.evaluate(llm) if lead else float("nan")
        log = MetricsLogger(self.run_dir, cfg.train.rollouts, start, self.show_progress and lead, enabled=lead)
        log.log(start, {"eval_accuracy": acc_before})
        last: dict[str, Any] = {}
        group = cfg.rollout.n_samples_per_prompt
        for it in range(start, cfg.train.rollouts):
            groups, roll = self._rollouts(llm, it)
            samples = [s for g in groups for s in g]
            rewards = torch.tensor([s.reward for s in samples])
            adv = self.advantage(rewards, group, cfg.algo.normalize_advantage_std)
            for s, v in zip(samples, adv.tolist()):
                s.advantage = v
            stats = self.train_step(samples, opt, sched)
            stats.update(advantage_stats(adv))
            stats.update(effective_tokens([len(s.response_ids) for s in samples], adv.tolist(),
                                          cfg.train.num_steps_per_rollout))
            t0 = time.perf_counter()
            self._sync_engine(llm)
            last = {**group_stats(groups), **roll, **stats, "time_weight_update": time.perf_counter() - t0,
                    "reward_failures": roll.pop("reward_failures", self.reward.failures)}
            if lead and cfg.train.eval_every and (it + 1) % cfg.train.eval_every == 0:
                last["eval_accuracy"] = self.evaluate(llm)
            log.log(it + 1, last)
            log.advance()
            if cfg.checkpoint.every and (it + 1) % cfg.checkpoint.every == 0:
                save_state(self.run_dir, it + 1, self.model, opt, sched, {}, cfg.checkpoint.keep)
        acc_after = last.get("eval_accuracy") if "eval_accuracy" in last else (self.evaluate(llm) if lead else float("nan"))
        log.log(cfg.train.rollouts, {"eval_accuracy": acc_after})
        log.close()
        if self.world > 1:
            export_sharded(self.model, self.run_dir, self.base_path, self.rank)
        else:
            self.model.save_pretrained(self.run_dir / "final", tokenizer_dir=self.base_path)
        return {**last, "eval_accuracy_before": acc_before, "eval_accuracy_after": acc_after}

    def _holds_engine(self) -> bool:
        """rank0: rank 0 only. data_ranks: the first tp rank of every data rank (tp is the mesh's innermost dim)."""
        if self.world == 1 or self.cfg.rollout.engines == "rank0":
            return self.rank == 0
        return self.rank % self.cfg.parallel.tp == 0

    def _rollouts(self, llm: LLM | None, it: int) -> tuple[list[list[Sample]], dict[str, float]]:
        """rank0: rank 0 generates and scores the rollout batch and broadcasts it. data_ranks: every rank runs the
        same sampling loop; each round's prompts are split over the engines and the groups all-gathered."""
        cfg, seed = self.cfg, self.cfg.train.seed + it
        if self.world > 1 and cfg.rollout.engines == "data_ranks":
            import torch.distributed as dist
            groups, roll = collect(llm, self.sampler, cfg, self.reward, seed, self.chat_kwargs,
                                   generate=lambda prompts, s: self._spread(llm, prompts, s))
            failures = [0] * self.world
            dist.all_gather_object(failures, self.reward.failures)
            return groups, {**roll, "reward_failures": sum(failures)}
        out = None
        if llm is not None:
            groups, roll = collect(llm, self.sampler, cfg, self.reward, seed, self.chat_kwargs)
            out = [groups, {**roll, "reward_failures": self.reward.failures}]
        if self.world > 1:
            import torch.distributed as dist
            box = [out]
            dist.broadcast_object_list(box, src=0)
            out = box[0]
        return out[0], out[1]

    def _spread(self, llm: LLM | None, prompts: list, seed: int) -> tuple[list[list[Sample]], int]:
        """Engine e of E takes prompts e, e+E, ... (its own sampling seed); every rank gets all groups in order."""
        import torch.distributed as dist
        from .rollout import sample_groups
        engines, e = self.layout.data_world, self.layout.data_rank   # the tp ranks of a data rank share its engine
        mine = None
        if llm is not None:
            mine = sample_groups(llm, prompts[e::engines], self.cfg, self.reward, seed * engines + e, self.chat_kwargs)
        gathered: list = [None] * self.world
        dist.all_gather_object(gathered, (e, mine))
        groups: list = [None] * len(prompts)
        tokens = 0
        for e_, result in gathered:
            if result is not None:
                for j, g in enumerate(result[0]):
                    groups[e_ + j * engines] = g
                tokens += result[1]
        return groups, tokens

    def _sync_engine(self, llm: LLM | None) -> None:
        """The trained weights into the engine(s), in place (gathered from the shards under torchrun)."""
        if self.world == 1:
            llm.update_weights(self.model)
            return
        state = full_state_dict(self.model)  # every rank takes part in the gather
        if llm is not None:
            llm.update_weights({k: v for k, v in state.items() if k in dict(llm.model.named_parameters())})
