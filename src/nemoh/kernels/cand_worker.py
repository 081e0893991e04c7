"""The candidate process (untrusted side; sandbox.py starts it by path: fresh interpreter, scrubbed environment,
rlimits, its own temp dir, no network). It holds no reference model, no reference output and no comparison:

    python -I cand_worker.py SPEC.json     # reads DIR/inputs.pt, writes DIR/out_<i>.pt and DIR/report.json

Order: sibling modules loaded by path (nothing from nemoh: `-I` would import another copy) -> guards (audit hook,
launch wrapper with the provenance monitor, thread watch) -> inputs loaded -> static rules -> the candidate
imported -> ModelNew from the seed -> each trial's forward with its ATen ops recorded, fresh allocations
poisoned and every launch checked -> the init-argument probe -> (GPU) the timing loop. The parent compares.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import statistics
import sys
import threading
import time
import traceback
from types import FrameType
from typing import Any

CANDIDATE_FILE = "<candidate>"
VIOLATIONS: list[str] = []
STATE: dict[str, Any] = {"guard": False, "in_launch": 0, "launches": 0, "gpu_launches": 0, "device": "cpu"}
ALLOWED_DIRS: list[str] = []
DENY_READ: list[str] = []
# ATen ops a kernel wrapper may use outside its kernels: allocation, views, layout and dtype copies, no math
ALLOWED_ATEN = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like", "new_zeros",
    "fill_", "zero_", "view", "_unsafe_view", "reshape", "as_strided", "permute", "transpose", "t", "expand",
    "squeeze", "unsqueeze", "flatten", "unflatten", "contiguous", "clone", "copy_", "_to_copy", "to", "detach",
    "alias", "slice", "select", "split", "split_with_sizes", "chunk", "unbind", "lift_fresh", "_local_scalar_dense",
    "view_as", "resize_", "set_", "is_same_size", "_reshape_alias", "narrow", "stride", "size", "numel", "sym_size",
    "sym_stride", "sym_numel", "dim", "is_contiguous", "arange", "scalar_tensor", "result_type", "full",
    "full_like", "new_full", "ones", "ones_like", "new_ones",
}
ALLOC_OPS = {"empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided"}
CONST_OPS = {"fill_", "full", "full_like", "new_full", "ones", "ones_like", "new_ones", "scalar_tensor", "arange"}
COPY_OPS = {"clone", "_to_copy", "copy_", "to", "contiguous"}
SUBPROCESS_EVENTS = {"subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                     "os.forkpty", "pty.spawn"}


def _sibling(name: str):
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), f"{name}.py")
    spec = importlib.util.spec_from_file_location(f"_nemoh_sandbox_{name}", path)
    assert spec is not None and spec.loader is not None  # a .py path always has a source loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Violation(PermissionError):
    pass


def violate(msg: str) -> None:
    if msg not in VIOLATIONS:
        VIOLATIONS.append(msg)
    raise Violation(f"sandbox: {msg}")


def _under(path, dirs: list[str]) -> bool:
    p = os.path.realpath(os.fsdecode(path))
    return any(p == d or p.startswith(d + os.sep) for d in dirs)


def _from_candidate() -> bool:
    """Is the candidate's own code on the stack (whatever library it called through)?"""
    f: FrameType | None = sys._getframe(2)
    while f is not None:
        if f.f_code.co_filename == CANDIDATE_FILE:
            return True
        f = f.f_back
    return False


def _caller_is_candidate() -> bool:
    """Did the candidate's own code (not a library it called) raise this event?"""
    f: FrameType | None = sys._getframe(1)
    while f is not None and f.f_code.co_filename == __file__:
        f = f.f_back
    return f is not None and f.f_code.co_filename == CANDIDATE_FILE


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.chown",
               "os.symlink", "os.link", "shutil.rmtree", "shutil.copyfile", "shutil.move", "os.utime"}


def _allowed_process(event: str, args) -> bool:
    """On a GPU, Triton's compile pipeline runs ptxas; nothing else may start a process once the guard is on (on
    a CPU nothing at all: the interpreter compiles nothing)."""
    if STATE["device"] != "cuda" or event not in ("subprocess.Popen", "os.posix_spawn", "os.exec"):
        return False
    exe = args[0] if args else ""
    return isinstance(exe, (str, bytes)) and os.path.basename(os.fsdecode(exe)).startswith("ptxas")


def audit(event: str, args) -> None:
    if not STATE["guard"] or STATE.get("auditing"):
        return
    STATE["auditing"] = True          # the hook's own calls (sys._getframe) raise events too
    try:
        _audit(event, args)
    finally:
        STATE["auditing"] = False


