"""Serving subcommands: serve (nemoh's own server, or a vLLM/SGLang command line), generate, chat."""
from __future__ import annotations

import argparse
import os
import shlex
import sys

import torch
from rich.console import Console

from ..model.model import DTYPES

console = Console()


def _engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("path", help="checkpoint directory (Hub layout)")
    p.add_argument("--dtype", default="float32" if not torch.cuda.is_available() else "bfloat16", choices=DTYPES)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--max-model-len", type=int, default=4096)
    p.add_argument("--max-num-seqs", type=int, default=16)
    p.add_argument("--max-prefill-tokens", type=int, default=2048, help="prompt tokens prefilled per engine step")
    p.add_argument("--compile", action="store_true", help="compile the decode step (one graph per batch bucket)")


def _llm(args: argparse.Namespace):
    from ..engine import LLM
    return LLM(args.path, dtype=DTYPES[args.dtype], device=args.device, max_num_seqs=args.max_num_seqs,
               max_model_len=args.max_model_len, max_prefill_tokens=args.max_prefill_tokens, compile=args.compile)


def add_serve_args(p: argparse.ArgumentParser) -> None:
    _engine_args(p)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--served-model-name", default=None, help="model name clients send (default: the folder name)")
    p.add_argument("--engine", default="nemoh", choices=["nemoh", "vllm", "sglang"])
    p.add_argument("--tensor-parallel-size", type=int, default=1, help="vllm/sglang only")
    p.add_argument("--dry-run", action="store_true", help="vllm/sglang: print the command instead of running it")
    p.add_argument("--rl", action="store_true",
                   help="vllm/sglang: a rollout server for nemoh rl (routed experts per token; vLLM's dev-mode weight "
                        "endpoints)")
    p.add_argument("--max-body-bytes", type=int, default=8 * 2**20, help="request bodies above this get 413")
    p.add_argument("--prepare-processes", type=int, default=2,
                   help="worker processes that parse, render and tokenise bodies above 256 KiB (0: threads only)")


def run_serve(args: argparse.Namespace) -> int:
    """Serve a checkpoint over the OpenAI API (nemoh's engine, or launch vLLM/SGLang with the right flags)."""
    from pathlib import Path
    name = args.served_model_name or Path(args.path).name
    if args.engine != "nemoh":
        from ..serve import build_command
        cmd, env = build_command(args.engine, args.path, args.host, args.port, name, args.tensor_parallel_size,
                                 args.max_model_len, rl=args.rl)
        line = " ".join([*(f"{k}={v}" for k, v in env.items()), shlex.join(cmd)])
        if args.dry_run:
            print(line)
            return 0
        console.print(f"running: {line}")
        os.execvpe(cmd[0], cmd, {**os.environ, **env})
    import uvicorn

    from ..serve import ServeLimits, build_app
    app = build_app(_llm(args), name, ServeLimits(max_body_bytes=args.max_body_bytes,
                                                          prepare_processes=args.prepare_processes))
    console.print(f"serving [bold]{name}[/] on http://{args.host}:{args.port}/v1")
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


def add_generate_args(p: argparse.ArgumentParser) -> None:
    _engine_args(p)
    p.add_argument("prompt")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--top-p", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--chat", action="store_true", help="wrap the prompt as one user message (chat template)")
    p.add_argument("--no-thinking", action="store_true", help="with --chat: enable_thinking=false")


def run_generate(args: argparse.Namespace) -> int:
    """Generate a continuation of one prompt and print it."""
    from ..engine import SamplingParams
    llm = _llm(args)
    prompt = [{"role": "user", "content": args.prompt}] if args.chat else args.prompt
    out = llm.generate(prompt, SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature,
                                              top_p=args.top_p, seed=args.seed),
                       chat_template_kwargs={"enable_thinking": not args.no_thinking})[0].outputs[0]
    print(out.text)
    console.print(f"[dim]{len(out.token_ids)} tokens, finish_reason={out.finish_reason}[/]", highlight=False)
    return 0


def add_chat_args(p: argparse.ArgumentParser) -> None:
    _engine_args(p)
    p.add_argument("--max-tokens", type=int, default=512)
    p.add_argument("--temperature", type=float, default=0.6)
    p.add_argument("--no-thinking", action="store_true")


def run_chat(args: argparse.Namespace) -> int:
    """Interactive chat in the terminal, streaming tokens (reasoning shown dimmed). Ctrl-D to quit."""
    from ..engine import SamplingParams
    from ..serve.reasoning import ReasoningSplitter
    llm = _llm(args)
    history: list[dict] = []
    kwargs = {"enable_thinking": not args.no_thinking}
    while True:
        try:
            user = input("> ")
        except EOFError:
            print()
            return 0
        history.append({"role": "user", "content": user})
        _, ids = llm.encode_prompt(history, kwargs)
        rid = llm.add_request(ids, SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature))
        split = ReasoningSplitter(llm.tokenizer, llm.ends_in_thought(ids))
        while llm.scheduler.has_work():
            for ev in llm.step():
                r, c = split.add(ev.token_id)
                if r:
                    console.print(r, end="", style="dim", highlight=False)
                if c:
                    sys.stdout.write(c)
                    sys.stdout.flush()
        llm.requests.pop(rid, None)
        print()
        history.append({"role": "assistant", "content": split.content.text})
