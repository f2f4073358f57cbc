"""Every GRPOConfig field the trainer builds for the 7B example, pinned (a TRL upgrade that
changes a default, e.g. the KL estimator or the clip range, fails here instead of silently
changing training).

After a deliberate change, rewrite the pinned file and review its diff:
``EVOQUALITY_REPIN=1 .venv/bin/python -m pytest tests/unit/test_grpo_config_pinned.py``.
"""

import json
import os
from pathlib import Path

from evoquality.spec import load_run
from evoquality.training.grpo import grpo_settings

ROOT = Path(__file__).resolve().parents[2]
PINNED = Path(__file__).parent / "data" / "grpo_config_7b.json"
# Paths of this checkout and of the test's folder, not settings.
MACHINE_FIELDS = ("output_dir", "logging_dir", "deepspeed", "hub_token")


def built_config(tmp_path) -> dict:
    from trl import GRPOConfig

    spec = load_run(ROOT / "examples" / "qwen2.5-vl-7b.yaml").spec
    config = GRPOConfig(output_dir=str(tmp_path), **grpo_settings(spec, cuda=False))
    dump = json.loads(json.dumps(config.to_dict(), default=str))
    return {k: v for k, v in sorted(dump.items()) if k not in MACHINE_FIELDS}


def test_the_7b_grpo_config_equals_the_pinned_dump(tmp_path):
    built = built_config(tmp_path)
    if os.environ.get("EVOQUALITY_REPIN"):
        PINNED.write_text(json.dumps(built, indent=1, sort_keys=True) + "\n")
    pinned = json.loads(PINNED.read_text())
    changed = {
        k: (pinned.get(k, "<absent>"), built.get(k, "<absent>"))
        for k in sorted(set(pinned) | set(built))
        if pinned.get(k, "<absent>") != built.get(k, "<absent>")
    }
    assert not changed, f"GRPOConfig differs from the pinned dump (pinned, built): {changed}"


def test_the_settings_that_carry_a_source_reach_trl(tmp_path):
    built = built_config(tmp_path)
    assert built["use_bias_correction_kl"] is False  # plain k3, as VisualQuality-R1
    assert (built["epsilon"], built["epsilon_high"]) == (0.2, 0.2)
    assert (built["beta"], built["learning_rate"], built["num_generations"]) == (0.05, 3e-7, 32)
    assert (built["top_k"], built["temperature"], built["max_completion_length"]) == (50, 1.0, 256)
    assert built["lr_scheduler_type"] == "linear" and built["loss_type"] == "grpo"
    assert built["mask_truncated_completions"] is False
