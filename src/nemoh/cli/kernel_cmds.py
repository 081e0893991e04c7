"""`nemoh kernels ...`: the KernelBench pipeline (problems, generate, verify, report, export, prompts, examples)."""
from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from rich.console import Console

console = Console(soft_wrap=True)


def _verdicts_path(traces: str) -> Path:
    p = Path(traces)
    return p.with_name(p.name.removesuffix(".jsonl") + ".verdicts.jsonl")


def add_kernels_args(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="kernels_command", required=True)
    s = sub.add_parser("problems", help="list problems (built-in, a KernelBench checkout, or a table)")
    s.add_argument("--problems", default="builtin")

    s = sub.add_parser("generate", help="ask an OpenAI-compatible endpoint for Triton solutions")
    s.add_argument("--problems", default="builtin", help="builtin | KernelBench dir | level dir | .jsonl/.parquet "
                                                          "(comma-separated; SPEC@level1 keeps one level)")
    s.add_argument("--base-url", default="http://127.0.0.1:8000/v1")
    s.add_argument("--model", default="nemoh")
    s.add_argument("--api-key", default="EMPTY")
    s.add_argument("-n", "--samples", type=int, default=1, help="samples per problem")
    s.add_argument("--out", required=True, help="traces JSONL (appended; reruns skip finished pairs)")
    s.add_argument("--prompt", default="zero-shot", help="zero-shot | one-shot | a template file with {problem_code}")
    s.add_argument("--temperature", type=float, default=0.7)
    s.add_argument("--top-p", type=float, default=0.95)
    s.add_argument("--max-tokens", type=int, default=4096)
    s.add_argument("--no-thinking", action="store_true", help="send enable_thinking=false")
    s.add_argument("--concurrency", type=int, default=8)
    s.add_argument("--retries", type=int, default=3)
    s.add_argument("--timeout", type=float, default=600.0, help="seconds per request")
    s.add_argument("--quiet", action="store_true")

    s = sub.add_parser("verify", help="verify each trace's code in its own sandbox")
    s.add_argument("traces")
    s.add_argument("--out", help="verdicts JSONL (default: TRACES.verdicts.jsonl; reruns skip judged pairs)")
    s.add_argument("--workers", type=int, default=2, help="sandboxes at once")
    s.add_argument("--timeout", type=float, default=120.0, help="wall-clock seconds per candidate")
    s.add_argument("--cpu-seconds", type=int, default=None, help="CPU-time limit per process (default: --timeout)")
    s.add_argument("--mem-gb", type=float, default=4.0, help="address-space limit per process on a CPU")
    s.add_argument("--shrink", type=int, default=1, help="divide the problems' size constants by this (CPU "
                                                         "correctness checks of real KernelBench sizes)")
    s.add_argument("--trials", type=int, default=2, help="seeded trials (sign-flipped and scaled ones come on top)")
    s.add_argument("--seed", type=int, default=42)
    s.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    s.add_argument("--quiet", action="store_true")

    s = sub.add_parser("report", help="funnel, fast_p, pass@k, speedups, failure classes, a PNG chart")
    s.add_argument("verdicts")
    s.add_argument("--png", help="chart path (default: VERDICTS.png)")
    s.add_argument("--json", help="also write the summary as JSON")

    s = sub.add_parser("export", help="verified traces -> an SFT chat dataset")
    s.add_argument("traces")
    s.add_argument("--verdicts", help="default: TRACES.verdicts.jsonl")
    s.add_argument("--out", required=True)
    s.add_argument("--min-speedup", type=float, default=0.0, help="> 0: keep only GPU-timed speedups >= this")

    s = sub.add_parser("clear", help="clear a suspicious speedup after checking it by hand (it earns its bonus)")
    s.add_argument("verdicts")
    s.add_argument("--problem", required=True)
    s.add_argument("--sample", type=int, default=0)

    s = sub.add_parser("prompts", help="an RL prompt set (prompt + label) for --reward.function kernelbench")
    s.add_argument("--problems", default="builtin")
    s.add_argument("--prompt", default="zero-shot", help="zero-shot | one-shot | a template file")
    s.add_argument("--out", required=True)

    s = sub.add_parser("examples", help="traces of nemoh's shipped solutions (and known cheats) to try the pipeline")
    s.add_argument("--out", required=True)
    s.add_argument("--cheats", action="store_true", help="add the known cheating solutions")


def run_kernels(args: argparse.Namespace) -> int:
    """KernelBench pipeline: problems, generate, verify, report, export, prompts, examples."""
    return {"problems": _problems, "generate": _generate, "verify": _verify, "report": _report,
            "export": _export, "clear": _clear, "prompts": _prompts, "examples": _examples}[args.kernels_command](args)


def _problems(args) -> int:
    from ..kernels import builtin_solution, load_problems
    for p in load_problems(args.problems):
        console.print(f"{p.name:<48} level {p.level:<8} {'solution shipped' if builtin_solution(p) else ''}")
    return 0


