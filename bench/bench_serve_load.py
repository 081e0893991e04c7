"""Load on a live `nemoh serve` (tiny model): concurrent streaming clients with mixed n, with and without one
hostile client in the mix. Prints requests/s, p50/p99 latency and time to first token, and the ratios.

    python bench/bench_serve_load.py [--clients 16] [--requests 8] [--max-tokens 32]
    python bench/bench_serve_load.py --health [--clients 4]

`--health` instead measures /health latency while `--clients` threads post 5 MB chat bodies, with the bodies
prepared in threads (`--prepare-processes 0`) and in worker processes (the default), at a context of 1024 tokens
(the prompt is refused by its length before tokenising) and of 80,000 (it is tokenised, then refused).

The hostile client loops over requests that used to hurt others: malformed bodies, out-of-vocabulary stop ids with
min_tokens, lone surrogates, 9 MB bodies, prompts far beyond the context, and streams it abandons after two chunks.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import httpx

from nemoh.cli.model_cmds import init_tiny

HOSTILE = [
    {"prompt": "x", "stop_token_ids": [10**9], "min_tokens": 5},
    {"prompt": "x", "stop_token_ids": ["a"], "min_tokens": 5},
    {"messages": [{"role": "user", "content": "\ud800"}]},
    {"messages": [{"role": 3, "content": None}], "stream": "false"},
    {"messages": [{"role": "user", "content": "y" * 2_000_000}]},
    {"prompt": "z", "seed": 2**64, "n": 10**6},
]


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def one_stream(client: httpx.AsyncClient, i: int, max_tokens: int) -> tuple[float, float, int]:
    """(latency to [DONE], time to first token, choices finished) of one streamed request."""
    n = (1, 2, 4)[i % 3]
    body = {"model": "tiny", "prompt": f"client request {i}", "max_tokens": max_tokens, "n": n, "seed": i,
            "temperature": 1.0, "ignore_eos": True, "stream": True}
    t0 = time.perf_counter()
    ttft, finished = None, 0
    async with client.stream("POST", "/v1/completions", json=body) as r:
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            ev = json.loads(line[6:])
            for ch in ev["choices"]:
                if ttft is None and ch["text"]:
                    ttft = time.perf_counter() - t0
                finished += ch["finish_reason"] is not None
    assert finished == n, f"request {i}: {finished} of {n} choices finished"
    return time.perf_counter() - t0, ttft or 0.0, n


async def hostile(client: httpx.AsyncClient, stop: asyncio.Event) -> int:
    sent = 0
    while not stop.is_set():
        for body in HOSTILE:
            route = "/v1/chat/completions" if "messages" in body else "/v1/completions"
            r = await client.post(route, content=json.dumps(body).encode())
            assert r.status_code < 500, r.text
            sent += 1
        r = await client.post("/v1/completions", content=b'{"prompt": "' + b"x" * (9 * 2**20) + b'"}')
        assert r.status_code == 413
        async with client.stream("POST", "/v1/completions", json={"prompt": "leave", "max_tokens": 100, "n": 2,
                                                                   "stream": True, "ignore_eos": True}) as s:
            async for i, _ in _enum(s.aiter_lines()):
                if i >= 2:
                    break                      # abandon the stream: the server must abort it
        sent += 2
    return sent


async def _enum(it):
    i = 0
    async for x in it:
        yield i, x
        i += 1


async def run_phase(base: str, clients: int, per_client: int, max_tokens: int, with_hostile: bool) -> dict:
    limits = httpx.Limits(max_connections=clients + 4)
    async with httpx.AsyncClient(base_url=base, timeout=600, limits=limits) as client:
        stop = asyncio.Event()
        bad = asyncio.create_task(hostile(client, stop)) if with_hostile else None

        async def worker(c: int) -> list[tuple[float, float, int]]:
            return [await one_stream(client, c * per_client + k, max_tokens) for k in range(per_client)]

        t0 = time.perf_counter()
        results = [r for rs in await asyncio.gather(*(worker(c) for c in range(clients))) for r in rs]
        wall = time.perf_counter() - t0
        stop.set()
        hostile_sent = await bad if bad else 0
    lat = sorted(r[0] for r in results)
    ttft = sorted(r[1] for r in results)
    q = statistics.quantiles(lat, n=100)
    return {"requests": len(results), "req_s": len(results) / wall,
            "tok_s": sum(r[2] for r in results) * max_tokens / wall,
            "p50": statistics.median(lat), "p99": q[98], "ttft_p50": statistics.median(ttft), "hostile": hostile_sent}


def _poll_health(base: str, stop: threading.Event, out: list[float]) -> None:
    with httpx.Client(base_url=base, timeout=600) as c:
        while not stop.is_set():
            t = time.perf_counter()
            try:
                c.get("/health")
            except httpx.TransportError:   # a keep-alive connection the stalled server closed late: count the wait
                pass
            out.append(time.perf_counter() - t)
            time.sleep(0.01)


def _polled(base: str, work) -> list[float]:
    """/health latencies (s) measured every 10 ms while `work()` runs."""
    lat: list[float] = []
    stop = threading.Event()
    poller = threading.Thread(target=_poll_health, args=(base, stop, lat))
    poller.start()
    try:
        work()
    finally:
        stop.set()
        poller.join()
    return lat


def health_phase(path: Path, context: int, processes: int, clients: int) -> tuple[list[float], list[float]]:
    """(/health latencies idle, /health latencies while `clients` threads each post a 5 MB chat body twice)."""
    proc, base = _start(path, "--max-model-len", str(context), "--max-num-seqs", "4",
                        "--prepare-processes", str(processes))
    raw = json.dumps({"model": "tiny", "max_tokens": 4,
                      "messages": [{"role": "user", "content": ("a long prompt, " * 400_000)[:5_000_000]}]}).encode()

    def post() -> None:
        with httpx.Client(base_url=base, timeout=600) as c:
            for _ in range(2):
                assert c.post("/v1/chat/completions", content=raw).status_code == 400   # too long for the context

    try:
        post()                                        # warm-up: worker processes start, templates compile
        idle = _polled(base, lambda: time.sleep(2))
        threads = [threading.Thread(target=post) for _ in range(clients)]
        busy = _polled(base, lambda: [t.start() for t in threads] and [t.join() for t in threads])
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    return idle, busy


def _start(path: Path, *args: str) -> tuple[subprocess.Popen, str]:
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nemoh.cli.main", "serve", str(path), "--port", str(port),
                             "--served-model-name", "tiny", *args], stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    for _ in range(1200):
        try:
            httpx.get(base + "/health", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.1)
    return proc, base


def main_health(clients: int) -> None:
    ms = 1e3
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny"
        init_tiny(path, seed=0)
        print(f"/health every 10 ms while {clients} clients each post a 5 MB chat body twice (ms)")
        print(f"{'context':>8} {'prepared in':<12}{'idle p50':>9}{'idle max':>9}{'p50':>8}{'p99':>8}{'max':>8}")
        for context in (1024, 80_000):
            for processes, where in ((0, "threads"), (2, "processes")):
                idle, busy = health_phase(path, context, processes, clients)
                p99 = sorted(busy)[int(0.99 * (len(busy) - 1))]      # an observed value, not extrapolated
                print(f"{context:>8} {where:<12}{statistics.median(idle) * ms:9.1f}{max(idle) * ms:9.1f}"
                      f"{statistics.median(busy) * ms:8.1f}{p99 * ms:8.1f}{max(busy) * ms:8.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--requests", type=int, default=8, help="requests per client")
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--max-num-seqs", type=int, default=32)
    ap.add_argument("--health", action="store_true", help="measure /health latency under 5 MB bodies instead")
    args = ap.parse_args()
    if args.health:
        return main_health(args.clients if args.clients != 16 else 4)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "tiny"
        init_tiny(path, seed=0)
        port = _free_port()
        proc = subprocess.Popen([sys.executable, "-m", "nemoh.cli.main", "serve", str(path), "--port", str(port),
                                 "--served-model-name", "tiny", "--max-model-len", "256",
                                 "--max-num-seqs", str(args.max_num_seqs)],
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        base = f"http://127.0.0.1:{port}"
        try:
            for _ in range(1200):
                try:
                    httpx.get(base + "/health", timeout=1)
                    break
                except httpx.HTTPError:
                    time.sleep(0.1)
            # warm-up: a full clean phase first (the first batches of each shape are slower on the CPU)
            asyncio.run(run_phase(base, args.clients, args.requests, args.max_tokens, False))
            clean = asyncio.run(run_phase(base, args.clients, args.requests, args.max_tokens, False))
            mixed = asyncio.run(run_phase(base, args.clients, args.requests, args.max_tokens, True))
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    print(f"{args.clients} streaming clients x {args.requests} requests, n in (1, 2, 4), {args.max_tokens} tokens each")
    print(f"{'':16}{'req/s':>8}{'tok/s':>8}{'p50 s':>8}{'p99 s':>8}{'ttft p50':>10}{'hostile':>9}")
    for name, r in (("clean", clean), ("with hostile", mixed)):
        print(f"{name:16}{r['req_s']:8.2f}{r['tok_s']:8.0f}{r['p50']:8.2f}{r['p99']:8.2f}{r['ttft_p50']:10.2f}"
              f"{r['hostile']:9d}")
    print(f"ratio hostile/clean: req/s {mixed['req_s'] / clean['req_s']:.2f}, p50 {mixed['p50'] / clean['p50']:.2f}, "
          f"p99 {mixed['p99'] / clean['p99']:.2f}")


if __name__ == "__main__":
    main()
