"""LoRA training: `train(config)` with stepping-stone weights merged first (see trainer.py)."""

from sabun.train.config import TrainConfig, load_config
from sabun.train.trainer import TrainResult, train

__all__ = ["TrainConfig", "TrainResult", "load_config", "train"]
