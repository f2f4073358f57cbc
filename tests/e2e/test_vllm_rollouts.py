"""GRPO with rollouts from vLLM's CPU build (``training.rollouts.engine: vllm``), executed.

The server is the one the train stage starts (`evoquality.rollout_server`, vLLM's OpenAI server
from the vLLM venv; one per test session); the trainer is TRL's GRPOTrainer with our
``rollout_func`` and weight sync (`evoquality.training.rollouts`). Evidence that every rollout
comes from the policy being trained: for each step, TRL compares the log-probability vLLM reported
for every sampled token with the trainer's own for the same token (``rollout_logp_diff_max``). A
large learning rate moves the policy far from the start (the KL to the reference reaches nats),
and vLLM's log-probs still equal the trainer's to float32 rounding. The negative control keeps the
server on stale weights (the reload skipped): the same comparison then differs by nats, so the
check can fail. Top-k is off here: with top-k, vLLM's processed log-probs are renormalised over
the top k tokens and sit slightly above the trainer's full-softmax ones (docs/training.md).

Measured here (tiny model, 4 steps, lr 1e-2 and 3e-2): max |diff| 1.4e-6 .. 4.3e-6 per step with
the sync, KL up to 8 nats; 7 .. 13 nats on stale weights (5.2 .. 9.3 with the stale control's
format reward, on the 2026-12-06 machine where the control without it tied at step 1).
"""

from __future__ import annotations

import pytest

from evoquality.training import rollouts as rollouts_module
from evoquality.training import train_round
from tests.integration.test_grpo import make_spec, syniqa_like_rows

STEPS = 4
SYNCED_TOLERANCE = 1e-3  # nats; measured 1.4e-6 .. 4.3e-6 (float32 kernels differ)
STALE_MINIMUM = 0.5  # nats; measured 7 .. 13 once the policy has moved


def vllm_spec(**training):
    return make_spec(
        rollouts={"engine": "vllm"}, maxSteps=STEPS, learningRate=1e-2, topK=0, **training
    )


@pytest.fixture
def server(rollout_server):
    """The session's server (tests/plugins/vllm.py), which each run syncs first."""
    return rollout_server


def train(url, tiny_model_dir, out, spec=None):
    steps = []
    summary = train_round(
        spec or vllm_spec(),
        str(tiny_model_dir),
        syniqa_like_rows(),
        out,
        on_step=steps.append,
        rollout_server=url,
        sync_dir=out / "sync",
    )
    return summary, steps


def test_stale_weights_are_seen_in_the_logprob_comparison(
    server, tiny_model_dir, tmp_path, monkeypatch
):
    def skip_reload(self, folder, version):  # the broken sync: version moves, weights do not
        self._post("/update_weight_version", {"new_version": version})

    monkeypatch.setattr(rollouts_module.RolloutClient, "load_weights", skip_reload)
    # A step whose groups all tie (every reward 0 when no completion parses) has no gradient and
    # leaves the policy where it was, so the next step's stale rollouts are not stale yet
    # (measured: step 1 tied, step 2's diff 4.5e-6). The format reward makes ties rare, and only
    # the steps after the policy first moved are held to the stale minimum.
    _, steps = train(server, tiny_model_dir, tmp_path, vllm_spec(formatRewardWeight=0.5))
    assert len(steps) == STEPS
    moved = [i for i, s in enumerate(steps) if s["grad_norm"] and float(s["grad_norm"]) > 0]
    assert moved and moved[0] < STEPS - 1, steps  # the policy moved before the last step
    later = [s["rollout_logp_diff_max"] for s in steps[moved[0] + 1 :]]
    assert min(later) > STALE_MINIMUM, steps


def test_rollouts_follow_the_trained_policy_after_every_step(server, tiny_model_dir, tmp_path):
    summary, steps = train(server, tiny_model_dir, tmp_path)
    assert summary["steps"] == STEPS and summary["rollout_engine"] == "vllm"
    assert summary["weight_syncs"] == STEPS  # one sync before each step's rollouts
    assert [s["step"] for s in steps] == list(range(1, STEPS + 1))
    diffs = [s["rollout_logp_diff_max"] for s in steps]
    assert max(diffs) < SYNCED_TOLERANCE, steps
    assert steps[-1]["kl"] > 0.1, steps  # the policy did move away from the start
    # the server holds the weights of the last step that generated
    assert rollouts_module.RolloutClient(server).weight_version() == str(STEPS - 1)
    assert not any((tmp_path / "sync").glob("step-[0-2]"))  # old syncs are deleted


def test_a_server_that_lost_the_synced_weights_gets_them_again(
    server, tiny_model_dir, tmp_path, monkeypatch
):
    """A restarted sidecar holds the round's starting weights under the version "default": the
    next rollout sees the version differ, every rank syncs once more, and training goes on."""
    real_sync = rollouts_module.DiskWeightSync.sync_weights
    calls = []

    def sync_then_restart(self):
        real_sync(self)
        calls.append(self.trainer.state.global_step)
        if len(calls) == 2:  # the server "restarts" between the second sync and its rollouts
            self.client.load_weights(tiny_model_dir, "default")

    monkeypatch.setattr(rollouts_module.DiskWeightSync, "sync_weights", sync_then_restart)
    summary, steps = train(server, tiny_model_dir, tmp_path)
    assert calls == [0, 1, 1, 2, 3]  # step 1 synced twice
    assert summary["weight_syncs"] == STEPS + 1
    assert max(s["rollout_logp_diff_max"] for s in steps) < SYNCED_TOLERANCE, steps