def _audit(event: str, args) -> None:
    if event == "open":
        path, mode, flags = args
        if path is None or isinstance(path, int):
            return
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if writing and not _under(path, ALLOWED_DIRS):
            violate(f"writes outside its temp dir: {os.fsdecode(path)}")
        if _under(path, DENY_READ):
            violate(f"reads the verifier's files: {os.fsdecode(path)}")
    elif event in PATH_EVENTS:
        for a in args[:2]:
            if isinstance(a, (str, bytes, os.PathLike)) and not _under(a, ALLOWED_DIRS):
                violate(f"{event} outside its temp dir: {os.fsdecode(a)}")
    elif event.startswith("socket."):
        if event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo"):
            violate(f"opens a network connection ({event} {args[1:] if len(args) > 1 else ''})")
    elif event in SUBPROCESS_EVENTS and not _allowed_process(event, args):
        violate(f"starts a process ({event}): compilers and tools are not the candidate's to run")
    elif event.startswith("ctypes.") or event in ("cffi.dlopen", "os.memfd_create"):
        violate(f"reaches native code or raw memory ({event})")
    elif event == "sys.addaudithook":
        violate("installs an audit hook")
    elif event == "sys._getframe" and _caller_is_candidate():
        violate("inspects the call stack (sys._getframe)")
    elif event == "gc.get_objects" or event == "gc.get_referrers" or event == "gc.get_referents":
        violate(f"walks the heap ({event})")


class Monitor:
    """The provenance monitor while a forward runs (`active`), shared by the launch wrapper and the ATen mode."""
    active = False
    prov: Any = None  # a provenance.Provenance (module loaded by path) while a forward runs


def _scalar(a):
    return a if isinstance(a, (int, float, bool, str, type(None))) else type(a).__name__


