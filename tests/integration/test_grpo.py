"""GRPO on the tiny model (CPU): a real TRL GRPOTrainer round, resume, LoRA; the pair sampler and
the reward adapter as pure functions."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter

from evoquality.data.images import prepare_image
from evoquality.spec import parse_spec
from evoquality.training import TrainRow, train_round
from evoquality.training.batching import PairRepeatSampler, check_pair_batching
from evoquality.training.grpo import build_dataset, check_rows
from evoquality.training.rewards import make_reward_function, pair_rewards

MIN_PIXELS, MAX_PIXELS = 784, 3136


def make_spec(**training):
    settings = {
        "numGenerations": 2,
        "perDeviceBatchSize": 4,
        "maxSteps": 2,
        "maxCompletionLength": 24,
        "saveSteps": 1,
        "beta": 0.05,
        "learningRate": 1e-3,
        "lrScheduler": "constant",  # pinned: a decay over 2 steps leaves almost no learning rate
        "formatRewardWeight": 0.0,  # the fidelity reward alone, in [0, 1]
        "scaleRewards": "batch",
        "deepspeed": "none",
        "gradientCheckpointing": False,
    }
    settings.update(training)
    return parse_spec(
        {
            "data": {"manifest": "pool.csv"},
            "storage": {"uri": "/tmp/unused"},
            "model": {
                "base": "tiny",
                "engine": "transformers",
                "minPixels": MIN_PIXELS,
                "maxPixels": MAX_PIXELS,
            },
            "training": settings,
        }
    )


def syniqa_like_rows(n_pairs: int = 4, seed: int = 0) -> list[TrainRow]:
    """Pairs of (clean, blurred + noisy) versions of one random picture; p* = 1 for the clean."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_pairs):
        base = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
        clean = Image.fromarray(base).resize((64, 48), Image.Resampling.BICUBIC)
        noisy = np.asarray(clean.filter(ImageFilter.GaussianBlur(2))).astype(np.float64)
        noisy = np.clip(noisy + rng.normal(0, 25, noisy.shape), 0, 255).astype(np.uint8)
        degraded = Image.fromarray(noisy)
        a, b = (prepare_image(img, MIN_PIXELS, MAX_PIXELS) for img in (clean, degraded))
        rows.append(TrainRow(f"clean{i}", a, i, f"bad{i}", 1.0, weight=1.0))
        rows.append(TrainRow(f"bad{i}", b, i, f"clean{i}", 0.0, weight=1.0))
    return rows


def _weights(path: Path) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(path / "model.safetensors"))


