"""The vLLM engine and the transformers engine agree on the same tiny model and images.

* prompt token ids: equal (chat template, image placeholders and their expansion);
* teacher-forced log-probabilities of a fixed completion: within `LOGPROB_TOLERANCE` (both run
  float32 on CPU; their kernels differ, so bit equality is not expected, and greedy strings of a
  random model diverge on near ties, which is why strings are not compared);
* sampled votes: per ordered pair, the counts of answers "first", "second" and unparseable from
  K samples of each engine pass a chi-squared test of homogeneity (statistics and degrees of
  freedom summed over pairs) at `ALPHA`; the same test rejects a perturbed engine (temperature 2
  on the vLLM side), so it has the power to see a real difference.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.stats import chi2

from evoquality import prompts
from evoquality.engines import Sampling, derive_seed
from tests.vllm.images import pairs_of, prepared

LOGPROB_TOLERANCE = 1e-3  # nats, per token
ALPHA = 0.001
VOTES = 96
MAX_NEW_TOKENS = 10


def vllm_prompt(engine, images, text: str):
    """vLLM's view of a raw prompt text with images: its token ids and per-token log-probs."""
    params = engine._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    request = {"prompt": text, "multi_modal_data": {"image": images}}
    return engine.llm.generate([request], params, use_tqdm=False)[0]


def hf_logprobs(engine, images, text: str) -> tuple[list[int], np.ndarray]:
    inputs = engine.processor(text=[text], images=[images], return_tensors="pt")
    with torch.no_grad():
        logits = engine.model(**inputs).logits[0].double()
    ids = inputs["input_ids"][0]
    logprobs = torch.log_softmax(logits[:-1], dim=-1).gather(1, ids[1:, None])[:, 0]
    return ids.tolist(), logprobs.numpy()


def test_prompt_token_ids_are_equal(vllm_engine, hf_engine):
    images = [item.image for item in prepared(2, side=84, seed=10)]
    for count, question in [
        (2, prompts.comparison_prompt(False)),
        (1, prompts.scoring_prompt(False)),
    ]:
        text = hf_engine.prompt_text(count, question)
        ours = vllm_prompt(vllm_engine, images[:count], text).prompt_token_ids
        theirs = hf_engine.inputs(images[:count], question)["input_ids"][0].tolist()
        assert list(ours) == theirs


def test_teacher_forced_logprobs_agree(vllm_engine, hf_engine):
    images = [item.image for item in prepared(2, side=84, seed=11)]
    prompt = hf_engine.prompt_text(2, prompts.comparison_prompt(True))
    text = prompt + "<think>The first image is sharper.</think> \\boxed{0}<|im_end|>"
    out = vllm_prompt(vllm_engine, images, text)
    ids, theirs = hf_logprobs(hf_engine, images, text)
    assert list(out.prompt_token_ids) == ids
    entries = zip(out.prompt_logprobs[1:], ids[1:], strict=True)
    ours = np.array([entry[token].logprob for entry, token in entries])
    start = len(hf_engine.inputs(images, prompts.comparison_prompt(True))["input_ids"][0]) - 1
    gap = np.abs(ours - theirs)
    assert gap[start:].max() < LOGPROB_TOLERANCE, gap[start:]
    assert gap.max() < LOGPROB_TOLERANCE  # the whole prompt too, image tokens included


def vote_counts(engine, pairs, temperature: float) -> np.ndarray:
    """(pairs, 3) counts of answers: first, second, unparseable."""
    sampling = Sampling(temperature, 1.0, MAX_NEW_TOKENS, 0)
    seeds = [derive_seed(5, "chi2", i) for i in range(len(pairs))]
    counts = np.zeros((len(pairs), 3), dtype=np.int64)
    for row, texts in enumerate(engine.compare(pairs, VOTES, sampling, seeds)):
        for text in texts:
            choice = prompts.parse_choice(text)
            counts[row, 2 if choice is None else choice] += 1
    return counts


def homogeneity_p_value(a: np.ndarray, b: np.ndarray) -> float:
    """Chi-squared test that two engines' answer distributions are equal, summed over pairs."""
    statistic, dof = 0.0, 0
    for row_a, row_b in zip(a, b, strict=True):
        table = np.stack([row_a, row_b])
        table = table[:, table.sum(0) > 0]
        if table.shape[1] < 2:
            continue
        expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
        statistic += float(((table - expected) ** 2 / expected).sum())
        dof += table.shape[1] - 1
    return float(chi2.sf(statistic, dof))


def test_sampled_votes_follow_the_same_distribution(vllm_engine, hf_engine):
    pairs = pairs_of(prepared(12, seed=12))
    reference = vote_counts(hf_engine, pairs, 1.0)
    assert homogeneity_p_value(reference, vote_counts(vllm_engine, pairs, 1.0)) > ALPHA
    perturbed = vote_counts(vllm_engine, pairs, 2.0)
    assert homogeneity_p_value(reference, perturbed) < ALPHA, "the test must see temperature 2"
