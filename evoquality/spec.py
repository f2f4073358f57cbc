"""The `EvoQualityRun` specification: pydantic models, loading, validation errors and the spec hash.

These models are the single source of truth for the run manifest: the embedded runner and the
stage commands validate with them, the operator validates custom resources with them, and the CRD
schema in `crds/` is generated from them (`evoquality.crd`).

Every voting, ranking, training and evaluation default ends its field description with its
source, in this precedence: ``[paper]`` (EvoQuality, arXiv 2509.25787), ``[model card]`` (its
Hugging Face card), ``[VisualQuality-R1]`` (the fidelity-reward code EvoQuality builds on, where
the paper is silent and the setting applies), else ``[our choice: reason]``. docs/training.md
lists them all ("Defaults and their sources"); a test keeps the two equal. YAML/JSON use camelCase.
"""

from __future__ import annotations

import hashlib
import json
import re
from decimal import Decimal
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AliasGenerator,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel

API_GROUP = "evoquality.io"
API_VERSION = "v1alpha1"
KIND = "EvoQualityRun"
PLURAL = "evoqualityruns"

DNS1123_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
DNS1123_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"

SAMPLERS = ("random", "balanced", "same-reference", "adaptive")
LABEL_MODES = ("hard", "soft", "bradley-terry")
ENGINES = ("vllm", "transformers", "simulated")
MUTABLE_SPEC_FIELDS = ("suspend", "queueName")


class SpecError(ValueError):
    """A manifest that cannot be read or validated; the message names the field and the reason."""


class _Model(BaseModel):
    model_config = ConfigDict(
        alias_generator=AliasGenerator(alias=to_camel),
        populate_by_name=True,
        extra="forbid",
        frozen=True,
    )


# ---------------------------------------------------------------------------------------------
# model, data, stages
# ---------------------------------------------------------------------------------------------


class SimulatedJudgeSpec(_Model):
    """A judge with known behaviour that reads the manifest's `mos` as hidden truth.

    A test and benchmark device only: never a default, never for real runs.
    """

    temperature: float = Field(0.5, gt=0, description="P(a beats b) = sigmoid((mos_a-mos_b)/T).")
    pair_error: float = Field(
        0.0, ge=0, le=1, description="Share of pairs judged consistently wrong."
    )
    position_bias: float = Field(0.0, ge=0, le=1, description="Extra chance the first image wins.")
    score_noise: float = Field(
        0.5, ge=0, description="Std of the noise added to scores (score prompt)."
    )


class ModelSpec(_Model):
    base: str = Field(
        "Qwen/Qwen2.5-VL-7B-Instruct",
        min_length=1,
        description="Base VLM: a Hugging Face name, an s3:// or local model directory, `tiny` "
        "(a tiny random model built on first use; tests and the smoke spec) or `tiny-weak` (the "
        "tiny model pre-trained on SynIQA's training photos, committed; the quickstart). [paper]",
    )
    revision: str | None = Field(None, description="Hub revision of the base model.")
    min_pixels: int = Field(
        3136,
        gt=0,
        description="Smallest image area in pixels for every engine and the trainer. "
        "[VisualQuality-R1]",
    )
    max_pixels: int = Field(
        401408,
        gt=0,
        description="Largest image area in pixels; images are resized once to this cap with both "
        "sides multiples of 28. [our choice: 512 x 28 x 28; VisualQuality-R1's 12,845,056 makes "
        "a training round ~16x the GPU-hours (docs/training.md, cost model)]",
    )
    reasoning: bool = Field(True, description="Think-then-answer prompts. [model card]")
    engine: Literal["vllm", "transformers", "simulated"] = Field(
        "vllm", description="Inference engine for vote and eval: vllm (GPU), transformers (CPU)."
    )
    dtype: Literal["bfloat16", "float16", "float32", "auto"] = Field(
        "bfloat16", description="Weights dtype for inference and training."
    )
    tensor_parallel: int = Field(1, ge=1, description="vLLM tensor-parallel size (GPUs per pod).")
    gpu_memory_utilization: float = Field(0.9, gt=0, le=1, description="vLLM memory share.")
    simulated: SimulatedJudgeSpec | None = Field(
        None, description="Settings of the simulated judge (engine: simulated)."
    )

    @model_validator(mode="after")
    def _pixels(self) -> ModelSpec:
        if self.min_pixels > self.max_pixels:
            raise ValueError(
                f"minPixels ({self.min_pixels}) must not exceed maxPixels ({self.max_pixels})"
            )
        if self.max_pixels < 28 * 28:
            raise ValueError("maxPixels must be at least 784 (one 28 x 28 patch)")
        return self


