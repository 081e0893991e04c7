"""The default RL recipe (configs/demo-tiny.toml) on every built-in task, several seeds: held-out accuracy after the
SFT warm start and after RL, mean and spread, wall time. Also the ablation driver: `--set section.key=value`.

    python bench/bench_rl_tasks.py [--tasks first_letter,last_letter,count,two_step] [--seeds 0,1,2]
                                   [--set train.rollouts=100 --set algo.dynamic_sampling=false] [--out DIR]

The warm start of a (task, seed, warm-start settings) is run once and cached under OUT/ws/; every RL run then
starts from that checkpoint, so ablations of the RL side compare RL on the identical starting policy. Every policy
(warm start, nemoh's RL, TRL's in bench_rl_vs_trl.py) is measured by the RL trainer's own held-out evaluation.
Each run's metrics.jsonl is in OUT/<tag>/<task>-s<seed>/ (`nemoh plot` draws it).
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

from nemoh.rl.config import RLConfig
from nemoh.rl.trainer import RLTrainer
from nemoh.train.config import load_config
from nemoh.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parents[1]
RECIPE = ROOT / "configs" / "demo-tiny.toml"


def _overrides(sets: list[str]) -> list[str]:
    out = []
    for s in sets:
        key, _, value = s.partition("=")
        out += [f"--{key}", value]
    return out


def recipe(task: str, seed: int, run: Path, extra: list[str]) -> RLConfig:
    """The default recipe on a built-in task, with this seed, run directory and `--key value` overrides."""
    return load_config(str(RECIPE), ["--data.prompts", f"builtin:{task}", "--train.seed", str(seed),
                                     "--checkpoint.dir", str(run), *extra], cls=RLConfig)


def warm_start(task: str, seed: int, sets: list[str], out: Path) -> Path:
    """The cached warm-started checkpoint for (task, seed, the warm-start settings in `sets`)."""
    ws_sets = [s for s in sets if s.startswith("warm_start.")]
    name = f"{task}-s{seed}" + "".join(f"-{s.split('.', 1)[1].replace('=', '')}" for s in ws_sets)
    run = out / "ws" / name
    if not (run / "final" / "config.json").exists():
        trainer = RLTrainer(recipe(task, seed, run, _overrides(ws_sets)), show_progress=False)
        trainer.warm_start()
        trainer.model.save_pretrained(run / "final", tokenizer_dir=trainer.run_.base_path)
    return run / "final"


def from_checkpoint(task: str, seed: int, ckpt: Path, run: Path, sets: list[str] = ()) -> RLTrainer:
    """An RL trainer on the saved checkpoint `ckpt` (no warm start): its prompts, reward and held-out evaluation
    are the recipe's. Both benches measure every policy through `held_out_accuracy()` of such a trainer: nemoh's
    runs, the warm starts and TRL's checkpoints share one yardstick."""
    return RLTrainer(recipe(task, seed, run, ["--model.path", str(ckpt), "--warm_start.steps", "0",
                                              *_overrides(list(sets))]), show_progress=False)


def rl_run(task: str, seed: int, sets: list[str], out: Path, tag: str, ws_seed: int | None = None) -> dict:
    """RL with `seed` from the warm start of `ws_seed` (default: the same seed)."""
    ws = warm_start(task, seed if ws_seed is None else ws_seed, sets, out)
    run = out / tag / f"{task}-s{seed}"
    if (run / "metrics.jsonl").exists():
        (run / "metrics.jsonl").unlink()   # a fresh curve, not appended to an old one
    trainer = from_checkpoint(task, seed, ws, run, [s for s in sets if not s.startswith("warm_start.")])
    t0 = time.perf_counter()
    result = trainer.run()
    wall = time.perf_counter() - t0
    curve = sorted({r["step"]: r["eval_accuracy"] for r in read_metrics(run) if "eval_accuracy" in r}.items())
    return {"task": task, "seed": seed, "before": result["eval_accuracy_before"],
            "after": result["eval_accuracy_after"], "best": max(a for _, a in curve), "curve": curve, "wall_s": wall}


def _ms(xs: list[float]) -> str:
    m = statistics.mean(xs)
    sd = statistics.stdev(xs) if len(xs) > 1 else 0.0
    return f"{m:.1%} ± {sd:.1%}"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", default="addition,reverse,copy,first_letter,last_letter,count,two_step")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--set", action="append", default=[], help="section.key=value override of the recipe")
    ap.add_argument("--tag", default="default", help="name of this configuration's folder under --out")
    ap.add_argument("--out", default=str(ROOT / "runs" / "bench-rl-tasks"))
    args = ap.parse_args()
    out = Path(args.out)
    results = []
    for task in args.tasks.split(","):
        for seed in (int(s) for s in args.seeds.split(",")):
            r = rl_run(task, seed, args.set, out, args.tag)
            results.append(r)
            print(f"{args.tag} {task} seed {seed}: {r['before']:.1%} -> {r['after']:.1%} (best {r['best']:.1%}) "
                  f"in {r['wall_s']:.0f} s; curve {[round(a, 3) for _, a in r['curve']]}", flush=True)
    summary = out / args.tag / "summary.json"
    summary.parent.mkdir(parents=True, exist_ok=True)
    summary.write_text(json.dumps({"sets": args.set, "runs": results}, indent=1))
    print(f"\n| task | warm start | after RL | gain (points) | wall s | seeds |  [{args.tag}: {' '.join(args.set)}]")
    print("|---|---|---|---|---|---|")
    for task in args.tasks.split(","):
        rs = [r for r in results if r["task"] == task]
        gains = [100 * (r["after"] - r["before"]) for r in rs]
        print(f"| {task} | {_ms([r['before'] for r in rs])} | {_ms([r['after'] for r in rs])} | "
              f"{statistics.mean(gains):+.1f} ± {statistics.stdev(gains) if len(gains) > 1 else 0:.1f} | "
              f"{statistics.mean(r['wall_s'] for r in rs):.0f} | {len(rs)} |")


if __name__ == "__main__":
    main()
