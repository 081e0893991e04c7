"""nemoh: run, serve, fine-tune and RL-train NVIDIA Nemotron-3 (nemotron_h) hybrid models."""
from .model import HybridCache, NemotronHConfig, NemotronHForCausalLM, get_preset

__version__ = "0.1.0"
__all__ = ["NemotronHConfig", "NemotronHForCausalLM", "HybridCache", "get_preset", "__version__"]
