"""Runs ONE candidate inside the sandbox process (sandbox.py starts it: fresh interpreter, scrubbed environment,
rlimits, its own temp dir, no network). Never import this module in the parent.

    python -I -m nemoh.kernels.worker SPEC.json      # writes the verdict fields to spec["result"]

Order: guards (audit hook, launch counter, thread watch) -> reference problem -> static checks of the candidate ->
import the candidate -> Model and ModelNew from the same seed -> trials on fresh inputs (clones per model, inputs
checked unchanged, ATen ops on the candidate's path recorded) -> determinism re-run over poisoned memory ->
integrity checks -> (GPU) timings. The in-process checks catch the usual cheats; the process boundary, rlimits
and the network namespace contain the rest.
"""
from __future__ import annotations

import ast
import json
import os
import statistics
import sys
import threading
import time
import traceback

CANDIDATE_FILE = "<candidate>"
VIOLATIONS: list[str] = []
STATE = {"guard": False, "in_launch": 0, "launches": 0, "gpu_launches": 0}
ALLOWED_DIRS: list[str] = []
TOLERANCE = {"float32": 1e-4, "float64": 1e-6, "float16": 1e-2, "bfloat16": 2e-2}
# ATen ops a kernel wrapper may use outside its kernels: allocation, views, layout and dtype copies, no math
ALLOWED_ATEN = {
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "zeros", "zeros_like", "new_zeros",
    "fill_", "zero_", "view", "_unsafe_view", "reshape", "as_strided", "permute", "transpose", "t", "expand",
    "squeeze", "unsqueeze", "flatten", "unflatten", "contiguous", "clone", "copy_", "_to_copy", "to", "detach",
    "alias", "slice", "select", "split", "split_with_sizes", "chunk", "unbind", "lift_fresh", "_local_scalar_dense",
    "view_as", "resize_", "set_", "is_same_size", "_reshape_alias", "narrow", "stride", "size", "numel", "sym_size",
    "sym_stride", "sym_numel", "dim", "is_contiguous", "arange", "scalar_tensor", "result_type",
}


class Violation(PermissionError):
    pass


def violate(msg: str) -> None:
    if msg not in VIOLATIONS:
        VIOLATIONS.append(msg)
    raise Violation(f"sandbox: {msg}")


def _inside(path) -> bool:
    if isinstance(path, int):
        return True
    p = os.path.realpath(os.fsdecode(path))
    return any(p == d or p.startswith(d + os.sep) for d in ALLOWED_DIRS)


def _from_candidate() -> bool:
    """Was this event raised by the candidate's own code (not by Triton compiling for it)?"""
    f = sys._getframe(2)
    while f is not None:
        name = f.f_code.co_filename
        if name == CANDIDATE_FILE:
            return True
        if f"{os.sep}triton{os.sep}" in name or f"{os.sep}torch{os.sep}" in name:
            return False
        f = f.f_back
    return False


WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
PATH_EVENTS = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.truncate", "os.chmod", "os.chown",
               "os.symlink", "os.link", "shutil.rmtree", "shutil.copyfile", "shutil.move", "os.utime"}


def audit(event: str, args) -> None:
    if not STATE["guard"]:
        return
    if event == "open":
        path, mode, flags = args
        writing = (isinstance(mode, str) and any(c in mode for c in "wax+")) or bool((flags or 0) & WRITE_FLAGS)
        if writing and path is not None and not _inside(path):
            violate(f"writes outside its temp dir: {os.fsdecode(path)}")
    elif event in PATH_EVENTS:
        for a in args[:2]:
            if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a):
                violate(f"{event} outside its temp dir: {os.fsdecode(a)}")
    elif event in ("socket.connect", "socket.bind", "socket.sendto", "socket.sendmsg", "socket.getaddrinfo"):
        violate(f"opens a network connection ({event} {args[1:] if len(args) > 1 else ''})")
    elif event in ("subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork",
                   "os.forkpty", "pty.spawn") and _from_candidate():
        violate(f"starts a process ({event})")
    elif event == "sys.addaudithook" and _from_candidate():
        violate("installs an audit hook")


def _count_launches() -> None:
    """Wrap Triton's launch entry points (compiled and interpreted): count outermost launches and tell the ATen
    recorder to ignore what the launcher itself does."""
    from triton.runtime import jit
    classes = [jit.JITFunction]
    try:
        from triton.runtime.interpreter import InterpretedFunction
        classes.append(InterpretedFunction)
    except ImportError:
        pass
    try:  # on a GPU, Triton's own launch hook also counts every kernel actually launched on the device
        from triton import knobs
        knobs.runtime.launch_enter_hook.add(lambda *_: STATE.__setitem__("gpu_launches", STATE["gpu_launches"] + 1))
    except (ImportError, AttributeError):
        pass
    for cls in classes:
        original = cls.run

        def run(self, *args, __original=original, **kwargs):
            if STATE["in_launch"] == 0:
                STATE["launches"] += 1
            STATE["in_launch"] += 1
            try:
                return __original(self, *args, **kwargs)
            finally:
                STATE["in_launch"] -= 1
        cls.run = run