class AugmentationSpec(_Model):
    """Synthetic distortions of each pool image, paired with each other (the paper's round 2)."""

    from_round: int = Field(
        1, ge=0, description="First round (0-based) that adds distorted variants. [paper]"
    )
    variants_per_image: int = Field(
        4, ge=1, description="Distorted variants per image. [our choice: the paper gives no number]"
    )
    pairs_per_round: int = Field(
        5000,
        ge=1,
        description="Pairs of variants of one image per round, on top of voting.pairsPerRound. "
        "[our choice: a quarter of the paper's 20,000 random pairs]",
    )


class DataSpec(_Model):
    manifest: str = Field(
        ..., min_length=1, description="Unlabeled image pool: CSV with an `image` column."
    )
    max_images: int | None = Field(None, ge=2, description="Use at most this many images.")
    augmentation: AugmentationSpec | None = Field(
        default_factory=AugmentationSpec,
        description="Round-2 style synthetic distortions (the paper); null disables.",
    )


class VotingSpec(_Model):
    pairs_per_round: int = Field(
        20000, ge=1, description="Random image pairs compared per round. [paper]"
    )
    votes_per_pair: int = Field(
        32,
        ge=1,
        description="K votes per pair, image order swapped across votes. An even K balances the "
        "orders exactly; with an odd K the two orders differ by one vote. [paper]",
    )
    temperature: float = Field(
        1.0,
        ge=0,
        description="Sampling temperature of the votes. [our choice: the paper samples "
        "(self-consistency) without stating one; 1.0 is the model's own distribution]",
    )
    top_p: float = Field(
        1.0, gt=0, le=1, description="Nucleus sampling. [our choice: the full distribution]"
    )
    max_new_tokens: int = Field(
        1024,
        ge=1,
        description="Generation budget per vote. [our choice: room for the reasoning; 16 suffice "
        "without it]",
    )
    sampler: Literal["random", "balanced", "same-reference", "adaptive"] = Field(
        "random", description="Pair design: random, balanced, same-reference, adaptive. [paper]"
    )
    shards: int = Field(
        1, ge=1, description="Vote shards (one pod each on Kubernetes). [our choice: operational]"
    )
    parallelism: int | None = Field(
        None, ge=1, description="Shards running at once (null = all). [our choice: operational]"
    )
    prefix_caching: bool = Field(
        True,
        description="vLLM automatic prefix caching: the K votes share the prompt's KV. "
        "[our choice: operational]",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Pairs per engine call, both orders together; null = the whole shard in "
        "calls bounded by memory and progress steps. [our choice: operational]",
    )
    keep_texts: bool = Field(
        False,
        description="Store the sampled answers in the votes table. [our choice: operational]",
    )


class RankingSpec(_Model):
    labels: Literal["hard", "soft", "bradley-terry"] = Field(
        "hard",
        description="hard majority, soft vote fraction, or global Bradley-Terry. [paper]",
    )
    min_confidence: float = Field(
        0.0,
        ge=0,
        le=1,
        description="Drop pairs whose vote margin |a-b|/(a+b) is below this. [paper: hard "
        "majority p* in {0, 0.5, 1}, ties kept at 0.5]",
    )
    confidence_weighting: bool = Field(
        False,
        description="Weight each pair's reward by its confidence. Needs training.scaleRewards "
        "batch or none: a per-group z-score cancels a constant factor. [our choice: under the "
        "paper's group z-score a weight cancels]",
    )


