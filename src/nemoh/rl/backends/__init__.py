"""Where rollouts run: one `RolloutBackend` per placement or server protocol, chosen by `[rollout] backend`."""
from . import engine, sglang, vllm  # noqa: F401  (registers "engine", "sglang" and "vllm")
from .base import ROLLOUT_BACKENDS, BackendContext, RolloutBackend, build_backend, register_backend

__all__ = ["ROLLOUT_BACKENDS", "BackendContext", "RolloutBackend", "build_backend", "register_backend"]
