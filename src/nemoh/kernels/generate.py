"""`nemoh kernels generate`: ask an OpenAI-compatible endpoint (nemoh serve, vLLM, SGLang) for K Triton solutions
per problem, concurrently, and append one trace per (problem, sample) to a JSONL file.

The output is an append-only log, flushed per line: a rerun skips the pairs already there (a half-written last
line from a killed run is ignored and redone), so generation resumes where it stopped.
"""
from __future__ import annotations

import asyncio
import hashlib
import json
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .problems import Problem
from .prompts import extract_code, render, split_reasoning


@dataclass
class GenerateConfig:
    base_url: str = "http://127.0.0.1:8000/v1"
    model: str = "nemoh"
    api_key: str = "EMPTY"
    samples: int = 1                       # K per problem
    temperature: float = 0.7
    top_p: float = 0.95
    max_tokens: int = 4096
    enable_thinking: bool = True           # sent as chat_template_kwargs (nemoh, vLLM and SGLang read it)
    concurrency: int = 8
    retries: int = 3
    timeout_s: float = 600.0
    prompt: str = "zero-shot"
    extra_body: dict[str, Any] = field(default_factory=dict)


def done_pairs(path: Path) -> set[tuple[str, int]]:
    done: set[tuple[str, int]] = set()
    if not path.exists():
        return done
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            r = json.loads(line)
            done.add((r["problem"], int(r["sample"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError):
            continue                          # a line cut by a killed run: redo that pair
    return done


async def _ask(client, cfg: GenerateConfig, messages: list[dict], seed: int) -> dict:
    body = {"model": cfg.model, "messages": messages, "temperature": cfg.temperature, "top_p": cfg.top_p,
            "max_tokens": cfg.max_tokens, "seed": seed,
            "chat_template_kwargs": {"enable_thinking": cfg.enable_thinking}, **cfg.extra_body}
    last_error = ""
    for attempt in range(cfg.retries + 1):
        try:
            r = await client.post("/chat/completions", json=body)
            if r.status_code < 500 and r.status_code != 429:
                if r.status_code >= 400:      # our request is wrong: retrying will not help
                    raise RuntimeError(f"HTTP {r.status_code}: {r.text[:300]}")
                return r.json()
            last_error = f"HTTP {r.status_code}: {r.text[:200]}"
        except RuntimeError:
            raise
        except Exception as e:  # connection reset, timeout: retry
            last_error = f"{type(e).__name__}: {e}"
        await asyncio.sleep(min(30.0, 0.5 * 2 ** attempt) * (0.5 + random.random()))
    raise RuntimeError(f"gave up after {cfg.retries + 1} attempts: {last_error}")


def _trace(problem: Problem, sample: int, prompt: str, reply: dict | None, error: str, cfg: GenerateConfig,
           seconds: float) -> dict:
    msg = (reply or {}).get("choices", [{}])[0].get("message", {}) if reply else {}
    content = msg.get("content") or ""
    reasoning, answer = split_reasoning(content, msg.get("reasoning_content") or msg.get("reasoning"))
    code = extract_code(answer)
    return {"problem": problem.name, "level": problem.level, "sample": sample, "problem_code": problem.code,
            "prompt": prompt,
            "reasoning": reasoning, "answer": answer, "code": code, "error": error,
            "model": cfg.model, "base_url": cfg.base_url,
            "sampling": {"temperature": cfg.temperature, "top_p": cfg.top_p, "max_tokens": cfg.max_tokens,
                         "enable_thinking": cfg.enable_thinking, "seed": sample},
            "usage": (reply or {}).get("usage"),
            "finish_reason": ((reply or {}).get("choices") or [{}])[0].get("finish_reason"),
            "problem_sha256": hashlib.sha256(problem.code.encode()).hexdigest(), "seconds": round(seconds, 3),
            "created": int(time.time())}


async def generate_async(problems: list[Problem], out: Path, cfg: GenerateConfig, template: str,
                         progress: bool = True) -> dict[str, int]:
    import httpx
    out.parent.mkdir(parents=True, exist_ok=True)
    done = done_pairs(out)
    todo = [(p, k) for p in problems for k in range(cfg.samples) if (p.name, k) not in done]
    stats = {"requested": len(todo), "skipped": len(problems) * cfg.samples - len(todo), "errors": 0}
    sem = asyncio.Semaphore(cfg.concurrency)
    lock = asyncio.Lock()
    bar = progress_bar("generating", progress, len(todo))
    headers = {"Authorization": f"Bearer {cfg.api_key}"}
    async with httpx.AsyncClient(base_url=cfg.base_url, headers=headers, timeout=cfg.timeout_s) as client:
        with out.open("a", encoding="utf-8") as f:
            async def one(problem: Problem, k: int) -> None:
                prompt = render(template, problem)
                async with sem:
                    t0, reply, error = time.perf_counter(), None, ""
                    try:
                        reply = await _ask(client, cfg, [{"role": "user", "content": prompt}], seed=k)
                    except Exception as e:  # recorded in the trace; verify classifies it as no code
                        error = str(e)
                    trace = _trace(problem, k, prompt, reply, error, cfg, time.perf_counter() - t0)
                async with lock:
                    stats["errors"] += bool(error)
                    f.write(json.dumps(trace, ensure_ascii=False) + "\n")
                    f.flush()
                    if bar:
                        bar[0].advance(bar[1])
            try:
                await asyncio.gather(*(one(p, k) for p, k in todo))
            finally:
                if bar:
                    bar[0].stop()
    return stats


def generate(problems: list[Problem], out: str | Path, cfg: GenerateConfig, template: str,
             progress: bool = True) -> dict[str, int]:
    return asyncio.run(generate_async(problems, Path(out), cfg, template, progress))


def progress_bar(label: str, enabled: bool, total: int):
    """A started rich progress bar and its task id, or None."""
    if not enabled or not total:
        return None
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
    prog = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn())
    prog.start()
    return prog, prog.add_task(label, total=total)


def config_dict(cfg: GenerateConfig) -> dict[str, Any]:
    d = asdict(cfg)
    d.pop("api_key")
    return d