class LoraSpec(_Model):
    enabled: bool = Field(
        False,
        description="Train LoRA adapters instead of a full fine-tune. [paper: full fine-tune]",
    )
    r: int = Field(64, ge=1)
    alpha: int = Field(128, ge=1)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"], max_length=64
    )


class RolloutsSpec(_Model):
    """Where GRPO's rollouts are generated (docs/training.md, "Rollouts in vLLM")."""

    engine: Literal["transformers", "vllm"] = Field(
        "transformers",
        description="transformers: HF generate inside the trainer; vllm: a vLLM server beside "
        "the trainer (a sidecar on the cluster, a subprocess locally), weights synced every "
        "optimizer step. [our choice: vLLM rollouts have run on CPU only so far]",
    )
    gpus: int = Field(
        1,
        ge=0,
        description="GPUs of each training pod that go to the vLLM server (the rest train). "
        "[our choice: operational: a 7B model fits one GPU]",
    )
    importance_sampling: Literal[
        "sequence_mask", "sequence_truncate", "token_mask", "token_truncate", "none"
    ] = Field(
        "sequence_mask",
        description="TRL's correction for vLLM's log-probs differing from the trainer's "
        "(none = off). [our choice: TRL 1.16's default]",
    )
    importance_sampling_cap: float = Field(
        3.0,
        gt=1,
        description="Upper bound of the importance ratio (masked above it, or truncated). "
        "[our choice: TRL 1.16's default]",
    )
    startup_timeout_seconds: int = Field(
        900,
        ge=30,
        description="How long the trainer waits for the server to load the model. "
        "[our choice: operational]",
    )


class TrainingSpec(_Model):
    num_generations: int = Field(32, ge=2, description="G sampled scores per image. [paper]")
    per_device_batch_size: int = Field(
        64,
        ge=1,
        description="Completions per device and step, a multiple of 2G. [our choice: one pair's "
        "2 x 32 samples per device]",
    )
    gradient_accumulation_steps: int = Field(
        1, ge=1, description="[our choice: one generation batch per optimizer step]"
    )
    beta: float = Field(0.05, ge=0, description="KL coefficient. [paper]")
    learning_rate: float = Field(3e-7, gt=0, description="[paper]")
    lr_scheduler: Literal["constant", "constant_with_warmup", "linear", "cosine"] = Field(
        "linear",
        description="Learning-rate schedule. [VisualQuality-R1: the Trainer's linear decay]",
    )
    warmup_ratio: float = Field(0.0, ge=0, lt=1, description="[VisualQuality-R1]")
    epochs: float = Field(
        1.0,
        gt=0,
        description="Passes over the labelled pairs. [our choice: each round's pairs are new]",
    )
    max_steps: int | None = Field(
        None,
        ge=1,
        description="Stop after this many optimizer steps. [our choice: null = the epochs]",
    )
    max_completion_length: int = Field(
        256, ge=1, description="Rollout budget in tokens. [VisualQuality-R1]"
    )
    temperature: float = Field(1.0, gt=0, description="Rollout temperature. [VisualQuality-R1]")
    top_k: int = Field(
        50,
        ge=0,
        description="Rollout top-k (0 = off). [VisualQuality-R1: generate's default 50]",
    )
    loss_type: Literal["grpo", "dapo", "dr_grpo", "bnpo"] = Field(
        "grpo",
        description="GRPO loss: per-sequence token mean, then the mean over sequences (TRL 1.16 "
        "defaults to dapo). [VisualQuality-R1]",
    )
    scale_rewards: Literal["group", "batch", "none"] = Field(
        "group",
        description="Advantage scaling: group z-score (GRPO), batch std, or none. "
        "[VisualQuality-R1]",
    )
    format_reward_weight: float = Field(
        1.0,
        ge=0,
        description="Weight of the format reward (1 for think-then-boxed answers) added to "
        "fidelity. [VisualQuality-R1: equal weights]",
    )
    kl_bias_correction: bool = Field(
        False,
        description="TRL's importance-weighted KL (use_bias_correction_kl); false = the plain k3 "
        "estimator. [VisualQuality-R1]",
    )
    deepspeed: Literal["none", "zero2", "zero3"] = Field(
        "zero3", description="DeepSpeed ZeRO stage. [VisualQuality-R1]"
    )
    lora: LoraSpec = Field(default_factory=LoraSpec)
    rollouts: RolloutsSpec = Field(default_factory=RolloutsSpec)
    nodes: int = Field(1, ge=1, description="Training pods. [our choice: operational]")
    gpus_per_node: int = Field(
        8, ge=0, description="Ranks per training pod. [our choice: operational]"
    )
    save_steps: int = Field(
        50,
        ge=1,
        description="Checkpoint every N steps; a re-run resumes. [our choice: operational]",
    )
    gradient_checkpointing: bool = Field(
        True, description="Recompute activations in backward. [our choice: operational]"
    )
    seed_offset: int = Field(
        0, ge=0, description="Added to spec.seed for the trainer. [our choice: operational]"
    )

    @model_validator(mode="after")
    def _pairs_fit_batches(self) -> TrainingSpec:
        rows = self.per_device_batch_size * self.gradient_accumulation_steps
        if rows % (2 * self.num_generations):
            raise ValueError(
                f"perDeviceBatchSize x gradientAccumulationSteps ({rows}) must be a multiple of "
                f"2 x numGenerations ({2 * self.num_generations}) so both images of a pair and all "
                "their samples land in one reward call"
            )
        if self.rollouts.engine == "vllm":
            unbuilt = [
                reason
                for reason, found in (
                    ("lora.enabled (the server needs merged weights)", self.lora.enabled),
                    ("nodes > 1 (one server per node is not built)", self.nodes > 1),
                )
                if found
            ]
            if unbuilt:
                raise ValueError("rollouts.engine vllm does not support " + ", ".join(unbuilt))
            if self.gpus_per_node and self.gpus_per_node <= self.rollouts.gpus:
                raise ValueError(
                    f"gpusPerNode ({self.gpus_per_node}) must exceed rollouts.gpus "
                    f"({self.rollouts.gpus}): the server's GPUs are taken from the pod's"
                )
        return self

    @property
    def trainer_gpus(self) -> int:
        """GPUs of a training pod that run trainer ranks (the rest serve vLLM rollouts)."""
        if self.rollouts.engine == "vllm" and self.gpus_per_node:
            return self.gpus_per_node - self.rollouts.gpus
        return self.gpus_per_node


