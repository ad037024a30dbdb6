"""Clinical-aware weighted multimodal DPO on TRL (see docs/method.md)."""

from mmedpo.training.dpo import PairRoutingCollator, WeightedDPOTrainer, pairs_to_dataset, train_weighted_dpo
from mmedpo.training.dpo_config import DPOSettings, WeightedDPOConfig

__all__ = [
    "DPOSettings",
    "PairRoutingCollator",
    "WeightedDPOConfig",
    "WeightedDPOTrainer",
    "pairs_to_dataset",
    "train_weighted_dpo",
]