def _hook_launches(torch) -> list:
    """Wrap Triton's launch entry points (compiled and interpreted): count outermost launches, check their tensor
    arguments' provenance and log their scalars; the ATen recorder ignores what the launcher itself does."""
    from triton.runtime import jit
    classes = [jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        classes.append(InterpretedFunction)
    except ImportError:
        pass
    try:  # on a GPU, Triton's own launch hook counts every kernel actually launched on the device
        from triton import knobs
        knobs.runtime.launch_enter_hook.add(lambda *_: STATE.__setitem__("gpu_launches", STATE["gpu_launches"] + 1))
    except (ImportError, AttributeError):
        pass
    wrapped = []
    for cls in classes:
        original = cls.run

        def run(self, *args, __original=original, **kwargs):
            outer = STATE["in_launch"] == 0
            if outer:
                STATE["launches"] += 1
            STATE["in_launch"] += 1
            try:
                check = outer and Monitor.active
                if check:
                    values = list(args) + [v for k, v in sorted(kwargs.items()) if k not in ("grid", "warmup")]
                    tensors = [a for a in values if isinstance(a, torch.Tensor)]
                    grid = kwargs.get("grid")
                    scalars = tuple(_scalar(a) for a in values if not isinstance(a, torch.Tensor)) + \
                        (tuple(grid) if isinstance(grid, tuple) else (type(grid).__name__,))
                    before = Monitor.prov.before_launch(getattr(self, "__name__", "?"), tensors, scalars)
                result = __original(self, *args, **kwargs)
                if check:
                    if STATE["device"] == "cuda":
                        torch.cuda.synchronize()
                    Monitor.prov.after_launch(tensors, before)
                return result
            finally:
                STATE["in_launch"] -= 1
        cls.run = run
        wrapped.append((cls, "run", run))
    return wrapped


def _watch_threads() -> None:
    import _thread
    original = _thread.start_new_thread

    def start_new_thread(*args, **kwargs):
        if STATE["guard"] and _from_candidate():
            violate("starts a thread")
        return original(*args, **kwargs)
    _thread.start_new_thread = start_new_thread
    threading._start_new_thread = start_new_thread  # type: ignore[attr-defined]  # private: Thread.start calls it


def _recorder(torch, provenance):
    """A dispatch mode over the candidate's forward: ATen ops outside kernels and not on the allow-list are
    recorded; fresh allocations are poisoned; copies and constant fills are told to the provenance monitor."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Mode(TorchDispatchMode):
        def __init__(inner):
            super().__init__()
            inner.seen = set()

        def __torch_dispatch__(inner, func, types, args=(), kwargs=None):
            kwargs = kwargs or {}
            if STATE["in_launch"]:
                return func(*args, **kwargs)
            name = func.overloadpacket.__name__
            if name not in ALLOWED_ATEN:
                inner.seen.add(name)
            out = func(*args, **kwargs)
            if Monitor.active:
                STATE["in_launch"] += 1
                try:
                    _track(torch, provenance, name, args, kwargs, out)
                finally:
                    STATE["in_launch"] -= 1
            return out
    return Mode()


def _track(torch, provenance, name, args, kwargs, out) -> None:
    tensors = [a for a in args if isinstance(a, torch.Tensor)]
    if name in ALLOC_OPS and isinstance(out, torch.Tensor) and out.untyped_storage().nbytes():
        provenance.storage_bytes(out).fill_(provenance.POISON)
    elif name in CONST_OPS:
        dst = args[0] if name == "fill_" else out
        scalars = tuple(_scalar(a) for a in args if not isinstance(a, torch.Tensor))
        Monitor.prov.constant(name, scalars + tuple(sorted((k, _scalar(v)) for k, v in kwargs.items())))
        srcs = tensors[1:] if name == "fill_" else []       # fill_ with a tensor value: that tensor's origin
        if isinstance(dst, torch.Tensor):
            Monitor.prov.after_copy(dst, srcs)
    elif name in COPY_OPS and isinstance(out, torch.Tensor):
        dst = args[0] if name == "copy_" else out
        Monitor.prov.after_copy(dst, tensors[1:] if name == "copy_" else tensors)


class Failed(Exception):
    """A verdict reached before the end: (failure class, detail)."""

    def __init__(self, failure: str, detail: str):
        super().__init__(detail)
        self.failure, self.detail = failure, detail


def _guarded(failure: str, fn, *args):
    """Run candidate code; its exception becomes `failure`, unless it tripped a guard (then it is a violation)."""
    try:
        return fn(*args)
    except Violation:
        raise
    except Exception as e:
        if VIOLATIONS:
            raise Violation(VIOLATIONS[0]) from e
        if failure == "runtime_error" and _is_compile_error(e):
            failure = "triton_compile_error"
        raise Failed(failure, f"{type(e).__name__}: {str(e)[:800]}") from e


class Watch:
    """Functions the monitor and the timing rely on, captured before the candidate is imported; `changes()` lists
    what the candidate rebound or left running."""

    def __init__(self, torch, wrapped: list):
        import hashlib
        self.keep = [(time, "perf_counter"), (time, "time"), (time, "monotonic"), (torch, "save"),
                     (hashlib, "blake2b"), (torch.Tensor, "set_"), (torch.Tensor, "untyped_storage"),
                     (torch.Tensor, "__eq__"), (torch, "eq"), (torch, "equal"), (torch, "allclose"), (torch, "all")]
        self.keep += [(cls, name) for cls, name, _ in wrapped]
        if STATE["device"] == "cuda":
            self.keep += [(torch.cuda, "synchronize"), (torch.cuda, "Event")]
        self.originals = [getattr(owner, name) for owner, name in self.keep]
        self.threads = threading.active_count()

    def changes(self) -> list[str]:
        out = [f"patches {getattr(owner, '__name__', owner)}.{name}"
               for (owner, name), fn in zip(self.keep, self.originals) if getattr(owner, name) is not fn]
        if threading.active_count() > self.threads:
            out.append("leaves extra threads running")
        return out


def _load(code: str) -> dict:
    ns: dict = {"__name__": "candidate", "__builtins__": __builtins__}
    exec(compile(code, CANDIDATE_FILE, "exec"), ns)
    return ns


def _to(xs, device, torch):
    return [x.detach().clone().to(device) if isinstance(x, torch.Tensor) else x for x in xs]


def _plain(out, torch):
    """The output as it goes to the parent (on the CPU); anything but plain tensors is reported, not shipped."""
    if isinstance(out, (tuple, list)):
        return type(out)(_plain(o, torch) for o in out)
    if type(out) is torch.Tensor:
        return out.detach().cpu()
    if isinstance(out, (int, float, bool)):
        return out
    raise Failed("integrity_violation", f"output is a {type(out).__module__}.{type(out).__name__}, not a plain "
                                        "torch.Tensor")


def forward(torch, provenance, model, xs, mode):
    """One monitored forward: (output, findings)."""
    STATE["launches"] = STATE["gpu_launches"] = 0
    Monitor.prov.begin(xs, model)
    Monitor.active = True
    try:
        with torch.no_grad(), mode:
            out = model(*xs)
        if STATE["device"] == "cuda":
            torch.cuda.synchronize()
    finally:
        Monitor.active = False
    STATE["in_launch"] += 1         # the checks below are the monitor's own ATen work
    try:
        found = Monitor.prov.end(out, xs) + Monitor.prov.changed_sources(xs, model)
    finally:
        STATE["in_launch"] -= 1
    return out, found


def time_candidate(model, buffers, value_sets, warmup: int, iters: int, timer, launches, same) -> dict:
    """The timing loop, checked like the trials: before each iteration the next value set is copied into the same
    input buffers (so a kernel keyed on pointers sees stale data), every iteration must launch kernels and give
    the same output as the first iteration on those values. Returns {"ms", "outputs" (first per value set),
    "findings"}."""
    firsts: dict[int, object] = {}
    times, findings = [], []
    for i in range(warmup + iters):
        k = i % len(value_sets)
        for b, v in zip(buffers, value_sets[k]):
            if hasattr(b, "copy_"):
                b.copy_(v)
        ms, out = timer(lambda: model(*buffers))
        n = launches()
        if n == 0:
            findings.append(f"timing iteration {i} launches no kernel")
        if k not in firsts:
            firsts[k] = out.clone() if hasattr(out, "clone") else out
        elif not same(out, firsts[k]):
            findings.append(f"timing iteration {i}: the output differs from the first on the same values "
                            "(state kept across calls)")
        if i >= warmup:
            times.append(ms)
    return {"ms": statistics.median(times) if times else None, "outputs": [firsts[k] for k in sorted(firsts)],
            "findings": list(dict.fromkeys(findings))}


def run(spec: dict, report: dict, out_dir: str) -> None:
    """The stages in order; a Failed or a Violation ends them (main() turns either into the report)."""
    import torch
    import triton  # noqa: F401  (imported before the guard is on)
    rules, provenance = _sibling("rules"), _sibling("provenance")
    device, code = spec["device"], spec["candidate_code"]
    spec = {**spec, "out_dir": out_dir}
    STATE["device"] = device
    if device == "cuda":          # Triton's driver compiles its helpers now, while processes are allowed
        triton.runtime.driver.active.utils  # noqa: B018
    wrapped = _hook_launches(torch)
    _watch_threads()
    Monitor.prov = provenance.Provenance()
    data = torch.load(spec["inputs"], weights_only=True)
    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise Failed("syntax_or_import_error", f"SyntaxError: {e.msg} (line {e.lineno})") from e
    report["parsed"] = True
    findings = rules.findings(tree) if spec.get("static_rules", True) else []
    if findings:              # nothing that breaks the rules runs
        report["flags"] = findings
        raise Failed("integrity_violation", "; ".join(findings))
    import torch._dynamo  # noqa: F401  (what torch imports lazily on a first launch; it creates cache dirs)
    watch = Watch(torch, wrapped)
    mode = _recorder(torch, provenance)

    STATE["guard"] = True
    ModelNew = _guarded("syntax_or_import_error", _load, code).get("ModelNew")
    if not isinstance(ModelNew, type):
        raise Failed("missing_model_new", "the code defines no class ModelNew")
    torch.manual_seed(spec["seed"])
    model = _guarded("runtime_error", lambda: ModelNew(*data["init"]).to(device))
    launches, signatures = [], []
    for i, trial in enumerate(data["trials"]):
        xs = _to(trial["inputs"], device, torch)
        out, found = _guarded("runtime_error", forward, torch, provenance, model, xs, mode)
        report["compiled"] = True
        findings += found
        launches.append(STATE["gpu_launches"] if device == "cuda" and STATE["gpu_launches"] else STATE["launches"])
        signatures.append(json.dumps(Monitor.prov.signature, default=str))
        torch.save(_plain(out, torch), os.path.join(spec["out_dir"], f"out_{i}.pt"))
    report["launches"] = min(launches) if launches else 0
    report["signatures"] = signatures
    if launches and min(launches) == 0:
        findings.append("no Triton kernel launched in a forward")
    if mode.seen:
        findings.append("computes with torch ops outside its kernels: " + ", ".join(sorted(mode.seen)))
    if data.get("probe_init") is not None:   # the init-argument probe: a flag, never a failure
        try:
            torch.manual_seed(spec["seed"])
            probe_model = ModelNew(*data["probe_init"]).to(device)
            out, _ = forward(torch, provenance, probe_model, _to(data["trials"][0]["inputs"], device, torch), mode)
            torch.save(_plain(out, torch), os.path.join(spec["out_dir"], "probe.pt"))
        except Exception as e:  # noqa: BLE001
            report["probe_error"] = f"{type(e).__name__}: {str(e)[:200]}"
    if device == "cuda" and spec.get("iters"):
        findings += _time_on_gpu(torch, spec, model, data, report)
    findings += watch.changes()
    report["flags"] = list(dict.fromkeys(findings + VIOLATIONS))
    STATE["guard"] = False


def _time_on_gpu(torch, spec, model, data, report) -> list[str]:
    value_sets = [_to(t["inputs"], "cuda", torch) for t in data["trials"][:2]]
    buffers = _to(value_sets[0], "cuda", torch)
    flush = torch.empty(64 * 2**20, dtype=torch.int32, device="cuda")   # 256 MiB, larger than any L2

    def timer(fn):
        flush.zero_()
        STATE["launches"] = STATE["gpu_launches"] = 0
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        out = fn()
        end.record()
        torch.cuda.synchronize()
        return start.elapsed_time(end), out

    def same(a, b):
        return type(a) is type(b) and (torch.equal(a, b) if isinstance(a, torch.Tensor) else a == b)
    with torch.no_grad():
        res = time_candidate(model, buffers, value_sets, spec["warmup"], spec["iters"], timer,
                             lambda: STATE["gpu_launches"] or STATE["launches"], same)
    report["timings_ms"] = {"candidate": res["ms"]}
    for k, out in enumerate(res["outputs"]):
        torch.save(_plain(out, torch), os.path.join(spec["out_dir"], f"timed_{k}.pt"))
    return res["findings"]


def _is_compile_error(e: BaseException) -> bool:
    """A Triton compile error on a GPU; under the interpreter (no compiler), an error raised by triton.language's
    own checks (a non-power-of-2 arange, a type error) or a missing `tl.` function: what the compiler would reject."""
    import traceback as tb
    for x in _chain(e):
        if type(x).__name__ in {"CompilationError", "CompileTimeAssertionFailure", "UnsupportedLanguageConstruct"} \
                or "triton.compiler" in type(x).__module__:
            return True
        if isinstance(x, AttributeError) and "triton.language" in str(x):
            return True
        if any(f"{os.sep}triton{os.sep}language{os.sep}" in frame.filename for frame in tb.extract_tb(x.__traceback__)):
            return True
    return False


def _chain(e: BaseException | None):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def _sign(report: dict, out_dir: str, nonce: str) -> None:
    """The nonce (from stdin, never in a file or argv) and each output file's digest: a report or an output the
    candidate wrote itself does not check out in the parent."""
    import hashlib
    report["nonce"] = nonce
    report["files"] = {n: hashlib.sha256(open(os.path.join(out_dir, n), "rb").read()).hexdigest()
                       for n in sorted(os.listdir(out_dir)) if n.endswith(".pt")}


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    secret = json.loads(sys.stdin.readline())
    sys.stdin.close()
    out_dir = secret["out_dir"]
    ALLOWED_DIRS.extend(os.path.realpath(d) for d in spec["allowed_dirs"])
    DENY_READ.extend(os.path.realpath(d) for d in spec.get("deny_read", []))
    sys.addaudithook(audit)
    report: dict = {"flags": []}
    try:
        run(spec, report, out_dir)
    except Failed as f:
        report.update(failure=f.failure, detail=f.detail)
    except Violation:
        report.update(failure="integrity_violation", flags=list(dict.fromkeys(report.get("flags", []) + VIOLATIONS)))
        report["detail"] = "; ".join(report["flags"])
    except MemoryError:
        report.update(failure="runtime_error", detail="MemoryError: the address-space limit was reached")
    except BaseException as e:  # noqa: BLE001 - the report must be written whatever the candidate did
        if VIOLATIONS:
            report.update(failure="integrity_violation",
                          flags=list(dict.fromkeys(report.get("flags", []) + VIOLATIONS)), detail="; ".join(VIOLATIONS))
        else:
            report.update(failure="runtime_error", detail=f"{type(e).__name__}: {str(e)[:500]}",
                          traceback=traceback.format_exc()[-2000:])
    STATE["guard"] = False
    _sign(report, out_dir, secret["nonce"])
    tmp = os.path.join(out_dir, "report.json.tmp")
    with open(tmp, "w") as fh:
        json.dump(report, fh)
    os.replace(tmp, os.path.join(out_dir, "report.json"))
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: a candidate's threads or atexit hooks cannot hang or rewrite it


if __name__ == "__main__":
    main()
