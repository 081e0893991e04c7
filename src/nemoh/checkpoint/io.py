"""Hub-layout checkpoints: load (single or sharded safetensors, bf16, ModelOpt FP8 or NVFP4) and save, atomically.

Loading builds the model on the meta device, then allocates each parameter once, directly in its final dtype and
device, and fills it tensor by tensor from the safetensors files: a large model is never materialised twice.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .adapter import QUANT_AUX_SUFFIXES, from_hf, to_hf
from .quant import DEQUANTIZERS

INDEX_NAME = "model.safetensors.index.json"
SINGLE_NAME = "model.safetensors"
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja",
                   "generation_config.json")


def parse_size(size: int | str) -> int:
    """'5GB' / '500MB' / 1000 -> bytes."""
    if isinstance(size, int):
        return size
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*", size, re.I)
    if not m:
        raise ValueError(f"max_shard_size: cannot parse {size!r} (examples: '5GB', '500MB', 1000000)")
    unit = (m.group(2) or "B").upper()
    mult = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30}[unit]
    return int(float(m.group(1)) * mult)


def _weight_files(path: Path) -> list[Path]:
    index = path / INDEX_NAME
    if index.exists():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (json.JSONDecodeError, KeyError) as e:
            raise ValueError(f"{index}: not a safetensors index ({e})") from e
        files = sorted(set(weight_map.values()))
        missing = [f for f in files if not (path / f).exists()]
        if missing:
            raise ValueError(f"{index}: lists shard files that are not there: {missing}")
        return [path / f for f in files]
    if (path / SINGLE_NAME).exists():
        return [path / SINGLE_NAME]
    raise ValueError(f"{path}: no {SINGLE_NAME} or {INDEX_NAME}")


def iter_hub_tensors(path: Path) -> Iterator[tuple[str, Tensor, str]]:
    """(key, tensor, file) for every weight, ModelOpt FP8 and NVFP4 weights dequantised (checkpoint/quant.py).
    A file that safetensors cannot read (truncated, corrupt header, bad offsets) is a ValueError naming it."""
    for file in _weight_files(path):
        try:
            with safe_open(str(file), framework="pt") as f:
                keys = set(f.keys())
                for key in sorted(keys):
                    if key.endswith(QUANT_AUX_SUFFIXES):
                        continue
                    t = f.get_tensor(key)
                    dequantize = DEQUANTIZERS.get(t.dtype) if key.endswith("weight") else None
                    if dequantize is not None:
                        stem = key[: -len("weight")]

                        def side(name: str, f=f, stem=stem, keys=keys) -> Tensor | None:
                            return f.get_tensor(stem + name) if stem + name in keys else None
                        try:
                            t = dequantize(t, side)
                        except ValueError as e:
                            raise ValueError(f"{file.name}: {key} {e}") from None
                    yield key, t, file.name
        except (SafetensorError, OSError, RuntimeError) as e:  # what safetensors raises for a damaged file
            raise ValueError(f"{file}: not a readable safetensors file ({e})") from None


def check_device(device: str | torch.device) -> None:
    """A device this machine has, or a ValueError saying which is missing (before any allocation fails on it)."""
    try:
        dev = torch.device(device)
    except RuntimeError as e:
        raise ValueError(f"device: {device!r} is not a device name ({e})") from None
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise ValueError(f"device: {str(device)!r} asked for, but CUDA is not available on this machine; "
                             "use cpu (or auto where the command has it)")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise ValueError(f"device: {str(device)!r} asked for, but this machine has "
                             f"{torch.cuda.device_count()} CUDA device(s)")


def _materialise(model: nn.Module, dtype: torch.dtype, device: torch.device | str,
                 keep_in_fp32: tuple[str, ...]) -> None:
    """Replace meta parameters by empty tensors in their final dtype (fp32 for names ending in `keep_in_fp32`)."""
    for mod_name, mod in model.named_modules():
        for pname, p in list(mod._parameters.items()):
            if p is None or not p.is_meta:
                continue
            full = f"{mod_name}.{pname}" if mod_name else pname
            dt = torch.float32 if full.endswith(keep_in_fp32) else dtype
            mod._parameters[pname] = nn.Parameter(torch.empty(p.shape, dtype=dt, device=device),
                                                  requires_grad=p.requires_grad)


@torch.no_grad()
def load_state_dict_into(model: nn.Module, path: str | Path, strict: bool = True) -> None:
    """Fill `model`'s parameters from a Hub-layout directory; every problem is listed in one error."""
    path = Path(path)
    params = dict(model.named_parameters())
    filled: dict[str, set[int] | bool] = {}
    unexpected, misshaped = [], []
    for key, t, file in iter_hub_tensors(path):
        name, expert = from_hf(key)
        p = params.get(name)
        if p is None:
            unexpected.append(f"{key} ({file})")
            continue
        target = p[expert] if expert is not None and expert < p.shape[0] else (None if expert is not None else p)
        if target is None or tuple(target.shape) != tuple(t.shape):
            want = tuple(target.shape) if target is not None else f"expert index < {p.shape[0]}"
            misshaped.append(f"{key} ({file}): stored {tuple(t.shape)}, model wants {want}")
        else:
            target.copy_(t)
        if expert is None:
            filled[name] = True
        elif expert < p.shape[0]:
            filled.setdefault(name, set()).add(expert)  # type: ignore[union-attr]
    missing = []
    for name, p in params.items():
        got = filled.get(name)
        if got is None:
            missing.append(name)
        elif isinstance(got, set) and len(got) != p.shape[0]:
            missing.extend(f"{name.rsplit('.', 1)[0]}.{j}.{name.rsplit('.', 1)[1]}.weight"
                           for j in range(p.shape[0]) if j not in got)
    problems = []
    if missing:
        problems.append(f"missing tensors ({len(missing)}): {missing[:20]}{' ...' if len(missing) > 20 else ''}")
    if misshaped:
        problems.append(f"mis-shaped tensors ({len(misshaped)}): {misshaped[:20]}")
    if unexpected and strict:
        more = " ..." if len(unexpected) > 20 else ""
        problems.append(f"unexpected tensors ({len(unexpected)}): {unexpected[:20]}{more}")
    if problems:
        raise ValueError(f"{path}: checkpoint does not match the config:\n  " + "\n  ".join(problems))


