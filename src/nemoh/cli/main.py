"""The `nemoh` command line: one subcommand per job, each a small function registered in COMMANDS.

Error contract: a user error (bad config value, path, device, data file, checkpoint file) is one line on stderr,
`nemoh <command>: error: <setting or file>: <reason>`, and exit status 2; an unexpected error is one line and exit
status 1. `--debug` (before or after the command) shows the traceback instead."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

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


# exceptions that mean bad input (config values, paths, devices, data and checkpoint files): exit status 2
USER_ERRORS = (ValueError, OSError, NotImplementedError)
DEBUG_HELP = "show the full traceback of an error"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nemoh", description="Run, serve, fine-tune and RL-train Nemotron-3 models.")
    parser.add_argument("--debug", dest="debug_first", action="store_true", help=DEBUG_HELP)
    sub = parser.add_subparsers(dest="command", required=True)
    for name, (add_args, run) in COMMANDS.items():
        p = sub.add_parser(name, help=(run.__doc__ or "").strip().splitlines()[0])
        p.add_argument("--debug", action="store_true", help=DEBUG_HELP)
        add_args(p)
        p.set_defaults(_run=run)
    return parser


def describe(e: BaseException) -> str:
    """One line for an error: an OSError as `path: reason`, anything else as its message."""
    if isinstance(e, OSError) and e.filename is not None:
        return f"{e.filename}: {e.strerror or e}"
    text = str(e).strip() or type(e).__name__
    return text if isinstance(e, USER_ERRORS) else f"{type(e).__name__}: {text}"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in OVERRIDABLE:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    args.overrides = extra
    debug = args.debug or args.debug_first
    try:
        return args._run(args)
    except KeyboardInterrupt:
        print(f"nemoh {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # the error contract: one line, the traceback only with --debug
        if debug:
            raise
        user = isinstance(e, USER_ERRORS)
        hint = "" if user else " (an internal error: rerun with --debug for the traceback and report it)"
        print(f"nemoh {args.command}: error: {describe(e)}{hint}", file=sys.stderr)
        return 2 if user else 1
    finally:
        if args.command in OVERRIDABLE:  # the training commands may have joined a torchrun process group
            from ..parallel import shutdown_distributed
            shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
