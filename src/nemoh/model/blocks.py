"""One home per block kind: what the model, the cache, the FLOP count, the planner and parallelism need to know
about a kind of layer (Mamba2 `M`, attention `*`, dense MLP `-`, MoE `E`), declared once, next to its mixer.

Each mixer module registers its kind at import (`register_block_kind`), and everything else asks the registry:
`model.py` builds a block's mixer with `kind.mixer`, `cache.py` allocates `kind.cache_state` (and zeroes the
`kind.recurrent_states` when a slot is reused), `flops.py` sums `kind.macs_per_token`, `parallel/` splits parameters
by `kind.shard_specs` and narrows a mixer to its tensor-parallel share with `kind.tp_narrow`, and
`ParallelConfig.resolve` asks `kind.check_parallel`. A fifth kind is one new module with its mixer and one
`register_block_kind` call (imported from `model/__init__.py`); no other file changes.

`ShardSpec` lives here (not in parallel/) because a kind describes how its parameters split; parallel/ applies it.
This module is a leaf: no mixer imports, so config.py can read the kinds' names.
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

if TYPE_CHECKING:
    from .config import NemotronHConfig


@dataclass(frozen=True)
class ShardSpec:
    group: str                 # "tp" or "ep": the mesh dimension that splits it
    dim: int                   # the split dimension
    parts: tuple[int, ...]     # canonical segment sizes along `dim`; each is split evenly across the group

    def local(self, full: Tensor, rank: int, size: int) -> Tensor:
        """Rank `rank`'s slice of the canonical tensor: its share of every segment, concatenated."""
        if size == 1:
            return full
        segs = full.split(list(self.parts), self.dim)
        return torch.cat([s.chunk(size, self.dim)[rank] for s in segs], self.dim).contiguous()

    def local_parts(self, size: int) -> list[int]:
        return [p // size for p in self.parts]


# parameter name relative to the mixer ("in_proj.weight") -> how tp / ep split it
ShardSpecs = dict[str, ShardSpec]
# (module whose input is copied into the tp group, its row-parallel output projection)
TPWiring = list[tuple[nn.Module, nn.Linear]]


def _no_state(c: NemotronHConfig, slots: int, max_len: int, dtype: torch.dtype,
              device: torch.device | str) -> dict[str, Tensor]:
    return {}


def _no_specs(mixer: nn.Module, c: NemotronHConfig) -> ShardSpecs:
    return {}


def _not_split(mixer: nn.Module, size: int) -> TPWiring:
    return []


def _always_fits(c: NemotronHConfig, tp: int, ep: int) -> str | None:
    return None


@dataclass(frozen=True)
class BlockKind:
    name: str                                   # the config's name for it ("mamba")
    char: str                                   # its character in `hybrid_override_pattern`
    hub_names: tuple[str, ...]                  # its names in `layers_block_type`; the first one is written
    mixer: Callable[[NemotronHConfig, int], nn.Module]          # (config, layer index) -> the mixer
    macs_per_token: Callable[[NemotronHConfig, int], float]     # (config, sequence length) -> forward MACs/token
    # decode state per layer: name -> tensor with one row per cache slot (HybridCache.states[name][layer])
    cache_state: Callable[[NemotronHConfig, int, int, torch.dtype, torch.device | str], dict[str, Tensor]] = _no_state
    recurrent_states: tuple[str, ...] = ()      # states that carry over tokens: zeroed when a slot is reused
    shard_specs: Callable[[nn.Module, NemotronHConfig], ShardSpecs] = _no_specs
    tp_narrow: Callable[[nn.Module, int], TPWiring] = _not_split  # shrink to 1/size of the heads; what to wire
    check_parallel: Callable[[NemotronHConfig, int, int], str | None] = _always_fits  # (tp, ep) -> error or None
    routes_experts: bool = False                # records routed experts per token (R3, `moe_layers`)


BLOCK_KINDS: dict[str, BlockKind] = {}
KINDS_BY_CHAR: dict[str, BlockKind] = {}
KINDS_BY_HUB_NAME: dict[str, BlockKind] = {}


def register_block_kind(kind: BlockKind) -> BlockKind:
    for table, key in ((BLOCK_KINDS, kind.name), (KINDS_BY_CHAR, kind.char),
                       *((KINDS_BY_HUB_NAME, n) for n in kind.hub_names)):
        if key in table and table[key].name != kind.name:
            raise ValueError(f"block kind {kind.name!r}: {key!r} is already {table[key].name!r}'s")
    BLOCK_KINDS[kind.name] = kind
    KINDS_BY_CHAR[kind.char] = kind
    for n in kind.hub_names:
        KINDS_BY_HUB_NAME[n] = kind
    return kind


def unregister_block_kind(name: str) -> None:
    """Remove a kind (tests that register a toy kind clean up with this)."""
    kind = BLOCK_KINDS.pop(name)
    KINDS_BY_CHAR.pop(kind.char, None)
    for n in kind.hub_names:
        KINDS_BY_HUB_NAME.pop(n, None)


def block_kind(name: str) -> BlockKind:
    if name not in BLOCK_KINDS:
        raise ValueError(f"block type {name!r} is not registered (known: {', '.join(sorted(BLOCK_KINDS))})")
    return BLOCK_KINDS[name]

