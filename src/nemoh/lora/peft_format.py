"""PEFT's LoRA adapter format, as PEFT sees transformers' NemotronHForCausalLM (read from peft 0.21's source).

Keys are `base_model.model.<module>.lora_{A,B}.weight` under transformers' runtime module names, which are nemoh's
with `backbone.` -> `model.`. A linear's factors are lora_A (r, in), lora_B (out, r). Routed experts are parameter
targets (`target_parameters`, PEFT's lora.ParamWrapper), one wrapper per stacked parameter, nested in the
parameters' registration order: with both stacks adapted, `experts.base_layer.lora_*` belongs to up_proj and
`experts.lora_*` to down_proj. For a stack (E, out, in) the wrapper keeps lora_A (E*r, in), rows expert-major
(row e*r + j), and lora_B (out, r*E), columns rank-major (column j*E + e): ParamWrapper.get_delta_weight reshapes
them to (E, r, in) and (out, r, E) and takes delta_e = scale * B_e @ A_e.
"""
from __future__ import annotations

import re
from collections import Counter
from typing import Any

from torch import Tensor, nn

from ..model.moe import Experts
from .modules import EXPERT_PARAMS, Factors, base_weight

PREFIX = "base_model.model."
# PEFT refuses LoRA on modules with these names in Mamba models (nemotron_h included): the fused CUDA path reads
# out_proj.weight directly, bypassing the module. The check is by name, so it also catches parameter targets.
PEFT_REFUSED_IN_MAMBA = ("out_proj", "conv1d")
# adapter_config.json fields that change what the file means and that nemoh does not implement: each must be unset
UNSUPPORTED_FIELDS = ("use_dora", "lora_bias", "fan_in_fan_out", "modules_to_save", "trainable_token_indices",
                      "layer_replication", "alora_invocation_tokens", "use_qalora", "use_bdlora", "velora_config",
                      "kasa_config", "monteclora_config", "arrow_config")


def to_peft_path(path: str) -> str:
    """nemoh module/parameter name -> transformers' runtime name."""
    return "model." + path.removeprefix("backbone.") if path.startswith("backbone.") else path


def from_peft_path(name: str) -> str:
    return "backbone." + name.removeprefix("model.") if name.startswith("model.") else name


def _matches(name: str, targets: list[str]) -> bool:
    """PEFT's list form: a name matches a target equal to it or to one of its dotted suffixes."""
    return any(name == t or name.endswith("." + t) for t in targets)


def _compact(chosen: set[str], candidates: set[str], shortest: int = 1) -> list[str]:
    """The shortest dotted suffixes (`shortest` parts or more) that select exactly `chosen` among `candidates` in
    PEFT's list form, else the full names."""
    for depth in range(shortest, 4):
        suffixes = sorted({".".join(n.split(".")[-depth:]) for n in chosen})
        if {c for c in candidates if _matches(c, suffixes)} == chosen:
            return suffixes
    return sorted(chosen)


def _number(x: float) -> float | int:
    return int(x) if float(x).is_integer() else x


def _expert_order(model: nn.Module, paths: set[str]) -> dict[str, int]:
    """Target path of an expert stack -> its ParamWrapper nesting depth (the number of `.base_layer`s in its key)."""
    depth: dict[str, int] = {}
    for owner in {p.rpartition(".")[0] for p in paths}:
        targeted = [p for p in EXPERT_PARAMS if f"{owner}.{p}" in paths]
        for i, p in enumerate(targeted):
            depth[f"{owner}.{p}"] = len(targeted) - 1 - i
    return depth


def unloadable_in_peft(paths: list[str]) -> list[str]:
    """Adapted weights PEFT on transformers cannot take: Mamba out_proj (refused by PEFT), the MTP head (absent)."""
    return [p for p in paths if p.startswith("mtp.") or p.split(".")[-1] in PEFT_REFUSED_IN_MAMBA]


