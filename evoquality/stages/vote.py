"""The vote stage: policy P_r compares this shard's pairs K times, image orders balanced.

Reads the manifest (never its `mos`, except for the simulated judge), plans the round's pairs from
the run's seed, takes this shard's contiguous slice, asks the engine for K answers per pair (the
first K - K//2 with the pair as planned, the rest swapped) and commits the votes table and a shard
summary. Both orders of a pair go in the same engine call, and a call takes as many pairs as
`evoquality.stages.batching` allows (the whole shard unless memory or progress steps bound it).
Each ordered pair's samples are seeded by ``derive_seed(run seed, "vote", round, pair id, order)``,
so the votes table does not depend on the number of shards or on the batch size.
"""

from __future__ import annotations

import time

import numpy as np
import pyarrow as pa

from evoquality import artifacts
from evoquality.engines import Engine, EngineImage, Sampling, derive_seed, make_engine
from evoquality.pairs import shard_bounds
from evoquality.pool import load_prepared, plan_round_pairs, round_pool
from evoquality.prompts import parse_choice
from evoquality.stages.batching import batches, call_memory_bytes, units_per_call
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


def pair_seeds(run_seed: int, round_index: int, pair_ids: np.ndarray, order: int) -> list[int]:
    """The sampling seed of each pair shown in ``order`` (0 = as planned, 1 = swapped)."""
    return [derive_seed(run_seed, "vote", round_index, int(p), order) for p in pair_ids]


def ask_both_orders(
    engine: Engine,
    forward: list[tuple[EngineImage, EngineImage]],
    counts: tuple[int, int],
    sampling: Sampling,
    seeds: tuple[list[int], list[int]],
) -> list[list[str]]:
    """Per pair: ``counts[0]`` answers as planned, then ``counts[1]`` swapped.

    Both orders go in one engine call when their counts are equal (any even K).
    """
    n_forward, n_backward = counts
    if not n_backward:
        return engine.compare(forward, n_forward, sampling, seeds[0])
    backward = [(b, a) for a, b in forward]
    if n_forward == n_backward:
        answers = engine.compare(forward + backward, n_forward, sampling, seeds[0] + seeds[1])
        first, second = answers[: len(forward)], answers[len(forward) :]
    else:
        first = engine.compare(forward, n_forward, sampling, seeds[0])
        second = engine.compare(backward, n_backward, sampling, seeds[1])
    return [a + b for a, b in zip(first, second, strict=True)]


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
        seed=spec.seed,
    )
    per_order = (k - n_swapped, n_swapped)
    choices = np.full((len(shard_pairs), k), -1, dtype=np.int8)
    texts: list[list[str]] = []
    pixels_per_pair = 4 * spec.model.max_pixels if engine.needs_pixels else 0  # 2 images x 2 orders
    size = units_per_call(
        len(shard_pairs), pixels_per_pair, spec.voting.batch_size, call_memory_bytes()
    )
    began = time.monotonic()
    with progress(f"vote r{round_index} shard {shard}/{num_shards}", len(shard_pairs)) as bar:
        for part in batches(len(shard_pairs), size):
            forward = [(engine_images[int(a)], engine_images[int(b)]) for a, b in shard_pairs[part]]
            seeds = tuple(pair_seeds(spec.seed, round_index, pair_ids[part], o) for o in (0, 1))
            answers = ask_both_orders(engine, forward, per_order, sampling, seeds)
            for offset, row in enumerate(answers, start=part.start):
                choices[offset] = [-1 if c is None else c for c in map(parse_choice, row)]
                texts.append(row)
            bar.advance(len(forward))
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
        "pairs_per_call": size,
        **engine.summary_metrics(),
    }
    return attempt.commit({"metrics": metrics})


def _finite(value: float) -> float | None:
    value = float(value)
    return value if np.isfinite(value) else None
