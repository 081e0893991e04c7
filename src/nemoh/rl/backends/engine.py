"""In-process rollout engines (`[rollout] backend = "engine"`): nemoh's own `LLM` on a copy of the policy.

Where the engines sit is a placement (`[rollout] engines`), one small strategy object each:
- `rank0`: one engine, on rank 0; it generates and scores the whole batch, which is broadcast to every rank, so
  rollouts are exactly those of a single process.
- `data_ranks`: one engine per data rank (on its first tp rank; tp is the mesh's innermost dim); engine e of E
  generates and scores prompts e, e+E, ... with its own seed, and the groups are all-gathered in prompt order.
In one process both are the one local engine. All torch.distributed traffic of the rollouts lives here.
"""
from __future__ import annotations

import copy
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING

from ...engine import LLM, SamplingParams
from ...parallel.parallelize import Layout
from ...parallel.state_dict import full_state_dict
from ..rollout import Sample, sample_groups
from .base import BackendContext, RolloutBackend, register_backend

if TYPE_CHECKING:
    from ...data.prompts import PromptExample
    from ...engine.llm_engine import Prompt
    from ...model import NemotronHForCausalLM

Groups = tuple[list[list[Sample]], int]          # one scored group per prompt, generated tokens
LocalGenerate = Callable[[list["PromptExample"], int], Groups]


class Placement(ABC):
    """Which ranks hold an engine, and how a round of prompts reaches them and the groups come back."""

    def __init__(self, rank: int, layout: Layout):
        self.rank, self.layout = rank, layout

    @abstractmethod
    def holds_engine(self) -> bool: ...

    @abstractmethod
    def generate(self, local: LocalGenerate | None, prompts: list[PromptExample], seed: int) -> Groups:
        """`local` is this rank's engine (None where it holds none); every rank returns all groups."""

    def reward_failures(self, local: int) -> int:
        """Failed reward calls so far, over all engines (collective where engines differ)."""
        return local


class OneProcess(Placement):
    def holds_engine(self) -> bool:
        return True

    def generate(self, local: LocalGenerate | None, prompts: list[PromptExample], seed: int) -> Groups:
        assert local is not None, "a single process always holds its engine"
        return local(prompts, seed)


class RankZero(Placement):
    def holds_engine(self) -> bool:
        return self.rank == 0

    def generate(self, local: LocalGenerate | None, prompts: list[PromptExample], seed: int) -> Groups:
        import torch.distributed as dist
        box = [local(prompts, seed) if local is not None else None]
        dist.broadcast_object_list(box, src=0)
        assert box[0] is not None  # rank 0 holds the engine, so it always generated
        return box[0]

    def reward_failures(self, local: int) -> int:
        import torch.distributed as dist
        box = [local]                         # rank 0 scored everything
        dist.broadcast_object_list(box, src=0)
        return box[0]


class DataRanks(Placement):
    def holds_engine(self) -> bool:
        return self.rank % self.layout.cfg.tp == 0  # the tp ranks of a data rank share its engine

    def generate(self, local: LocalGenerate | None, prompts: list[PromptExample], seed: int) -> Groups:
        import torch.distributed as dist
        engines, e = self.layout.data_world, self.layout.data_rank
        mine = local(prompts[e::engines], seed * engines + e) if local is not None else None
        gathered: list = [None] * dist.get_world_size()
        dist.all_gather_object(gathered, (e, mine))
        groups: list = [None] * len(prompts)
        tokens = 0
        for e_, result in gathered:
            if result is not None:           # tp ranks > 0 hold no engine; their data rank's engine sent it
                for j, g in enumerate(result[0]):
                    groups[e_ + j * engines] = g
                tokens += result[1]
        return groups, tokens

    def reward_failures(self, local: int) -> int:
        import torch.distributed as dist
        counts: list = [0] * dist.get_world_size()
        dist.all_gather_object(counts, local)
        return sum(counts)


PLACEMENTS: dict[str, type[Placement]] = {"rank0": RankZero, "data_ranks": DataRanks}


@register_backend("engine")
class EngineBackend(RolloutBackend):
    """nemoh's `LLM` in this process (on the ranks the placement picks), on a deep copy of the unsharded policy."""

    def __init__(self, ctx: BackendContext):
        super().__init__(ctx)
        r = ctx.cfg.rollout
        self.placement: Placement
        if ctx.layout is None or ctx.world == 1:
            self.placement = OneProcess(0, Layout(ctx.cfg.parallel))
        else:
            self.placement = PLACEMENTS[r.engines](ctx.rank, ctx.layout)
        self.llm: LLM | None = None
        if self.placement.holds_engine():
            self.llm = LLM(copy.deepcopy(ctx.model).eval(), tokenizer=ctx.tokenizer, max_num_seqs=r.max_num_seqs,
                           max_model_len=r.rollout_max_prompt_len + r.rollout_max_response_len)

    def generate(self, prompts: list[PromptExample], seed: int) -> Groups:
        local = None
        llm = self.llm
        if llm is not None:
            def local(ps: list[PromptExample], s: int) -> Groups:
                return sample_groups(llm, ps, self.ctx.cfg, self.ctx.reward, s, self.ctx.chat_kwargs)
        groups, tokens = self.placement.generate(local, prompts, seed)
        for g in groups:
            for sample in g:
                sample.weight_version = self.weight_version
        return groups, tokens

    def sync_weights(self, model: NemotronHForCausalLM, version: int) -> None:
        """In place; under torchrun the full weights are gathered from the shards on every rank first."""
        if self.ctx.world == 1:
            assert self.llm is not None
            self.llm.update_weights(model)
        else:
            state = full_state_dict(model)   # every rank takes part in the gather
            if self.llm is not None:
                params = dict(self.llm.model.named_parameters())
                self.llm.update_weights({k: v for k, v in state.items() if k in params})
        self.weight_version = version

    def evaluate(self, prompts: list[PromptExample], max_tokens: int) -> list[str] | None:
        if self.llm is None or self.ctx.rank != 0:
            return None
        params = SamplingParams(temperature=0, max_tokens=max_tokens)
        kwargs = self.ctx.chat_kwargs if self.ctx.cfg.data.apply_chat_template else None
        inputs: list[Prompt] = [p.prompt for p in prompts]
        outs = self.llm.generate(inputs, params, chat_template_kwargs=kwargs)
        return [o.outputs[0].text for o in outs]

    def reward_failures(self) -> int:
        return self.placement.reward_failures(self.ctx.reward.failures)

    def close(self) -> None:
        self.llm = None

