"""HybridCache: decode state for every layer of a nemotron_h model, one row per sequence slot.

Each layer keeps what its block kind declares (model/blocks.py `cache_state`): attention K and V
(S, n_kv, T_max, hd) as states["k"], states["v"]; Mamba2 the last K-1 conv inputs (S, K-1, C) and the SSM state
(S, H, P, N) in fp32 as states["conv"], states["ssm"]. `lengths[s]` counts the tokens already in slot s. A forward
with a cache processes rows `slots` (default: all rows, in order) and advances their lengths; rows of one call may
have different lengths.
"""
from __future__ import annotations

import torch
from torch import Tensor

from .blocks import block_kind
from .config import NemotronHConfig


class HybridCache:
    def __init__(self, config: NemotronHConfig, num_slots: int, max_seq_len: int,
                 dtype: torch.dtype = torch.float32, device: torch.device | str = "cpu"):
        self.num_slots, self.max_seq_len = num_slots, max_seq_len
        self.lengths = torch.zeros(num_slots, dtype=torch.long, device=device)
        self.states: dict[str, dict[int, Tensor]] = {}      # state name -> layer -> (slots, ...)
        self.recurrent: list[Tensor] = []                    # zeroed when a slot is reused
        for i, name in enumerate(config.block_types):
            kind = block_kind(name)
            for state, t in kind.cache_state(config, num_slots, max_seq_len, dtype, device).items():
                self.states.setdefault(state, {})[i] = t
                if state in kind.recurrent_states:
                    self.recurrent.append(t)
        self.slots: Tensor = torch.arange(num_slots, device=device)  # rows of the current forward
        self.index: slice | Tensor = slice(0, num_slots)
        self.new_tokens: Tensor | int = 0

    def begin(self, slots: Tensor | None, num_new: int, lengths: Tensor | None = None, static: bool = False) -> None:
        """Select the slots for the next forward and check there is room. `lengths` (b,) are the real token counts
        of right-padded rows (default: all `num_new`). `static` (a compiled step, one graph per batch size): only
        the run 0..b-1 is read through a view, any other set of slots through a gather."""
        self.slots = torch.arange(self.num_slots, device=self.lengths.device) if slots is None else slots
        s = self.slots.tolist()
        first = 0 if static else s[0]
        # a contiguous run of slots is read and updated through a view: no gather/scatter of the states
        contiguous = s == list(range(first, first + len(s)))
        self.index = slice(first, first + len(s)) if contiguous else self.slots
        self.new_tokens = lengths if lengths is not None else num_new
        longest = int((self.lengths[self.slots] + (num_new if lengths is None else lengths)).max())
        if longest > self.max_seq_len:
            raise ValueError(f"cache: {longest} tokens exceed max_seq_len={self.max_seq_len}")

    def read(self, t: Tensor) -> Tensor:
        return t[self.index]

    def write(self, t: Tensor, value: Tensor) -> None:
        if isinstance(self.index, slice) and not torch.compiler.is_compiling() \
                and value.data_ptr() == t[self.index].data_ptr():
            return  # updated in place through the view (a compiled step cannot compare pointers: it copies)
        t[self.index] = value.to(t.dtype)

    def end(self) -> None:
        self.lengths[self.slots] += self.new_tokens

    def copy_slot(self, src: int, dst: int) -> None:
        """Make slot `dst` a copy of slot `src` (n samples of one prompt share its prefill). Whole rows: KV past
        the length is masked anyway, and a row copy needs no knowledge of each state's layout."""
        for layers in self.states.values():
            for t in layers.values():
                t[dst] = t[src]
        self.lengths[dst] = self.lengths[src]

    def reset(self, slots: Tensor | list[int] | None = None) -> None:
        """Free slots for new sequences: zero their Mamba state and length (stale KV is masked by length)."""
        idx = slice(None) if slots is None else torch.as_tensor(slots, device=self.lengths.device)
        self.lengths[idx] = 0
        for t in self.recurrent:
            t[idx] = 0
