"""Dequantising ModelOpt checkpoints on load, chosen by the stored dtype of a `.weight` tensor.

FP8 (per-tensor W8A8, Nemotron-3 Super/Nano FP8): `weight` float8_e4m3fn (O, I), `weight_scale` fp32 scalar;
    W = weight.float() * weight_scale.
NVFP4 (ModelOpt `quant_algo: NVFP4`, group size 16): `weight` uint8 (O, I/2), two 4-bit e2m1 codes per byte, the
    even element in the low nibble; `weight_scale` float8_e4m3fn (O, I/16), one scale per 16 consecutive inputs;
    `weight_scale_2` fp32 scalar, the global scale (a multiplier, amax / (6 * 448) at export);
    W[o, i] = e2m1(code[o, i]) * weight_scale[o, i // 16] * weight_scale_2.
The activation scales (`input_scale`) only matter for low-precision matmuls: weights are dequantised once, so the
model computes in its load dtype.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

# e2m1 codes 0..15 -> value: bit 3 is the sign, bits 0-2 index {0, 0.5, 1, 1.5, 2, 3, 4, 6}
E2M1_VALUES = (0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
NVFP4_GROUP = 16

# A getter returns a side tensor of the weight (e.g. "weight_scale") or None when the file lacks it.
Getter = Callable[[str], "Tensor | None"]


def _need(get: Getter, name: str, what: str) -> Tensor:
    t = get(name)
    if t is None:
        raise ValueError(f"is {what} but has no {name} to dequantise it")
    return t


def dequantize_fp8(weight: Tensor, get: Getter) -> Tensor:
    return weight.float() * _need(get, "weight_scale", str(weight.dtype)).float()


def unpack_e2m1(packed: Tensor) -> Tensor:
    """(..., K/2) uint8 -> (..., K) float32, the even element from the low nibble."""
    codes = torch.stack((packed & 0x0F, packed >> 4), dim=-1).flatten(-2).long()  # (..., K)
    table = torch.tensor(E2M1_VALUES, device=packed.device)
    magnitude = table[codes & 0x7]
    return torch.where(codes & 0x8 != 0, -magnitude, magnitude)


def dequantize_nvfp4(weight: Tensor, get: Getter) -> Tensor:
    scale = _need(get, "weight_scale", "packed NVFP4 (uint8)")
    global_scale = _need(get, "weight_scale_2", "packed NVFP4 (uint8)")
    values = unpack_e2m1(weight)                                       # (O, I)
    if scale.shape[:-1] != values.shape[:-1] or scale.shape[-1] * NVFP4_GROUP != values.shape[-1]:
        raise ValueError(f"NVFP4 weight_scale {tuple(scale.shape)} does not fit the unpacked weight "
                         f"{tuple(values.shape)} (one scale per {NVFP4_GROUP} inputs)")
    blocks = values.unflatten(-1, (-1, NVFP4_GROUP)) * scale.float().unsqueeze(-1)  # (O, I/16, 16)
    return blocks.flatten(-2) * global_scale.float()


# stored dtype of a `.weight` -> its dequantiser (anything else is loaded as stored)
DEQUANTIZERS: dict[torch.dtype, Callable[[Tensor, Getter], Tensor]] = {
    **{getattr(torch, n): dequantize_fp8 for n in ("float8_e4m3fn", "float8_e5m2") if hasattr(torch, n)},
    torch.uint8: dequantize_nvfp4,
}