@pytest.fixture(scope="module")
def trained(tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo")
    steps, saves = [], []
    summary = train_round(
        make_spec(),
        str(tiny_model_dir),
        syniqa_like_rows(),
        out,
        on_step=steps.append,
        on_save=saves.append,
    )
    return {"out": out, "summary": summary, "steps": steps, "saves": saves}


def test_round_trains_logs_and_saves(trained, tiny_model_dir):
    summary, steps = trained["summary"], trained["steps"]
    assert summary["steps"] == 2
    assert [s["step"] for s in steps] == [1, 2]
    for key in ("reward_mean", "reward_std", "kl", "loss"):
        assert math.isfinite(summary[key]), key
    assert all(math.isfinite(s["reward_mean"]) and s["step_seconds"] > 0 for s in steps)
    assert 0.0 <= summary["reward_mean_first"] <= 1.0
    assert summary["tokens_per_s"] > 0 and summary["samples_per_s"] > 0
    # the settings used are echoed
    assert summary["beta"] == 0.05 and summary["loss_type"] == "grpo"
    assert summary["scale_rewards"] == "batch" and summary["num_generations"] == 2
    assert summary["bf16"] is False and summary["deepspeed"] == "none"
    # checkpoints are reported after they are written
    assert [p.name for p in trained["saves"]] == ["checkpoint-1", "checkpoint-2"]
    assert all((p / "trainer_state.json").exists() for p in trained["saves"])
    # weights changed
    before, after = _weights(tiny_model_dir), _weights(trained["out"] / "final")
    assert before.keys() == after.keys()
    assert any(not np.array_equal(before[k], after[k]) for k in before)
    saved = json.loads((trained["out"] / "train_summary.json").read_text())
    assert saved["steps"] == 2


def test_final_model_reloads_and_generates(trained):
    import torch

    from evoquality.engines import EngineImage, Sampling
    from evoquality.engines.transformers_engine import TransformersEngine

    final = trained["out"] / "final"
    for name in ("config.json", "chat_template.jinja", "tokenizer.json", "processor_config.json"):
        assert (final / name).exists(), name
    engine = TransformersEngine(str(final), MIN_PIXELS, MAX_PIXELS, reasoning=True)
    rows = syniqa_like_rows(1, seed=9)
    torch.manual_seed(0)
    texts = engine.score([EngineImage("x", rows[0].image)], 2, Sampling(1.0, 1.0, 16, 0))
    assert len(texts) == 1 and len(texts[0]) == 2
    engine.close()


def test_resume_continues_the_step_count(trained, tiny_model_dir, tmp_path):
    checkpoint = trained["out"] / "checkpoint-2"
    steps = []
    summary = train_round(
        make_spec(maxSteps=3, saveSteps=10),
        str(tiny_model_dir),
        syniqa_like_rows(),
        trained["out"],
        resume_from=checkpoint,
        on_step=steps.append,
    )
    assert summary["steps"] == 3 and summary["resumed"] is True
    assert [s["step"] for s in steps] == [3]


def test_lora_round_saves_a_merged_plain_model(tiny_model_dir, tmp_path):
    from transformers import AutoModelForImageTextToText

    spec = make_spec(
        maxSteps=1,
        saveSteps=10,
        lora={"enabled": True, "r": 4, "alpha": 8, "dropout": 0.0},
    )
    summary = train_round(spec, str(tiny_model_dir), syniqa_like_rows(), tmp_path)
    assert summary["lora"] is True and summary["steps"] == 1
    final = tmp_path / "final"
    assert not (final / "adapter_config.json").exists()
    model = AutoModelForImageTextToText.from_pretrained(final)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"


def test_rows_and_batches_are_checked(tiny_model_dir, tmp_path):
    rows = syniqa_like_rows(2)
    with pytest.raises(ValueError, match="whole pairs"):
        check_rows(rows[:3])
    with pytest.raises(ValueError, match="not the two images of one pair"):
        check_rows([rows[0], rows[3]])
    with pytest.raises(ValueError, match="multiple of 2 x num_generations"):
        check_pair_batching(per_device_batch=6, steps_per_generation=1, num_generations=2)
    check_pair_batching(per_device_batch=6, steps_per_generation=2, num_generations=3)
    with pytest.raises(ValueError, match="fewer than one generation batch"):
        train_round(make_spec(perDeviceBatchSize=8), str(tiny_model_dir), rows[:2], tmp_path)


def test_dataset_columns_reach_the_reward_function():
    dataset = build_dataset(syniqa_like_rows(2), reasoning=True)
    assert dataset.column_names == [
        "prompt",
        "image",
        "image_key",
        "pair_id",
        "partner_key",
        "p_star",
        "weight",
        "bt_score",
    ]
    row = dataset[1]
    assert row["image_key"] == "bad0" and row["partner_key"] == "clean0" and row["p_star"] == 0.0
    assert row["bt_score"] is None
    assert row["image"].size == syniqa_like_rows(2)[1].image.size
    assert np.array_equal(np.asarray(row["image"]), np.asarray(syniqa_like_rows(2)[1].image))
    content = row["prompt"][0]["content"]
    assert [part["type"] for part in content] == ["image", "text"]


# ---- pair-aware sampler (pure) -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows", "g", "batch", "repeat"), [(16, 2, 4, 1), (20, 3, 6, 2), (12, 4, 2, 3)]
)
def test_pair_sampler_keeps_pairs_whole_and_copies_consecutive(rows, g, batch, repeat):
    sampler = PairRepeatSampler(range(rows), mini_repeat_count=g, batch_size=batch,
                                repeat_count=repeat, seed=3)  # fmt: skip
    order = list(sampler)
    assert len(order) == len(sampler)
    # G consecutive copies of every index
    groups = [order[i : i + g] for i in range(0, len(order), g)]
    assert all(len(set(group)) == 1 for group in groups)
    unique = [group[0] for group in groups]
    # each generation batch (batch unique rows) is repeated `repeat` times, holding whole pairs
    chunk = batch * repeat
    seen = []
    for start in range(0, len(unique), chunk):
        block = unique[start : start + chunk]
        first = block[:batch]
        assert block == first * repeat
        for i in range(0, batch, 2):
            assert first[i] % 2 == 0 and first[i + 1] == first[i] + 1
        seen += first
    assert len(seen) == len(set(seen)) == (rows // batch) * batch  # each row at most once
    if rows % batch == 0:
        assert sorted(seen) == list(range(rows))
    # whole pairs are shuffled (seeded): not the identity order, reproducible
    again = list(PairRepeatSampler(range(rows), g, batch, repeat, seed=3))
    assert again == order
    if rows // 2 > 3:
        assert seen != sorted(seen)


def test_pair_sampler_matches_trl_contract_without_shuffle():
    from trl.trainer.utils import RepeatSampler

    ours = PairRepeatSampler(range(12), 3, batch_size=4, repeat_count=2, shuffle=False)
    trl = RepeatSampler(range(12), 3, batch_size=4, repeat_count=2, shuffle=False)
    assert list(ours) == list(trl) and len(ours) == len(trl)
    with pytest.raises(ValueError, match="even"):
        PairRepeatSampler(range(12), 2, batch_size=3)
    with pytest.raises(ValueError, match="whole pairs"):
        PairRepeatSampler(range(11), 2, batch_size=2)


# ---- reward adapter (pure) ---------------------------------------------------------------------


def _call(reward_fn, a_scores, b_scores, p_star_a=1.0, weights=(1.0, 1.0), bt=(None, None)):
    texts = [f"<think>ok</think> \\boxed{{{s}}}" for s in list(a_scores) + list(b_scores)]
    g = len(a_scores)
    return np.array(
        reward_fn(
            prompts=[[{"role": "user", "content": "q"}]] * (2 * g),
            completions=[[{"role": "assistant", "content": t}] for t in texts],
            image_key=["A"] * g + ["B"] * g,
            partner_key=["B"] * g + ["A"] * g,
            p_star=[p_star_a] * g + [1.0 - p_star_a] * g,
            weight=[weights[0]] * g + [weights[1]] * g,
            bt_score=[bt[0]] * g + [bt[1]] * g,
            pair_id=[0] * (2 * g),
            trainer_state=None,
        )
    )


def test_reward_prefers_scores_that_agree_with_the_label():
    reward_fn = make_reward_function(make_spec())
    agree = _call(reward_fn, ["4.1", "4.3", "3.9"], ["2.0", "2.2", "1.8"])
    disagree = _call(reward_fn, ["2.0", "2.2", "1.8"], ["4.1", "4.3", "3.9"])
    assert agree.shape == (6,) and np.all((agree >= 0) & (agree <= 1))
    assert agree.mean() > disagree.mean() + 0.5
    # within image A, the higher sample is rewarded more when A should win
    assert agree[1] > agree[2]


def test_unparseable_answers_get_zero():
    reward_fn = make_reward_function(make_spec())
    out = _call(reward_fn, ["4.1", "oops", "3.9"], ["2.0", "2.2", "9.5"])
    assert out[1] == 0.0 and out[5] == 0.0
    assert out[0] > 0 and out[3] > 0


def test_confidence_weighting_scales_the_weighted_image():
    spec = make_spec()
    weighted_spec = spec.model_copy(
        update={"ranking": spec.ranking.model_copy(update={"confidence_weighting": True})}
    )
    scores_a, scores_b = ["4.1", "4.3", "3.9"], ["2.0", "2.2", "1.8"]
    plain = _call(make_reward_function(spec), scores_a, scores_b, weights=(0.5, 1.0))
    weighted = _call(make_reward_function(weighted_spec), scores_a, scores_b, weights=(0.5, 1.0))
    np.testing.assert_allclose(weighted[:3], 0.5 * plain[:3])
    np.testing.assert_allclose(weighted[3:], plain[3:])


def test_format_reward_and_bradley_terry_labels():
    texts = ["<think>a</think> \\boxed{4.0}", "\\boxed{4.2}", "<think>b</think> \\boxed{2.0}",
             "<think>c</think> \\boxed{2.5}"]  # fmt: skip
    keys, partners = ["A", "A", "B", "B"], ["B", "B", "A", "A"]
    base, _ = pair_rewards(texts, keys, partners, [1, 1, 0, 0])
    with_format, metrics = pair_rewards(texts, keys, partners, [1, 1, 0, 0], format_weight=0.5)
    np.testing.assert_allclose(with_format - base, [0.5, 0.0, 0.5, 0.5])
    assert metrics["parse_rate"] == 1.0
    # Bradley-Terry: any two images of the call are compared through their global scores
    texts3 = texts + ["\\boxed{3.0}", "\\boxed{3.1}"]
    keys3, partners3 = keys + ["C", "C"], partners + ["D", "D"]  # C's partner is not in the call
    hard, _ = pair_rewards(texts3, keys3, partners3, [1, 1, 0, 0, 1, 1])
    assert np.all(hard[4:] == 0.0)  # no labelled partner in the call: reward 0
    bt, _ = pair_rewards(
        texts3, keys3, partners3, [1, 1, 0, 0, 1, 1],
        bt_score=[2.0, 2.0, -2.0, -2.0, 0.0, 0.0], labels="bradley-terry",
    )  # fmt: skip
    assert np.all(bt[4:] > 0.0)
