"""NemotronHConfig: the Hub `config.json` of a nemotron_h model as a small typed dataclass.

Reads both layer-pattern forms (the list `layers_block_type`/`layer_types` and the legacy
`hybrid_override_pattern` string), every legacy `mamba_*` alias, and keeps fields it does not model
(e.g. `quantization_config`, `auto_map`) in `extra` so that `to_dict()` writes them back.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .blocks import KINDS_BY_CHAR, KINDS_BY_HUB_NAME, block_kind

# Legacy key -> current key (popped on read, as transformers does).
LEGACY_ALIASES = {
    "mamba_n_groups": "n_groups",
    "mamba_d_conv": "conv_kernel",
    "mamba_expand": "expand",
    "mamba_dt_min": "time_step_min",
    "mamba_dt_max": "time_step_max",
    "mamba_dt_limit": "time_step_limit",
    "mamba_dt_init_floor": "time_step_floor",
    "mamba_conv_bias": "use_conv_bias",
    "mamba_chunk_size": "chunk_size",
    "num_local_experts": "n_routed_experts",
}


def parse_pattern(pattern: str, field_name: str = "hybrid_override_pattern") -> list[str]:
    """'M*-E' -> ['mamba', 'attention', 'mlp', 'moe']; any other character is an error naming the field."""
    bad = sorted({c for c in pattern if c not in KINDS_BY_CHAR})
    if bad:
        raise ValueError(f"{field_name}: characters {bad} are not block types; allowed are "
                         f"{', '.join(repr(c) for c in KINDS_BY_CHAR)}")
    return [KINDS_BY_CHAR[c].name for c in pattern]


def parse_block_list(names: list[str], field_name: str) -> list[str]:
    if not isinstance(names, (list, tuple)):
        raise ValueError(f"{field_name}: expected a list of block names, got {type(names).__name__}")
    bad = sorted({n for n in names if n not in KINDS_BY_HUB_NAME})
    if bad:
        raise ValueError(f"{field_name}: unknown block types {bad}; allowed are {sorted(KINDS_BY_HUB_NAME)}")
    return [KINDS_BY_HUB_NAME[n].name for n in names]


def to_pattern(blocks: list[str]) -> str:
    return "".join(block_kind(b).char for b in blocks)


@dataclass
class NemotronHConfig:
    """Architecture hyper-parameters; names follow the Hub config.json. `block_types` uses
    'mamba' | 'attention' | 'mlp' | 'moe' (one entry per layer)."""

    block_types: list[str] = field(default_factory=lambda: ["mamba", "attention", "mlp", "moe"])
    vocab_size: int = 131072
    hidden_size: int = 4096
    layer_norm_epsilon: float = 1e-5
    tie_word_embeddings: bool = False
    # attention
    num_attention_heads: int = 32
    num_key_value_heads: int = 8
    head_dim: int = 128
    attention_bias: bool = False
    # dense MLP
    intermediate_size: int = 21504
    mlp_hidden_act: str = "relu2"
    mlp_bias: bool = False
    # mamba2
    mamba_num_heads: int = 128
    mamba_head_dim: int = 64
    ssm_state_size: int = 128
    n_groups: int = 8
    conv_kernel: int = 4
    expand: int = 2
    chunk_size: int = 128
    use_conv_bias: bool = True
    mamba_proj_bias: bool = False
    mamba_hidden_act: str = "silu"
    time_step_min: float = 0.001
    time_step_max: float = 0.1
    time_step_floor: float = 1e-4
    time_step_limit: tuple[float, float] = (0.0, math.inf)
    # Reproduce transformers' prefill, which clamps dt >= time_step_min in its chunked path only.
    # Off by default: vLLM and NVIDIA's own kernels do not clamp (see docs/nemotron_h.md).
    mamba_dt_clamp: bool = False
    # Runtime choice, not written to config.json: "torch" (eager) or "compile" (the Mamba mixer's work between
    # in_proj and out_proj -- conv, scan, gated norm -- through torch.compile; training/prefill only).
    scan_impl: str = "torch"           # a name in model.mamba.SCAN_IMPLS (torch | compile); not written to config.json
    # MoE
    n_routed_experts: int = 8
    num_experts_per_tok: int = 2
    moe_intermediate_size: int = 7688
    moe_shared_expert_intermediate_size: int = 7688
    moe_latent_size: int | None = None
    n_group: int = 1
    topk_group: int = 1
    norm_topk_prob: bool = True
    routed_scaling_factor: float = 1.0
    # MTP (multi-token prediction head, Super)
    num_nextn_predict_layers: int = 0
    mtp_block_types: list[str] = field(default_factory=lambda: ["attention", "moe"])
    # tokens
    bos_token_id: int | None = 1
    eos_token_id: int | list[int] | None = 2
    pad_token_id: int | None = 0
    initializer_range: float = 0.02
    # everything in config.json that the math does not use, written back unchanged
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.block_types = parse_block_list(list(self.block_types), "layers_block_type")
        self.mtp_block_types = parse_block_list(list(self.mtp_block_types), "mtp_layers_block_type")
        self.time_step_limit = tuple(float(v) for v in self.time_step_limit)  # type: ignore[assignment]
        self.validate()

    # ---- validation -------------------------------------------------------------------------------------
    def validate(self) -> None:
        def positive(*names: str) -> None:
            for n in names:
                v = getattr(self, n)
                if not isinstance(v, int) or isinstance(v, bool) or v <= 0:
                    raise ValueError(f"{n}: must be a positive integer, got {v!r}")

        if not self.block_types:
            raise ValueError("layers_block_type: the model needs at least one layer")
        positive("vocab_size", "hidden_size")
        kinds = set(self.block_types) | (set(self.mtp_block_types) if self.num_nextn_predict_layers else set())
        if "attention" in kinds:
            positive("num_attention_heads", "num_key_value_heads", "head_dim")
            if self.num_attention_heads % self.num_key_value_heads:
                raise ValueError(
                    f"num_attention_heads: {self.num_attention_heads} is not divisible by "
                    f"num_key_value_heads={self.num_key_value_heads}")
        if "mamba" in kinds:
            positive("mamba_num_heads", "mamba_head_dim", "ssm_state_size", "n_groups", "conv_kernel", "chunk_size")
            if self.mamba_num_heads % self.n_groups:
                raise ValueError(
                    f"mamba_num_heads: {self.mamba_num_heads} is not divisible by n_groups={self.n_groups}")
        if "mlp" in kinds:
            positive("intermediate_size")
        if "moe" in kinds:
            positive("n_routed_experts", "num_experts_per_tok", "moe_intermediate_size",
                     "moe_shared_expert_intermediate_size", "n_group", "topk_group")
            if self.n_routed_experts % self.n_group:
                raise ValueError(f"n_routed_experts: {self.n_routed_experts} is not divisible by "
                                 f"n_group={self.n_group}")
            if self.topk_group > self.n_group:
                raise ValueError(f"topk_group: {self.topk_group} exceeds n_group={self.n_group}")
            per_group = self.n_routed_experts // self.n_group
            if self.n_group > 1 and per_group < 2:
                raise ValueError(f"n_group: {self.n_group} leaves fewer than 2 experts per group "
                                 "(group score is a top-2 sum)")
            if self.num_experts_per_tok > self.topk_group * per_group:
                raise ValueError(
                    f"num_experts_per_tok: {self.num_experts_per_tok} exceeds the {self.topk_group * per_group} "
                    f"experts reachable in topk_group={self.topk_group} groups")
            if self.moe_latent_size is not None:
                positive("moe_latent_size")
        for n, allowed in (("mlp_hidden_act", "relu2"), ("mamba_hidden_act", "silu")):
            if getattr(self, n) != allowed:
                raise ValueError(f"{n}: only {allowed!r} is supported, got {getattr(self, n)!r}")
        if self.num_nextn_predict_layers < 0:
            raise ValueError(f"num_nextn_predict_layers: must be >= 0, got {self.num_nextn_predict_layers}")

    # ---- derived sizes ----------------------------------------------------------------------------------
    @property
    def num_hidden_layers(self) -> int:
        return len(self.block_types)

    @property
    def hybrid_override_pattern(self) -> str:
        return to_pattern(self.block_types)

    @property
    def mamba_intermediate(self) -> int:  # I = H * P
        return self.mamba_num_heads * self.mamba_head_dim

    @property
    def mamba_conv_dim(self) -> int:  # C = I + 2 G N
        return self.mamba_intermediate + 2 * self.n_groups * self.ssm_state_size

    @property
    def moe_input_size(self) -> int:  # L: latent size or hidden size
        return self.moe_latent_size or self.hidden_size

    @property
    def eos_token_ids(self) -> list[int]:
        e = self.eos_token_id
        return [] if e is None else ([e] if isinstance(e, int) else list(e))

    # ---- (de)serialisation ------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> NemotronHConfig:
        d = dict(raw)
        mt = d.pop("model_type", "nemotron_h")
        if mt != "nemotron_h":
            raise ValueError(f"model_type: expected 'nemotron_h', got {mt!r}")
        for old, new in LEGACY_ALIASES.items():
            if old in d:
                value = d.pop(old)
                d.setdefault(new, value)
        # Layer list: an explicit list wins over the legacy pattern string (transformers' rule).
        pattern = d.pop("hybrid_override_pattern", None)
        blocks = d.pop("layers_block_type", None) or d.pop("layer_types", None)
        d.pop("layer_types", None)
        if blocks is not None:
            block_types = parse_block_list(blocks, "layers_block_type")
        elif pattern is not None:
            if not isinstance(pattern, str):
                raise ValueError(f"hybrid_override_pattern: expected a string, got {type(pattern).__name__}")
            block_types = parse_pattern(pattern)
        else:
            raise ValueError("config.json: needs 'layers_block_type' (or 'layer_types') or 'hybrid_override_pattern'")
        n_layers = d.pop("num_hidden_layers", None)
        if n_layers is not None and n_layers != len(block_types):
            raise ValueError(f"num_hidden_layers: {n_layers} disagrees with the {len(block_types)}-layer pattern")
        mtp_pattern = d.pop("mtp_hybrid_override_pattern", None)
        mtp_blocks = d.pop("mtp_layers_block_type", None)
        if mtp_blocks is not None:
            mtp_types = parse_block_list(mtp_blocks, "mtp_layers_block_type")
        elif mtp_pattern is not None:
            mtp_types = parse_pattern(mtp_pattern, "mtp_hybrid_override_pattern")
        else:
            mtp_types = ["attention", "moe"]
        if "time_step_limit" in d:
            d["time_step_limit"] = tuple(_json_float(v) for v in d["time_step_limit"])
        if d.get("moe_latent_size") in (0,):
            d["moe_latent_size"] = None
        names = {f.name for f in dataclasses.fields(cls)} - {"block_types", "mtp_block_types", "extra"}
        known = {k: d.pop(k) for k in list(d) if k in names}
        return cls(block_types=block_types, mtp_block_types=mtp_types, extra=d, **known)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = dict(self.extra)
        out.setdefault("architectures", ["NemotronHForCausalLM"])
        out["model_type"] = "nemotron_h"
        for f in dataclasses.fields(self):
            if f.name in ("block_types", "mtp_block_types", "extra", "mamba_dt_clamp", "scan_impl"):
                continue
            out[f.name] = getattr(self, f.name)
        out["time_step_limit"] = [_json_safe(v) for v in self.time_step_limit]
        # Both layer forms: the list for transformers >= 5, the pattern for older readers (vLLM, remote code).
        out["layers_block_type"] = [block_kind(b).hub_names[0] for b in self.block_types]
        out["hybrid_override_pattern"] = self.hybrid_override_pattern
        out["num_hidden_layers"] = self.num_hidden_layers
        out["mtp_layers_block_type"] = [block_kind(b).hub_names[0] for b in self.mtp_block_types]
        return out

    @classmethod
    def from_json_file(cls, path: str | Path) -> NemotronHConfig:
        path = Path(path)
        if not path.is_file():
            raise ValueError(f"{path}: no such config file (a checkpoint directory needs a config.json)")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}: not valid JSON ({e})") from e
        try:
            return cls.from_dict(raw)
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}: {e}") from e

    @classmethod
    def from_pretrained(cls, path: str | Path) -> NemotronHConfig:
        path = Path(path)
        return cls.from_json_file(path / "config.json" if path.is_dir() else path)

    def replace(self, **changes: Any) -> NemotronHConfig:
        return dataclasses.replace(self, **changes)


def _json_float(v: Any) -> float:
    # transformers writes inf as {"__float__": "Infinity"}; plain JSON writers use the string "Infinity".
    if isinstance(v, dict) and "__float__" in v:
        v = v["__float__"]
    return float(v)


def _json_safe(v: float) -> Any:
    return v if math.isfinite(v) else {"__float__": "Infinity" if v > 0 else "-Infinity"}