class BenchmarkSpec(_Model):
    name: str = Field(..., pattern=r"^[A-Za-z0-9_.-]+$", max_length=63)
    manifest: str = Field(..., min_length=1, description="CSV with `image` and `mos` columns.")
    max_images: int | None = Field(None, ge=2)


class EvaluationSpec(_Model):
    benchmarks: list[BenchmarkSpec] = Field(default_factory=list, max_length=64)
    samples_per_image: int = Field(
        1,
        ge=1,
        description="Scores sampled per image and averaged. [VisualQuality-R1: one sample]",
    )
    temperature: float = Field(
        1.0,
        ge=0,
        description="Sampling temperature (0 = greedy). [VisualQuality-R1: sampled at 1.0]",
    )
    max_new_tokens: int = Field(
        1024,
        ge=1,
        description="[our choice: VisualQuality-R1 uses 512 (vLLM) and 2048 (transformers)]",
    )
    max_pixels: int | None = Field(
        None,
        ge=784,
        description="Largest image area at evaluation; null = model.maxPixels. [our choice: the "
        "pixels the policy trained on; VisualQuality-R1 trains and evaluates at 12.8 MP]",
    )
    parse_failure: Literal["random", "exclude"] = Field(
        "random",
        description="An image none of whose samples parses: `random` scores it uniformly in "
        "[1, 5] (seeded per image), `exclude` leaves it out of the correlations. "
        "[VisualQuality-R1: random]",
    )
    batch_size: int | None = Field(
        None,
        ge=1,
        description="Images per engine call; null = the whole benchmark in calls bounded by "
        "memory and progress steps. [our choice: operational]",
    )
    validation: BenchmarkSpec | None = Field(
        None,
        description="Held-out manifest for early stopping and best-checkpoint choice; never a "
        "test benchmark. [our choice: none]",
    )
    early_stopping: bool = Field(
        False,
        description="Stop when the validation SRCC falls (needs validation). [our choice: off]",
    )
    evaluate_base: bool = Field(
        True, description="Evaluate the base model once (base/eval/). [our choice: the reference]"
    )

    @model_validator(mode="after")
    def _names(self) -> EvaluationSpec:
        names = [b.name for b in self.benchmarks]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"benchmark names must be unique, repeated: {dupes}")
        if self.early_stopping and self.validation is None:
            raise ValueError("earlyStopping needs a validation manifest")
        if self.validation is not None and self.validation.manifest in {
            b.manifest for b in self.benchmarks
        }:
            raise ValueError("the validation manifest must not be one of the test benchmarks")
        return self


