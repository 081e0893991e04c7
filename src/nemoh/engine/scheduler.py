"""Scheduler: a waiting queue and a fixed set of cache slots. Requests are admitted whole (all n samples of a
request at once, so they can share one prefill) as soon as enough slots are free: continuous batching. A prompt
is prefilled in chunks of at most `max_prefill_tokens` per step (all new prompts together), so that a long prompt
interleaves with the decode steps of the running sequences instead of stalling them."""
from __future__ import annotations

from collections import deque

from .sequence import Sequence, Status


class Scheduler:
    def __init__(self, num_slots: int):
        self.num_slots = num_slots
        self.free_slots = list(range(num_slots))[::-1]
        self.waiting: deque[list[Sequence]] = deque()   # one entry per request: its n sequences
        self.running: list[Sequence] = []
        self.prefilling: list[list[Sequence]] = []      # admitted groups whose prompt is not all in the cache yet

    def add(self, group: list[Sequence]) -> None:
        if len(group) > self.num_slots:
            raise ValueError(f"n: {len(group)} samples exceed the engine's max_num_seqs={self.num_slots}")
        self.waiting.append(group)

    def admit(self) -> list[list[Sequence]]:
        """Move waiting requests into free slots, in arrival order; returns the newly admitted groups."""
        admitted = []
        while self.waiting and len(self.waiting[0]) <= len(self.free_slots):
            group = self.waiting.popleft()
            self.free_slots.sort(reverse=True)  # lowest free slots first: running slots stay contiguous
            for seq in group:
                seq.slot = self.free_slots.pop()
                seq.status = Status.RUNNING
            self.running.extend(group)
            self.prefilling.append(group)
            admitted.append(group)
        return admitted

    def schedule_prefill(self, budget: int | None) -> list[tuple[list[Sequence], int, int]]:
        """The prompt chunks to prefill this step, in admission order: (group, start, end) over the prompt of the
        group's first sequence (the others fork from it), at most `budget` tokens in all (None: no limit)."""
        self.prefilling = [g for g in self.prefilling if not g[0].is_finished and not g[0].is_prefilled]
        plan = []
        left = budget if budget is not None else float("inf")
        for group in self.prefilling:
            seq = group[0]
            take = int(min(len(seq.prompt_token_ids) - seq.num_prefilled, left))
            if take <= 0:
                break
            plan.append((group, seq.num_prefilled, seq.num_prefilled + take))
            left -= take
        return plan

    def finish(self, seq: Sequence, reason: str) -> None:
        seq.status = Status.FINISHED
        seq.finish_reason = reason
        self.running.remove(seq)
        self.free_slots.append(seq.slot)

    def has_work(self) -> bool:
        return bool(self.waiting or self.running)
