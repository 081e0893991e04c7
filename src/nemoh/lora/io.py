"""Adapter directories: save in PEFT's format, load PEFT's or nemoh's earlier format (a registry of readers)."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .legacy import is_nemoh_v1, read_nemoh_v1
from .modules import Factors, adapted, attach
from .peft_format import read_peft, unloadable_in_peft, write_peft

CONFIG_FILE, WEIGHTS_FILE = "adapter_config.json", "adapter_model.safetensors"


@dataclass(frozen=True)
class AdapterFormat:
    detect: Callable[[dict[str, Any], dict[str, Tensor]], bool]
    read: Callable[[dict[str, Any], dict[str, Tensor], nn.Module, str], dict[str, Factors]]


# Tried in order; PEFT's format is the fallback.
ADAPTER_FORMATS: dict[str, AdapterFormat] = {
    "nemoh-v1": AdapterFormat(is_nemoh_v1, read_nemoh_v1),
    "peft": AdapterFormat(lambda config, tensors: True, read_peft),
}


def read_adapter(path: str | Path, model: nn.Module) -> dict[str, Factors]:
    """An adapter directory -> target path -> Factors fitted to `model` (a mismatch names the offending key)."""
    path = Path(path)
    config_file, weights_file = path / CONFIG_FILE, path / WEIGHTS_FILE
    if not config_file.is_file():
        raise ValueError(f"{path}: no {CONFIG_FILE}: not an adapter directory")
    if not weights_file.is_file():
        raise ValueError(f"{path}: no {WEIGHTS_FILE} (adapters saved as .bin are not read; re-save with safetensors)")
    try:
        config = json.loads(config_file.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{config_file}: not valid JSON ({e})") from None
    if not isinstance(config, dict):  # bad file content: a ValueError, which the CLI reports as one line
        raise ValueError(f"{config_file}: expected a JSON object")  # noqa: TRY004
    try:
        tensors = load_file(str(weights_file))
    except SafetensorError as e:
        raise ValueError(f"{weights_file}: not a readable safetensors file ({e})") from None
    fmt = next(f for f in ADAPTER_FORMATS.values() if f.detect(config, tensors))
    return fmt.read(config, tensors, model, str(weights_file))


def load_adapter(model: nn.Module, path: str | Path) -> list[str]:
    """Add the adapter in `path` (PEFT's format, or nemoh's earlier one) to `model`, trainable, base frozen.
    Returns the adapted target paths. A model that already has adapters is refused."""
    factors = read_adapter(path, model)
    attach(model, factors, "load_adapter")
    return list(factors)


def save_adapter(model: nn.Module, path: str | Path, base_model: str | None = None) -> None:
    """adapter_config.json + adapter_model.safetensors in PEFT's format, written to a temp dir and renamed."""
    factors = {p: f.factors() for p, f in adapted(model).items()}
    if not factors:
        raise ValueError("save_adapter: the model has no LoRA adapters (apply_lora or load_adapter first)")
    unloadable = unloadable_in_peft(list(factors))
    if unloadable:
        warnings.warn(f"save_adapter: PEFT cannot load adapters on {unloadable[0]} ({len(unloadable)} such weights: "
                      "Mamba out_proj is refused by PEFT, the MTP head is absent from transformers); this adapter "
                      "loads in nemoh only", stacklevel=2)
    config, tensors = write_peft(model, factors, base_model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
    save_file(tensors, str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
    (tmp / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    if path.exists():
        shutil.rmtree(path)
    os.rename(tmp, path)
