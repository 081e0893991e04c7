"""The reference process (trusted side; sandbox.py starts it by path, before any candidate of the problem runs):

    python -I ref_worker.py SPEC.json

Builds the problem's `Model` from the seed, draws every trial's inputs (transformed as the plan says), runs the
reference and writes DIR/inputs.pt (init args + inputs: all the candidate process ever receives), DIR/ref.pt
(the outputs: read by the parent, never shown to a candidate) and DIR/meta.json (trials run or skipped, the
init-argument probe, GPU baselines, or why the problem does not fit). Imports nothing from nemoh.
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import time
import traceback

TRANSFORMS = {"none": lambda x: x, "neg": lambda x: -x, "up": lambda x: x * 8, "down": lambda x: x * 0.125}
OOM_MARKERS = ("out of memory", "can't allocate", "not enough memory", "DefaultCPUAllocator")


def _tensors(xs, fn):
    import torch
    return [fn(x) if isinstance(x, torch.Tensor) else x for x in xs]


def _finite(out) -> bool:
    import torch
    if isinstance(out, (tuple, list)):
        return all(_finite(o) for o in out)
    return not isinstance(out, torch.Tensor) or not out.is_floating_point() or bool(torch.isfinite(out).all())


def _cpu(out):
    import torch
    if isinstance(out, (tuple, list)):
        return type(out)(_cpu(o) for o in out)
    return out.detach().cpu() if isinstance(out, torch.Tensor) else out


def _same(a, b) -> bool:
    import torch
    if isinstance(a, (tuple, list)):
        return isinstance(b, (tuple, list)) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
    return a == b


def _shape(a):
    import torch
    if isinstance(a, (tuple, list)):
        return [_shape(x) for x in a]
    return (tuple(a.shape), str(a.dtype)) if isinstance(a, torch.Tensor) else type(a).__name__


def _probe(Model, init, seed, inputs, base_out, device):
    """A perturbed scalar init argument that changes the reference's output (same shape): (index, init, output)."""
    import torch
    tried = 0
    for i, a in enumerate(init):
        if isinstance(a, bool) or not isinstance(a, (int, float)) or tried == 3:
            continue
        tried += 1
        new = list(init)
        new[i] = a * 1.5 + 0.125 if isinstance(a, float) else a + 1
        try:
            torch.manual_seed(seed)
            with torch.no_grad():
                out = Model(*new).to(device)(*_tensors(inputs, lambda x: x.clone()))
        except Exception:  # noqa: BLE001 - a perturbation the problem rejects is simply not a probe
            continue
        if _shape(out) == _shape(base_out) and _finite(out) and not _same(_cpu(out), base_out):
            return i, new, _cpu(out)
    return None


def _time(fn, args, warmup: int, iters: int) -> float:
    import torch
    flush = torch.empty(64 * 2**20, dtype=torch.int32, device="cuda")   # 256 MiB, larger than any L2
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


def run(spec: dict, meta: dict) -> None:
    import torch
    device, seed, out_dir = spec["device"], spec["seed"], spec["out_dir"]
    ns: dict = {"__name__": "reference"}
    exec(compile(spec["problem_code"], "<reference>", "exec"), ns)
    Model, get_inputs, get_init_inputs = ns["Model"], ns["get_inputs"], ns["get_init_inputs"]
    init = list(get_init_inputs())
    torch.manual_seed(seed)
    model = Model(*init).to(device)
    trials, outputs, plain_finite = [], [], {}
    for t in spec["trials"]:
        torch.manual_seed(t["seed"])
        # noqa below: _tensors calls the lambda right away, in this iteration
        xs = _tensors(get_inputs(), lambda x: TRANSFORMS[t["transform"]](x.to(device)) if x.is_floating_point()  # noqa: B023
                      else x.to(device))
        t0 = time.perf_counter()
        with torch.no_grad():
            out = model(*_tensors(xs, lambda x: x.clone()))
        meta["reference_s"] = max(meta.get("reference_s", 0.0), time.perf_counter() - t0)
        if t["transform"] == "none":
            plain_finite[t["seed"]] = _finite(out)
        elif plain_finite.get(t["seed"], True) and not _finite(out):
            meta["skipped"].append(f"{t['name']}: the reference output is not finite (outside the problem's domain)")
            continue
        trials.append({"name": t["name"], "inputs": _tensors(xs, lambda x: x.cpu())})
        outputs.append(_cpu(out))
    probe = _probe(Model, init, seed, trials[0]["inputs"], outputs[0], device)
    meta["trials"] = [t["name"] for t in trials]
    meta["probe_arg"] = probe[0] if probe else None
    if device == "cuda" and spec.get("iters"):
        args = _tensors(trials[0]["inputs"], lambda x: x.to(device))
        with torch.no_grad():
            meta["timings_ms"] = {"eager": _time(model, args, spec["warmup"], spec["iters"])}
            try:
                meta["timings_ms"]["compile"] = _time(torch.compile(model), args, spec["warmup"], spec["iters"])
            except Exception as e:  # noqa: BLE001 - the baseline failing is not the candidate's fault
                meta["baseline_error"] = f"torch.compile baseline failed: {type(e).__name__}"
    torch.save({"init": init, "probe_init": probe[1] if probe else None, "trials": trials},
               os.path.join(out_dir, "inputs.pt"))
    torch.save({"outputs": outputs, "probe": probe[2] if probe else None}, os.path.join(out_dir, "ref.pt"))


def main() -> None:
    spec = json.load(open(sys.argv[1]))
    meta: dict = {"skipped": []}
    try:
        run(spec, meta)
    except MemoryError:
        meta["does_not_fit"] = "the reference ran out of memory (MemoryError under the address-space limit)"
    except Exception as e:  # noqa: BLE001 - whatever the problem does, the parent gets a reason
        text = f"{type(e).__name__}: {str(e)[:400]}"
        if any(m in str(e) for m in OOM_MARKERS):
            meta["does_not_fit"] = f"the reference ran out of memory: {text}"
        else:
            meta["reference_error"] = text
            meta["traceback"] = traceback.format_exc()[-1500:]
    tmp = os.path.join(spec["out_dir"], "meta.json.tmp")
    with open(tmp, "w") as f:
        json.dump(meta, f)
    os.replace(tmp, os.path.join(spec["out_dir"], "meta.json"))
    os._exit(0)


if __name__ == "__main__":
    main()