def _watch_threads() -> None:
    import _thread
    original = _thread.start_new_thread

    def start_new_thread(*args, **kwargs):
        if STATE["guard"] and _from_candidate():
            violate("starts a thread")
        return original(*args, **kwargs)
    _thread.start_new_thread = start_new_thread
    threading._start_new_thread = start_new_thread  # what threading.Thread.start calls


def static_findings(tree: ast.AST) -> list[str]:
    """Cheats visible in the source: ModelNew inheriting the reference, try/except fallbacks, streams."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef) and node.name == "ModelNew":
            for base in node.bases:
                if isinstance(base, ast.Name) and base.id == "Model" or isinstance(base, ast.Attribute) and base.attr == "Model":
                    found.append("ModelNew subclasses the reference Model")
        if isinstance(node, ast.Try) and any(not _only_raises(h.body) for h in node.handlers):
            found.append(f"try/except fallback (line {node.lineno})")
        if isinstance(node, ast.Attribute) and node.attr in ("Stream", "stream", "ExternalStream"):
            found.append(f"uses a side stream (line {node.lineno})")
    return found


def _only_raises(body: list[ast.stmt]) -> bool:
    return all(isinstance(s, ast.Raise) for s in body)


def _load(code: str, name: str) -> dict:
    ns: dict = {"__name__": name, "__builtins__": __builtins__}
    exec(compile(code, CANDIDATE_FILE if name == "candidate" else "<reference>", "exec"), ns)
    return ns


def _clone(xs, device):
    import torch
    return [x.detach().clone().to(device) if isinstance(x, torch.Tensor) else x for x in xs]


def _compare(out, ref):
    """(failure, detail, max_err, mean_err); a tuple/list reference is compared element by element."""
    import torch
    if isinstance(ref, (tuple, list)):
        if not isinstance(out, (tuple, list)) or len(out) != len(ref):
            return "shape_mismatch", f"expected {len(ref)} outputs in a {type(ref).__name__}", None, None
        results = [_compare(o, r) for o, r in zip(out, ref)]
        bad = [r for r in results if r[0]]
        if bad:
            return bad[0]
        return None, "", max(r[2] for r in results), sum(r[3] for r in results) / len(results)
    if type(out) is not torch.Tensor:
        return "integrity_violation", f"output is a {type(out).__module__}.{type(out).__name__}, not a plain torch.Tensor", None, None
    if out.shape != ref.shape or out.dtype != ref.dtype:
        return "shape_mismatch", f"output {tuple(out.shape)} {out.dtype}, expected {tuple(ref.shape)} {ref.dtype}", None, None
    tol = TOLERANCE.get(str(ref.dtype).removeprefix("torch."), 1e-4)
    d = (out.detach().double().cpu() - ref.detach().double().cpu()).abs()
    bad = ~(d <= tol + tol * ref.detach().double().cpu().abs())          # NaN counts as bad
    max_err = float(d.nan_to_num(float("inf")).max()) if d.numel() else 0.0
    mean_err = float(d.nan_to_num(float("inf")).mean()) if d.numel() else 0.0
    if bool(bad.any()):
        return "numeric_mismatch", f"{int(bad.sum())} of {d.numel()} values off by more than {tol:g} (max {max_err:.3g})", max_err, mean_err
    return None, "", max_err, mean_err


def _poison(ref_out, device, value: float) -> None:
    """Fill and free a few output-sized blocks so that memory a candidate does not write holds garbage."""
    import torch
    if isinstance(ref_out, (tuple, list)):
        for r in ref_out:
            _poison(r, device, value)
        return
    if not ref_out.is_floating_point():
        value = -123
    blocks = [torch.full_like(ref_out, value, device=device) for _ in range(4)]
    del blocks
    if device == "cuda":
        torch.cuda.synchronize()


class _AtenRecorder:
    def __init__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        class Mode(TorchDispatchMode):
            def __init__(inner):
                super().__init__()
                inner.seen = set()

            def __torch_dispatch__(inner, func, types, args=(), kwargs=None):
                if STATE["in_launch"] == 0:
                    name = func.overloadpacket.__name__
                    if name not in ALLOWED_ATEN:
                        inner.seen.add(name)
                return func(*args, **(kwargs or {}))
        self.mode = Mode()


def _time(fn, args, device, warmup: int, iters: int) -> float:
    """Median milliseconds of fn(*args) with device events, after warm-up, flushing L2 before each run."""
    import torch
    flush = torch.empty(64 * 2**20, dtype=torch.int32, device=device)   # 256 MiB, larger than any L2
    for _ in range(warmup):
        fn(*args)
    times = []
    for _ in range(iters):
        flush.zero_()
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn(*args)
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end))
    return statistics.median(times)


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
            raise Violation(VIOLATIONS[0])
        if failure == "runtime_error" and _is_compile_error(e):
            failure = "triton_compile_error"
        raise Failed(failure, f"{type(e).__name__}: {str(e)[:800]}") from e


class Watch:
    """What the timing and the comparison rely on (clocks, events, allclose) and the thread count, captured before
    the candidate is imported; `changes()` lists what the candidate rebound or left running."""

    def __init__(self, device: str):
        import torch
        self.keep = [(time, "perf_counter"), (time, "time"), (time, "monotonic"), (torch, "allclose"),
                     (torch, "equal")]
        if device == "cuda":
            self.keep += [(torch.cuda, "synchronize"), (torch.cuda, "Event"), (torch.cuda.Event, "elapsed_time")]
        self.originals = [getattr(owner, name) for owner, name in self.keep]
        self.threads = threading.active_count()

    def changes(self) -> list[str]:
        out = [f"patches {getattr(owner, '__name__', owner)}.{name}"
               for (owner, name), fn in zip(self.keep, self.originals) if getattr(owner, name) is not fn]
        if threading.active_count() > self.threads:
            out.append("leaves extra threads running")
        return out


def run(spec: dict, v: dict) -> None:
    """The stages in order; a Failed or a Violation ends them (main() turns either into the verdict)."""
    import torch
    import triton  # noqa: F401  (imported before the guard is on)
    device, code = spec["device"], spec["candidate_code"]
    _count_launches()
    _watch_threads()
    ref = _load(spec["problem_code"], "reference")
    Model, get_inputs, get_init_inputs = ref["Model"], ref["get_inputs"], ref["get_init_inputs"]

    try:
        tree = ast.parse(code)
    except SyntaxError as e:
        raise Failed("syntax_or_import_error", f"SyntaxError: {e.msg} (line {e.lineno})") from e
    v["parsed"] = True
    findings = static_findings(tree)
    watch = Watch(device)

    STATE["guard"] = True
    ModelNew = _guarded("syntax_or_import_error", _load, code, "candidate").get("ModelNew")
    if not isinstance(ModelNew, type):
        raise Failed("missing_model_new", "the code defines no class ModelNew")
    if issubclass(ModelNew, Model) or getattr(ModelNew, "forward", None) is getattr(Model, "forward", None):
        findings.append("ModelNew reuses the reference Model")
    init = get_init_inputs()
    torch.manual_seed(spec["seed"])                   # both models from the same seed
    ref_model = Model(*init).to(device)
    torch.manual_seed(spec["seed"])
    new_model = _guarded("runtime_error", lambda: ModelNew(*init).to(device))

    mismatch = _trials(spec, v, ref_model, new_model, get_inputs, findings)
    findings += watch.changes()
    v["flags"] = list(dict.fromkeys(findings + VIOLATIONS))          # in order, once each
    if v["flags"]:
        raise Failed("integrity_violation", "; ".join(v["flags"]))
    if mismatch:
        raise Failed(*mismatch)
    v["correct"] = True
    if device == "cuda":  # still guarded: the candidate runs again (torch.compile's own workers are allowed)
        _speed(spec, v, ref_model, new_model, get_inputs)
        if watch.changes():
            raise Failed("integrity_violation", "; ".join(watch.changes()))
    STATE["guard"] = False


def _trials(spec, v, ref_model, new_model, get_inputs, findings: list[str]) -> tuple[str, str] | None:
    """Fresh inputs each trial (new values, new allocations), cloned per model; the candidate runs over poisoned
    memory with its ATen ops recorded and its launches counted. Then the first trial again over other garbage.
    Appends integrity findings; returns the first shape/numeric mismatch, if any."""
    import torch
    device = spec["device"]
    recorder = _AtenRecorder()
    launches, errs, first, mismatch = [], [], None, None
    for trial in range(spec["trials"]):
        torch.manual_seed(spec["seed"] + 1 + trial)
        inputs = _clone(get_inputs(), device)
        ref_in, new_in = _clone(inputs, device), _clone(inputs, device)
        with torch.no_grad():
            ref_out = ref_model(*ref_in)
            _poison(ref_out, device, float("nan") if trial % 2 == 0 else 1e30)
            STATE["launches"] = STATE["gpu_launches"] = 0

            def forward():
                with recorder.mode:
                    out = new_model(*new_in)
                if device == "cuda":
                    torch.cuda.synchronize()
                return out
            out = _guarded("runtime_error", forward)
        v["compiled"] = True
        # interpreter: launches entered; GPU: kernels the device actually ran (the hook), when it reports any
        launches.append(STATE["gpu_launches"] if device == "cuda" and STATE["gpu_launches"] else STATE["launches"])
        findings += [f"mutates its input {i}" for i, (a, b) in enumerate(zip(inputs, new_in))
                     if isinstance(a, torch.Tensor) and not torch.equal(a, b)]
        failure, detail, max_err, mean_err = _compare(out, ref_out)
        if failure == "integrity_violation":
            findings.append(detail)
        elif failure:
            v.update(max_abs_err=max_err, mean_abs_err=mean_err)
            mismatch = (failure, f"trial {trial}: {detail}")
            break
        errs.append((max_err, mean_err))
        if trial == 0 and type(out) is torch.Tensor:
            first = (new_in, out.detach().clone())
    v["launches"] = min(launches) if launches else 0
    if launches and min(launches) == 0:
        findings.append("no Triton kernel launched in a forward")
    if recorder.mode.seen:
        findings.append("computes with torch ops outside its kernels: " + ", ".join(sorted(recorder.mode.seen)))
    if first is not None and mismatch is None:
        # determinism: reading memory the kernel never wrote (or hidden state) shows up as a different answer
        with torch.no_grad():
            _poison(first[1], device, -7.0)
            again = _guarded("runtime_error", new_model, *_clone(first[0], device))
        if type(again) is torch.Tensor and again.shape == first[1].shape and \
                not torch.equal(again.cpu(), first[1].cpu()):
            findings.append("output changes between identical calls (uninitialised memory or state)")
    if errs:
        v["max_abs_err"] = max(e[0] for e in errs)
        v["mean_abs_err"] = sum(e[1] for e in errs) / len(errs)
    return mismatch


def _speed(spec, v, ref_model, new_model, get_inputs) -> None:
    import torch
    torch.manual_seed(spec["seed"])
    args = _clone(get_inputs(), "cuda")
    with torch.no_grad():
        t_new = _time(new_model, args, "cuda", spec["warmup"], spec["iters"])
        t_eager = _time(ref_model, args, "cuda", spec["warmup"], spec["iters"])
        v["timings_ms"] = {"candidate": t_new, "eager": t_eager}
        v["speedup_eager"] = t_eager / t_new
        try:
            compiled = torch.compile(ref_model)
            t_compile = _time(compiled, args, "cuda", spec["warmup"], spec["iters"])
            v["timings_ms"]["compile"] = t_compile
            v["speedup_compile"] = t_compile / t_new
        except Exception as e:  # the baseline failing is not the candidate's fault
            v["flags"].append(f"torch.compile baseline failed: {type(e).__name__}")
    if v["speedup_eager"] > spec["max_speedup"]:
        v["flags"].append(f"suspicious speedup {v['speedup_eager']:.1f}x > {spec['max_speedup']:g}x: check by hand")


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


def _chain(e: BaseException):
    while e is not None:
        yield e
        e = e.__cause__ or e.__context__


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    ALLOWED_DIRS.extend(os.path.realpath(d) for d in spec["allowed_dirs"])
    sys.addaudithook(audit)
    v: dict = {"flags": []}
    try:
        run(spec, v)
    except Failed as f:
        v.update(failure=f.failure, detail=f.detail, correct=False)
    except Violation:
        v.update(failure="integrity_violation", correct=False, flags=sorted(set(v.get("flags", []) + VIOLATIONS)))
        v["detail"] = "; ".join(v["flags"])
    except MemoryError:
        v.update(failure="runtime_error", detail="MemoryError: the address-space limit was reached")
    except BaseException as e:  # noqa: BLE001 - the verdict must be written whatever the candidate did
        if VIOLATIONS:
            v.update(failure="integrity_violation", flags=sorted(set(v.get("flags", []) + VIOLATIONS)),
                     detail="; ".join(VIOLATIONS))
        else:
            v.update(failure="runtime_error", detail=f"{type(e).__name__}: {str(e)[:500]}",
                     traceback=traceback.format_exc()[-2000:])
    STATE["guard"] = False
    tmp = spec["result"] + ".tmp"
    with open(tmp, "w") as f:
        json.dump(v, f)
    os.replace(tmp, spec["result"])
    sys.stdout.flush()
    os._exit(0)  # skip interpreter teardown: a candidate's threads or atexit hooks cannot hang or rewrite it


if __name__ == "__main__":
    main()
