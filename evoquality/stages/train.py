"""The train stage: GRPO on the scoring prompt against round r's pseudo-labels -> P_{r+1}.

Each labelled pair becomes two adjacent training rows (the pair's images, each with its partner
and p* from its own side). Checkpoints are uploaded under the attempt as they are saved; a re-run
(a new attempt) resumes from the newest checkpoint any earlier attempt uploaded. Commits the final
model with its processor (`checkpoint/`), the per-step log (`steps.jsonl`) and a summary.
"""

from __future__ import annotations

import json
import math
import re
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np

from evoquality import artifacts
from evoquality.pool import load_prepared, round_pool
from evoquality.stages.context import StageContext, StageError
from evoquality.stages.progress import progress

STEPS_LOG = "steps.jsonl"
_CHECKPOINT = re.compile(r"attempt-[^/]+/checkpoints/checkpoint-(\d+)/trainer_state\.json$")


def latest_checkpoint(ctx: StageContext, round_index: int) -> str | None:
    """Prefix of the newest checkpoint any attempt of this round's training uploaded."""
    prefix = artifacts.stage_prefix("train", round_index)
    best: tuple[int, str] | None = None
    for key in ctx.store.list(prefix):
        match = _CHECKPOINT.search(key)
        if match and (best is None or int(match.group(1)) > best[0]):
            best = (int(match.group(1)), key.rsplit("/", 1)[0] + "/")
    return None if best is None else best[1]


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

    round_index = ctx.args.round
    rows = build_rows(ctx, round_index)
    model_path = ctx.policy_model(round_index)
    attempt = artifacts.StageAttempt(ctx.store, "train", round_index)
    if not rows:
        return carry_over(ctx, attempt, model_path)
    work = Path(tempfile.mkdtemp(prefix=f"train-r{round_index}-", dir=ctx.cache))
    steps: list[dict] = []
    resume_from = None
    previous = latest_checkpoint(ctx, round_index)
    if previous is not None:
        resume_from = work / "resume" / previous.rstrip("/").rsplit("/", 1)[-1]
        ctx.store.get_dir(previous, resume_from)
        log = resume_from / STEPS_LOG
        if log.exists():
            steps = [json.loads(line) for line in log.read_text().splitlines() if line]

    def write_steps(path: Path) -> None:
        path.write_text("".join(json.dumps(s) + "\n" for s in steps))

    try:
        with progress(f"train r{round_index}", estimated_steps(ctx, len(rows))) as bar:
            bar.advance(len(steps))

            def on_step(record: dict) -> None:
                steps.append(record)
                bar.advance(1)

            def on_save(checkpoint: Path) -> None:
                write_steps(checkpoint / STEPS_LOG)
                attempt.put_dir(f"checkpoints/{checkpoint.name}", checkpoint)

            result = train_round(
                ctx.spec,
                model_path,
                rows,
                work / "output",
                resume_from=resume_from,
                on_step=on_step,
                on_save=on_save,
            )
        attempt.put_dir("checkpoint", work / "output" / "final")
        write_steps(work / STEPS_LOG)
        attempt.put_file(STEPS_LOG, work / STEPS_LOG)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    metrics = {k: _clean(v) for k, v in result.items() if isinstance(v, int | float | str | bool)}
    metrics["pairs"] = len(rows) // 2
    metrics["resumed"] = previous is not None
    metrics["checkpoint"] = ctx.uri(attempt.key("checkpoint"))
    return attempt.commit({"metrics": metrics})


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
    metrics = {"steps": 0, "pairs": 0, "carried_over": True}
    metrics["checkpoint"] = ctx.uri(attempt.key("checkpoint"))
    return attempt.commit({"metrics": metrics})


def _clean(value):
    if isinstance(value, float) and not np.isfinite(value):
        return None
    return value
