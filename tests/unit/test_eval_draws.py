"""The eval stage scores the base and every round's checkpoint with the same sampling draws per
image (common random numbers), so a round's change over the base is not a fresh roll of the dice.

Runs `eval.score_benchmark` with the simulated engine (scores = MOS + noise seeded per request) on a
CSV benchmark: the same model scored under two round labels gets the same predictions, and another
run seed gets other ones.
"""

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import yaml

from evoquality.engines.simulated import SimulatedEngine
from evoquality.spec import BenchmarkSpec, SimulatedJudgeSpec, parse_spec
from evoquality.stages.eval import score_benchmark

ROOT = Path(__file__).resolve().parents[2]


def _predictions(tmp_path: Path, seed: int, label: str) -> np.ndarray:
    manifest = tmp_path / "bench.csv"
    if not manifest.exists():
        mos = np.random.default_rng(0).uniform(1, 5, 60)
        rows = "".join(f"img{i}.png,{m:.3f}\n" for i, m in enumerate(mos))
        manifest.write_text("image,mos\n" + rows)
    spec = yaml.safe_load((ROOT / "examples" / "smoke.yaml").read_text())["spec"]
    spec["seed"] = seed
    ctx = SimpleNamespace(spec=parse_spec(spec), cache=tmp_path)
    engine = SimulatedEngine(SimulatedJudgeSpec(score_noise=1.0), seed=seed)
    bench = BenchmarkSpec(name="bench", manifest=str(manifest))
    table, _ = score_benchmark(ctx, engine, bench, label)
    return table["pred"].to_numpy()


def test_base_and_rounds_are_scored_with_the_same_draws(tmp_path):
    base = _predictions(tmp_path, seed=3, label="base")
    assert np.array_equal(base, _predictions(tmp_path, seed=3, label="r2"))
    assert not np.allclose(base, _predictions(tmp_path, seed=4, label="base"))
