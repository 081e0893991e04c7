"""The `nemoh` command line: one subcommand per job, each a small function registered in COMMANDS."""
from __future__ import annotations

import argparse
import sys
from typing import Callable

from . import kernel_cmds, model_cmds, serve_cmds, train_cmds

# name -> (add_arguments, run)
COMMANDS: dict[str, tuple[Callable[[argparse.ArgumentParser], None], Callable[[argparse.Namespace], int]]] = {
    "demo": (model_cmds.add_demo_args, model_cmds.run_demo),
    "init-tiny": (model_cmds.add_init_tiny_args, model_cmds.run_init_tiny),
    "info": (model_cmds.add_info_args, model_cmds.run_info),
    "presets": (lambda p: None, model_cmds.run_presets),
    "serve": (serve_cmds.add_serve_args, serve_cmds.run_serve),
    "generate": (serve_cmds.add_generate_args, serve_cmds.run_generate),
    "chat": (serve_cmds.add_chat_args, serve_cmds.run_chat),
    "sft": (train_cmds.add_sft_args, train_cmds.run_sft_cmd),
    "plot": (train_cmds.add_plot_args, train_cmds.run_plot),
    "merge-lora": (train_cmds.add_merge_args, train_cmds.run_merge),
    "rl": (train_cmds.add_rl_args, train_cmds.run_rl_cmd),
    "plan": (train_cmds.add_plan_args, train_cmds.run_plan),
    "kernels": (kernel_cmds.add_kernels_args, kernel_cmds.run_kernels),
}
# commands that take free-form --section.key value overrides
OVERRIDABLE = {"sft", "rl"}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemoh", description="Run, serve, fine-tune and RL-train Nemotron-3 models.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=(run.__doc__ or "").strip().splitlines()[0])
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in OVERRIDABLE:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    try:
        return args._run(args)
    except ValueError as e:  # bad input: one clear line, no traceback
        print(f"nemoh {args.command}: error: {e}", file=sys.stderr)
        return 2
    finally:
        if args.command in OVERRIDABLE:  # the training commands may have joined a torchrun process group
            from ..parallel import shutdown_distributed
            shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
