"""DeepSpeed ZeRO on CPU: one real GRPO step each, in a fresh process (as the train stage runs).

The first DeepSpeed use on a machine compiles a CPU communication op (~45-130 s, cached in
~/.cache/torch_extensions afterwards); each step then takes a few seconds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    from tests.integration.test_grpo import make_spec, syniqa_like_rows
    from evoquality.training import train_round

    model_dir, out, stage = sys.argv[1], Path(sys.argv[2]), sys.argv[3]
    spec = make_spec(deepspeed=stage, maxSteps=1, saveSteps=1)
    steps = []
    summary = train_round(spec, model_dir, syniqa_like_rows(), out, on_step=steps.append)
    print("RESULT " + json.dumps({"summary": summary, "steps": steps}))
    """
)


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["zero2", "zero3"])
def test_deepspeed_grpo_step(stage, tiny_model_dir, tmp_path):
    from safetensors.numpy import load_file

    dist_vars = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
    env = {k: v for k, v in os.environ.items() if k not in dist_vars}
    env["HF_HUB_OFFLINE"] = "1"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tiny_model_dir), str(tmp_path / "out"), stage],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    lines = [line for line in proc.stdout.splitlines() if line.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stderr[-4000:]
    result = json.loads(lines[-1][len("RESULT ") :])
    summary = result["summary"]
    assert summary["deepspeed"] == stage and summary["steps"] == 1
    assert [s["step"] for s in result["steps"]] == [1]
    assert (tmp_path / "out" / "checkpoint-1").is_dir()
    # ZeRO-3 gathers the full 16-bit weights on save: the final model is complete
    before = load_file(str(tiny_model_dir / "model.safetensors"))
    after = load_file(str(tmp_path / "out" / "final" / "model.safetensors"))
    assert before.keys() == after.keys()
    assert all(before[k].shape == after[k].shape for k in before)
