"""One round of GRPO (TRL 1.16 `GRPOTrainer`) on the single-image scoring prompt.

Rows come as adjacent pairs (``rows[2i]``, ``rows[2i+1]`` = the two images of pair i). The dataset
holds the conversational scoring prompt, the prepared image and the label columns, which TRL hands
to the reward function (`evoquality.training.rewards`). `PairGRPOTrainer` shuffles whole pairs so
both images and all their G samples meet in one reward call.

Every GRPOConfig setting that matters is set explicitly: TRL 1.16 changed several defaults
(bf16=True, beta=0, loss_type="dapo", gradient checkpointing on). Rollouts come from transformers'
`generate` in the trainer, or (``training.rollouts.engine: vllm``) from a vLLM server beside it
(`evoquality.training.rollouts`); never from TRL's colocated vLLM, which corrupts image prompts in
TRL 1.16 (it sends processor-expanded token ids that vLLM expands again).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import socket
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from evoquality import prompts
from evoquality.engines.base import build_messages
from evoquality.training.batching import check_pair_batching, make_pair_trainer_class
from evoquality.training.rewards import make_reward_function
from evoquality.training.rollouts import RolloutClient, attach_vllm_rollouts, make_rollout_func

if TYPE_CHECKING:
    from PIL import Image

    from evoquality.spec import EvoQualityRunSpec

DEEPSPEED_DIR = Path(__file__).parent / "deepspeed"
FINAL_DIR = "final"


@dataclass
class TrainRow:
    image_key: str
    image: Image.Image  # prepared (evoquality.data.images.prepare_image)
    pair_id: int
    partner_key: str
    p_star: float  # P(this image is better than its partner)
    weight: float = 1.0
    bt_score: float | None = None


def deepspeed_config_path(stage: str) -> Path | None:
    """The packaged ZeRO config ("auto" values are filled by the HF Trainer); None for "none"."""
    if stage == "none":
        return None
    if stage not in ("zero2", "zero3"):
        raise ValueError(f"unknown deepspeed setting {stage!r}")
    return DEEPSPEED_DIR / f"{stage}.json"


def scoring_messages(reasoning: bool) -> list[dict[str, Any]]:
    """The conversational prompt of a training row: one image placeholder + the scoring question."""
    return build_messages(1, prompts.scoring_prompt(reasoning))


def check_rows(rows: list[TrainRow]) -> None:
    if not rows or len(rows) % 2:
        raise ValueError(
            f"rows must come as whole pairs (an even, non-zero count), got {len(rows)}"
        )
    for i in range(0, len(rows), 2):
        a, b = rows[i], rows[i + 1]
        if a.pair_id != b.pair_id or a.partner_key != b.image_key or b.partner_key != a.image_key:
            raise ValueError(
                f"rows {i} and {i + 1} are not the two images of one pair "
                f"({a.image_key!r}/{a.pair_id} vs {b.image_key!r}/{b.pair_id})"
            )
        for row in (a, b):
            if not (0.0 <= row.p_star <= 1.0) or not math.isfinite(row.weight) or row.weight < 0:
                raise ValueError(f"row {row.image_key!r}: p_star in [0, 1] and weight >= 0 needed")


def build_dataset(rows: list[TrainRow], reasoning: bool):
    """A `datasets.Dataset`: prompt, image (lossless PNG), label columns (reward kwargs)."""
    import numpy as np
    from datasets import Dataset, Features, Sequence, Value
    from datasets import Image as ImageFeature
    from PIL import Image

    check_rows(rows)
    message = scoring_messages(reasoning)
    features = Features(
        {
            "prompt": [
                {
                    "role": Value("string"),
                    "content": [{"type": Value("string"), "text": Value("string")}],
                }
            ],
            "image": ImageFeature(),
            "image_key": Value("string"),
            "pair_id": Value("int64"),
            "partner_key": Value("string"),
            "p_star": Value("float64"),
            "weight": Value("float64"),
            "bt_score": Value("float64"),
        }
    )
    del Sequence  # (features use list syntax)
    data = {
        "prompt": [message] * len(rows),
        # A fresh copy without `format` is stored as PNG: a JPEG-born image is never re-encoded
        # lossily, so the trainer sees the exact pixels the voter saw.
        "image": [Image.fromarray(np.asarray(r.image.convert("RGB"))) for r in rows],
        "image_key": [r.image_key for r in rows],
        "pair_id": [int(r.pair_id) for r in rows],
        "partner_key": [r.partner_key for r in rows],
        "p_star": [float(r.p_star) for r in rows],
        "weight": [float(r.weight) for r in rows],
        "bt_score": [None if r.bt_score is None else float(r.bt_score) for r in rows],
    }
    return Dataset.from_dict(data, features=features)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def ensure_distributed(cuda: bool) -> None:
    """DeepSpeed needs a process group even alone: defaults for a single-process run.

    On CPU accelerate never starts DeepSpeed's communication backend (it does on GPUs), so ZeRO-3,
    which partitions the weights while the model loads, would count one rank: start it here.
    """
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    if not cuda:
        import deepspeed

        deepspeed.init_distributed(dist_backend="gloo")


def grpo_settings(spec: EvoQualityRunSpec, cuda: bool) -> dict[str, Any]:
    """The GRPOConfig keyword arguments that follow from the spec (all explicit)."""
    t = spec.training
    dtype = spec.model.dtype
    bf16 = cuda and dtype in ("bfloat16", "auto")
    fp16 = cuda and dtype == "float16"
    deepspeed = deepspeed_config_path(t.deepspeed)
    # Without DeepSpeed the weights stay float32 under bf16 autocast: lr 3e-7 updates vanish in
    # pure bf16 weights. DeepSpeed keeps fp32 master weights itself, so it may load bf16.
    load_dtype = (
        ("bfloat16" if bf16 else "float16" if fp16 else "float32") if deepspeed else "float32"
    )
    model_init_kwargs: dict[str, Any] = {"dtype": load_dtype}
    if spec.model.revision:
        model_init_kwargs["revision"] = spec.model.revision
    return {
        "bf16": bf16,
        "fp16": fp16,
        "beta": t.beta,
        "learning_rate": t.learning_rate,
        "lr_scheduler_type": t.lr_scheduler,
        "warmup_steps": float(t.warmup_ratio),  # transformers 5: a float < 1 is a ratio
        "loss_type": t.loss_type,
        "scale_rewards": t.scale_rewards,
        "num_generations": t.num_generations,
        "per_device_train_batch_size": t.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "steps_per_generation": t.gradient_accumulation_steps,
        "num_iterations": 1,
        "num_train_epochs": t.epochs,
        "max_steps": t.max_steps if t.max_steps is not None else -1,
        "max_completion_length": t.max_completion_length,
        "temperature": t.temperature,
        "top_p": 1.0,
        "top_k": t.top_k,
        "repetition_penalty": 1.0,
        "use_bias_correction_kl": t.kl_bias_correction,
        "epsilon": 0.2,  # VisualQuality-R1's clip range, both sides
        "epsilon_high": 0.2,
        "importance_sampling_level": "token",
        "shuffle_dataset": False,  # PairRepeatSampler shuffles whole pairs itself
        "remove_unused_columns": False,
        "gradient_checkpointing": t.gradient_checkpointing,
        "save_strategy": "steps",
        "save_steps": t.save_steps,
        "save_total_limit": 2,
        "logging_steps": 1,
        "report_to": "none",
        "seed": spec.seed + t.seed_offset,
        "data_seed": spec.seed + t.seed_offset,
        "use_vllm": False,
        "deepspeed": str(deepspeed) if deepspeed else None,
        "ds3_gather_for_generation": True,
        "model_init_kwargs": model_init_kwargs,
        "log_completions": False,
        "disable_dropout": True,
        "mask_truncated_completions": False,
        "use_cpu": not cuda,
    }


def vllm_rollout_settings(spec: EvoQualityRunSpec) -> dict[str, Any]:
    """GRPOConfig fields of vLLM rollouts: TRL's importance-sampling correction. ``use_vllm``
    stays False at construction and is turned on by `rollouts.attach_vllm_rollouts`."""
    rollouts = spec.training.rollouts
    correction = rollouts.importance_sampling != "none"
    return {
        "vllm_mode": "server",
        "vllm_importance_sampling_correction": correction,
        **(
            {
                "vllm_importance_sampling_mode": rollouts.importance_sampling,
                "vllm_importance_sampling_clip_max": rollouts.importance_sampling_cap,
            }
            if correction
            else {}
        ),
    }


def _lora_config(spec: EvoQualityRunSpec):
    from peft import LoraConfig

    lora = spec.training.lora
    return LoraConfig(
        r=lora.r,
        lora_alpha=lora.alpha,
        lora_dropout=lora.dropout,
        target_modules=list(lora.target_modules),
        task_type="CAUSAL_LM",
    )


def _make_callback(on_step, on_save):
    from transformers import TrainerCallback

    class _RoundCallback(TrainerCallback):
        def __init__(self) -> None:
            self.steps: list[dict[str, Any]] = []
            self._last = time.perf_counter()
            self._started = False

        def on_step_begin(self, args, state, control, **kwargs):
            if not self._started:  # the first step's clock starts here, not at model loading
                self._started = True
                self._last = time.perf_counter()

        def on_log(self, args, state, control, logs=None, **kwargs):
            logs = logs or {}
            if "reward" not in logs and "loss" not in logs:
                return  # the final train summary log
            now = time.perf_counter()
            seconds, self._last = now - self._last, now
            mean_length = logs.get("completions/mean_length")
            tokens = None
            if mean_length is not None:  # completions of one optimizer step, all ranks
                completions = (
                    args.per_device_train_batch_size
                    * args.gradient_accumulation_steps
                    * args.world_size
                )
                tokens = float(mean_length) * completions
            record = {
                "step": state.global_step,
                "epoch": logs.get("epoch"),
                "reward_mean": logs.get("reward"),
                "reward_std": logs.get("reward_std"),
                "kl": logs.get("kl"),
                "loss": logs.get("loss"),
                "learning_rate": logs.get("learning_rate"),
                "grad_norm": logs.get("grad_norm"),
                "completion_mean_length": mean_length,
                "score_parse_rate": logs.get("score_parse_rate"),
                "frac_reward_zero_std": logs.get("frac_reward_zero_std"),
                "step_seconds": seconds,
                "trl_step_time": logs.get("step_time"),
                "tokens_per_s": (tokens / seconds) if tokens and seconds > 0 else None,
                # vLLM rollouts: |log p_vLLM - log p_trainer| of the sampled tokens, and the
                # importance ratios TRL applied (absent with transformers rollouts)
                "rollout_logp_diff_mean": logs.get("sampling/sampling_logp_difference/mean"),
                "rollout_logp_diff_max": logs.get("sampling/sampling_logp_difference/max"),
                "rollout_is_ratio_min": logs.get("sampling/importance_sampling_ratio/min"),
                "rollout_is_ratio_max": logs.get("sampling/importance_sampling_ratio/max"),
            }
            record = {k: _scalar(v) for k, v in record.items()}
            self.steps.append(record)
            if on_step is not None and state.is_world_process_zero:
                on_step(record)

        def on_save(self, args, state, control, **kwargs):
            if on_save is not None:  # every process: each wrote its own files
                on_save(Path(args.output_dir) / f"checkpoint-{state.global_step}")

    return _RoundCallback()


def _scalar(value: Any) -> Any:
    if value is None or isinstance(value, (str, int)):
        return value
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def train_round(
    spec: EvoQualityRunSpec,
    model_path: str,
    rows: list[TrainRow],
    output_dir: Path,
    *,
    resume_from: Path | None = None,
    on_step: Callable[[dict], None] | None = None,
    on_save: Callable[[Path], None] | None = None,
    rollout_server: str | None = None,
    sync_dir: Path | None = None,
) -> dict[str, Any]:
    """Train P_r -> P_{r+1} on the labelled pairs; the model lands in ``output_dir/final``.

    With ``training.rollouts.engine: vllm``, ``rollout_server`` is the vLLM server's URL and
    ``sync_dir`` a folder it reads the synced weights from (`evoquality.training.rollouts`).
    Checkpoints go to ``output_dir/checkpoint-<step>`` every ``training.saveSteps``; ``on_save``
    gets each on every process (each rank writes its own files: the caller coordinates) and
    ``on_step`` each step's record on the main process; ``resume_from`` continues a checkpoint.
    Returns a summary of scalars.
    """
    import torch
    from trl import GRPOConfig

    from evoquality.models import load_processor

    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    t = spec.training
    cuda = torch.cuda.is_available()
    if t.deepspeed != "none":
        ensure_distributed(cuda)
    settings = grpo_settings(spec, cuda)
    vllm_rollouts = t.rollouts.engine == "vllm"
    if vllm_rollouts:
        if rollout_server is None or sync_dir is None:
            raise ValueError("vLLM rollouts need the rollout server's URL and a sync folder")
        settings.update(vllm_rollout_settings(spec))
    args = GRPOConfig(output_dir=str(output_dir), **settings)

    check_pair_batching(t.per_device_batch_size, args.steps_per_generation, t.num_generations)
    unique_per_generation = args.generation_batch_size // t.num_generations
    if len(rows) < unique_per_generation:
        raise ValueError(
            f"{len(rows)} training rows ({len(rows) // 2} pairs) are fewer than one generation "
            f"batch needs ({unique_per_generation} images = per-device batch x processes x steps "
            "per generation / numGenerations): label more pairs or lower perDeviceBatchSize"
        )

    processor = load_processor(
        model_path, spec.model.min_pixels, spec.model.max_pixels, revision=spec.model.revision
    )
    dataset = build_dataset(rows, spec.model.reasoning)
    callback = _make_callback(on_step, on_save)
    trainer_cls = make_pair_trainer_class()
    client = RolloutClient(rollout_server) if vllm_rollouts else None
    trainer = trainer_cls(
        model=model_path,
        reward_funcs=[make_reward_function(spec)],
        args=args,
        train_dataset=dataset,
        processing_class=processor,
        peft_config=_lora_config(spec) if t.lora.enabled else None,
        callbacks=[callback],
        rollout_func=make_rollout_func(client, seed=args.seed) if client else None,
    )
    sync = attach_vllm_rollouts(trainer, client, sync_dir) if client else None
    started = time.perf_counter()
    result = trainer.train(resume_from_checkpoint=str(resume_from) if resume_from else None)
    train_seconds = time.perf_counter() - started

    final = output_dir / FINAL_DIR
    _save_final(trainer, processor, final, model_path, spec)

    steps = callback.steps
    last = steps[-1] if steps else {}
    completion_tokens = sum((s["tokens_per_s"] or 0.0) * (s["step_seconds"] or 0.0) for s in steps)
    metrics = result.metrics
    summary = {
        "steps": int(trainer.state.global_step),
        "logged_steps": len(steps),
        "reward_mean": last.get("reward_mean"),
        "reward_std": last.get("reward_std"),
        "kl": last.get("kl"),
        "loss": last.get("loss"),
        "train_loss": _scalar(metrics.get("train_loss")),
        "reward_mean_first": steps[0].get("reward_mean") if steps else None,
        "score_parse_rate": last.get("score_parse_rate"),
        "train_seconds": train_seconds,
        "samples_per_s": _scalar(metrics.get("train_samples_per_second")),
        "tokens_per_s": completion_tokens / train_seconds if train_seconds > 0 else None,
        "rows": len(rows),
        "pairs": len(rows) // 2,
        "beta": t.beta,
        "learning_rate": t.learning_rate,
        "lr_scheduler": t.lr_scheduler,
        "loss_type": t.loss_type,
        "scale_rewards": t.scale_rewards,
        "num_generations": t.num_generations,
        "per_device_batch_size": t.per_device_batch_size,
        "gradient_accumulation_steps": t.gradient_accumulation_steps,
        "max_completion_length": t.max_completion_length,
        "temperature": t.temperature,
        "bf16": bool(settings["bf16"]),
        "deepspeed": t.deepspeed,
        "lora": bool(t.lora.enabled),
        "gradient_checkpointing": bool(t.gradient_checkpointing),
        "world_size": int(args.world_size),
        "device": "cuda" if cuda else "cpu",
        "resumed": resume_from is not None,
        "final_dir": str(final),
        "rollout_engine": t.rollouts.engine,
    }
    if sync is not None:
        summary["weight_syncs"] = sync.syncs
        summary["weight_sync_seconds"] = sync.seconds
    if trainer.accelerator.is_main_process:
        (output_dir / "train_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _save_final(trainer, processor, final: Path, model_path: str, spec: EvoQualityRunSpec) -> None:
    """The trained model + processor + chat template, loadable by transformers and vLLM."""
    if final.exists() and trainer.accelerator.is_main_process:
        shutil.rmtree(final)
    trainer.accelerator.wait_for_everyone()
    if not spec.training.lora.enabled:
        # Under ZeRO-3 save_model gathers the 16-bit weights
        # (stage3_gather_16bit_weights_on_model_save in zero3.json).
        trainer.save_model(str(final))
    else:
        adapter = final.parent / (final.name + "-adapter")
        trainer.save_model(str(adapter))
        if trainer.accelerator.is_main_process:
            _merge_adapter(model_path, adapter, final, spec)
    if trainer.accelerator.is_main_process:
        processor.save_pretrained(str(final))
        generation_config = getattr(
            trainer.accelerator.unwrap_model(trainer.model), "generation_config", None
        )
        if generation_config is not None and not (final / "generation_config.json").exists():
            generation_config.save_pretrained(str(final))
    trainer.accelerator.wait_for_everyone()


def _merge_adapter(model_path: str, adapter: Path, final: Path, spec: EvoQualityRunSpec) -> None:
    """Merge LoRA into the base weights on CPU, so the next round's voter loads a plain model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    dtype = (
        torch.bfloat16
        if spec.model.dtype in ("bfloat16", "auto") and torch.cuda.is_available()
        else torch.float32
    )
    base = AutoModelForImageTextToText.from_pretrained(
        model_path, revision=spec.model.revision, dtype=dtype
    )
    merged = PeftModel.from_pretrained(base, str(adapter)).merge_and_unload()
    merged.save_pretrained(str(final))
