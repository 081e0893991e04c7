from .cache import HybridCache
from .config import NemotronHConfig
from .model import CausalLMOutput, NemotronHForCausalLM
from .presets import PRESETS, get_preset

__all__ = ["NemotronHConfig", "NemotronHForCausalLM", "CausalLMOutput", "HybridCache", "PRESETS", "get_preset"]