def write_peft(model: nn.Module, factors: dict[str, Factors],
               base_model: str | None) -> tuple[dict[str, Any], dict[str, Tensor]]:
    """(adapter_config.json contents, adapter_model.safetensors tensors) for `factors` adapted on `model`."""
    linears = {to_peft_path(n) for n, m in model.named_modules()
               if isinstance(m, nn.Linear) and not n.startswith("mtp.")}
    stacks = {to_peft_path(f"{n}.{p}") for n, m in model.named_modules()
              if isinstance(m, Experts) and not n.startswith("mtp.") for p in EXPERT_PARAMS}
    depth = _expert_order(model, {p for p, f in factors.items() if f.A.dim() == 3})
    tensors: dict[str, Tensor] = {}
    for path, f in factors.items():
        name = to_peft_path(path)
        if f.A.dim() == 3:                                                    # (E, r, in), (E, out, r)
            E, r, in_f = f.A.shape
            module = name.rpartition(".")[0] + ".base_layer" * depth[path]
            A = f.A.reshape(E * r, in_f)                                      # row e*r + j
            B = f.B.permute(1, 2, 0).reshape(f.B.shape[1], r * E)             # column j*E + e
        else:
            module, A, B = name, f.A, f.B
        tensors[f"{PREFIX}{module}.lora_A.weight"] = A.contiguous()
        tensors[f"{PREFIX}{module}.lora_B.weight"] = B.contiguous()

    rslora = {f.rslora for f in factors.values()}
    assert len(rslora) == 1, "save_adapter: rsLoRA and plain LoRA mixed in one adapter"
    r = Counter(f.r for f in factors.values()).most_common(1)[0][0]
    alpha = Counter(f.alpha for f in factors.values()).most_common(1)[0][0]
    chosen_linear = {to_peft_path(p) for p, f in factors.items() if f.A.dim() == 2}
    chosen_stacks = {to_peft_path(p) for p, f in factors.items() if f.A.dim() == 3}
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "base_model_name_or_path": base_model,
        "r": r, "lora_alpha": _number(alpha), "use_rslora": rslora.pop(),
        "rank_pattern": {to_peft_path(p): f.r for p, f in factors.items() if f.r != r},
        "alpha_pattern": {to_peft_path(p): _number(f.alpha) for p, f in factors.items() if f.alpha != alpha},
        "target_modules": _compact(chosen_linear & linears, linears) + sorted(chosen_linear - linears),
        "target_parameters": (_compact(chosen_stacks & stacks, stacks, shortest=2) + sorted(chosen_stacks - stacks)
                              if chosen_stacks else None),
        "lora_dropout": 0.0, "bias": "none", "use_dora": False, "fan_in_fan_out": False,
        "init_lora_weights": True, "inference_mode": True, "modules_to_save": None,
    }
    return config, tensors


def _pattern_value(patterns: dict[str, Any], name: str, default: Any) -> Any:
    """PEFT's rank_pattern/alpha_pattern lookup: the first key that matches the end of the name as a regex."""
    for key, value in patterns.items():
        if re.match(rf"(.*\.)?({key})$", name):
            return value
    return default


def check_config(config: dict[str, Any], where: str) -> None:
    if config.get("peft_type", "LORA") != "LORA":
        raise ValueError(f"{where}: peft_type {config['peft_type']!r}: only LoRA adapters are supported")
    for key in UNSUPPORTED_FIELDS:
        if config.get(key):
            raise ValueError(f"{where}: {key} = {config[key]!r} is not supported by nemoh's LoRA (leave it unset)")
    if config.get("bias", "none") != "none":
        raise ValueError(f"{where}: bias = {config['bias']!r} is not supported by nemoh's LoRA (use \"none\")")
    for key in ("r", "lora_alpha"):
        if not isinstance(config.get(key), (int, float)):  # bad file content: a ValueError, reported as one line
            raise ValueError(f"{where}: {key} must be a number, got {config.get(key)!r}")  # noqa: TRY004


def _split_key(key: str, where: str) -> tuple[str, str, int]:
    """`base_model.model.<module>[.base_layer...].lora_X.weight` -> (runtime module name, "A"/"B", nesting depth)."""
    m = re.fullmatch(re.escape(PREFIX) + r"(.+?)((?:\.base_layer)*)\.lora_([AB])\.weight", key)
    if not m:
        raise ValueError(f"{where}: key {key!r} is not a LoRA factor (expected "
                         f"{PREFIX}<module>.lora_A.weight / .lora_B.weight)")
    return m.group(1), m.group(3), m.group(2).count(".base_layer")


