"""What to adapt: rank, alpha and module-name patterns."""
from __future__ import annotations

from dataclasses import dataclass, field

# fnmatch patterns on nemoh module names. Mamba's out_proj is left out on purpose: PEFT refuses LoRA on it for
# nemotron_h (its fused CUDA path reads out_proj.weight directly), so an adapter with it would not load in PEFT.
# The MTP head (`mtp.`) is left out too: transformers' NemotronH has none.
DEFAULT_TARGETS = ["backbone.*.q_proj", "backbone.*.k_proj", "backbone.*.v_proj", "backbone.*.o_proj",
                   "backbone.*.in_proj", "backbone.*.up_proj", "backbone.*.down_proj", "backbone.*.experts"]


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
