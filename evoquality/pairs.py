"""Pair designs: which image pairs a voting round compares, and how they are sharded.

Every sampler returns an int64 array (P, 2) of distinct unordered pairs (i != j), rows in random
order and each pair in random orientation, deterministic for a seed and vectorised (1e5 images /
1e6 pairs in a few seconds).

- ``random``: uniform distinct pairs (the paper's design).
- ``balanced``: every image in the same number of pairs +-1. A circulant graph on a random
  permutation (exact degrees, no duplicates) randomised by degree-preserving double-edge swaps,
  which brings it close to a random regular graph, around a Hamiltonian-cycle backbone that keeps
  it connected from n pairs on (good for global ranking).
- ``same-reference``: uniform distinct pairs inside groups (e.g. the distorted variants of one
  reference image: the paper's round 2).
- ``adaptive``: neighbours in the order of ``prev_scores`` (the previous round's global scores),
  closest offsets first, the last offset sampled at random.
"""

from __future__ import annotations

import numpy as np

SAMPLERS = ("random", "balanced", "same-reference", "adaptive")
_SWAP_SWEEPS = 4


def plan_pairs(
    n_images: int,
    n_pairs: int,
    sampler: str,
    seed: int,
    *,
    groups: np.ndarray | None = None,
    prev_scores: np.ndarray | None = None,
) -> np.ndarray:
    """Plan ``min(n_pairs, max possible)`` distinct pairs of image indices with ``sampler``."""
    if n_images < 2:
        raise ValueError(f"need at least 2 images to form pairs, got n_images={n_images}")
    if n_pairs < 0:
        raise ValueError(f"n_pairs must be >= 0, got {n_pairs}")
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of {SAMPLERS}")
    rng = np.random.default_rng(seed)
    if sampler == "random":
        pairs = _uniform_within_groups(np.zeros(n_images, dtype=np.int64), n_pairs, rng)
    elif sampler == "same-reference":
        if groups is None:
            raise ValueError("sampler 'same-reference' needs groups (one group id per image)")
        groups = np.asarray(groups)
        if groups.shape != (n_images,):
            raise ValueError(f"groups must have shape ({n_images},), got {groups.shape}")
        pairs = _uniform_within_groups(np.unique(groups, return_inverse=True)[1], n_pairs, rng)
    elif sampler == "balanced":
        pairs = _balanced(n_images, n_pairs, rng)
    else:
        if prev_scores is None:
            raise ValueError("sampler 'adaptive' needs prev_scores (one score per image)")
        prev_scores = np.asarray(prev_scores, dtype=np.float64)
        if prev_scores.shape != (n_images,) or not np.all(np.isfinite(prev_scores)):
            raise ValueError(f"prev_scores must be {n_images} finite numbers")
        pairs = _adaptive(prev_scores, n_pairs, rng)
    return _shuffle(pairs, rng)


def shard_bounds(n_pairs: int, shard: int, num_shards: int) -> tuple[int, int]:
    """Contiguous ``[start, stop)`` of shard ``shard``; the shards partition ``range(n_pairs)``."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be >= 1, got {num_shards}")
    if not 0 <= shard < num_shards:
        raise ValueError(f"shard must be in [0, {num_shards}), got {shard}")
    if n_pairs < 0:
        raise ValueError(f"n_pairs must be >= 0, got {n_pairs}")
    return shard * n_pairs // num_shards, (shard + 1) * n_pairs // num_shards


def pair_keys(pairs: np.ndarray, n_images: int) -> np.ndarray:
    """One int64 key per unordered pair: ``min * n_images + max``."""
    pairs = np.asarray(pairs, dtype=np.int64)
    return pairs.min(axis=1) * n_images + pairs.max(axis=1)


def _shuffle(pairs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random row order and random orientation of each pair."""
    pairs = pairs[rng.permutation(len(pairs))]
    flip = rng.random(len(pairs)) < 0.5
    pairs[flip] = pairs[flip, ::-1]
    return np.ascontiguousarray(pairs, dtype=np.int64)