def _generate(args) -> int:
    from ..kernels import GenerateConfig, generate, load_problems
    from ..kernels.prompts import load_template
    cfg = GenerateConfig(base_url=args.base_url, model=args.model, api_key=args.api_key, samples=args.samples,
                         temperature=args.temperature, top_p=args.top_p, max_tokens=args.max_tokens,
                         enable_thinking=not args.no_thinking, concurrency=args.concurrency, retries=args.retries,
                         timeout_s=args.timeout)
    problems = load_problems(args.problems)
    stats = generate(problems, args.out, cfg, load_template(args.prompt), progress=not args.quiet)
    console.print(f"{stats['requested']} requested ({stats['errors']} failed after retries), "
                  f"{stats['skipped']} already in {args.out}")
    return 0


def _verify(args) -> int:
    from ..kernels import SandboxConfig, verify_traces
    from ..kernels.sandbox import network_namespace_available
    cfg = SandboxConfig(timeout_s=args.timeout, cpu_s=args.cpu_seconds, mem_gb=args.mem_gb, trials=args.trials,
                        seed=args.seed, device=args.device, shrink=args.shrink)
    out = Path(args.out) if args.out else _verdicts_path(args.traces)
    if cfg.resolved_device() == "cpu":
        console.print("CPU: Triton interpreter, correctness only (no timings)")
    if not network_namespace_available():
        console.print("[yellow]no unprivileged network namespace here: network access is blocked by the "
                      "in-process audit hook only[/yellow]")
    verdicts = verify_traces(args.traces, out, cfg, args.workers, progress=not args.quiet)
    ok = sum(v.correct for v in verdicts)
    unfit = sum(v.failure == "does_not_fit" for v in verdicts)
    console.print(f"verified {len(verdicts)} new candidates: {ok} correct"
                  + (f", {unfit} on problems that do not fit this sandbox" if unfit else "") + f"; verdicts in {out}")
    return 0


def _report(args) -> int:
    from ..kernels import read_verdicts, summarize
    from ..kernels.report import plot_report, print_report
    verdicts = read_verdicts(args.verdicts)
    if not verdicts:
        raise ValueError(f"{args.verdicts}: no verdicts")
    summary = summarize(verdicts)
    print_report(summary)
    png = plot_report(summary, args.png or Path(args.verdicts).with_suffix(".png"))
    if args.json:
        tmp = Path(args.json).with_suffix(".tmp")
        tmp.write_text(json.dumps(summary, indent=2))
        tmp.replace(args.json)
    console.print(f"chart: {png}")
    return 0


def _export(args) -> int:
    from collections import Counter

    from ..kernels import export
    skipped: Counter = Counter()
    n = export(args.traces, args.verdicts or _verdicts_path(args.traces), args.out, args.min_speedup, skipped)
    console.print(f"wrote {n} verified examples to {args.out}")
    for why, count in skipped.most_common():
        console.print(f"  left out {count}: {why}")
    return 0


def _clear(args) -> int:
    from ..kernels.verify import clear_speedup
    v = clear_speedup(args.verdicts, args.problem, args.sample)
    console.print(f"cleared {v.problem} sample {v.sample}: speedup {v.speedup_eager:.2f}x now earns its bonus")
    return 0


def _prompts(args) -> int:
    """Rows `{"prompt", "label"}` that `nemoh rl` reads; the label is the problem source the reward verifies against."""
    from ..data import write_jsonl_atomic
    from ..kernels import load_problems
    from ..kernels.prompts import load_template, render
    template = load_template(args.prompt)
    rows = [{"prompt": render(template, p), "label": p.code, "problem": p.name} for p in load_problems(args.problems)]
    write_jsonl_atomic(args.out, rows)
    console.print(f"wrote {len(rows)} prompts to {args.out}")
    return 0


def _examples(args) -> int:
    from ..data import write_jsonl_atomic
    from ..kernels.problems import DATA, load_problems
    problems = {p.stem: p for p in load_problems("builtin,probes")}
    rows = []
    files = sorted((DATA / "solutions").glob("*.py")) + (sorted((DATA / "cheats").glob("*.py")) if args.cheats else [])
    for f in files:
        code = f.read_text()
        m = re.search(r"# problem: (\S+)", code)
        p = problems[m.group(1) if m else f.stem]
        rows.append({"problem": p.name if not m else f"{p.name}~{f.stem}", "level": p.level, "sample": 0,
                     "problem_code": p.code, "prompt": f"Write a Triton ModelNew for:\n```python\n{p.code}```",
                     "reasoning": "", "answer": f"```python\n{code}```", "code": code, "model": "nemoh-examples",
                     "expect": (re.search(r"# expect: (\S+)", code) or [None, "correct"])[1],
                     "expect_runtime": (re.search(r"# runtime: (\S+)", code) or [None, None])[1],
                     "expect_flag": (re.search(r"# flag: (.+)", code) or [None, None])[1]})
    write_jsonl_atomic(args.out, rows)
    console.print(f"wrote {len(rows)} example traces to {args.out}")
    return 0
