"""vote -> rank -> eval with ``model.engine: vllm``: stage commands run by the vLLM venv's Python.

The commands are the ones the embedded runner starts (`python -m evoquality.cli stage ...`, with
`evoquality.runner.stage_python` choosing the vLLM venv for vote and eval): vLLM's CPU build votes
on the tiny model, rank turns the votes into labels, and eval scores a benchmark. Images of
280 x 280 pixels (100 tokens each) make the comparison prompt longer than 256 tokens, so vLLM's
prefix cache (128-token blocks) serves part of it. Without a vLLM venv the test skips, and fails
under CI=true.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import yaml

from tests.plugins.tiny_model import tiny_model_spec

SIDE = 280


def chain_spec(model_dir, storage) -> dict:
    return {
        "seed": 2,
        "model": tiny_model_spec(model_dir, "vllm", SIDE * SIDE),
        "data": {"manifest": f"syniqa:train?size={SIDE}", "maxImages": 8, "augmentation": None},
        "rounds": 1,
        "voting": {"pairsPerRound": 6, "votesPerPair": 8, "shards": 1, "maxNewTokens": 8},
        "evaluation": {
            "benchmarks": [
                {"name": "heldout", "manifest": f"syniqa:test?size={SIDE}", "maxImages": 8}
            ],
            "samplesPerImage": 2,
            "maxNewTokens": 8,
        },
        "storage": {"uri": str(storage)},
    }


def stage(python: str, root: str, spec_file, *args: str, env: dict) -> dict:
    command = [python, "-m", "evoquality.cli", "stage", *args, "--run", root, "--spec"]
    done = subprocess.run(
        [*command, str(spec_file)], capture_output=True, text=True, env=env, timeout=420
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_vote_rank_eval_chain_on_vllm(vllm_python, tiny_model_dir, tmp_path):
    from evoquality.runner import stage_python

    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(chain_spec(tiny_model_dir, tmp_path / "runs")))
    root = str(tmp_path / "runs" / "default" / "vllm-chain")
    env = dict(os.environ, EVOQUALITY_CACHE=str(tmp_path / "cache"), HF_HUB_OFFLINE="1")
    env.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
    inference = stage_python("vote", "vllm", sys.executable, vllm_python)
    assert stage_python("rank", "vllm", sys.executable, vllm_python) == sys.executable

    vote = stage(
        inference,
        root,
        spec_file,
        "vote",
        "--round",
        "0",
        "--shard",
        "0",
        "--num-shards",
        "1",
        env=env,
    )["metrics"]
    assert vote["engine"] == "vllm" and vote["pairs"] == 6 and vote["votes"] == 48
    assert vote["engine_cached_prompt_tokens"] > 0, vote
    assert vote["engine_calls"] == 1  # the whole shard, both orders, in one call

    rank = stage(sys.executable, root, spec_file, "rank", "--round", "0", env=env)["metrics"]
    assert rank["labels"] >= 0

    evaluation = stage(inference, root, spec_file, "eval", "--round", "base", env=env)
    metrics = evaluation["metrics"]
    assert metrics["engine"] == "vllm" and metrics["heldout.n"] == 8
