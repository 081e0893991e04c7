"""Verify one candidate: the trusted parent's side. The reference runs in its own process (once per problem and
configuration, cached here in memory, its files deleted before any candidate of the problem starts); the
candidate's process gets the inputs only and returns its outputs and a signed report; the comparison, the trial
bookkeeping and the verdict happen here, where nothing the candidate runs can reach.
"""
from __future__ import annotations

import ast
import atexit
import hashlib
import io
import json
import secrets
import shutil
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from . import rules
from .compare import compare
from .sandbox import SandboxConfig, crash_reason, isolation, run_worker
from .shrink import shrink_problem
from .taxonomy import DOES_NOT_FIT, INTEGRITY, NO_CODE, SYNTAX_IMPORT, TIMEOUT, Verdict
from .trials import plan

_REF_ROOT: list[Path] = []


def ref_root() -> Path:
    """Where reference processes write (created on first use, removed at exit); candidates may not read under it."""
    with _GUARD:
        if not _REF_ROOT:
            _REF_ROOT.append(Path(tempfile.mkdtemp(prefix="nemoh-ref-")))
            atexit.register(shutil.rmtree, _REF_ROOT[0], True)
        return _REF_ROOT[0]
_CACHE: OrderedDict[str, Reference] = OrderedDict()
_CACHE_SIZE = 4
_LOCKS: dict[str, threading.Lock] = {}
_GUARD = threading.Lock()


@dataclass
class Reference:
    inputs: bytes = b""                 # inputs.pt as the candidate receives it
    outputs: list = field(default_factory=list)
    probe: Any = None                   # the reference's output with one scalar init argument changed
    meta: dict = field(default_factory=dict)
    does_not_fit: str = ""


def _nbytes(outputs: list) -> int:
    """The largest trial output, in bytes."""
    def size(o: Any) -> int:
        if isinstance(o, (tuple, list)):
            return sum(size(x) for x in o)
        return o.numel() * o.element_size() if isinstance(o, torch.Tensor) else 0
    return max((size(o) for o in outputs), default=0)


def _load(data: bytes | Path) -> Any:
    src = io.BytesIO(data) if isinstance(data, bytes) else data
    return torch.load(src, weights_only=True)


def _run_reference(code: str, cfg: SandboxConfig, device: str) -> Reference:
    tmp = Path(tempfile.mkdtemp(dir=ref_root()))
    try:
        spec = {"problem_code": code, "device": device, "seed": cfg.seed, "out_dir": str(tmp),
                "trials": [t.to_dict() for t in plan(cfg.seed, cfg.trials, cfg.transforms)],
                "warmup": cfg.warmup, "iters": cfg.iters}
        (tmp / "spec.json").write_text(json.dumps(spec))
        # the reference writes every trial's inputs and outputs: its files may be as large as its memory
        fin = run_worker("ref_worker.py", tmp / "spec.json", tmp, cfg, device, file_bytes=int(cfg.mem_gb * 2**30))
        if fin.timed_out:
            return Reference(does_not_fit=f"the reference took longer than {cfg.timeout_s:g} s")
        if not (tmp / "meta.json").exists():
            _, why = crash_reason(fin.returncode, fin.stderr)
            return Reference(does_not_fit=f"the reference process died ({why}): likely over the "
                                          f"{cfg.mem_gb:g} GiB or {cfg.cpu_limit_s} CPU-s limit")
        meta = json.loads((tmp / "meta.json").read_text())
        if meta.get("does_not_fit") or meta.get("reference_error"):
            why = meta.get("does_not_fit") or f"the reference fails here: {meta['reference_error']}"
            return Reference(meta=meta, does_not_fit=why)
        ref = _load(tmp / "ref.pt")
        return Reference((tmp / "inputs.pt").read_bytes(), ref["outputs"], ref["probe"], meta)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def reference(code: str, cfg: SandboxConfig, device: str) -> Reference:
    """The problem's reference for this configuration, computed once (per-key lock: concurrent candidates of one
    problem wait for the same run)."""
    key = hashlib.sha256(json.dumps([code, device, cfg.seed, cfg.trials, cfg.transforms, cfg.mem_gb,
                                     cfg.timeout_s, cfg.iters if device == "cuda" else 0]).encode()).hexdigest()
    with _GUARD:
        lock = _LOCKS.setdefault(key, threading.Lock())
    with lock:
        with _GUARD:
            if key in _CACHE:
                _CACHE.move_to_end(key)
                return _CACHE[key]
        ref = _run_reference(code, cfg, device)
        with _GUARD:
            _CACHE[key] = ref
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        return ref


