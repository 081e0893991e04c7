"""LoRA for nemotron_h, routed experts included.

Linear layers (attention q/k/v/o, Mamba in/out_proj, dense MLP, shared expert, latent projections) get `lora_A`
(r, in) and `lora_B` (out, r) beside their weight and a forward hook adding `scale * x Aᵀ Bᵀ`; parameter names of
the base model do not change. Routed experts get stacked per-expert factors, `lora_A` (E, r, in) and `lora_B`
(E, out, r) for each of up_proj and down_proj, applied through the same token dispatch as the base experts (the
dispatch sees W_e + scale * B_e A_e). Adapters save PEFT-style; `merge_lora` folds them into the weights exactly.
"""
from .lora import (LoRAConfig, apply_lora, load_adapter, lora_parameters, lora_state_dict, merge_lora,
                   save_adapter)

__all__ = ["LoRAConfig", "apply_lora", "load_adapter", "lora_parameters", "lora_state_dict", "merge_lora",
           "save_adapter"]
