"""One policy update over a rollout batch, as separate steps:

    data_shares            this data rank's share of every global batch
    old_and_ref_logprobs   the trainer's log-probs before the update (pi_old) and the reference's (pi_ref), no grad
    logprob_gap_stats      how far pi_old is from the rollout's mu (the train/rollout mismatch)
    micro_batch_loss       ratios, clipped policy loss (x TIS), KL, entropy -> the aggregated loss + its metrics
    policy_update          the above over `num_steps_per_rollout` optimizer steps (nemoh.train.loop.optimizer_step)

Legend: b sequences in a micro-batch, T padded prompt+response length, R padded response length, m MoE layers.
"""
from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

from ..model import NemotronHForCausalLM
from ..parallel.parallelize import Layout
from ..train.loop import TrainRun, optimizer_step
from .algorithms import AGGREGATIONS, KL_ESTIMATORS, RATIOS, policy_loss, tis_weights
from .config import RLConfig
from .rollout import Sample
from .stats import clip_fractions

LogProbs = dict[int, list[float]]          # sample index -> per-response-token log-probs


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
            assert s.routed is not None  # replay: every sample carries its routing
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


def pad(values: list[list[float]], R: int) -> Tensor:
    """Ragged per-token values -> (b,R), zero-padded."""
    out = torch.zeros(len(values), R)
    for i, v in enumerate(values):
        out[i, : len(v)] = torch.tensor(v)
    return out


def data_shares(cfg: RLConfig, layout: Layout) -> list[list[int]]:
    """Sample indices this data rank trains on, per optimizer step. Shares are equal in size, so every rank runs
    the same number of forwards (FSDP's collectives pair up)."""
    gbs, D, r = cfg.train.global_batch_size, layout.data_world, layout.data_rank
    return [list(range(step * gbs, (step + 1) * gbs))[r::D] for step in range(cfg.train.num_steps_per_rollout)]


@torch.no_grad()
def old_and_ref_logprobs(model: NemotronHForCausalLM, ref: NemotronHForCausalLM | None, samples: list[Sample],
                         mine: list[int], cfg: RLConfig) -> tuple[LogProbs, LogProbs]:
    """pi_old (with R3 replay when on) and, when a KL loss needs it, pi_ref for the samples `mine`."""
    temp, mb, replay = cfg.rollout.rollout_temperature, cfg.train.micro_batch_size, cfg.algo.use_rollout_routing_replay
    old: LogProbs = {}
    ref_lp: LogProbs = {}
    for j in range(0, len(mine), mb):
        idx = mine[j:j + mb]
        chunk = [samples[i] for i in idx]
        lp, mask, _ = response_logprobs(model, chunk, temp, replay)
        old.update({i: lp[n, : int(mask[n].sum())].tolist() for n, i in enumerate(idx)})
        if ref is not None:
            rl, _, _ = response_logprobs(ref, chunk, temp, False)
            ref_lp.update({i: rl[n, : int(mask[n].sum())].tolist() for n, i in enumerate(idx)})
    return old, ref_lp


def logprob_gap_stats(old: LogProbs, samples: list[Sample], mine: list[int], layout: Layout) -> dict[str, float]:
    """|pi_old - mu| per token (mean, max) and the low-variance KL between them, over all data ranks."""
    diffs = torch.tensor([o - q for i in mine for o, q in zip(old[i], samples[i].rollout_logp)])
    kl_tr = KL_ESTIMATORS["low_var_kl"](-diffs, torch.zeros_like(diffs))
    n_diff = layout.all_reduce_data(float(len(diffs)))
    return {
        "logprob_diff_mean": layout.all_reduce_data(float(diffs.abs().sum())) / max(1.0, n_diff),
        "logprob_diff_max": layout.all_reduce_data(float(diffs.abs().max()) if len(diffs) else 0.0, "max"),
        "train_rollout_kl": layout.all_reduce_data(float(kl_tr.sum())) / max(1.0, n_diff),
    }


@dataclass
class GlobalBatch:
    """What every micro-batch of one optimizer step shares: the global batch's size and trained-token count."""
    num_seqs: int
    total_tokens: float                      # response tokens of the whole global batch (overlong-masked excluded)
    keep: set[int]                           # samples that train (overlong = mask drops truncated ones)


def global_batch(samples: list[Sample], step: int, cfg: RLConfig) -> GlobalBatch:
    gbs = cfg.train.global_batch_size
    batch = range(step * gbs, (step + 1) * gbs)
    keep = {i for i in batch if not (cfg.algo.overlong == "mask" and samples[i].truncated)}
    return GlobalBatch(len(batch), max(1.0, float(sum(len(samples[i].response_ids) for i in keep))), keep)


