"""nemoh: run, serve, fine-tune and RL-train NVIDIA Nemotron-3 (nemotron_h) hybrid models."""
from .engine import LLM, SamplingParams
from .model import HybridCache, NemotronHConfig, NemotronHForCausalLM, get_preset

__version__ = "0.1.0"
__all__ = ["LLM", "SamplingParams", "NemotronHConfig", "NemotronHForCausalLM", "HybridCache", "get_preset",
           "__version__"]
