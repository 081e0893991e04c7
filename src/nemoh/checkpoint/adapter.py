"""State-dict adapter: nemoh parameter names <-> Hub tensor names.

nemoh's module names already are the Hub's, so only the routed experts differ: nemoh stacks them,
`<layer>.mixer.experts.up_proj` (E,F,L), while the Hub stores `<layer>.mixer.experts.{j}.up_proj.weight` (F,L).
"""
from __future__ import annotations

import re
from collections.abc import Iterator

from torch import Tensor, nn

_EXPERT_RE = re.compile(r"^(.*\.experts)\.(\d+)\.(up_proj|down_proj)\.weight$")
# ModelOpt quantisation side tensors: consumed while dequantising, never parameters.
QUANT_AUX_SUFFIXES = (".weight_scale", ".weight_scale_2", ".input_scale", ".k_scale", ".v_scale", ".output_scale")


def from_hf(key: str) -> tuple[str, int | None]:
    """Hub key -> (nemoh parameter name, expert index or None)."""
    m = _EXPERT_RE.match(key)
    if m:
        return f"{m.group(1)}.{m.group(3)}", int(m.group(2))
    return key, None


def to_hf(model: nn.Module) -> Iterator[tuple[str, Tensor]]:
    """Yield (Hub key, tensor) for every parameter, splitting stacked experts into per-expert tensors."""
    for name, p in model.state_dict().items():
        if ".lora_" in name:  # adapters are saved on their own (nemoh.lora.save_adapter) or merged first
            continue
        if name.endswith((".experts.up_proj", ".experts.down_proj")):
            prefix, proj = name.rsplit(".", 1)
            for j in range(p.shape[0]):
                yield f"{prefix}.{j}.{proj}.weight", p[j]
        else:
            yield name, p