class StorageSpec(_Model):
    uri: str = Field(
        ...,
        description="Artifact root: s3://bucket/prefix or file:///path (local path accepted).",
    )
    endpoint: str | None = Field(None, description="S3 endpoint URL (MinIO, Ceph, ...).")
    secret_name: str | None = Field(
        None, description="Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY for stage pods."
    )

    @field_validator("uri")
    @classmethod
    def _uri(cls, value: str) -> str:
        if value.startswith("s3://"):
            if len(value) <= 5 or value[5] == "/":
                raise ValueError("an s3:// URI needs a bucket name: s3://bucket/prefix")
        elif "://" in value and not value.startswith("file://"):
            raise ValueError("use s3://bucket/prefix, file:///path or a local path")
        return value


class EnvVar(_Model):
    name: str = Field(..., min_length=1)
    value: str | None = None
    secret_name: str | None = Field(None, description="Take the value from this secret ...")
    secret_key: str | None = Field(None, description="... and key (default: the variable name).")

    @model_validator(mode="after")
    def _one_source(self) -> EnvVar:
        if (self.value is None) == (self.secret_name is None):
            raise ValueError(f"env {self.name}: give exactly one of value or secretName")
        return self


QUANTITY = r"^([0-9]+(\.[0-9]*)?|\.[0-9]+)([eE][-+]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
_QUANTITY_FACTORS = {
    **{s: Decimal(1024) ** (i + 1) for i, s in enumerate(("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"))},
    **{
        s: Decimal(10) ** e
        for s, e in zip("numkMGTPE", (-9, -6, -3, 3, 6, 9, 12, 15, 18), strict=True)
    },
}


Quantity = Annotated[str, StringConstraints(pattern=QUANTITY, max_length=64)]


def quantity(value: str) -> Decimal:
    """A Kubernetes resource quantity (``500m``, ``16Gi``, ``1e3``) as a number."""
    text = str(value).strip()
    if not re.fullmatch(QUANTITY, text):
        raise ValueError(f"not a Kubernetes quantity: {value!r}")
    for suffix in sorted(_QUANTITY_FACTORS, key=len, reverse=True):
        if text.endswith(suffix):
            return Decimal(text[: -len(suffix)]) * _QUANTITY_FACTORS[suffix]
    return Decimal(text)


