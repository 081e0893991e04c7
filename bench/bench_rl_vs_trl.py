"""nemoh RL vs TRL's GRPOTrainer on the same tiny nemotron_h checkpoint, side by side.

    python bench/bench_rl_vs_trl.py [--task last_letter] [--seeds 0,1,2] [--steps 100] [--eval-every 25]

Same for both: the warm-started checkpoint (bench_rl_tasks.py's cache: the recipe's SFT warm start), the task's
training prompts, 16 prompts x 8 samples per update, temperature 1.0, 4 response tokens, AdamW (betas 0.9/0.95,
no weight decay, grad clip 1.0), lr 2e-3 cosine to 10%, clip 0.2/0.28, no KL, group std normalisation,
token-mean aggregation (TRL's loss_type "dapo"), one optimizer step per rollout batch. Held-out accuracy is
measured the same way for both: TRL's weights are loaded into nemoh's engine and decoded greedily on the same
held-out prompts with the same reward. Differences that remain: TRL has no dynamic sampling (nemoh runs with and
without it), no rollout routing replay, and generates with transformers' `generate` (whose Mamba prefill clamps
dt, a ~1e-4 logit difference). Prints the curves, mean ± spread over seeds and the wall time of each trainer.
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time
from functools import partial
from pathlib import Path

import torch
from bench_rl_tasks import ROOT, from_checkpoint, rl_run, warm_start


def trl_run(task: str, seed: int, ws: Path, steps: int, eval_every: int) -> dict:
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    work = Path(tempfile.mkdtemp(prefix="trl-"))
    nemoh_side = from_checkpoint(task, seed, ws, work / "recipe")   # the recipe's settings, prompts and reward
    cfg, reward = nemoh_side.cfg, nemoh_side.reward
    r, a, o = cfg.rollout, cfg.algo, cfg.optim
    chat = {"enable_thinking": cfg.data.enable_thinking}

    def score(completions, label, **_):
        return [reward([c[0]["content"] if isinstance(c, list) else c], lab)[0] for c, lab in zip(completions, label)]

    def accuracy(model) -> float:     # TRL's weights measured by nemoh's RL trainer: the yardstick of nemoh's runs
        with tempfile.TemporaryDirectory(dir=work) as tmp:
            model.save_pretrained(tmp)
            for f in ws.glob("tokenizer*.json"):
                shutil.copy(f, tmp)
            return from_checkpoint(task, seed, Path(tmp), Path(tmp) / "run").held_out_accuracy()

    curve: list[tuple[int, float]] = []
    eval_time = [0.0]

    class Eval(TrainerCallback):
        def on_step_end(self, args, state, control, model=None, **kw):
            if state.global_step % eval_every == 0:
                t0 = time.perf_counter()
                curve.append((state.global_step, accuracy(model)))
                eval_time[0] += time.perf_counter() - t0

    model = AutoModelForCausalLM.from_pretrained(ws, dtype=torch.float32)
    curve.append((0, accuracy(model)))
    args = GRPOConfig(
        output_dir=str(work / "out"), max_steps=steps, per_device_train_batch_size=r.rollout_batch_size
        * r.n_samples_per_prompt, num_generations=r.n_samples_per_prompt, gradient_accumulation_steps=1,
        learning_rate=o.lr, lr_scheduler_type="cosine_with_min_lr", lr_scheduler_kwargs={"min_lr_rate": o.min_lr_ratio},
        warmup_steps=o.warmup_steps, adam_beta1=o.betas[0], adam_beta2=o.betas[1], weight_decay=o.weight_decay,
        max_grad_norm=cfg.optim.grad_clip, beta=a.kl_loss_coef, epsilon=a.eps_clip, epsilon_high=a.eps_clip_high,
        loss_type="dapo", scale_rewards="group" if a.normalize_advantage_std else "none", num_iterations=1,
        temperature=r.rollout_temperature, top_p=r.rollout_top_p, max_completion_length=r.rollout_max_response_len,
        chat_template_kwargs=chat, use_cpu=True, bf16=False, gradient_checkpointing=False, seed=seed,
        logging_steps=max(1, eval_every), report_to="none", save_strategy="no", disable_tqdm=True)
    data = Dataset.from_list([{"prompt": p.prompt, "label": str(p.label)} for p in nemoh_side.train_prompts])
    trainer = GRPOTrainer(model=model, reward_funcs=score, args=args, train_dataset=data,
                          processing_class=AutoTokenizer.from_pretrained(ws), callbacks=[Eval()])
    t0 = time.perf_counter()
    trainer.train()
    wall = time.perf_counter() - t0 - eval_time[0]
    shutil.rmtree(work, ignore_errors=True)
    return {"before": curve[0][1], "after": curve[-1][1], "curve": curve, "wall_s": wall}


def _ms(xs: list[float]) -> str:
    return f"{statistics.mean(xs):.1%} ± {statistics.stdev(xs) if len(xs) > 1 else 0.0:.1%}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--task", default="last_letter")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--eval-every", type=int, default=25)
    ap.add_argument("--ws-seed", type=int, default=None, help="start every seed from this seed's warm start "
                    "(the spread is then RL's alone); default: each seed its own warm start")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-rl-tasks"))
    args = ap.parse_args()
    out = Path(args.out)
    rows: dict[str, list[dict]] = {"nemoh (recipe, dynamic sampling)": [], "nemoh (no dynamic sampling)": [],
                                   "TRL GRPOTrainer": []}
    sets = [f"train.rollouts={args.steps}", f"train.eval_every={args.eval_every}"]
    for seed in (int(s) for s in args.seeds.split(",")):
        ws_seed = seed if args.ws_seed is None else args.ws_seed
        ws = warm_start(args.task, ws_seed, [], out)
        runs = {"nemoh (recipe, dynamic sampling)": partial(rl_run, args.task, seed, sets, out, "vs-trl-ds", ws_seed),
                "nemoh (no dynamic sampling)": partial(rl_run, args.task, seed, sets + ["algo.dynamic_sampling=false"],
                                                       out, "vs-trl-nods", ws_seed),
                "TRL GRPOTrainer": partial(trl_run, args.task, seed, ws, args.steps, args.eval_every)}
        for name, run in runs.items():
            res = run()
            rows[name].append(res)
            print(f"{name} seed {seed}: curve {[(s, round(a, 3)) for s, a in res['curve']]}, "
                  f"train wall {res['wall_s']:.0f} s", flush=True)
    print(f"\n{args.task}, {args.steps} updates of 16 prompts x 8 samples, seeds {args.seeds}")
    print("| trainer | held-out before | after | gain (points) | wall s (mean) |")
    print("|---|---|---|---|---|")
    for name, rs in rows.items():
        gains = [100 * (x["after"] - x["before"]) for x in rs]
        print(f"| {name} | {_ms([x['before'] for x in rs])} | {_ms([x['after'] for x in rs])} | "
              f"{statistics.mean(gains):+.1f} ± {statistics.stdev(gains) if len(gains) > 1 else 0:.1f} | "
              f"{statistics.mean(x['wall_s'] for x in rs):.0f} |")


if __name__ == "__main__":
    main()
