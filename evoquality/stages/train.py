"""The train stage: GRPO on the scoring prompt against round r's pseudo-labels -> P_{r+1}.

Each labelled pair becomes two adjacent training rows (the pair's images, each with its partner
and p* from its own side). Commits the final model with its processor (`checkpoint/`), the
per-step log (`steps.jsonl`) and a summary.

One process, or several under torchrun (`evoquality.stages.ranks`): rank 0 decides whether the
stage is done and the attempt id (`StageContext`), each node's local rank 0 fetches the policy
model and the checkpoint to resume from into one folder per attempt and node that the node's ranks
share, every rank's checkpoint files reach the store (`train_checkpoints`), and only rank 0
uploads the final model and commits, after the trainer's last barrier; the other ranks return the
committed summary, or raise rank 0's error. A re-run (a new attempt) resumes from the newest
complete checkpoint any earlier attempt with the same world size uploaded.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from evoquality import artifacts
from evoquality.pool import load_prepared, round_pool
from evoquality.stages import train_checkpoints
from evoquality.stages.context import StageContext, StageError
from evoquality.stages.progress import progress

STEPS_LOG = "steps.jsonl"


def build_rows(ctx: StageContext, round_index: int):
    """Training rows from the round's labels: two adjacent rows per pair."""
    from evoquality.training import TrainRow

    rank = ctx.require_summary("rank", round_index)
    labels = artifacts.read_table(ctx.store, artifacts.resolve(ctx.store, rank, "labels.parquet"))
    if labels.num_rows == 0:
        return []
    bt: dict[str, float] = {}
    if ctx.spec.ranking.labels == "bradley-terry":
        scores = artifacts.read_table(
            ctx.store, artifacts.resolve(ctx.store, rank, "scores.parquet")
        )
        bt = dict(zip(scores["image"].to_pylist(), scores["score"].to_pylist(), strict=True))
    pool = round_pool(ctx.spec, round_index, ctx.cache)
    by_key = {img.key: img for img in pool.images}
    image_a, image_b = labels["image_a"].to_pylist(), labels["image_b"].to_pylist()
    missing = sorted({k for k in image_a + image_b if k not in by_key})
    if missing:
        raise StageError(f"labels name images that are not in the round's pool: {missing[:5]}")
    needed = sorted(set(image_a) | set(image_b))
    pictures, failures = load_prepared([by_key[k] for k in needed], ctx.spec.model)
    if failures:
        raise StageError("cannot read training images:\n  " + "\n  ".join(failures[:5]))
    picture = dict(zip(needed, pictures, strict=True))
    rows = []
    p_star = labels["p_star"].to_numpy()
    weight = labels["weight"].to_numpy()
    for pair_id, (a, b) in enumerate(zip(image_a, image_b, strict=True)):
        for key, partner, p in ((a, b, p_star[pair_id]), (b, a, 1.0 - p_star[pair_id])):
            rows.append(
                TrainRow(
                    image_key=key,
                    image=picture[key],
                    pair_id=pair_id,
                    partner_key=partner,
                    p_star=float(p),
                    weight=float(weight[pair_id]),
                    bt_score=bt.get(key),
                )
            )
    return rows


def estimated_steps(ctx: StageContext, n_rows: int) -> int:
    training = ctx.spec.training
    if training.max_steps:
        return training.max_steps
    per_step = training.per_device_batch_size * training.gradient_accumulation_steps
    return max(1, math.ceil(n_rows * training.num_generations * training.epochs / per_step))


def run(ctx: StageContext) -> dict:
    from evoquality.training import train_round

    ranks = ctx.ranks
    round_index = ctx.args.round
    rows = build_rows(ctx, round_index)
    model_path = ctx.policy_model(round_index)
    attempt = ctx.attempt("train", round_index)
    if not rows:
        return ranks.decide(lambda: carry_over(ctx, attempt, model_path))
    work = ctx.cache / f"train-r{round_index}-{attempt.attempt_id}-node{ranks.node_rank}"
    ranks.on_node_main(lambda: _fresh_dir(work))
    try:
        previous = ranks.decide(
            lambda: train_checkpoints.latest(ctx.store, round_index, ranks.world_size)
        )
        resume_from = None
        if previous is not None:
            resume_from = work / "resume" / previous.name
            ranks.on_node_main(
                lambda: train_checkpoints.download(ctx.store, previous, work / "resume", ranks)
            )
        # only rank 0 logs steps (the trainer's logs are rank 0's)
        steps = read_steps(resume_from / STEPS_LOG) if resume_from and ranks.is_main else []
        reporter = (
            progress(f"train r{round_index}", estimated_steps(ctx, len(rows)))
            if ranks.is_main
            else contextlib.nullcontext()
        )
        with rollout_server(ctx, model_path, work) as (server_url, sync_dir), reporter as bar:
            if bar is not None:
                bar.advance(len(steps))

            def on_step(record: dict) -> None:  # rank 0
                steps.append(record)
                bar.advance(1)

            def on_save(checkpoint: Path) -> None:  # every rank
                if ranks.is_main:
                    write_steps(checkpoint / STEPS_LOG, steps)
                train_checkpoints.publish(ranks, attempt, checkpoint)

            result = train_round(
                ctx.spec,
                model_path,
                rows,
                work / "output",
                resume_from=resume_from,
                on_step=on_step,
                on_save=on_save,
                rollout_server=server_url,
                sync_dir=sync_dir,
            )
        return ranks.decide(lambda: commit(ctx, attempt, work, result, steps))
    finally:
        if ranks.is_node_main:
            shutil.rmtree(work, ignore_errors=True)


