"""`[rollout] launch = N`: the trainer starts its own rollout servers and stops them at the end.

`launch_engine = "nemoh"` starts `nemoh serve` processes (the CPU case, and what the tests run);
`"sglang"` / `"vllm"` start the real servers with the flags nemoh's launchers build for a rollout server (`--rl`),
plus `launch_args`. Each server gets a free port on 127.0.0.1 and a log file in RUN_DIR/servers/; the trainer
waits for `/health`, and a server that exits first is an error naming its log. `stop` terminates them all (then
kills what is still running after a grace period), on success and on failure alike: no orphan processes.
"""
from __future__ import annotations

import shlex
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from ...serve.launchers import build_command


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LaunchedServers:
    procs: list[subprocess.Popen] = field(default_factory=list)
    urls: list[str] = field(default_factory=list)
    logs: list[Path] = field(default_factory=list)
    _files: list[IO[str]] = field(default_factory=list)

    def stop(self, grace_s: float = 10.0) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.terminate()
        deadline = time.monotonic() + grace_s
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        for f in self._files:
            f.close()


def server_command(engine: str, path: Path, port: int, extra: list[str]) -> tuple[list[str], dict[str, str]]:
    if engine == "nemoh":
        return [sys.executable, "-m", "nemoh.cli.main", "serve", str(path), "--host", "127.0.0.1", "--port",
                str(port), *extra], {}
    cmd, env = build_command(engine, path, "127.0.0.1", port, rl=True)
    return [*cmd, *extra], env


def launch_servers(n: int, path: Path, engine: str, extra: str, log_dir: Path,
                   timeout_s: float = 600.0) -> LaunchedServers:
    """Start `n` servers on `path` and wait until every one answers /health (or stop them all and raise)."""
    import os
    log_dir.mkdir(parents=True, exist_ok=True)
    out = LaunchedServers()
    try:
        for i in range(n):
            port = _free_port()
            cmd, env = server_command(engine, path, port, shlex.split(extra))
            log = log_dir / f"server{i}.log"
            f = open(log, "w")  # noqa: SIM115 (closed by stop())
            out._files.append(f)
            out.procs.append(subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env={**os.environ, **env}))
            out.urls.append(f"http://127.0.0.1:{port}")
            out.logs.append(log)
        deadline = time.monotonic() + timeout_s
        for proc, url, log in zip(out.procs, out.urls, out.logs):
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"rollout.launch: the server for {url} exited with code {proc.returncode} "
                                       f"before answering /health; see {log}")
                try:
                    if httpx.get(url + "/health", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise RuntimeError(f"rollout.launch: {url} did not answer /health in {timeout_s:.0f} s; see {log}")
                time.sleep(0.25)
    except BaseException:
        out.stop()
        raise
    return out
