"""The transformers engine on the tiny model (CPU): shapes, determinism, greedy, prompt identity."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from evoquality import prompts
from evoquality.data.images import prepare_image
from evoquality.engines import EngineImage, Sampling, make_engine
from evoquality.engines.transformers_engine import TransformersEngine
from evoquality.spec import ModelSpec

MIN_PIXELS, MAX_PIXELS = 784, 3136


def _images(n: int, seed: int = 0) -> list[EngineImage]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        size = (int(rng.integers(40, 90)), int(rng.integers(40, 90)), 3)
        img = Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8))
        out.append(EngineImage(f"img{i}", prepare_image(img, MIN_PIXELS, MAX_PIXELS), 3.0))
    return out


@pytest.fixture(scope="module")
def engine(tiny_model_dir):
    spec = ModelSpec(
        base="tiny", engine="transformers", min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS
    )
    engine = make_engine(spec, str(tiny_model_dir), seed=0)
    yield engine
    engine.close()


def test_compare_and_score_return_n_texts_per_item(engine):
    assert isinstance(engine, TransformersEngine) and engine.needs_pixels
    images = _images(4)
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=24, seed=1)
    pairs = [(images[0], images[1]), (images[1], images[0]), (images[2], images[3])]
    votes = engine.compare(pairs, 3, sampling)
    assert len(votes) == 3 and all(len(v) == 3 for v in votes)
    scores = engine.score(images, 2, sampling)
    assert len(scores) == 4 and all(len(s) == 2 for s in scores)
    assert all(isinstance(t, str) for row in votes + scores for t in row)
    parsed = [prompts.parse_choice(t) for row in votes for t in row]
    assert sum(p is not None for p in parsed) >= len(parsed) // 2
    assert engine.stats["generated_tokens"] > 0 and engine.tokens_per_second > 0
    assert engine.compare([], 3, sampling) == []


def test_sampling_is_seeded_and_greedy_repeats(engine):
    images = _images(2, seed=5)
    sampling = Sampling(temperature=1.0, top_p=1.0, max_new_tokens=16, seed=42)
    assert engine.score(images, 3, sampling) == engine.score(images, 3, sampling)
    greedy = engine.score(images, 3, Sampling(0.0, 1.0, 16, 0))
    assert all(len(set(row)) == 1 and len(row) == 3 for row in greedy)


def test_missing_pixels_is_a_clear_error(engine):
    with pytest.raises(ValueError, match="prepared images"):
        engine.score([EngineImage("x", None, 3.0)], 1, Sampling(1.0, 1.0, 8, 0))


def test_engine_prompt_is_the_trainer_prompt(engine):
    """The GRPO dataset's prompt, rendered as TRL renders it, is the engine's scoring prompt."""
    from trl.data_utils import prepare_multimodal_messages

    from evoquality.training.grpo import scoring_messages

    image = _images(1)[0].image
    trl_messages = prepare_multimodal_messages(scoring_messages(True), images=[image])
    rendered = engine.processor.apply_chat_template(
        trl_messages, tokenize=False, add_generation_prompt=True
    )
    assert rendered == engine.prompt_text(1, prompts.scoring_prompt(True))
