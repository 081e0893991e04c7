"""Parallelism applied from outside the model (torchtitan's pattern): a device mesh, then
activation checkpointing -> FSDP2, in that order. The single-device model never imports torch.distributed."""
from .parallelize import ParallelConfig, init_distributed, parallelize
from .plan import MemoryPlan, plan_memory

__all__ = ["ParallelConfig", "init_distributed", "parallelize", "MemoryPlan", "plan_memory"]
