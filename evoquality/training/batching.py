"""Pair-aware sampling for TRL's GRPOTrainer.

TRL 1.16's `RepeatSampler` shuffles single prompts; the fidelity reward needs both images of a
pair (adjacent dataset rows 2i and 2i+1) and all their G samples in ONE reward call.
`PairRepeatSampler` keeps TRL's contract (``mini_repeat_count`` = G consecutive copies of each
index; ``batch_size`` unique indices per generation batch; each generation batch repeated
``repeat_count`` times; the last incomplete batch dropped) but shuffles WHOLE pairs. With
``per_device_batch x steps_per_generation`` a multiple of 2G, every rank's slice of a generation
batch (and so every reward call) holds whole pairs. `make_pair_trainer_class` builds the trainer
that uses it (and restores resumed weights through `evoquality.training.resume`).
"""

from __future__ import annotations

from collections.abc import Iterator, Sized

import torch
from torch.utils.data import Sampler


def check_pair_batching(
    per_device_batch: int, steps_per_generation: int, num_generations: int
) -> None:
    """Raise unless each rank's generation slice holds whole pairs with all their samples."""
    rows = per_device_batch * steps_per_generation
    if rows % (2 * num_generations):
        raise ValueError(
            f"per-device batch x steps per generation ({per_device_batch} x "
            f"{steps_per_generation} = {rows}) must be a multiple of 2 x num_generations "
            f"({2 * num_generations}) so a pair never straddles a reward call or a rank"
        )


class PairRepeatSampler(Sampler[int]):
    """TRL's RepeatSampler over whole pairs: rows (2i, 2i+1) stay adjacent and together."""

    def __init__(
        self,
        data_source: Sized,
        mini_repeat_count: int,
        batch_size: int = 2,
        repeat_count: int = 1,
        shuffle: bool = True,
        seed: int | None = None,
    ) -> None:
        self.data_source = data_source
        self.num_samples = len(data_source)
        if self.num_samples % 2:
            raise ValueError(
                f"the dataset must hold whole pairs (an even row count), got {self.num_samples}"
            )
        if batch_size % 2:
            raise ValueError(
                f"batch_size (unique rows per generation batch) must be even, got {batch_size}"
            )
        self.mini_repeat_count = mini_repeat_count
        self.batch_size = batch_size
        self.repeat_count = repeat_count
        self.shuffle = shuffle
        self.seed = seed
        if shuffle:
            self.generator = torch.Generator()
            if seed is not None:
                self.generator.manual_seed(seed)

    def __iter__(self) -> Iterator[int]:
        n_pairs = self.num_samples // 2
        if self.shuffle:
            order = torch.randperm(n_pairs, generator=self.generator).tolist()
        else:
            order = list(range(n_pairs))
        indexes = [row for pair in order for row in (2 * pair, 2 * pair + 1)]
        chunks = [indexes[i : i + self.batch_size] for i in range(0, len(indexes), self.batch_size)]
        for chunk in chunks:
            if len(chunk) != self.batch_size:
                continue
            for _ in range(self.repeat_count):
                for index in chunk:
                    for _ in range(self.mini_repeat_count):
                        yield index

    def __len__(self) -> int:
        return (
            (self.num_samples // self.batch_size)
            * self.batch_size
            * self.mini_repeat_count
            * self.repeat_count
        )


def make_pair_trainer_class():
    """A GRPOTrainer subclass whose train sampler is `PairRepeatSampler` and whose resume restores
    the policy's weights with the model's key conversion (`evoquality.training.resume`); TRL is
    imported lazily."""
    from transformers.modeling_utils import PreTrainedModel
    from trl import GRPOTrainer

    from evoquality.training.resume import load_checkpoint_weights

    class PairGRPOTrainer(GRPOTrainer):
        def _get_train_sampler(self, dataset=None) -> Sampler:
            if dataset is None:
                dataset = self.train_dataset
            return PairRepeatSampler(
                data_source=dataset,
                mini_repeat_count=self.num_generations,
                batch_size=self.args.generation_batch_size // self.num_generations,
                repeat_count=self.num_iterations * self.args.steps_per_generation,
                shuffle=True,
                seed=self.args.seed,
            )

        def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
            target = self.accelerator.unwrap_model(model if model is not None else self.model)
            if isinstance(target, PreTrainedModel):  # a PEFT model restores its adapters itself
                load_checkpoint_weights(target, resume_from_checkpoint)
            else:
                super()._load_from_checkpoint(resume_from_checkpoint, model)

    return PairGRPOTrainer