def _expect(key: str, t: Tensor, shape: tuple[int, ...], what: str, where: str) -> None:
    if tuple(t.shape) != shape:
        raise ValueError(f"{where}: key {key!r} has shape {tuple(t.shape)}, but {what} needs {shape}")


def _linear(key_a: str, A: Tensor, key_b: str, B: Tensor, w: Tensor, what: str,
            where: str) -> tuple[Tensor, Tensor]:
    r = A.shape[0]
    _expect(key_a, A, (r, w.shape[1]), what, where)
    _expect(key_b, B, (w.shape[0], r), what, where)
    return A, B


def _experts(key_a: str, A: Tensor, key_b: str, B: Tensor, w: Tensor, what: str,
             where: str) -> tuple[Tensor, Tensor]:
    """PEFT's flat expert factors -> (E, r, in), (E, out, r); see the module docstring for the layout."""
    E, out_f, in_f = w.shape
    r = A.shape[0] // E
    _expect(key_a, A, (E * max(r, 1), in_f), what, where)
    _expect(key_b, B, (out_f, r * E), what, where)
    return A.reshape(E, r, in_f), B.reshape(out_f, r, E).permute(2, 0, 1)


def _expert_leaf(model: nn.Module, module: str, depth: int, targets: list[str], key: str, where: str) -> str:
    """Which stack a ParamWrapper key at nesting `depth` on `module` belongs to (PEFT nests in registration order)."""
    try:
        owner = model.get_submodule(from_peft_path(module))
    except AttributeError:
        owner = None
    if not isinstance(owner, Experts):  # bad file content: a ValueError, reported as one line
        msg = f"{where}: key {key!r} names {module!r}, which is not a linear or routed-experts module of this model"
        raise ValueError(msg)  # noqa: TRY004
    stacks = [p for p in EXPERT_PARAMS if _matches(f"{module}.{p}", targets)]
    if depth >= len(stacks):
        raise ValueError(f"{where}: key {key!r} is a routed-expert factor, but target_parameters {targets} name "
                         f"{len(stacks)} stack(s) of {module!r} (nesting depth {depth})")
    return stacks[len(stacks) - 1 - depth]


def read_peft(config: dict[str, Any], tensors: dict[str, Tensor], model: nn.Module, where: str) -> dict[str, Factors]:
    """An adapter PEFT wrote on transformers' NemotronH -> target path -> Factors in nemoh's layout."""
    check_config(config, where)
    targets = list(config.get("target_parameters") or [])
    pairs: dict[tuple[str, int], dict[str, tuple[str, Tensor]]] = {}
    for key, t in tensors.items():
        module, which, depth = _split_key(key, where)
        pairs.setdefault((module, depth), {})[which] = (key, t)
    out: dict[str, Factors] = {}
    for (module, depth), pair in sorted(pairs.items()):
        if set(pair) != {"A", "B"}:
            have = next(iter(pair.values()))[0]
            raise ValueError(f"{where}: key {have!r} has no lora_{'B' if 'A' in pair else 'A'} partner")
        (key_a, A), (key_b, B) = pair["A"], pair["B"]
        w = base_weight(model, from_peft_path(module))
        if w is not None and w.dim() == 2 and depth == 0:   # a linear (or a 2-D ParamWrapper on its weight)
            name = module
            A, B = _linear(key_a, A, key_b, B, w, f"{name} (weight {tuple(w.shape)})", where)
        else:
            name = f"{module}.{_expert_leaf(model, module, depth, targets, key_a, where)}"
            w = base_weight(model, from_peft_path(name))
            assert w is not None
            A, B = _experts(key_a, A, key_b, B, w, f"{name} (E={w.shape[0]} experts, weight {tuple(w.shape)})", where)
        want_r = _pattern_value(config.get("rank_pattern") or {}, name, config["r"])
        if A.shape[-2] != want_r:
            raise ValueError(f"{where}: key {key_a!r} has rank {A.shape[-2]}, but adapter_config.json gives {name} "
                             f"rank {want_r}")
        alpha = float(_pattern_value(config.get("alpha_pattern") or {}, name, config["lora_alpha"]))
        out[from_peft_path(name)] = Factors(A.contiguous(), B.contiguous(), alpha, bool(config.get("use_rslora")))
    if not out:
        raise ValueError(f"{where}: the adapter holds no LoRA factors")
    return out