def load_pretrained(cls: Any, path: str | Path, dtype: torch.dtype = torch.bfloat16,
                    device: str | torch.device = "cpu", **config_overrides: Any) -> Any:
    """Build `cls` (a model class with `config_class` and `keep_in_fp32`, as NemotronHForCausalLM declares them)
    from a Hub-layout directory. checkpoint/ knows the layout, not the model: the class is passed in."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(f"{path}: not a checkpoint directory")
    check_device(device)
    config = cls.config_class.from_pretrained(path)
    if config_overrides:
        config = config.replace(**config_overrides)
    # Saving writes bf16 weights: the FP8 scales are folded in on load.
    config.extra.pop("quantization_config", None)
    with torch.device("meta"):
        model = cls(config)
    _materialise(model, dtype, device, cls.keep_in_fp32)
    load_state_dict_into(model, path)
    if config.tie_word_embeddings:
        model.lm_head.weight = model.backbone.embeddings.weight
    model.source_dir = path
    return model.eval()


def _shards(tensors: list[tuple[str, Tensor]], limit: int) -> list[list[tuple[str, Tensor]]]:
    shards: list[list[tuple[str, Tensor]]] = [[]]
    size = 0
    for key, t in tensors:
        nbytes = t.numel() * t.element_size()
        if shards[-1] and size + nbytes > limit:
            shards.append([])
            size = 0
        shards[-1].append((key, t))
        size += nbytes
    return shards


def save_pretrained(model: nn.Module, path: str | Path, max_shard_size: int | str = "5GB",
                    dtype: torch.dtype | None = None, tokenizer_dir: str | Path | None = None,
                    keep_in_fp32: tuple[str, ...] = ()) -> None:
    """Write config.json, safetensors (sharded with an index above `max_shard_size`) and the tokenizer files into a
    temporary directory beside `path`, then swap it into place: a crash never leaves a half-written checkpoint."""
    path = Path(path)
    limit = parse_size(max_shard_size)
    tensors = []
    for key, t in to_hf(model):
        if dtype is not None and t.is_floating_point() and not key.endswith(keep_in_fp32):
            t = t.to(dtype)
        tensors.append((key, t.detach().contiguous().cpu()))
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent, path.name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        shards = _shards(tensors, limit)
        weight_map = {}
        for i, shard in enumerate(shards):
            name = SINGLE_NAME if len(shards) == 1 else f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            save_file(dict(shard), str(tmp / name), metadata={"format": "pt"})
            weight_map.update({k: name for k, _ in shard})
        if len(shards) > 1:
            total = sum(t.numel() * t.element_size() for _, t in tensors)
            (tmp / INDEX_NAME).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                                     indent=2, sort_keys=True))
        cfg = cast(Any, model).config.to_dict()
        cfg["dtype"] = str(dtype or cast(nn.Linear, model.lm_head).weight.dtype).replace("torch.", "")
        (tmp / "config.json").write_text(json.dumps(cfg, indent=2, sort_keys=True))
        src = Path(tokenizer_dir) if tokenizer_dir is not None else cast(Any, model).source_dir
        if src is not None:
            for f in TOKENIZER_FILES:
                if (Path(src) / f).exists():
                    shutil.copy2(Path(src) / f, tmp / f)
        _swap_into_place(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


# `.<name>.tmp-<pid>-<random>` (being written) and `.<name>.old-<pid>` (being deleted), by save_pretrained
_TEMP_RE = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?:(?P<pid>\d+)(?:-.*)?|[^-]*)$")


def remove_stale_temps(parent: Path, name: str | None = None) -> list[Path]:
    """Delete the temp directories that killed saves (of `name`, or of any checkpoint) left in `parent`: those whose
    writing process is gone. Returns what was removed."""
    removed: list[Path] = []
    if not parent.is_dir():
        return removed
    for p in parent.iterdir():
        m = _TEMP_RE.match(p.name)
        if not m or not p.is_dir() or (name is not None and m["name"] != name):
            continue
        if m["pid"] is not None and _alive(int(m["pid"])):
            continue
        shutil.rmtree(p, ignore_errors=True)
        removed.append(p)
    return removed


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _swap_into_place(tmp: Path, path: Path) -> None:
    """rename(tmp -> path); an existing checkpoint is moved aside first and deleted only after the swap."""
    old = None
    if path.exists():
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.rename(path, old)
    os.rename(tmp, path)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
