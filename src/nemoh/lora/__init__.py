"""LoRA for nemotron_h, routed experts included, in PEFT's adapter format.

Linear layers (attention q/k/v/o, Mamba in/out_proj, dense MLP, shared expert, latent projections) get factors
beside their weight, applied by a forward hook; routed experts get per-expert factors applied through the same token
dispatch (the `Experts.lora` field). Base parameter names do not change. `save_adapter` writes PEFT's format (it loads
with `PeftModel.from_pretrained` on transformers' NemotronH, experts through `target_parameters`); `load_adapter`
reads it, and nemoh's earlier format; `merge_lora` folds adapters into the weights.
"""
from .config import DEFAULT_TARGETS, LoRAConfig
from .io import ADAPTER_FORMATS, load_adapter, read_adapter, save_adapter
from .modules import Factors, adapted, apply_lora, lora_parameters, merge_lora

__all__ = ["ADAPTER_FORMATS", "DEFAULT_TARGETS", "Factors", "LoRAConfig", "adapted", "apply_lora", "load_adapter",
           "lora_parameters", "merge_lora", "read_adapter", "save_adapter"]
