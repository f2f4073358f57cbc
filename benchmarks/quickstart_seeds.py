"""The quickstart over several seeds, the way a user runs it: `evoquality run` per seed.

    HF_HUB_OFFLINE=1 python benchmarks/quickstart_seeds.py --seeds 0 1 2 3 4

Each seed is examples/quickstart.yaml with ``spec.seed`` (pairs, votes, GRPO and evaluation
sampling) and the run's name changed, run by the real CLI in a subprocess into one work dir
(one SynIQA cache: the first run builds it). Prints every seed's final table row (held-out SRCC
and PLCC, mean of the spec's samples, per round), the wall time of each run, and the gain of the
last round over the base: mean ± sd over seeds, the 95 % t-interval of the mean, and how many
seeds gained. The numbers are written to ``--workdir``/quickstart-seeds.json. A finished seed's
run is reused (the CLI resumes a complete run in about a second).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml
from scipy.stats import ttest_1samp

from evoquality.report import collect
from evoquality.runner import run_root
from evoquality.spec import load_run
from evoquality.storage import open_store

ROOT = Path(__file__).resolve().parents[1]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"
BENCH = "syniqa-heldout"


def run_seed(seed: int, workdir: Path, jobs: int) -> tuple[dict, float]:
    """`evoquality run` of the quickstart with ``seed``: (eval metrics per round, seconds)."""
    doc = yaml.safe_load(QUICKSTART.read_text())
    doc["metadata"]["name"] = f"quickstart-seed{seed}"
    doc["spec"]["seed"] = seed
    spec_file = workdir / "specs" / f"quickstart-seed{seed}.yaml"
    spec_file.parent.mkdir(parents=True, exist_ok=True)
    spec_file.write_text(yaml.safe_dump(doc, sort_keys=False))
    command = [sys.executable, "-m", "evoquality.cli", "run", str(spec_file)]
    command += ["--workdir", str(workdir), "--jobs", str(jobs), "--no-report"]
    began = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    seconds = time.perf_counter() - began
    if done.returncode != 0:
        raise SystemExit(f"seed {seed}: evoquality run exited {done.returncode}\n{done.stderr}")
    evals = collect(open_store(run_root(load_run(spec_file), workdir)))["eval"]
    return {str(r): m for r, m in evals.items()}, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/evoquality-quickstart-seeds"))
    parser.add_argument("--jobs", type=int, default=os.cpu_count())
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    results = {}
    for seed in args.seeds:
        metrics, seconds = run_seed(seed, args.workdir.resolve(), args.jobs)
        results[seed] = {"metrics": metrics, "seconds": round(seconds, 1)}
        row = "  ".join(
            f"{name} {m[f'{BENCH}.srcc']:.3f}/{m[f'{BENCH}.plcc']:.3f}"
            for name, m in metrics.items()
        )
        print(f"seed {seed} ({seconds:.0f} s): SRCC/PLCC {row}", flush=True)
    last = str(max(int(k) for k in results[args.seeds[0]]["metrics"] if k != "base"))
    for stat in ("srcc", "plcc"):
        key = f"{BENCH}.{stat}"
        gains = np.array(
            [r["metrics"][last][key] - r["metrics"]["base"][key] for r in results.values()]
        )
        line = f"{stat.upper()} gain, round {last} over the base: {gains.mean():+.3f} ± "
        line += f"{gains.std(ddof=1) if len(gains) > 1 else 0.0:.3f} (sd over {len(gains)} seeds)"
        if len(gains) > 1:
            low, high = ttest_1samp(gains, 0.0).confidence_interval(0.95)
            line += f", 95 % CI [{low:+.3f}, {high:+.3f}]"
        print(f"{line}, {int((gains > 0).sum())} of {len(gains)} seeds gain")
    (args.workdir / "quickstart-seeds.json").write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