def micro_batch_loss(model: NemotronHForCausalLM, samples: list[Sample], idx: list[int], old: LogProbs,
                     ref: LogProbs | None, gb: GlobalBatch, cfg: RLConfig) -> tuple[Tensor, dict[str, float]]:
    """The loss of micro-batch `idx`, normalised over the global batch (so micro-batches and data ranks sum to
    the global loss), and its metrics (token means over the micro-batch; one line per metric)."""
    a = cfg.algo
    ratio_fn = RATIOS["sequence" if a.advantage_estimator == "gspo" else "token"]
    chunk = [samples[i] for i in idx]
    logp, mask, ent = response_logprobs(model, chunk, cfg.rollout.rollout_temperature, a.use_rollout_routing_replay,
                                        need_entropy=True)
    assert ent is not None
    R, dev = mask.shape[1], logp.device
    old_t = pad([old[i] for i in idx], R).to(dev)
    adv = torch.tensor([samples[i].advantage for i in idx], device=dev)[:, None]
    ratio = ratio_fn(logp, old_t, mask)
    mask = mask * torch.tensor([float(i in gb.keep) for i in idx], device=dev)[:, None]  # overlong: weight 0
    n_tok = mask.sum().clamp(min=1.0)
    pg, clipped = policy_loss(ratio, adv, a.eps_clip, a.eps_clip_high, a.eps_clip_c or None)
    metrics: dict[str, float] = {}
    if a.use_tis:
        w, capped = tis_weights(old_t, pad([samples[i].rollout_logp for i in idx], R).to(dev), a.tis_cap)
        pg = pg * w
        metrics["tis_clipfrac"] = float((capped * mask).sum() / n_tok)
    loss_tok = pg
    if ref is not None:
        kl = KL_ESTIMATORS[a.kl_loss_type](logp, pad([ref[i] for i in idx], R).to(dev))
        loss_tok = loss_tok + a.kl_loss_coef * kl
        metrics["kl"] = float((kl * mask).sum() / n_tok)
    if a.entropy_coef > 0:
        loss_tok = loss_tok - a.entropy_coef * ent
    aggregate = AGGREGATIONS[a.loss_agg]
    loss = aggregate(loss_tok, mask, gb.total_tokens, gb.num_seqs, cfg.rollout.rollout_max_response_len)
    metrics["pg_loss"] = float(aggregate(pg.detach(), mask, float(n_tok), len(idx), R))
    metrics["pg_clipfrac"] = float((clipped * mask).sum() / n_tok)
    metrics.update(clip_fractions(ratio, adv, mask, a.eps_clip, a.eps_clip_high))
    metrics["entropy"] = float((ent.detach() * mask).sum() / n_tok)
    return loss, metrics


def policy_update(run: TrainRun, ref: NemotronHForCausalLM | None, samples: list[Sample], cfg: RLConfig,
                  ) -> dict[str, float]:
    """pi_old/pi_ref, then `num_steps_per_rollout` optimizer steps over this rank's micro-batches; the metrics
    averaged over micro-batches and data ranks."""
    layout, mb = run.layout, cfg.train.micro_batch_size
    shares = data_shares(cfg, layout)
    mine = [i for share in shares for i in share]
    t_lp = time.perf_counter()
    old, ref_lp = old_and_ref_logprobs(run.model, ref, samples, mine, cfg)
    stats = {**logprob_gap_stats(old, samples, mine, layout), "time_logprobs": time.perf_counter() - t_lp}
    per_micro: dict[str, list[float]] = defaultdict(list)
    tokens, t0 = 0, time.perf_counter()
    for step, share in enumerate(shares):
        gb = global_batch(samples, step, cfg)

        def micro_losses(share: list[int] = share, gb: GlobalBatch = gb) -> Iterator[Tensor]:
            nonlocal tokens
            for j in range(0, len(share), mb):
                idx = share[j:j + mb]
                loss, metrics = micro_batch_loss(run.model, samples, idx, old, ref_lp if ref is not None else None,
                                                 gb, cfg)
                for k, v in metrics.items():
                    per_micro[k].append(v)
                tokens += sum(len(samples[i].prompt_ids) + len(samples[i].response_ids) for i in idx)
                yield loss

        stats.update(optimizer_step(run, micro_losses(), cfg.optim.grad_clip))
    dt = time.perf_counter() - t0
    D = layout.data_world
    stats.update({k: layout.all_reduce_data(sum(v) / len(v)) / D for k, v in per_micro.items()})
    total = layout.all_reduce_data(float(tokens))
    stats.update({"train_tokens_per_s": total / dt, "time_train": dt})
    return stats