class PodSpec(_Model):
    """Pod settings of one stage's Jobs (Kubernetes executor only)."""

    image: str | None = Field(None, description="Container image (default: the chart's).")
    resources: dict[Literal["requests", "limits"], dict[str, Quantity]] = Field(
        default_factory=dict,
        description="requests/limits, e.g. {limits: {nvidia.com/gpu: '8'}}; values are Kubernetes "
        "quantities (`64Gi`, not `64GB`).",
    )
    node_selector: dict[str, str] = Field(default_factory=dict)
    tolerations: list[dict[str, Any]] = Field(default_factory=list, max_length=64)
    affinity: dict[str, Any] | None = None
    priority_class_name: str | None = None
    service_account_name: str | None = None
    image_pull_secrets: list[str] = Field(default_factory=list, max_length=16)
    env: list[EnvVar] = Field(default_factory=list, max_length=64)
    env_from_secrets: list[str] = Field(
        default_factory=list, max_length=16, description="Secrets loaded whole (e.g. HF_TOKEN)."
    )
    active_deadline_seconds: int | None = Field(None, ge=1)
    shm_size: str = Field("16Gi", description="Memory emptyDir at /dev/shm (NCCL, vLLM TP).")
    scratch_size: str = Field(
        "50Gi",
        pattern=QUANTITY,
        description="Sized emptyDir at EVOQUALITY_CACHE (training scratch, downloaded checkpoints "
        "and images) and the pod's ephemeral-storage request.",
    )
    runtime_class_name: str | None = Field(
        None, description="RuntimeClass, e.g. `nvidia` on k3s/RKE2."
    )
    scheduler_name: str | None = Field(None, description="A scheduler other than the default.")
    extra_volumes: list[dict[str, Any]] = Field(
        default_factory=list, max_length=16, description="Pod volumes added as given."
    )
    extra_volume_mounts: list[dict[str, Any]] = Field(
        default_factory=list, max_length=16, description="Container mounts added as given."
    )
    add_capabilities: list[str] = Field(
        default_factory=list,
        max_length=16,
        description="Capabilities added after dropping ALL (e.g. IPC_LOCK for InfiniBand: no "
        "longer PodSecurity `restricted`).",
    )

    @model_validator(mode="after")
    def _requests_within_limits(self) -> PodSpec:
        requests, limits = self.resources.get("requests", {}), self.resources.get("limits", {})
        for name, request in requests.items():
            if name in limits and quantity(request) > quantity(limits[name]):
                raise ValueError(
                    f"resources.requests.{name} ({request}) is above its limit ({limits[name]})"
                )
        return self


class PodsSpec(_Model):
    vote: PodSpec = Field(default_factory=PodSpec)
    rank: PodSpec = Field(default_factory=PodSpec)
    train: PodSpec = Field(default_factory=PodSpec)
    eval: PodSpec = Field(default_factory=PodSpec)
    model_cache_pvc: str | None = Field(
        None, description="ReadWriteMany PVC for the model cache (else an emptyDir per pod)."
    )
    pending_timeout_seconds: int | None = Field(
        3600,
        ge=60,
        description="A stage attempt whose pods are not all Ready this long after its Job started "
        "(admitted, for Kueue) is failed and retried: a gang that cannot be scheduled whole, an "
        "image that does not pull. Not activeDeadlineSeconds, which counts running time. null: "
        "wait forever (our choice: an hour covers pulling a 20 GB image).",
    )
    ttl_seconds_after_finished: int | None = Field(
        86400,
        ge=600,
        description="ttlSecondsAfterFinished of the run's Jobs. The operator records a finished "
        "Job on its next reconcile; a Job deleted before that is created again and reports the "
        "committed stage at once. null keeps Jobs until the run is deleted (our choice: a day "
        "covers an operator outage).",
    )


class RetrySpec(_Model):
    max_retries: int = Field(2, ge=0, description="New attempts of a failed stage (our choice).")
    backoff_seconds: int = Field(30, ge=0, description="First backoff, doubled per attempt.")


