"""LoRA at run time: factor modules on nn.Linear (a forward hook) and on routed experts (the `Experts.lora` field).

Legend: r rank, E experts, out/in the adapted weight's sizes. A weight W (out, in) gets `lora_A` (r, in) and
`lora_B` (out, r); a stacked expert weight (E, out, in) gets `lora_A` (E, r, in) and `lora_B` (E, out, r). The delta
is `scale * B @ A` (per expert), scale = alpha / r (alpha / sqrt(r) with rsLoRA). Base parameter names do not change:
the factors live in a child module named `lora` (`...q_proj.lora.lora_A`, `...experts.lora.up_proj.lora_A`).

An adapted weight is named by its *target path*: the module name for a linear (`backbone.layers.1.mixer.q_proj`),
the parameter name for an expert stack (`backbone.layers.2.mixer.experts.up_proj`).
"""
from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from ..model.moe import Experts
from .config import LoRAConfig

# Experts' stacked weights in their registration order (nemoh's Experts and transformers' NemotronHExperts alike).
EXPERT_PARAMS = ("up_proj", "down_proj")


@dataclass
class Factors:
    """One adapted weight's factors, detached from any model (what adapter files hold)."""
    A: Tensor            # (r, in) | (E, r, in)
    B: Tensor            # (out, r) | (E, out, r)
    alpha: float
    rslora: bool = False

    @property
    def r(self) -> int:
        return self.A.shape[-2]


class LoRAFactors(nn.Module):
    """Trainable factors of one weight; `delta_weight()` is what merging adds to it."""

    def __init__(self, f: Factors):
        super().__init__()
        self.lora_A = nn.Parameter(f.A)
        self.lora_B = nn.Parameter(f.B)
        self.alpha, self.rslora = f.alpha, f.rslora

    @property
    def r(self) -> int:
        return self.lora_A.shape[-2]

    @property
    def scale(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.rslora else self.r)

    def delta_weight(self) -> Tensor:
        return torch.matmul(self.lora_B, self.lora_A) * self.scale   # (out, in) | (E, out, in)

    def factors(self) -> Factors:
        return Factors(self.lora_A.detach().clone(), self.lora_B.detach().clone(), self.alpha, self.rslora)


class LinearLoRA(LoRAFactors):
    """Factors of one nn.Linear, applied by a forward hook on it: y = x Wᵀ (+ b) + scale * x Aᵀ Bᵀ."""

    def __init__(self, f: Factors):
        super().__init__(f)
        self.handle: RemovableHandle | None = None

    def attach_to(self, linear: nn.Linear) -> None:
        linear.add_module("lora", self)
        self.handle = linear.register_forward_hook(self.hook)

    def detach_from(self, linear: nn.Linear) -> None:
        assert self.handle is not None, "LinearLoRA.detach_from: not attached"
        self.handle.remove()
        delattr(linear, "lora")

    def hook(self, module: nn.Module, inputs: tuple[Tensor, ...], out: Tensor) -> Tensor:
        x = inputs[0]
        return out + (x @ self.lora_A.t().to(x.dtype)) @ self.lora_B.t().to(x.dtype) * self.scale


class ExpertsLoRA(nn.ModuleDict):
    """Factors of a routed-expert stack, keyed by parameter name; the dispatch sees W_e + scale * B_e A_e."""

    def stacks(self) -> dict[str, LoRAFactors]:
        return {name: f for name, f in self.items() if isinstance(f, LoRAFactors)}

    def forward(self, up: Tensor, down: Tensor) -> tuple[Tensor, Tensor]:
        weights = {"up_proj": up, "down_proj": down}
        for name, f in self.stacks().items():
            weights[name] = weights[name] + f.delta_weight().to(weights[name].dtype)
        return weights["up_proj"], weights["down_proj"]


def base_weight(model: nn.Module, path: str) -> Tensor | None:
    """The weight a target path names (a Linear's weight or an expert stack), or None if it names none."""
    try:
        mod = model.get_submodule(path)
    except AttributeError:
        mod = None
    if isinstance(mod, nn.Linear):
        return mod.weight
    owner, _, leaf = path.rpartition(".")
    try:
        parent = model.get_submodule(owner)
    except AttributeError:
        return None
    return getattr(parent, leaf) if isinstance(parent, Experts) and leaf in EXPERT_PARAMS else None


