"""Calibration of the learning checks: each check run many times (seeds x CPU thread counts), for
the correct pipeline and a broken one, so that a test's threshold comes from a measured
distribution (docs/self-evolution.md, "Learning checks").

    HF_HUB_OFFLINE=1 EVOQUALITY_CACHE=/tmp/evo-cache python benchmarks/learning_checks.py \\
        --check grey --seeds $(seq 0 19) --threads 1 2 --out docs/learning-checks

Checks (the code the tests run, from `evoquality.experiments`):

* ``grey``: `grey_oracle.run` from the plain `tiny` model (no CI test: bimodal over seeds),
  variants ``oracle`` and ``inverted`` (p* = 1 for the worse image);
* ``short-oracle``: one oracle round of the self-evolution experiment on the committed weak base
  (tests/e2e/test_self_evolution_short.py), variants ``oracle``, ``inverted`` (1 - p*),
  ``shuffled`` (p* permuted across pairs) and ``zero`` (a reward of 0 everywhere: the pipeline
  that learns nothing). Probed statistics, deterministic (no sampling), always: the gains of the
  expected Kendall tau of one sampled digit (`probe.sample_tau`), of expected-digit SRCC and of
  comparison accuracy; sampled SRCC gains too unless ``--n-eval 0``.

Every run is appended as one JSON line to ``<out>/<check>.jsonl``; a ``short-oracle`` row names
the weak base it ran on (``weak_base``, e.g. ``tiny-weak-v4``). A rerun skips the runs already
there for the current base, and the table printed at the end gives, per variant and thread count,
the mean, standard deviation, minimum, maximum and mean - 4 sd of each check statistic over the
current base's rows only (the older bases' rows stay in the file as the record).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import numpy as np

CHECKS = {
    "grey": ("oracle", "inverted"),
    "short-oracle": ("oracle", "inverted", "shuffled", "zero"),
}
# The statistics tabulated (a row without one, from another protocol, is left out of its line).
STATISTICS = {
    "grey": ("after_srcc", "gain"),
    "short-oracle": ("gain_tau", "gain_expected", "gain_compare", "gain1", "gain"),
}


def run_grey(seed: int, variant: str, work: Path, cache: Path, n_eval: int) -> dict:
    from evoquality.experiments import grey_oracle
    from evoquality.models import resolve_model

    result = grey_oracle.run(resolve_model("tiny", cache), work, seed, labels=variant)
    return {
        "before_srcc": result["before"]["srcc"],
        "after_srcc": result["after"]["srcc"],
        "gain": result["after"]["srcc"] - result["before"]["srcc"],
        "parse_rate": result["after"]["parse_rate"],
        "reward_first": result["reward_first"],
        "reward_last": result["reward_last"],
    }


def run_short_oracle(seed: int, variant: str, work: Path, cache: Path, n_eval: int) -> dict:
    from evoquality.experiments import self_evolution as se

    result = se.short_oracle_check(seed, work, cache, labels=variant, n_eval=n_eval)
    base, after = result["base"], result["after"]
    row = {
        "weak_base": base_of("short-oracle"),
        "base_expected_srcc": base["expected_srcc"],
        "after_expected_srcc": after["expected_srcc"],
        "base_sample_tau": base["sample_tau"],
        "after_spread": after["spread"],
        **se.short_check_gains(result),
    }
    if n_eval:
        row.update(
            base_srcc1=base["srcc1"],
            base_srcc=base["srcc"],
            after_srcc1=after["srcc1"],
            after_srcc=after["srcc"],
            parse_rate=after["parse_rate"],
        )
    return row


RUNNERS = {"grey": run_grey, "short-oracle": run_short_oracle}


def base_of(check: str) -> str | None:
    """The weak base a check's runs start from (None: the plain `tiny` model, built per run)."""
    from evoquality.models import committed_weak_base

    return committed_weak_base().name if check == "short-oracle" else None


def summarise(rows: list[dict], check: str) -> str:
    lines = [
        "| variant | threads | runs | statistic | mean | sd | min | max | mean - 4 sd |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(r["variant"], r["threads"]) for r in rows})
    for variant, threads in keys:
        group = [r for r in rows if (r["variant"], r["threads"]) == (variant, threads)]
        for stat in STATISTICS[check]:
            x = np.array([r[stat] for r in group if stat in r], dtype=float)
            if not len(x):
                continue
            sd = x.std(ddof=1) if len(x) > 1 else float("nan")
            lines.append(
                f"| {variant} | {threads} | {len(x)} | {stat} | {x.mean():.3f} | {sd:.3f} "
                f"| {x.min():.3f} | {x.max():.3f} | {x.mean() - 4 * sd:.3f} |"
            )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", choices=list(CHECKS), required=True)
    parser.add_argument("--variants", nargs="+", default=None, help="default: all of the check's")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(20)))
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument(
        "--n-eval", type=int, default=16, help="sampled scores per image (0: probe only)"
    )
    parser.add_argument("--out", type=Path, default=Path("docs/learning-checks"))
    parser.add_argument("--table-only", action="store_true", help="print the table of --out")
    args = parser.parse_args()
    from evoquality.determinism import pinned_cpu
    from evoquality.stages.context import cache_dir

    args.out.mkdir(parents=True, exist_ok=True)
    raw = args.out / f"{args.check}.jsonl"
    logged = [json.loads(line) for line in raw.read_text().splitlines()] if raw.exists() else []
    rows = [r for r in logged if r.get("weak_base") == base_of(args.check)]
    done = {(r["variant"], r["threads"], r["seed"], r.get("n_eval", 16)) for r in rows}
    cache = cache_dir()
    variants = args.variants or CHECKS[args.check]
    for threads in [] if args.table_only else args.threads:
        for variant in variants:
            for seed in args.seeds:
                if (variant, threads, seed, args.n_eval) in done:
                    continue
                began = time.perf_counter()
                with tempfile.TemporaryDirectory() as tmp, pinned_cpu(threads):
                    stats = RUNNERS[args.check](seed, variant, Path(tmp), cache, args.n_eval)
                row = {"variant": variant, "threads": threads, "seed": seed, **stats}
                row["n_eval"] = args.n_eval
                row["seconds"] = round(time.perf_counter() - began, 1)
                print(json.dumps(row), flush=True)
                with raw.open("a") as f:
                    f.write(json.dumps(row) + "\n")
                rows.append(row)
    print(summarise(rows, args.check))


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
