"""GRPO training of the scoring prompt (TRL GRPOTrainer), pair-aware batching, DeepSpeed configs.

Heavy imports (torch, trl) happen inside the functions, so importing this package is cheap.
"""

from evoquality.training.grpo import TrainRow, deepspeed_config_path, train_round

__all__ = ["TrainRow", "deepspeed_config_path", "train_round"]
