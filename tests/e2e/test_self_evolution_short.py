"""Short CI version of the self-evolution experiment: the ORACLE control must improve the base,
and the SHUFFLED control (the same labels permuted across pairs: no information) must not pass the
same bar.

`evoquality.experiments.self_evolution.short_oracle_check`, one round per seed: p* from the true
MOS of the round's planned pairs (or those p* shuffled across pairs for the control), committed as
the round's rank attempt, then the real train stage, then the held-out perception of the new policy
against the committed weak base (`tiny-weak` v4), probed without sampling
(`self_evolution.probe_model`). If this fails, the reward/GRPO wiring is wrong.

The statistic is the gain of the expected Kendall tau between the pseudo-MOS and ONE sampled
first digit per image (`probe.sample_tau`: what single-sample SRCC measures, exact from the
next-token probabilities, so no sampling noise), averaged over the variant's seeds (one CPU thread
each, two seeds at a time). Calibrated by `benchmarks/learning_checks.py --check short-oracle
--n-eval 0` (raw runs in docs/learning-checks/short-oracle.jsonl, table in docs/self-evolution.md,
"Learning checks"), 20 seeds (0-19) of each variant on one thread, on tiny-weak v4:

* oracle 0.086 +- 0.043 (min 0.028): the mean over ORACLE_SEEDS (8) has sd 0.0152, and 4 sd below
  its mean is 0.0256;
* shuffled 0.002 +- 0.008 (max 0.016): the mean over CONTROL_SEEDS (4) has sd 0.0039, and 4 sd
  above its mean is 0.0178;
* inverted and zero (not run here) sit below the shuffled control (docs).

MIN_MEAN_GAIN = 0.02 sits 4.4 sd below the oracle's 8-seed mean and 4.6 sd above the shuffled
control's 4-seed mean; the oracle must beat it and the shuffled control must not. Here: oracle
seeds 0-7 0.091, shuffled seeds 0-3 0.001. Four oracle seeds would not do (4 sd below their mean is
0.000, under the shuffled bound). ~4.5 and ~2.5 min on 2 idle cores.
"""

import os

import numpy as np
import pytest

from evoquality.experiments.self_evolution import short_check_gains, short_oracle_checks

ORACLE_SEEDS = tuple(range(8))
CONTROL_SEEDS = tuple(range(4))
MIN_MEAN_GAIN = 0.02


def mean_tau_gain(labels: str, seeds, out, cache) -> tuple[float, list[dict]]:
    runs = short_oracle_checks(list(seeds), out, cache, labels=labels, workers=2, n_eval=0)
    return float(np.mean([short_check_gains(run)["gain_tau"] for run in runs])), runs


@pytest.mark.slow
@pytest.mark.parametrize(
    "labels, seeds, passes", [("oracle", ORACLE_SEEDS, True), ("shuffled", CONTROL_SEEDS, False)]
)
def test_the_bar_tells_the_oracle_from_shuffled_labels(
    labels, seeds, passes, tmp_path, monkeypatch
):
    monkeypatch.setenv("EVOQUALITY_CACHE", os.environ.get("EVOQUALITY_CACHE", str(tmp_path / "c")))
    from evoquality.stages.context import cache_dir

    gain, runs = mean_tau_gain(labels, seeds, tmp_path / "runs", cache_dir())
    assert (gain > MIN_MEAN_GAIN) == passes, (gain, [short_check_gains(run) for run in runs])
