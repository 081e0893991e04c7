"""Candidate output vs reference output, in the trusted parent, in chunks (no whole-output float64 copies).

A value passes when |out - ref| <= atol + rtol·|ref|, rtol = the dtype's tolerance and atol = that tolerance times
max(1, rms(ref)): rounding error in a sum scales with the size of its terms, which the output's RMS tracks (a
matmul of inputs scaled by 8 has errors 64 times larger at entries that cancel to near zero); it also needs NaN
where the reference is NaN and the same infinity where it is infinite. The output as a whole also needs a relative
L2 error ||out - ref|| / ||ref|| <= 10·tolerance: element-wise checks alone pass a constant when every |ref| is
below atol (a softmax over a wide row), and honest reassociation errors are orders of magnitude below that bound
(fp32: ~sqrt(K)·6e-8 for a length-K reduction, vs 1e-3).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6, torch.float16: 1e-2, torch.bfloat16: 2e-2}
NORM_FACTOR = 10.0
CHUNK = 1 << 20          # elements per float64 chunk: 8 MiB per operand


@dataclass
class Comparison:
    failure: str | None = None      # None, "shape_mismatch", "numeric_mismatch" or "integrity_violation"
    detail: str = ""
    max_abs_err: float = 0.0
    mean_abs_err: float = 0.0
    rel_l2_err: float = 0.0


def compare(out: object, ref: object) -> Comparison:
    """A tuple/list reference is compared element by element (the worst one reported)."""
    if isinstance(ref, (tuple, list)):
        if not isinstance(out, (tuple, list)) or len(out) != len(ref):
            return Comparison("shape_mismatch", f"expected {len(ref)} outputs in a {type(ref).__name__}")
        results = [compare(o, r) for o, r in zip(out, ref)]
        bad = [r for r in results if r.failure]
        if bad:
            return bad[0]
        return Comparison(None, "", max(r.max_abs_err for r in results),
                          sum(r.mean_abs_err for r in results) / max(1, len(results)),
                          max(r.rel_l2_err for r in results))
    if not isinstance(ref, torch.Tensor):
        same = out == ref if not isinstance(out, torch.Tensor) else False
        return Comparison(None if same else "numeric_mismatch", "" if same else f"expected {ref!r}, got {out!r}")
    if type(out) is not torch.Tensor:
        return Comparison("integrity_violation", f"output is a {type(out).__module__}.{type(out).__name__}, "
                                                 "not a plain torch.Tensor")
    if out.shape != ref.shape or out.dtype != ref.dtype:
        return Comparison("shape_mismatch", f"output {tuple(out.shape)} {out.dtype}, expected {tuple(ref.shape)} "
                                            f"{ref.dtype}")
    if not ref.is_floating_point() and not ref.is_complex():
        n_bad = int((out != ref).sum())
        return Comparison("numeric_mismatch" if n_bad else None,
                          f"{n_bad} of {ref.numel()} values differ" if n_bad else "")
    return _compare_float(out.reshape(-1), ref.reshape(-1), TOLERANCE.get(ref.dtype, 1e-4))


def _compare_float(out: torch.Tensor, ref: torch.Tensor, tol: float) -> Comparison:
    n = ref.numel()
    sq_ref = 0.0
    for i in range(0, n, CHUNK):
        r = ref[i:i + CHUNK].double()
        sq_ref += float((torch.where(torch.isfinite(r), r, torch.zeros_like(r)) ** 2).sum())
    atol = tol * max(1.0, math.sqrt(sq_ref / n) if n else 0.0)
    n_bad, max_err, sum_err, sq_err = 0, 0.0, 0.0, 0.0
    for i in range(0, n, CHUNK):
        o, r = out[i:i + CHUNK].double(), ref[i:i + CHUNK].double()
        d = (o - r).abs()
        finite = torch.isfinite(r)
        same_special = (~finite) & ((o == r) | (torch.isnan(o) & torch.isnan(r)))
        # NaN in d counts as bad; where ref is not finite only the same special value passes
        ok = (finite & (d <= atol + tol * torch.where(finite, r.abs(), torch.zeros_like(r)))) | same_special
        n_bad += int((~ok).sum())
        df = torch.where(finite, d, torch.zeros_like(d)).nan_to_num(float("inf"))
        if df.numel():
            max_err = max(max_err, float(df.max()))
        sum_err += float(df.sum())
        sq_err += float((df * df).sum())
    mean_err = sum_err / n if n else 0.0
    rel = math.sqrt(sq_err) / math.sqrt(sq_ref) if sq_ref > 0 else (0.0 if sq_err == 0 else math.inf)
    if n_bad:
        return Comparison("numeric_mismatch", f"{n_bad} of {n} values off by more than {atol:.3g} + {tol:g}·|ref| "
                                              f"(max {max_err:.3g})", max_err, mean_err, rel)
    if rel > NORM_FACTOR * tol and sq_ref > 0:
        return Comparison("numeric_mismatch", f"relative L2 error {rel:.3g} > {NORM_FACTOR * tol:g} (every value "
                                              f"within the absolute tolerance, the output as a whole wrong)",
                          max_err, mean_err, rel)
    return Comparison(None, "", max_err, mean_err, rel)