def verify_code(problem_code: str, candidate_code: str | None, problem: str = "", sample: int = 0,
                level: str = "", cfg: SandboxConfig | None = None) -> Verdict:
    """Judge one candidate against the problem's reference. Thread-safe: every call has its own process and
    temp dir; references are shared."""
    cfg = cfg or SandboxConfig()
    device = cfg.resolved_device()
    v = Verdict(problem=problem, sample=sample, level=level, mode="interpret" if device == "cpu" else "gpu",
                isolation=isolation())
    if not candidate_code or not candidate_code.strip():
        v.failure, v.detail = NO_CODE, "no fenced python block in the response"
        return v
    t0 = time.perf_counter()
    try:
        early = _static_verdict(candidate_code, cfg)
        if early:
            v.parsed = early[0] != SYNTAX_IMPORT
            v.failure, v.detail, v.flags = early[0], early[1], early[2]
            return v
        code, changed = shrink_problem(problem_code, cfg.shrink)
        if cfg.shrink > 1:
            v.shrink = {"factor": cfg.shrink, "changed": changed}
        ref = reference(code, cfg, device)
        v.parsed = True
        if ref.does_not_fit:
            v.failure, v.detail = DOES_NOT_FIT, ref.does_not_fit
            return v
        v.trials = list(ref.meta["trials"])
        _run_candidate(candidate_code, ref, cfg, device, v)
        return v
    except SyntaxError as e:
        v.failure, v.detail = DOES_NOT_FIT, f"the problem source does not parse: {e.msg}"
        return v
    finally:
        v.seconds = time.perf_counter() - t0


def _static_verdict(candidate_code: str, cfg: SandboxConfig) -> tuple[str, str, list[str]] | None:
    """Source that does not parse or breaks the static rules never reaches a process (the candidate process
    checks the rules again: defence in depth, not trust in this one)."""
    try:
        tree = ast.parse(candidate_code)
    except SyntaxError as e:
        return SYNTAX_IMPORT, f"SyntaxError: {e.msg} (line {e.lineno})", []
    except (ValueError, RecursionError, MemoryError) as e:    # NUL bytes, nesting deeper than the parser goes
        return SYNTAX_IMPORT, f"{type(e).__name__}: {str(e)[:200]}", []
    found = rules.findings(tree) if cfg.static_rules else []
    return (INTEGRITY, "; ".join(found), found) if found else None


def _run_candidate(candidate_code: str, ref: Reference, cfg: SandboxConfig, device: str, v: Verdict) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="nemoh-kernel-"))
    out_dir = tmp / secrets.token_hex(8)
    nonce = secrets.token_hex(16)
    try:
        out_dir.mkdir()
        (tmp / "inputs.pt").write_bytes(ref.inputs)
        spec = {"candidate_code": candidate_code, "device": device, "seed": cfg.seed, "inputs": str(tmp / "inputs.pt"),
                "allowed_dirs": [str(out_dir)] + ([str(tmp / "triton")] if device == "cuda" else []),
                "deny_read": [str(ref_root())], "static_rules": cfg.static_rules,
                "warmup": cfg.warmup, "iters": cfg.iters}
        (tmp / "spec.json").write_text(json.dumps(spec))
        fin = run_worker("cand_worker.py", tmp / "spec.json", tmp, cfg, device,
                         json.dumps({"nonce": nonce, "out_dir": str(out_dir)}).encode() + b"\n",
                         file_bytes=2 * _nbytes(ref.outputs) + (1 << 20))   # one trial's output per file
        if fin.timed_out:
            v.failure, v.detail = TIMEOUT, f"killed after {cfg.timeout_s:g} s wall clock"
            return
        report_file = out_dir / "report.json"
        if not report_file.exists():
            v.failure, v.detail = crash_reason(fin.returncode, fin.stderr)
            return
        report = json.loads(report_file.read_text())
        if report.get("nonce") != nonce or not _files_check_out(out_dir, report.get("files", {})):
            v.failure, v.detail = INTEGRITY, "the report or the outputs were not written by the verifier's worker"
            return
        _judge(report, out_dir, ref, cfg, v)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _files_check_out(out_dir: Path, files: dict) -> bool:
    present = {p.name for p in out_dir.glob("*.pt")}
    return present == set(files) and all(hashlib.sha256((out_dir / n).read_bytes()).hexdigest() == d
                                         for n, d in files.items())


