"""LoRA adapters: apply by module-name pattern, save/load PEFT-style, merge exactly (experts included).

Adapter file layout (`adapter_model.safetensors`, keys under `base_model.model.`):
    <module>.lora_A.weight (r, in), <module>.lora_B.weight (out, r)               for a linear module
    <layer>.mixer.experts.up_proj.lora_A.weight (E, r, L), ...lora_B.weight (E, F, r)   routed experts, stacked
    <layer>.mixer.experts.down_proj.lora_A.weight (E, r, F), ...lora_B.weight (E, L, r)
"""
from __future__ import annotations

import fnmatch
import json
import math
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from ..model.moe import Experts

DEFAULT_TARGETS = ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj", "*.in_proj", "*.out_proj", "*.up_proj",
                   "*.down_proj", "*.experts"]
PREFIX = "base_model.model."


@dataclass
class LoRAConfig:
    r: int = 8
    alpha: float = 16.0
    targets: list[str] = field(default_factory=lambda: list(DEFAULT_TARGETS))   # fnmatch patterns on module names

    def __post_init__(self) -> None:
        if self.r <= 0:
            raise ValueError(f"lora.r: must be positive, got {self.r}")
        if not self.targets:
            raise ValueError("lora.targets: give at least one module-name pattern")

    @property
    def scale(self) -> float:
        return self.alpha / self.r


def _matches(name: str, targets: list[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, t) for t in targets)


def _linear_hook(module: nn.Linear, inputs: tuple[Tensor], out: Tensor) -> Tensor:
    x = inputs[0]
    return out + (x @ module.lora_A.t().to(x.dtype)) @ module.lora_B.t().to(x.dtype) * module.lora_scale


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Add adapters to every matching module, freeze everything else. Returns the adapted module names."""
    for p in model.parameters():
        p.requires_grad_(False)
    names = []
    for name, mod in model.named_modules():
        if not _matches(name, cfg.targets):
            continue
        if isinstance(mod, nn.Linear):
            dev, dt = mod.weight.device, mod.weight.dtype
            mod.lora_A = nn.Parameter(torch.empty(cfg.r, mod.in_features, device=dev, dtype=dt))
            nn.init.kaiming_uniform_(mod.lora_A, a=math.sqrt(5))
            mod.lora_B = nn.Parameter(torch.zeros(mod.out_features, cfg.r, device=dev, dtype=dt))
            mod.lora_scale = cfg.scale
            mod._lora_handle = mod.register_forward_hook(_linear_hook)
        elif isinstance(mod, Experts):
            E, F, L = mod.up_proj.shape
            dev, dt = mod.up_proj.device, mod.up_proj.dtype
            for proj, (out_f, in_f) in (("up", (F, L)), ("down", (L, F))):
                a = nn.Parameter(torch.empty(E, cfg.r, in_f, device=dev, dtype=dt))
                for e in range(E):
                    nn.init.kaiming_uniform_(a[e], a=math.sqrt(5))
                setattr(mod, f"lora_A_{proj}", a)
                setattr(mod, f"lora_B_{proj}", nn.Parameter(torch.zeros(E, out_f, cfg.r, device=dev, dtype=dt)))
            mod.lora_scale = cfg.scale
        else:
            continue
        names.append(name)
    if not names:
        raise ValueError(f"lora.targets: {cfg.targets} match no linear or expert module")
    model.lora_config = cfg
    return names


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for n, p in model.named_parameters() if ".lora_" in n]


def _adapter_key(name: str) -> str:
    """nemoh parameter name -> adapter file key."""
    mod, leaf = name.rsplit(".", 1)
    if leaf.startswith("lora_A_") or leaf.startswith("lora_B_"):   # experts: lora_A_up -> up_proj.lora_A
        ab, proj = leaf[5], leaf[7:]
        return f"{PREFIX}{mod}.{proj}_proj.lora_{ab}.weight"
    return f"{PREFIX}{mod}.{leaf}.weight"


def lora_state_dict(model: nn.Module) -> dict[str, Tensor]:
    return {_adapter_key(n): p.detach().contiguous() for n, p in model.named_parameters() if ".lora_" in n}


def save_adapter(model: nn.Module, path: str | Path, base_model: str | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors, written to a temp dir and renamed into place."""
    cfg: LoRAConfig = model.lora_config
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    save_file(lora_state_dict(model), str(tmp / "adapter_model.safetensors"), metadata={"format": "pt"})
    modules = sorted({n.rsplit(".", 1)[0] for n, _ in model.named_parameters() if ".lora_" in n})
    (tmp / "adapter_config.json").write_text(json.dumps({
        "peft_type": "LORA", "r": cfg.r, "lora_alpha": cfg.alpha, "target_modules": cfg.targets,
        "adapted_modules": modules, "base_model_name_or_path": base_model, "bias": "none",
        "nemoh_expert_layout": "stacked: experts.{up,down}_proj.lora_A.weight (E, r, in), lora_B.weight (E, out, r)",
    }, indent=2))
    if path.exists():
        shutil.rmtree(path)
    os.rename(tmp, path)


def load_adapter(model: nn.Module, path: str | Path) -> None:
    """Apply the adapter's config to `model` and load its factors (missing or mis-shaped keys are errors)."""
    path = Path(path)
    meta = json.loads((path / "adapter_config.json").read_text())
    apply_lora(model, LoRAConfig(r=meta["r"], alpha=meta["lora_alpha"], targets=meta["target_modules"]))
    tensors = load_file(str(path / "adapter_model.safetensors"))
    params = {_adapter_key(n): p for n, p in model.named_parameters() if ".lora_" in n}
    missing, unexpected = sorted(set(params) - set(tensors)), sorted(set(tensors) - set(params))
    bad = [k for k in set(params) & set(tensors) if params[k].shape != tensors[k].shape]
    if missing or unexpected or bad:
        raise ValueError(f"{path}: adapter does not fit the model: missing {missing[:5]}, unexpected "
                         f"{unexpected[:5]}, mis-shaped {bad[:5]}")
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(tensors[k])


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its weight (W += scale * B @ A, per expert for experts) and remove it."""
    for mod in model.modules():
        if isinstance(mod, nn.Linear) and hasattr(mod, "lora_A"):
            mod.weight += (mod.lora_B.float() @ mod.lora_A.float() * mod.lora_scale).to(mod.weight.dtype)
            mod._lora_handle.remove()
            del mod.lora_A, mod.lora_B, mod._lora_handle
        elif isinstance(mod, Experts) and hasattr(mod, "lora_A_up"):
            for proj in ("up", "down"):
                w = getattr(mod, f"{proj}_proj")
                delta = torch.bmm(getattr(mod, f"lora_B_{proj}").float(), getattr(mod, f"lora_A_{proj}").float())
                w += (delta * mod.lora_scale).to(w.dtype)
                delattr(mod, f"lora_A_{proj}")
                delattr(mod, f"lora_B_{proj}")
    for p in model.parameters():
        p.requires_grad_(True)
    if hasattr(model, "lora_config"):
        del model.lora_config
