"""The vote stage: policy P_r compares this shard's pairs K times, image orders balanced.

Reads the manifest (never its `mos`, except for the simulated judge), plans the round's pairs from
the run's seed, takes this shard's contiguous slice, asks the engine for K answers per pair (the
first K - K//2 with the pair as planned, the rest swapped) and commits the votes table and a shard
summary.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from evoquality import artifacts
from evoquality.engines.base import EngineImage, Sampling, make_engine
from evoquality.pairs import shard_bounds
from evoquality.pool import load_prepared, plan_round_pairs, round_pool
from evoquality.prompts import parse_choice
from evoquality.stages.context import StageContext, StageError, check_unreadable
from evoquality.stages.progress import progress
from evoquality.voting import agreement, order_plan, position_bias, tally

VOTES_SCHEMA = pa.schema(
    [
        ("pair_id", pa.int64()),
        ("image_a", pa.string()),
        ("image_b", pa.string()),
        ("votes_a", pa.int32()),
        ("votes_b", pa.int32()),
        ("abstain", pa.int32()),
    ]
)


def previous_scores(ctx: StageContext, round_index: int, keys: list[str]) -> np.ndarray | None:
    """Round r-1's global scores for the manifest images (adaptive pairs), None in round 0."""
    if round_index == 0 or ctx.spec.voting.sampler != "adaptive":
        return None
    rank = ctx.require_summary("rank", round_index - 1)
    table = artifacts.read_table(ctx.store, artifacts.resolve(ctx.store, rank, "scores"))
    by_key = dict(zip(table["image"].to_pylist(), table["score"].to_pylist(), strict=True))
    return np.array([by_key.get(k, 0.0) for k in keys], dtype=np.float64)


def run(ctx: StageContext) -> dict:
    args, spec = ctx.args, ctx.spec
    round_index, shard, num_shards = args.round, args.shard, args.num_shards
    if num_shards != spec.voting.shards:
        raise StageError(f"--num-shards {num_shards} differs from spec voting.shards")

    simulated = spec.model.engine == "simulated"
    pool = round_pool(spec, round_index, ctx.cache, with_truth=simulated)
    keys = [img.key for img in pool.images]
    pairs = plan_round_pairs(
        spec, round_index, pool, previous_scores(ctx, round_index, keys[: pool.n_base])
    )
    start, stop = shard_bounds(len(pairs), shard, num_shards)
    shard_pairs = pairs[start:stop]
    pair_ids = np.arange(start, stop, dtype=np.int64)

    needed = np.unique(shard_pairs)
    model_path = "" if simulated else ctx.policy_model(round_index)
    engine = make_engine(
        spec.model, model_path, seed=spec.seed, prefix_caching=spec.voting.prefix_caching
    )
    if engine.needs_pixels:
        pictures, failures = load_prepared([pool.images[i] for i in needed], spec.model)
    else:
        pictures, failures = [None] * len(needed), []
    check_unreadable(failures, len(needed))
    bad = {
        int(i) for i, p in zip(needed, pictures, strict=True) if p is None and engine.needs_pixels
    }
    usable = np.array([not ({int(a), int(b)} & bad) for a, b in shard_pairs], dtype=bool)
    shard_pairs, pair_ids = shard_pairs[usable], pair_ids[usable]
    engine_images = {
        int(i): EngineImage(pool.images[i].key, pic, pool.images[i].truth)
        for i, pic in zip(needed, pictures, strict=True)
    }

    k = spec.voting.votes_per_pair
    swapped = np.sort(order_plan(k))  # the forward votes first, then the swapped ones
    n_swapped = int(swapped.sum())
    sampling = Sampling(
        temperature=spec.voting.temperature,
        top_p=spec.voting.top_p,
        max_new_tokens=spec.voting.max_new_tokens,
        seed=spec.seed + round_index * 1_000_003 + start,
    )
    choices = np.full((len(shard_pairs), k), -1, dtype=np.int8)
    texts: list[list[str]] = []
    batch = spec.voting.batch_size
    began = time.monotonic()
    with progress(f"vote r{round_index} shard {shard}/{num_shards}", len(shard_pairs)) as bar:
        for lo in range(0, len(shard_pairs), batch):
            chunk = shard_pairs[lo : lo + batch]
            forward = [(engine_images[int(a)], engine_images[int(b)]) for a, b in chunk]
            answers = engine.compare(forward, k - n_swapped, sampling)
            if n_swapped:
                backward = [(b, a) for a, b in forward]
                for row, extra in zip(
                    answers, engine.compare(backward, n_swapped, sampling), strict=True
                ):
                    row.extend(extra)
            for offset, row in enumerate(answers):
                parsed = [parse_choice(text) for text in row]
                choices[lo + offset] = [-1 if c is None else c for c in parsed]
                texts.append(row)
            bar.advance(len(chunk))
    seconds = time.monotonic() - began
    engine.close()

    counts = tally(choices, swapped)
    columns = {
        "pair_id": pair_ids,
        "image_a": [keys[int(a)] for a, _ in shard_pairs],
        "image_b": [keys[int(b)] for _, b in shard_pairs],
        "votes_a": counts.votes_a,
        "votes_b": counts.votes_b,
        "abstain": counts.abstain,
    }
    table = pa.table(columns, schema=VOTES_SCHEMA)
    if spec.voting.keep_texts:
        table = table.append_column("texts", pa.array(texts, type=pa.list_(pa.string())))

    attempt = artifacts.StageAttempt(ctx.store, "vote", round_index, shard, num_shards)
    attempt.put_table("votes.parquet", table)
    total_votes = int(len(shard_pairs) * k)
    decided = counts.votes_a + counts.votes_b
    agree = agreement(counts.votes_a, counts.votes_b)
    metrics = {
        "pairs": len(shard_pairs),
        "votes": total_votes,
        "skipped_images": len(failures),
        "abstention_rate": float(counts.abstain.sum() / total_votes) if total_votes else 0.0,
        "position_bias": _finite(position_bias(choices)),
        "agreement": _finite(np.nanmean(agree)) if np.isfinite(agree).any() else None,
        "tie_rate": float(np.mean((counts.votes_a == counts.votes_b) & (decided > 0)))
        if len(decided)
        else 0.0,
        "pairs_per_s": len(shard_pairs) / seconds if seconds > 0 else None,
        "engine": engine.name,
    }
    return attempt.commit({"metrics": metrics})


def _finite(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