def _judge(report: dict, out_dir: Path, ref: Reference, cfg: SandboxConfig, v: Verdict) -> None:
    """Report + outputs -> the verdict, in the order: the candidate's own failure, integrity, outputs."""
    v.parsed = bool(report.get("parsed"))
    v.compiled = bool(report.get("compiled"))
    v.launches = int(report.get("launches", 0))
    flags = list(report.get("flags", []))
    sigs = report.get("signatures", [])
    if len(set(sigs)) > 1:
        flags.append("passes different scalars to its kernels on different trials (values computed outside the "
                     "kernels?)")
    v.flags = flags
    if report.get("failure"):
        v.failure, v.detail = report["failure"], report.get("detail", "")
        if flags and v.failure != INTEGRITY and v.failure in ("runtime_error",):
            v.failure, v.detail = INTEGRITY, "; ".join(flags)
        return
    if flags:
        v.failure, v.detail = INTEGRITY, "; ".join(flags)
        return
    errs = []
    for i, (name, expected) in enumerate(zip(v.trials, ref.outputs)):
        try:
            out = _load(out_dir / f"out_{i}.pt")
        except Exception as e:  # noqa: BLE001 - anything but plain tensors fails weights_only loading
            v.failure, v.detail = INTEGRITY, f"trial {name}: the output is not plain tensors ({type(e).__name__})"
            return
        c = compare(out, expected)
        if c.failure:
            v.failure, v.detail = c.failure, f"trial {name}: {c.detail}"
            v.max_abs_err, v.mean_abs_err, v.rel_l2_err = c.max_abs_err, c.mean_abs_err, c.rel_l2_err
            return
        errs.append(c)
    if errs:
        v.max_abs_err = max(c.max_abs_err for c in errs)
        v.mean_abs_err = sum(c.mean_abs_err for c in errs) / len(errs)
        v.rel_l2_err = max(c.rel_l2_err for c in errs)
    v.flags += _probe_flags(out_dir, ref, report)
    if not _timed(report, out_dir, ref, cfg, v):
        return
    v.correct = True


def _probe_flags(out_dir: Path, ref: Reference, report: dict) -> list[str]:
    """Flag (never fail) a kernel that ignores a change of a scalar init argument the reference responds to."""
    if ref.probe is None:
        return []
    arg = ref.meta.get("probe_arg")
    if not (out_dir / "probe.pt").exists():
        return [f"fails when init argument {arg} changes ({report.get('probe_error', 'no output')})"]
    out = _load(out_dir / "probe.pt")
    if not compare(out, ref.probe).failure:
        return []
    base = _load(out_dir / "out_0.pt")
    ignored = type(out) is torch.Tensor and type(base) is torch.Tensor and out.shape == base.shape and \
        torch.equal(out, base)
    return [f"init argument {arg}: the output {'ignores' if ignored else 'is wrong after'} a change the reference "
            "responds to (hard-coded constant?)"]


def _timed(report: dict, out_dir: Path, ref: Reference, cfg: SandboxConfig, v: Verdict) -> bool:
    """GPU: the timed iterations' outputs must be right too; speedups above the threshold wait for a person."""
    t_new = report.get("timings_ms", {}).get("candidate")
    if not t_new:
        return True
    for k, expected in enumerate(ref.outputs[:2]):
        f = out_dir / f"timed_{k}.pt"
        if not f.exists() or compare(_load(f), expected).failure:
            v.failure, v.detail = INTEGRITY, f"the output in the timing loop (value set {k}) is wrong"
            return False
    base = ref.meta.get("timings_ms", {})
    v.timings_ms = {"candidate": t_new, **base}
    if base.get("eager"):
        v.speedup_eager = base["eager"] / t_new
    if base.get("compile"):
        v.speedup_compile = base["compile"] / t_new
    if ref.meta.get("baseline_error"):
        v.flags.append(ref.meta["baseline_error"])
    if v.speedup_eager and v.speedup_eager > cfg.max_speedup:
        v.flags.append(f"suspicious speedup {v.speedup_eager:.1f}x > {cfg.max_speedup:g}x: check by hand "
                       "(`nemoh kernels clear`)")
        v.speed_review = "pending"
    return True
