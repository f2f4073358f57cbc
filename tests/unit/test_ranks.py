"""Ranks of a stage under torchrun, and which checkpoint files count and which a node needs.

The collectives themselves run with 2 real ranks in tests/integration/test_multirank_train.py.
"""

from __future__ import annotations

import json

import pytest

from evoquality import artifacts
from evoquality.stages import train_checkpoints
from evoquality.stages.ranks import Ranks
from evoquality.storage import open_store


def test_ranks_from_torchrun_env():
    env = {"RANK": "11", "LOCAL_RANK": "3", "WORLD_SIZE": "16", "LOCAL_WORLD_SIZE": "8"}
    ranks = Ranks.from_env({**env, "GROUP_RANK": "1"})
    assert (ranks.rank, ranks.local_rank, ranks.world_size, ranks.node_rank) == (11, 3, 16, 1)
    assert ranks.distributed and not ranks.is_main and not ranks.is_node_main
    assert ranks.node_ranks == range(8, 16)


def test_a_single_process_needs_no_process_group():
    ranks = Ranks.from_env({})
    assert (ranks.rank, ranks.world_size, ranks.node_ranks) == (0, 1, range(0, 1))
    assert not ranks.distributed and ranks.is_main and ranks.is_node_main
    calls = []
    assert ranks.decide(lambda: calls.append("decide") or 7) == 7
    assert ranks.node_first(lambda: calls.append("node") or "path") == "path"
    ranks.on_node_main(lambda: calls.append("main"))
    ranks.barrier()
    assert calls == ["decide", "node", "main"]
    with pytest.raises(KeyError):
        ranks.decide(lambda: {}["missing"])


@pytest.mark.parametrize(
    "env",
    [{"RANK": "2", "WORLD_SIZE": "2"}, {"WORLD_SIZE": "two"}, {"LOCAL_RANK": "1"}],
)
def test_inconsistent_ranks_are_refused(env):
    with pytest.raises(ValueError):
        Ranks.from_env(env)


def test_only_checkpoints_with_their_marker_count_newest_first():
    base = "rounds/0/train/attempt-a/checkpoints/"
    keys = [
        base + "checkpoint-2/trainer_state.json",
        base + "checkpoint-2/checkpoint-complete.json",
        base + "checkpoint-4/trainer_state.json",  # upload killed: no marker
        "rounds/0/train/attempt-b/checkpoints/checkpoint-3/checkpoint-complete.json",
        base + "checkpoint-10/checkpoint-complete.json",
    ]
    assert train_checkpoints.complete_checkpoints(keys) == [
        (10, base + "checkpoint-10/"),
        (3, "rounds/0/train/attempt-b/checkpoints/checkpoint-3/"),
        (2, base + "checkpoint-2/"),
    ]


@pytest.mark.parametrize(
    ("name", "rank"),
    [
        ("rng_state_3.pth", 3),
        ("rng_state.pth", None),
        ("global_step2/zero_pp_rank_12_mp_rank_00_optim_states.pt", 12),
        ("global_step2/bf16_zero_pp_rank_5_mp_rank_00_optim_states.pt", 5),
        ("global_step2/mp_rank_00_model_states.pt", None),
        ("model.safetensors", None),
        ("optimizer.pt", None),
    ],
)
def test_per_rank_files_are_recognised(name, rank):
    assert train_checkpoints.file_rank(name) == rank
    assert train_checkpoints.needed_by(name, range(8, 16)) == (rank is None or 8 <= rank < 16)


def _complete(store, attempt, step, world_size):
    prefix = f"rounds/0/train/attempt-{attempt}/checkpoints/checkpoint-{step}/"
    store.put_bytes(prefix + "rng_state_0.pth", b"r0")
    store.put_bytes(prefix + "rng_state_1.pth", b"r1")
    store.put_bytes(prefix + "trainer_state.json", b"{}")
    marker = {"step": step, "world_size": world_size}
    store.put_bytes(prefix + train_checkpoints.MARKER, json.dumps(marker).encode())
    return prefix


def test_latest_resumes_only_with_the_same_world_size(tmp_path, capsys):
    store = open_store(str(tmp_path / "run"))
    assert train_checkpoints.latest(store, 0, 2) is None
    two = _complete(store, "a", 2, world_size=2)
    _complete(store, "b", 4, world_size=4)
    found = train_checkpoints.latest(store, 0, 2)
    assert found == train_checkpoints.StoredCheckpoint(two, 2, 2)
    assert "saved by 4 ranks" in capsys.readouterr().err
    assert train_checkpoints.latest(store, 0, 1) is None


def test_a_node_downloads_the_shared_files_and_its_own_ranks(tmp_path):
    store = open_store(str(tmp_path / "run"))
    prefix = _complete(store, "a", 2, world_size=2)
    checkpoint = train_checkpoints.StoredCheckpoint(prefix, 2, 2)
    second_node = Ranks(rank=1, local_rank=0, world_size=2, local_world_size=1, node_rank=1)
    folder = train_checkpoints.download(store, checkpoint, tmp_path / "resume", second_node)
    assert folder == tmp_path / "resume" / "checkpoint-2"
    assert sorted(p.name for p in folder.iterdir()) == ["rng_state_1.pth", "trainer_state.json"]


def test_publish_alone_uploads_then_marks_complete(tmp_path):
    store = open_store(str(tmp_path / "run"))
    attempt = artifacts.StageAttempt(store, "train", 0, attempt_id="x")
    checkpoint = tmp_path / "out" / "checkpoint-3"
    checkpoint.mkdir(parents=True)
    (checkpoint / "rng_state.pth").write_bytes(b"r")
    train_checkpoints.publish(Ranks(), attempt, checkpoint)
    found = train_checkpoints.latest(store, 0, 1)
    assert (
        found is not None
        and found.step == 3
        and found.prefix == attempt.key("checkpoints/checkpoint-3/")
    )
    assert store.exists(found.prefix + "rng_state.pth")