@contextlib.contextmanager
def rollout_server(
    ctx: StageContext, model_path: str, work: Path
) -> Iterator[tuple[str | None, Path | None]]:
    """(URL, sync folder) of the vLLM rollout server, or (None, None) for transformers rollouts.

    A server started beside the stage (the train pod's sidecar) is named by
    ``$EVOQUALITY_ROLLOUT_SERVER`` and its folder by ``$EVOQUALITY_ROLLOUT_SYNC_DIR``; without
    them a single-process stage (the embedded runner) starts one from the vLLM venv for the
    attempt and stops it at the end, on success or failure."""
    from evoquality import rollout_server as server
    from evoquality.engines.vllm_env import vllm_python

    rollouts = ctx.spec.training.rollouts
    if rollouts.engine != "vllm":
        yield None, None
        return
    sync_dir = Path(os.environ.get(server.SYNC_DIR_ENV) or work / "rollout-weights")
    given = os.environ.get(server.SERVER_ENV)
    if given:
        server.wait_healthy(given, rollouts.startup_timeout_seconds)
        yield given, sync_dir
        return
    if ctx.ranks.world_size > 1:
        raise StageError(
            f"vLLM rollouts under several ranks need a server started beside them: set "
            f"{server.SERVER_ENV} (the operator's train pods have a sidecar)"
        )
    python = vllm_python()
    if python is None:
        raise StageError(
            "training.rollouts.engine vllm needs vLLM: run `make vllm-venv` or set "
            "EVOQUALITY_VLLM_PYTHON"
        )
    log = ctx.cache / "logs" / f"rollout-server-{work.name}.log"
    settings = server.spec_server_args(ctx.spec, model_path, gpus=0 if not _cuda() else 1)
    try:
        with server.local_server(python, settings, log, rollouts.startup_timeout_seconds) as url:
            yield url, sync_dir
    except server.RolloutServerError as err:
        raise StageError(str(err)) from None


def _cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def commit(
    ctx: StageContext, attempt: artifacts.StageAttempt, work: Path, result: dict, steps: list
) -> dict:
    """Rank 0: upload the final model and the step log, then commit the summary."""
    attempt.put_dir("checkpoint", work / "output" / "final")
    write_steps(work / STEPS_LOG, steps)
    attempt.put_file(STEPS_LOG, work / STEPS_LOG)
    metrics = {k: _clean(v) for k, v in result.items() if isinstance(v, int | float | str | bool)}
    metrics["checkpoint"] = ctx.uri(attempt.key("checkpoint"))
    return attempt.commit({"metrics": metrics})


def read_steps(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def write_steps(path: Path, steps: list[dict]) -> None:
    path.write_text("".join(json.dumps(s) + "\n" for s in steps))


def _fresh_dir(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)  # left by a killed process of this attempt
    path.mkdir(parents=True)


def carry_over(ctx: StageContext, attempt: artifacts.StageAttempt, model_path: str) -> dict:
    """No pseudo-labels (every vote abstained or fell below minConfidence): P_{r+1} = P_r."""
    if not Path(model_path).is_dir():
        raise StageError(
            f"round {ctx.args.round} has no pseudo-labels and the policy {model_path} is not a "
            "local folder to carry over; check the vote abstention rate and minConfidence"
        )
    print(
        f"warning: round {ctx.args.round} has no pseudo-labels; the policy is carried over "
        "unchanged (look at the vote abstention rate)",
        file=sys.stderr,
    )
    attempt.put_dir("checkpoint", Path(model_path))
    attempt.put_bytes(STEPS_LOG, b"")
    metrics = {"steps": 0, "pairs": 0, "carried_over": True, "world_size": ctx.ranks.world_size}
    metrics["checkpoint"] = ctx.uri(attempt.key("checkpoint"))
    return attempt.commit({"metrics": metrics})


def _clean(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