class EvoQualityRunSpec(_Model):
    seed: int = Field(0, ge=0)
    model: ModelSpec = Field(default_factory=ModelSpec)
    data: DataSpec
    rounds: int = Field(2, ge=1, le=100, description="T self-evolution rounds. [paper]")
    voting: VotingSpec = Field(default_factory=VotingSpec)
    ranking: RankingSpec = Field(default_factory=RankingSpec)
    training: TrainingSpec = Field(default_factory=TrainingSpec)
    evaluation: EvaluationSpec = Field(default_factory=EvaluationSpec)
    storage: StorageSpec
    pods: PodsSpec = Field(default_factory=PodsSpec)
    retries: RetrySpec = Field(default_factory=RetrySpec)
    queue_name: str | None = Field(
        None,
        description="Kueue LocalQueue (label on every Job). Fixed once the run has Jobs: the "
        "operator refuses a change (SpecValid=False, reason QueueNameChanged) until set back.",
    )
    priority_class: str | None = Field(
        None,
        pattern=DNS1123_SUBDOMAIN,
        max_length=253,
        description="Kueue WorkloadPriorityClass (label kueue.x-k8s.io/priority-class on every "
        "Job); needs queueName.",
    )
    suspend: bool = Field(False, description="Suspend running Jobs and start no new ones.")

    @model_validator(mode="after")
    def _cross_checks(self) -> EvoQualityRunSpec:
        if self.ranking.confidence_weighting and self.training.scale_rewards == "group":
            raise ValueError(
                "ranking.confidenceWeighting needs training.scaleRewards 'batch' or 'none': a "
                "per-group z-score cancels a constant weight per image"
            )
        if self.voting.sampler == "same-reference" and self.data.augmentation is None:
            raise ValueError("voting.sampler 'same-reference' needs data.augmentation")
        if self.priority_class is not None and self.queue_name is None:
            raise ValueError("priorityClass is Kueue's WorkloadPriorityClass: it needs queueName")
        if self.model.engine == "simulated" and self.model.simulated is None:
            raise ValueError("model.engine 'simulated' needs model.simulated settings")
        return self


class ObjectMeta(_Model):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)

    name: str = Field(..., max_length=253, pattern=DNS1123_SUBDOMAIN)
    namespace: str = Field("default", max_length=63, pattern=DNS1123_LABEL)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class EvoQualityRun(_Model):
    api_version: Literal["evoquality.io/v1alpha1"] = Field(
        f"{API_GROUP}/{API_VERSION}", alias="apiVersion"
    )
    kind: Literal["EvoQualityRun"] = KIND
    metadata: ObjectMeta
    spec: EvoQualityRunSpec


# ---------------------------------------------------------------------------------------------
# loading, errors, hashing
# ---------------------------------------------------------------------------------------------


def format_validation_error(error: ValidationError, root: str = "") -> str:
    """One line per problem: the dotted camelCase field path, then pydantic's reason."""
    lines = []
    for item in error.errors():
        path = ".".join(str(p) for p in item["loc"] if p not in ("function-after",))
        where = ".".join(part for part in (root, path) if part) or "(manifest)"
        lines.append(f"{where}: {item['msg']}")
    return "\n".join(lines)


def parse_run(document: Any) -> EvoQualityRun:
    """Validate a parsed manifest (a dict); raise SpecError naming each bad field."""
    if not isinstance(document, dict):
        raise SpecError(f"the manifest must be a mapping, got {type(document).__name__}")
    try:
        return EvoQualityRun.model_validate(document)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc)) from None


def parse_spec(document: Any) -> EvoQualityRunSpec:
    """Validate a bare spec (the `spec:` mapping of a run)."""
    try:
        return EvoQualityRunSpec.model_validate(document)
    except ValidationError as exc:
        raise SpecError(format_validation_error(exc, root="spec")) from None


def load_run(path: str | Path) -> EvoQualityRun:
    """Read a YAML or JSON manifest; errors name the file, line and column, or the field."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise SpecError(f"{path}: no such manifest") from None
    except OSError as exc:
        raise SpecError(f"{path}: cannot read: {exc.strerror}") from None
    try:
        document = yaml.safe_load(text)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark else "unknown position"
        raise SpecError(f"{path}: invalid YAML at {where}: {exc.problem}") from None
    try:
        return parse_run(document)
    except SpecError as exc:
        raise SpecError(f"{path}:\n{exc}") from None


def spec_to_dict(spec: EvoQualityRunSpec) -> dict[str, Any]:
    """The spec as camelCase JSON-able data, defaults filled in."""
    return spec.model_dump(mode="json", by_alias=True)


def spec_hash(spec: EvoQualityRunSpec) -> str:
    """Hash of everything that changes results (suspend and queueName are left out)."""
    data = spec_to_dict(spec)
    for name in MUTABLE_SPEC_FIELDS:
        data.pop(name, None)
    canonical = json.dumps(data, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()