def adapted(model: nn.Module) -> dict[str, LoRAFactors]:
    """Target path -> its factor module, for every adapted weight of `model`."""
    out: dict[str, LoRAFactors] = {}
    for name, mod in model.named_modules():
        if isinstance(mod, LinearLoRA):
            out[name.removesuffix(".lora")] = mod
        elif isinstance(mod, ExpertsLoRA):
            owner = name.removesuffix(".lora")
            out.update({f"{owner}.{p}": f for p, f in mod.stacks().items()})
    return out


def _refuse_second_adapter(model: nn.Module, caller: str) -> None:
    have = adapted(model)
    if have:
        raise ValueError(f"{caller}: the model already has LoRA adapters ({len(have)} weights, e.g. "
                         f"{next(iter(have))}); applying another would add a second delta to every one. Call "
                         "nemoh.lora.merge_lora(model) first, or start from a fresh model")


def attach(model: nn.Module, factors: dict[str, Factors], caller: str = "attach") -> None:
    """Add the given factors to `model` (target path -> Factors, shapes already checked), freeze everything else."""
    _refuse_second_adapter(model, caller)
    for p in model.parameters():
        p.requires_grad_(False)
    experts: dict[str, ExpertsLoRA] = {}
    for path, f in factors.items():
        w = base_weight(model, path)
        assert w is not None, f"{path}: not an adaptable weight"
        f = Factors(f.A.to(w.device, w.dtype), f.B.to(w.device, w.dtype), f.alpha, f.rslora)
        if w.dim() == 2:
            linear = model.get_submodule(path)
            assert isinstance(linear, nn.Linear)
            LinearLoRA(f).attach_to(linear)
        else:
            owner, _, leaf = path.rpartition(".")
            experts.setdefault(owner, ExpertsLoRA())[leaf] = LoRAFactors(f)
    for owner, lora in experts.items():
        stack = model.get_submodule(owner)
        assert isinstance(stack, Experts)
        stack.lora = lora


def fresh_factors(weight: Tensor, cfg: LoRAConfig) -> Factors:
    """LoRA's initialisation: A uniform in ±1/sqrt(in) (kaiming-uniform, a=√5, as PEFT), B zero: delta 0."""
    *lead, out_f, in_f = weight.shape
    bound = 1.0 / math.sqrt(in_f)
    A = torch.empty(*lead, cfg.r, in_f, device=weight.device, dtype=weight.dtype).uniform_(-bound, bound)
    B = torch.zeros(*lead, out_f, cfg.r, device=weight.device, dtype=weight.dtype)
    return Factors(A, B, cfg.alpha)


def apply_lora(model: nn.Module, cfg: LoRAConfig) -> list[str]:
    """Add fresh adapters to every module whose name matches `cfg.targets` (nn.Linear, or routed experts: both
    stacks), freeze everything else. Returns the target paths. A model that already has adapters is refused."""
    _refuse_second_adapter(model, "apply_lora")
    factors: dict[str, Factors] = {}
    for name, mod in model.named_modules():
        if not any(fnmatch.fnmatchcase(name, t) for t in cfg.targets):
            continue
        if isinstance(mod, nn.Linear):
            factors[name] = fresh_factors(mod.weight, cfg)
        elif isinstance(mod, Experts):
            factors.update({f"{name}.{p}": fresh_factors(getattr(mod, p), cfg) for p in EXPERT_PARAMS})
    if not factors:
        raise ValueError(f"lora.targets: {cfg.targets} match no linear or expert module")
    attach(model, factors, "apply_lora")
    return list(factors)


def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    return [p for f in adapted(model).values() for p in (f.lora_A, f.lora_B)]


@torch.no_grad()
def merge_lora(model: nn.Module) -> None:
    """Fold every adapter into its weight (W += scale * B @ A, in float32, per expert for experts), remove the
    adapters and make every parameter trainable again."""
    for path, f in adapted(model).items():
        w = base_weight(model, path)
        assert w is not None
        w += (torch.matmul(f.lora_B.float(), f.lora_A.float()) * f.scale).to(w.dtype)
    for name, mod in list(model.named_modules()):
        if not isinstance(mod, (LinearLoRA, ExpertsLoRA)):
            continue
        owner = model.get_submodule(name.removesuffix(".lora"))
        if isinstance(mod, LinearLoRA) and isinstance(owner, nn.Linear):
            mod.detach_from(owner)
        elif isinstance(owner, Experts):
            owner.lora = None
    for p in model.parameters():
        p.requires_grad_(True)
