"""Sequence packing: examples into rows of a fixed token budget, with cu_seqlens for the model's document reset.

Legend: R rows per batch, S = seq_len (the token budget of a row)."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from .chat import Example


@dataclass
class PackedBatch:
    input_ids: Tensor        # (R, S)
    labels: Tensor           # (R, S) next token at each position, -100 where not trained
    seq_idx: Tensor          # (R, S) document index per token (padding is its own document)
    num_tokens: int          # trained tokens in the batch

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.input_ids.shape)  # type: ignore[return-value]

    def to(self, device: torch.device | str) -> PackedBatch:
        return PackedBatch(self.input_ids.to(device), self.labels.to(device), self.seq_idx.to(device), self.num_tokens)


def pack(examples: list[Example], seq_len: int) -> list[list[Example]]:
    """First-fit, in order: each row holds whole examples whose lengths sum to at most seq_len."""
    rows: list[list[Example]] = []
    room: list[int] = []
    for ex in examples:
        n = len(ex.input_ids)
        if n > seq_len:
            raise ValueError(f"{ex.where}: {n} tokens do not fit seq_len={seq_len}")
        for r, left in enumerate(room):
            if n <= left:
                rows[r].append(ex)
                room[r] -= n
                break
        else:
            rows.append([ex])
            room.append(seq_len - n)
    return rows


def trained_tokens(rows: list[list[Example]]) -> int:
    """Tokens that carry a label in `collate(rows)`: each trained token but a document's first."""
    return sum(sum(ex.loss_mask[1:]) for row in rows for ex in row)


def collate(rows: list[list[Example]], seq_len: int, pad_id: int = 0) -> PackedBatch:
    R = len(rows)
    ids = torch.full((R, seq_len), pad_id, dtype=torch.long)
    labels = torch.full((R, seq_len), -100, dtype=torch.long)
    seq_idx = torch.zeros(R, seq_len, dtype=torch.long)
    for r, row in enumerate(rows):
        pos = 0
        for d, ex in enumerate(row):
            n = len(ex.input_ids)
            t = torch.tensor(ex.input_ids)
            m = torch.tensor(ex.loss_mask, dtype=torch.bool)
            ids[r, pos:pos + n] = t
            # position p predicts token p+1 of the same document, if that token is trained
            lab = torch.where(m[1:], t[1:], torch.full_like(t[1:], -100))
            labels[r, pos:pos + n - 1] = lab
            seq_idx[r, pos:pos + n] = d
            pos += n
        seq_idx[r, pos:] = len(row)  # padding: a document of its own, never trained
    return PackedBatch(ids, labels, seq_idx, int((labels != -100).sum()))
