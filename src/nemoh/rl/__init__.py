from .config import RLConfig
from .rewards import REWARDS, RewardFn
from .trainer import RLTrainer

__all__ = ["RLConfig", "RLTrainer", "RewardFn", "REWARDS"]
