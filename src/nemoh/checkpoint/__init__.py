from .adapter import from_hf, to_hf
from .io import load_pretrained, load_state_dict_into, save_pretrained

__all__ = ["from_hf", "to_hf", "load_pretrained", "load_state_dict_into", "save_pretrained"]
