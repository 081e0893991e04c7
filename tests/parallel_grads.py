"""Run by tests/test_parallel.py, alone or under torchrun: one forward+backward of the tiny model on a fixed packed
batch under the layout in argv, then rank 0 saves the loss and the gathered full gradients (canonical names)."""

import sys

import torch
import torch.nn.functional as F

from nemoh.model import NemotronHForCausalLM
from nemoh.parallel import ParallelConfig, init_distributed, parallelize, shutdown_distributed
from nemoh.parallel.parallelize import SINGLE
from nemoh.parallel.state_dict import full_state_dict, sync_replicated_grads


def main(base: str, out: str, tp: int, ep: int, dp_shard: int, dp_replicate: int = 1) -> None:
    rank, world = init_distributed()
    model = NemotronHForCausalLM.from_pretrained(base, dtype=torch.float32).train()
    layout = (
        parallelize(model, ParallelConfig(dp_shard=dp_shard, tp=tp, ep=ep, dp_replicate=dp_replicate), world)
        if world > 1
        else SINGLE
    )
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, model.config.vocab_size, (4, 48), generator=g)  # 4 rows, 2 documents each
    seq_idx = torch.cat([torch.zeros(4, 20, dtype=torch.long), torch.ones(4, 28, dtype=torch.long)], 1)
    rows = slice(layout.data_rank, None, layout.data_world)
    logits = model(ids[rows], seq_idx=seq_idx[rows]).logits
    loss = F.cross_entropy(logits[:, :-1].flatten(0, 1), ids[rows, 1:].flatten(), reduction="sum") / (4 * 47)
    loss.backward()
    total = layout.all_reduce_data(float(loss.detach()))
    sync_replicated_grads(model)  # what the trainers do before clipping
    grads = full_state_dict(model, grads=True)
    if rank == 0:
        torch.save({"loss": total, "grads": grads}, out)
    shutdown_distributed()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], *map(int, sys.argv[3:]))