def _uniform_within_groups(
    groups: np.ndarray, n_pairs: int, rng: np.random.Generator
) -> np.ndarray:
    """Uniform distinct pairs whose two images share a group id (0..G-1)."""
    order = np.argsort(groups, kind="stable")
    sizes = np.bincount(groups).astype(np.int64)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1]))
    n_possible = sizes * (sizes - 1) // 2
    total = int(n_possible.sum())
    n_pairs = min(n_pairs, total)
    if 2 * n_pairs >= total:  # dense: enumerate all pairs (at most 2 * n_pairs) and choose
        all_pairs = _enumerate_within_groups(sizes, starts)
        chosen = rng.choice(total, size=n_pairs, replace=False)
        return order[all_pairs[chosen]]
    # sparse: rejection sampling, each draw accepted with probability >= 1/2
    n_images = len(groups)
    keys = np.empty(0, dtype=np.int64)
    while True:
        need = n_pairs - len(keys)
        if need <= 0:
            break
        g = rng.choice(len(sizes), size=2 * need + 16, p=n_possible / total)
        i = (rng.random(len(g)) * sizes[g]).astype(np.int64)
        j = (rng.random(len(g)) * (sizes[g] - 1)).astype(np.int64)
        j += j >= i
        a, b = order[starts[g] + i], order[starts[g] + j]
        keys = np.concatenate((keys, np.minimum(a, b) * n_images + np.maximum(a, b)))
        _, first = np.unique(keys, return_index=True)
        keys = keys[np.sort(first)]
    keys = keys[:n_pairs]
    return np.stack((keys // n_images, keys % n_images), axis=1)


def _enumerate_within_groups(sizes: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """All pairs (p, q), p < q, of positions inside each contiguous group block."""
    pos = np.arange(int(sizes.sum()), dtype=np.int64)
    block_end = np.repeat(starts + sizes, sizes)
    n_after = block_end - pos - 1
    first = np.repeat(pos, n_after)
    run_start = np.repeat(np.cumsum(n_after) - n_after, n_after)
    second = first + 1 + np.arange(len(first), dtype=np.int64) - run_start
    return np.stack((first, second), axis=1)


def _balanced(n: int, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Pairs in which every image appears the same number of times +-1.

    Layers of a circulant graph on a random permutation: offset r joins positions p and p + r.
    Offsets 1..(n-1)//2 give n distinct pairs each (2 per image), offset n/2 (even n) a perfect
    matching. With at least n pairs, offset 1 (a Hamiltonian cycle) is a backbone kept out of the
    edge swaps, so the design stays connected; a partial layer uses a cycle of another offset
    coprime with n (or offset 1 when there is none).
    """
    n_pairs = min(n_pairs, n * (n - 1) // 2)
    n_full_offsets = (n - 1) // 2
    n_layers, rest = divmod(n_pairs, n)
    offsets = np.arange(1, n_full_offsets + 1)
    coprime = offsets[np.gcd(offsets, n) == 1][1:]  # other than offset 1
    if n_layers >= n_full_offsets:  # every full offset; the rest from the matching of offset n/2
        full, half = offsets, np.arange(n // 2)[:rest]
        partial = np.stack((half, half + n // 2), axis=1)
    else:
        partial_offset = rng.choice(coprime) if n_layers and len(coprime) else 1
        others = offsets[(offsets != 1) & (offsets != partial_offset)]
        full = rng.choice(others, size=n_layers - (partial_offset != 1), replace=False)
        full = np.concatenate(([1] if partial_offset != 1 else [], full)).astype(np.int64)
        partial = _partial_cycle(n, rest, partial_offset)
    start = np.tile(np.arange(n), len(full))
    layers = np.stack((start, (start + np.repeat(full, n)) % n), axis=1)
    perm = rng.permutation(n)
    backbone = n if len(full) and full[0] == 1 else 0
    edges = perm[np.concatenate((layers, partial))]
    return np.concatenate((edges[:backbone], _double_edge_swaps(edges[backbone:], edges, n, rng)))


def _partial_cycle(n: int, n_edges: int, offset: int) -> np.ndarray:
    """``n_edges`` (< n) edges of the cycle 0, r, 2r, ... (r = offset coprime with n), every
    position's count differing by at most 1.

    Up to n//2 edges: a matching (every other edge). More: the whole cycle minus a matching.
    """
    steps = np.arange(n)
    matching = np.arange(0, 2 * min(n_edges, n - n_edges), 2)
    chosen = matching if 2 * n_edges <= n else np.setdiff1d(steps, matching)
    return np.stack((chosen * offset % n, (chosen + 1) * offset % n), axis=1)


def _double_edge_swaps(
    edges: np.ndarray, all_edges: np.ndarray, n: int, rng: np.random.Generator
) -> np.ndarray:
    """Randomise ``edges`` keeping every degree: (a,b),(c,d) -> (a,d),(c,b) in batches.

    A swap is refused when it would create a loop or a pair already in ``all_edges`` (which
    includes ``edges``) or proposed twice in the batch.
    """
    edges = edges.copy()
    fixed = all_edges[: len(all_edges) - len(edges)]
    for _ in range(_SWAP_SWEEPS):
        if len(edges) < 2:
            break
        idx = rng.permutation(len(edges))
        e1, e2 = idx[0 : len(idx) // 2 * 2 : 2], idx[1 : len(idx) // 2 * 2 : 2]
        a, b = edges[e1, 0], edges[e1, 1]
        flip = rng.random(len(e2)) < 0.5
        c = np.where(flip, edges[e2, 1], edges[e2, 0])
        d = np.where(flip, edges[e2, 0], edges[e2, 1])
        k1 = np.minimum(a, d) * n + np.maximum(a, d)
        k2 = np.minimum(c, b) * n + np.maximum(c, b)
        current = np.sort(pair_keys(np.concatenate((fixed, edges)), n))
        proposed, counts = np.unique(np.concatenate((k1, k2)), return_counts=True)
        unique_new = proposed[counts == 1]
        ok = (a != d) & (c != b)
        for key in (k1, k2):
            ok &= ~_contains(current, key) & _contains(unique_new, key)
        edges[e1[ok]] = np.stack((a[ok], d[ok]), axis=1)
        edges[e2[ok]] = np.stack((c[ok], b[ok]), axis=1)
    return edges


def _contains(sorted_keys: np.ndarray, keys: np.ndarray) -> np.ndarray:
    pos = np.searchsorted(sorted_keys, keys).clip(max=len(sorted_keys) - 1)
    return sorted_keys[pos] == keys if len(sorted_keys) else np.zeros(len(keys), dtype=bool)


def _adaptive(scores: np.ndarray, n_pairs: int, rng: np.random.Generator) -> np.ndarray:
    """Pairs of neighbours in score order: offsets 1, 2, ... in full, the last one sampled."""
    n = len(scores)
    n_pairs = min(n_pairs, n * (n - 1) // 2)
    tie_break = rng.permutation(n)
    order = tie_break[np.argsort(scores[tie_break], kind="stable")]
    per_offset = n - np.arange(1, n)  # offset w gives n - w pairs
    window = int(np.searchsorted(np.cumsum(per_offset), n_pairs)) + 1
    offsets = np.arange(1, window + 1)
    starts = np.concatenate([np.arange(n - w) for w in offsets[:-1]] + [np.empty(0, np.int64)])
    seconds = starts + np.repeat(offsets[:-1], per_offset[: window - 1])
    n_last = n_pairs - len(starts)
    last = np.sort(rng.choice(n - window, size=n_last, replace=False)) if n_last else []
    starts = np.concatenate((starts, np.asarray(last, dtype=np.int64)))
    seconds = np.concatenate((seconds, np.asarray(last, dtype=np.int64) + window))
    return np.stack((order[starts], order[seconds]), axis=1)
