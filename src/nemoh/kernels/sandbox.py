"""Sandboxed processes for the verifier: a fresh interpreter (`python -I`, our worker script by path so that no
installed copy of nemoh is imported), an environment with nothing of ours in it (PATH, its temp dir as
HOME/TMPDIR/Triton cache, TRITON_INTERPRET=1 on a CPU, set before anything imports Triton), rlimits (CPU seconds,
file size, open files; address space on CPU only: CUDA maps far more than it uses), a wall-clock timeout that
kills the whole process group, and no network: a fresh network namespace (`unshare -rn`) when the kernel allows
unprivileged user namespaces, else only the in-process audit hook, which the verdict's `isolation` says.
"""
from __future__ import annotations

import functools
import math
import os
import resource
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent


@dataclass
class SandboxConfig:
    timeout_s: float = 120.0        # wall clock for the candidate's process (and for the reference's)
    cpu_s: int | None = None        # RLIMIT_CPU (all threads); None: follows timeout_s
    mem_gb: float = 4.0             # RLIMIT_AS, CPU runs only (torch + triton need ~2)
    file_mb: int = 64               # RLIMIT_FSIZE
    open_files: int = 1024          # RLIMIT_NOFILE
    trials: int = 2                 # seeded trials; the transformed ones come on top (kernels.trials)
    transforms: tuple[str, ...] = ("neg", "up", "down")
    seed: int = 42
    device: str = "auto"            # auto | cpu | cuda
    shrink: int = 1                 # >1: the problem's size constants divided by this (kernels.shrink)
    warmup: int = 5                 # GPU timing
    iters: int = 30
    max_speedup: float = 20.0       # above: flagged, and no speed bonus until a person clears it
    static_rules: bool = True       # False only to test the runtime layers alone

    def __post_init__(self) -> None:
        if self.timeout_s <= 0:
            raise ValueError(f"timeout_s: must be > 0, got {self.timeout_s}")
        if self.cpu_s is not None and self.cpu_s <= 0:
            raise ValueError(f"cpu_s: must be > 0, got {self.cpu_s}")
        if self.trials < 1:
            raise ValueError(f"trials: need at least 1, got {self.trials}")
        if self.shrink < 1:
            raise ValueError(f"shrink: must be >= 1, got {self.shrink}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device: auto, cpu or cuda, got {self.device!r}")
        self.transforms = tuple(self.transforms)

    @property
    def cpu_limit_s(self) -> int:
        return self.cpu_s if self.cpu_s is not None else math.ceil(self.timeout_s)

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


def isolation() -> str:
    return "netns" if network_namespace_available() else "audit-hook only (no unprivileged netns here)"


def _limits(cfg: SandboxConfig, device: str, file_bytes: int):
    def apply() -> None:
        cpu = cfg.cpu_limit_s
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu + 5))
        resource.setrlimit(resource.RLIMIT_FSIZE, (file_bytes, file_bytes))
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


@dataclass
class Finished:
    returncode: int
    stderr: str
    timed_out: bool


def run_worker(script: str, spec_path: Path, tmp: Path, cfg: SandboxConfig, device: str,
               stdin: bytes = b"", file_bytes: int = 0) -> Finished:
    """Run HERE/script on spec_path inside the sandbox (cwd tmp); stdin is written to the child's stdin. The
    per-file size limit is max(file_mb, file_bytes): the files a worker must write (outputs) set the floor."""
    file_bytes = max(cfg.file_mb << 20, file_bytes)
    cmd = [sys.executable, "-I", str(HERE / script), str(spec_path)]
    if network_namespace_available():
        cmd = ["unshare", "-rn", *cmd]
    proc = subprocess.Popen(cmd, cwd=tmp, env=_env(tmp, device), stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, preexec_fn=_limits(cfg, device, file_bytes))
    try:
        _, err = proc.communicate(stdin, timeout=cfg.timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)      # the candidate's children go too
        proc.communicate()
        return Finished(proc.returncode, "", True)
    return Finished(proc.returncode, err.decode(errors="replace"), False)


def crash_reason(returncode: int, stderr: str) -> tuple[str, str]:
    """(failure class, detail) for a process that died before writing its report."""
    # unshare reports a child killed by signal N as 128 + N
    sig = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if sig == signal.SIGXCPU:
        return "timeout", "CPU-time limit reached (SIGXCPU)"
    if sig == signal.SIGXFSZ:
        return "integrity_violation", "file-size limit reached (SIGXFSZ): writes too much"
    if sig:
        return "runtime_error", f"the interpreter crashed: {signal.Signals(sig).name} (e.g. an out-of-bounds access)"
    return "runtime_error", f"exited with status {returncode} without a report: {stderr.strip()[-500:]}"
