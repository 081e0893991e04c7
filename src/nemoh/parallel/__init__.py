"""Parallelism applied from outside the model (torchtitan's pattern): a device mesh (dp_shard, ep, tp), then
tensor parallel -> expert parallel -> activation checkpointing -> FSDP2. The single-device model never imports
torch.distributed; specs.py says which parameters tp and ep split, state_dict.py gives layout-independent views."""
from .parallelize import Layout, ParallelConfig, init_distributed, layout_of, parallelize, shutdown_distributed
from .plan import MemoryPlan, plan_memory

__all__ = ["Layout", "ParallelConfig", "init_distributed", "layout_of", "parallelize", "shutdown_distributed",
           "MemoryPlan", "plan_memory"]
