"""Reading the adapters nemoh wrote before it wrote PEFT's format ("nemoh-v1").

Keys were `base_model.model.<nemoh module>.lora_{A,B}.weight` under nemoh's (checkpoint) names, `backbone.` included;
a linear's factors (r, in) / (out, r); routed experts stacked, `<...>.experts.up_proj.lora_A.weight` (E, r, L) and
`lora_B.weight` (E, F, r), the same for down_proj (E, r, F) / (E, L, r): nemoh's own run-time layout. One r and
lora_alpha for all; `target_modules` held fnmatch globs (not read: the keys say what is adapted).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor, nn

from .modules import Factors, base_weight
from .peft_format import PREFIX, check_config

SUFFIXES = {"A": ".lora_A.weight", "B": ".lora_B.weight"}


def is_nemoh_v1(config: dict[str, Any], tensors: dict[str, Tensor]) -> bool:
    return "nemoh_expert_layout" in config or any(k.startswith(PREFIX + "backbone.") for k in tensors)


def read_nemoh_v1(config: dict[str, Any], tensors: dict[str, Tensor], model: nn.Module,
                  where: str) -> dict[str, Factors]:
    check_config(config, where)
    out: dict[str, Factors] = {}
    for key_a in sorted(k for k in tensors if k.endswith(SUFFIXES["A"])):
        path = key_a.removeprefix(PREFIX).removesuffix(SUFFIXES["A"])
        key_b = f"{PREFIX}{path}{SUFFIXES['B']}"
        if key_b not in tensors:
            raise ValueError(f"{where}: key {key_a!r} has no lora_B partner")
        w = base_weight(model, path)
        if w is None:
            raise ValueError(f"{where}: key {key_a!r} names {path!r}, which is not a linear or expert weight of "
                             "this model")
        A, B = tensors[key_a], tensors[key_b]
        *lead, out_f, in_f = w.shape
        want_a, want_b = (*lead, config["r"], in_f), (*lead, out_f, config["r"])
        for key, t, want in ((key_a, A, want_a), (key_b, B, want_b)):
            if tuple(t.shape) != want:
                raise ValueError(f"{where}: key {key!r} has shape {tuple(t.shape)}, but {path} (weight "
                                 f"{tuple(w.shape)}, r={config['r']}) needs {want}")
        out[path] = Factors(A, B, float(config["lora_alpha"]))
    used = {f"{PREFIX}{p}{suffix}" for p in out for suffix in SUFFIXES.values()}
    stray = sorted(set(tensors) - used)
    if stray:
        raise ValueError(f"{where}: key {stray[0]!r} is not a LoRA factor with a partner")
    if not out:
        raise ValueError(f"{where}: the adapter holds no LoRA factors")
    return out
