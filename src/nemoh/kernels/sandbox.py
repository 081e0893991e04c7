"""Verify one candidate in its own sandboxed process and return its Verdict.

The process: a fresh interpreter (`python -I`), an environment with nothing of ours in it (PATH, its temp dir as
HOME/TMPDIR/Triton cache, TRITON_INTERPRET=1 on a CPU, set before anything imports Triton), rlimits (CPU seconds,
file size, open files; address space on CPU only: CUDA maps far more than it uses), a wall-clock timeout that kills
the whole process group, and no network: a fresh network namespace (`unshare -rn`) when the kernel allows
unprivileged user namespaces, else only the in-process audit hook, which the verdict's `isolation` says.
"""
from __future__ import annotations

import functools
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from .taxonomy import INTEGRITY, NO_CODE, RUNTIME, TIMEOUT, Verdict


@dataclass
class SandboxConfig:
    timeout_s: float = 120.0        # wall clock for the whole process
    cpu_s: int = 300                # RLIMIT_CPU (all threads)
    mem_gb: float = 4.0             # RLIMIT_AS, CPU runs only (torch + triton need ~2)
    file_mb: int = 64               # RLIMIT_FSIZE
    open_files: int = 1024          # RLIMIT_NOFILE
    trials: int = 3
    seed: int = 42
    device: str = "auto"            # auto | cpu | cuda
    warmup: int = 5                 # GPU timing
    iters: int = 30
    max_speedup: float = 20.0       # flag (not fail) speedups above this as suspicious

    def resolved_device(self) -> str:
        if self.device != "auto":
            return self.device
        try:
            import torch
            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"


@functools.cache
def network_namespace_available() -> bool:
    """Can we run a child in its own (empty) network namespace without privileges?"""
    if not shutil.which("unshare"):
        return False
    try:
        return subprocess.run(["unshare", "-rn", "true"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _limits(cfg: SandboxConfig, device: str):
    def apply() -> None:
        resource.setrlimit(resource.RLIMIT_CPU, (cfg.cpu_s, cfg.cpu_s + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (cfg.file_mb << 20, cfg.file_mb << 20))
        resource.setrlimit(resource.RLIMIT_NOFILE, (cfg.open_files, cfg.open_files))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        if device == "cpu":
            limit = int(cfg.mem_gb * 2**30)
            resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return apply


def _env(tmp: Path, device: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(tmp), "TMPDIR": str(tmp),
           "TRITON_CACHE_DIR": str(tmp / "triton"), "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1",
           "PYTHONDONTWRITEBYTECODE": "1", "LANG": "C.UTF-8"}
    if device == "cpu":
        env["TRITON_INTERPRET"] = "1"        # before the candidate (or anything) imports triton
        env["CUDA_VISIBLE_DEVICES"] = ""
    else:
        for k in ("CUDA_VISIBLE_DEVICES", "LD_LIBRARY_PATH", "CUDA_HOME", "TRITON_PTXAS_PATH"):
            if k in os.environ:
                env[k] = os.environ[k]
    return env


def verify_code(problem_code: str, candidate_code: str | None, problem: str = "", sample: int = 0,
                level: str = "", cfg: SandboxConfig | None = None) -> Verdict:
    """Run the candidate against the problem's reference in a fresh sandboxed process. Safe to call from many
    threads at once: every call has its own process and temp dir."""
    cfg = cfg or SandboxConfig()
    device = cfg.resolved_device()
    isolation = "netns" if network_namespace_available() else "audit-hook only (no unprivileged netns here)"
    v = Verdict(problem=problem, sample=sample, level=level, mode="interpret" if device == "cpu" else "gpu",
                isolation=isolation)
    if not candidate_code or not candidate_code.strip():
        v.failure, v.detail = NO_CODE, "no fenced python block in the response"
        return v
    t0 = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="nemoh-kernel-"))
    try:
        spec = {"problem_code": problem_code, "candidate_code": candidate_code, "device": device,
                "seed": cfg.seed, "trials": cfg.trials, "warmup": cfg.warmup, "iters": cfg.iters,
                "max_speedup": cfg.max_speedup, "allowed_dirs": [str(tmp)], "result": str(tmp / "verdict.json")}
        (tmp / "spec.json").write_text(json.dumps(spec))
        cmd = [sys.executable, "-I", "-m", "nemoh.kernels.worker", str(tmp / "spec.json")]
        if isolation == "netns":
            cmd = ["unshare", "-rn", *cmd]
        proc = subprocess.Popen(cmd, cwd=tmp, env=_env(tmp, device), stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_limits(cfg, device))
        try:
            _, err = proc.communicate(timeout=cfg.timeout_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)      # the candidate's children go too
            proc.communicate()
            v.parsed = True
            v.failure, v.detail = TIMEOUT, f"killed after {cfg.timeout_s:g} s wall clock"
            return v
        result = tmp / "verdict.json"
        if result.exists():
            data = json.loads(result.read_text())
            data.pop("traceback", None)
            for k, val in data.items():
                if k in Verdict.__dataclass_fields__:
                    setattr(v, k, val)
        else:
            v.parsed = True
            v.failure, v.detail = _crash(proc.returncode, err.decode(errors="replace"))
        return v
    finally:
        v.seconds = time.perf_counter() - t0
        shutil.rmtree(tmp, ignore_errors=True)


def _crash(returncode: int, stderr: str) -> tuple[str, str]:
    """The process died before writing its verdict."""
    # unshare reports a child killed by signal N as 128 + N
    sig = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if sig == signal.SIGXCPU:
        return TIMEOUT, "CPU-time limit reached (SIGXCPU)"
    if sig == signal.SIGXFSZ:
        return INTEGRITY, "file-size limit reached (SIGXFSZ): writes too much"
    if sig:
        return RUNTIME, f"the interpreter crashed: {signal.Signals(sig).name} (e.g. an out-of-bounds access)"
    return RUNTIME, f"exited with status {returncode} without a verdict: {stderr.strip()[-500:]}"
