"""Training subcommands: sft, plot, merge-lora."""
from __future__ import annotations

import argparse
import os

from rich.console import Console

console = Console(quiet=os.environ.get("RANK", "0") != "0", soft_wrap=True)  # only rank 0 reports


def _config_and_overrides(args: argparse.Namespace) -> tuple[str | None, list[str]]:
    """`[CONFIG.toml] [--section.key value ...]`: a leading non-flag word is the config file."""
    extra = list(args.overrides)
    config = extra.pop(0) if extra and not extra[0].startswith("--") else None
    return config, extra


def add_sft_args(p: argparse.ArgumentParser) -> None:
    # usage: nemoh sft [CONFIG.toml] [--section.key value ...]  (the config and overrides are parsed by load_config)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_sft_cmd(args: argparse.Namespace) -> int:
    """Supervised fine-tuning (full or LoRA) from a TOML config plus --section.key overrides."""
    from ..config_loader import load_config
    from ..train.config import SFTConfig
    from ..train.sft import run_sft
    cfg = load_config(SFTConfig, *_config_and_overrides(args))
    last = run_sft(cfg, show_progress=not args.quiet)
    if last.get("already_finished"):
        return _already_finished(cfg.checkpoint.dir, last["step"])
    console.print(f"done: loss {last['loss']:.4f}"
                  + (f", eval loss {last['eval_loss']:.4f}" if "eval_loss" in last else "")
                  + f"; model in {cfg.checkpoint.dir}/final, metrics in {cfg.checkpoint.dir}/metrics.jsonl")
    return 0


def _already_finished(run_dir: str, step: int) -> int:
    console.print(f"{run_dir}: already finished (checkpoint at step {step}, the last); nothing to resume. "
                  f"Raise the step count to train further, or use a new checkpoint.dir.")
    return 0


def add_plot_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir")
    p.add_argument("--out", default=None, help="folder for the PNGs (default RUN_DIR/plots)")


def run_plot(args: argparse.Namespace) -> int:
    """Draw every metric of a run (metrics.jsonl) as a PNG curve."""
    from ..train.plot import plot_run
    for path in plot_run(args.run_dir, args.out):
        console.print(f"wrote {path}")
    return 0


def add_merge_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("base", help="base checkpoint (Hub layout)")
    p.add_argument("adapter", help="adapter directory (adapter_config.json + adapter_model.safetensors)")
    p.add_argument("out", help="where to write the merged Hub-layout checkpoint")
    p.add_argument("--dtype", default="bfloat16", choices=["float32", "bfloat16"])


def run_merge(args: argparse.Namespace) -> int:
    """Merge a LoRA adapter (experts included) into a full Hub-layout checkpoint."""
    import torch

    from ..lora import load_adapter, merge_lora
    from ..model import NemotronHForCausalLM
    model = NemotronHForCausalLM.from_pretrained(args.base, dtype=torch.float32)
    load_adapter(model, args.adapter)
    merge_lora(model)
    model.save_pretrained(args.out, dtype=getattr(torch, args.dtype))
    console.print(f"wrote {args.out}")
    return 0


def add_rl_args(p: argparse.ArgumentParser) -> None:
    # usage: nemoh rl [CONFIG.toml] [--section.key value ...] [miles flags: --eps-clip-high 0.28 ...]
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def run_rl_cmd(args: argparse.Namespace) -> int:
    """GRPO-family RL (rollouts on the built-in engine, R3 for MoE) from a TOML config plus overrides."""
    from ..config_loader import load_config
    from ..rl.config import RLConfig, translate_miles_flags
    from ..rl.trainer import RLTrainer
    config, extra = _config_and_overrides(args)
    cfg = load_config(RLConfig, config, translate_miles_flags(extra))
    out = RLTrainer(cfg, show_progress=not args.quiet).run()
    if out.get("already_finished"):
        return _already_finished(cfg.checkpoint.dir, out["step"])
    console.print(f"held-out accuracy: before RL {out['eval_accuracy_before']:.1%}, after RL "
                  f"{out['eval_accuracy_after']:.1%}; model in {cfg.checkpoint.dir}/final")
    return 0


def add_plan_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="a training config (.toml: its model and [parallel] layout), a preset name "
                                 "(nano-4b, nano-30b-a3b, super-120b-a12b, ...) or a config.json/dir")
    p.add_argument("--gpus", type=int, required=True)
    p.add_argument("--gpu-mem", type=float, default=80.0, help="GiB per GPU")
    p.add_argument("--tp", type=int, default=None, help="default: the config's [parallel] tp, else 1")
    p.add_argument("--ep", type=int, default=None, help="default: the config's [parallel] ep, else 1")
    p.add_argument("--dp-replicate", type=int, default=None, help="HSDP replicas; default: the config's, else 1")
    p.add_argument("--micro-batch-tokens", type=int, default=8192)
    p.add_argument("--no-activation-checkpointing", action="store_true")
    p.add_argument("--optimizer-offload", action="store_true", help="AdamW state on the CPU")


def run_plan(args: argparse.Namespace) -> int:
    """Memory per GPU (params, grads, optimizer, activations) for a training layout, and whether it fits."""
    from ..model.config import NemotronHConfig
    from ..model.presets import PRESETS, get_preset
    from ..parallel import ParallelConfig, plan_memory
    tp, ep = args.tp, args.ep
    if args.model.endswith(".toml"):
        from pathlib import Path

        import tomllib
        with open(args.model, "rb") as f:
            raw = tomllib.load(f)
        model, par = raw.get("model", {}), raw.get("parallel", {})
        path = Path(model.get("path", ""))
        cfg = NemotronHConfig.from_pretrained(path) if model.get("path") and path.exists() \
            else get_preset(model.get("preset", "tiny"))
        tp, ep = tp or par.get("tp", 1), ep or par.get("ep", 1)
        args.dp_replicate = args.dp_replicate or par.get("dp_replicate", 1)
    else:
        cfg = get_preset(args.model) if args.model in PRESETS else NemotronHConfig.from_pretrained(args.model)
    tp, ep, rep = tp or 1, ep or 1, args.dp_replicate or 1
    ParallelConfig(tp=tp, ep=ep, dp_replicate=rep).resolve(args.gpus, cfg)  # the layout's own checks, with the numbers
    args.tp, args.ep = tp, ep
    plan = plan_memory(cfg, args.gpus, args.gpu_mem, tp, ep, args.micro_batch_tokens,
                       activation_checkpointing=not args.no_activation_checkpointing,
                       optimizer_offload=args.optimizer_offload, dp_replicate=rep)
    console.print(f"{args.model}: {plan.num_params / 1e9:.2f} B parameters on {args.gpus} GPUs "
                  f"(tp={args.tp}, ep={args.ep}, " + (f"HSDP: {rep} replicas, FSDP within each"
                                                      if rep > 1 else "FSDP over the rest") + "), bf16 weights, AdamW")
    print(plan.table())
    console.print(f"fits in {args.gpu_mem:.0f} GiB: {'yes' if plan.fits else 'NO'}")
    return 0
