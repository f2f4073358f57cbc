"""Engine-call sizes of the vote and eval stages: whole shard, bounded by memory and progress."""

from evoquality.stages.batching import (
    BYTES_PER_PIXEL,
    MIN_CALL,
    PROGRESS_STEPS,
    batches,
    call_memory_bytes,
    units_per_call,
)


def test_small_shards_go_in_one_call():
    assert units_per_call(48, 4 * 3136, None, 2 << 30) == 48
    assert units_per_call(0, 4 * 3136, None, 2 << 30) == 1


def test_memory_bounds_a_call():
    pixels = 4 * 401_408  # two images at the 7B example's cap, both orders
    size = units_per_call(100_000, pixels, None, 2 << 30)
    assert size == (2 << 30) // (pixels * BYTES_PER_PIXEL)
    assert size * pixels * BYTES_PER_PIXEL <= 2 << 30


def test_large_shards_report_progress_in_steps():
    assert units_per_call(10_000, 0, None, 2 << 30) == 10_000 // PROGRESS_STEPS
    assert units_per_call(1_000, 0, None, 2 << 30) == MIN_CALL


def test_a_fixed_batch_size_wins_and_batches_cover_the_shard():
    assert units_per_call(100, 4 * 3136, 8, 2 << 30) == 8
    parts = list(batches(20, 8))
    assert [(p.start, p.stop) for p in parts] == [(0, 8), (8, 16), (16, 20)]
    assert call_memory_bytes({"EVOQUALITY_CALL_MEMORY_MB": "64"}) == 64 << 20
    assert call_memory_bytes({}) == 8192 << 20
