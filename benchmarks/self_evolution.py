"""The CPU self-evolution experiment with its controls (docs/self-evolution.md).

    HF_HUB_OFFLINE=1 EVOQUALITY_CACHE=/tmp/evo-cache python benchmarks/self_evolution.py \\
        --seeds 0 1 2 3 4 --arms evo oracle k1 shuffled bt --out /tmp/evo-bench

Arms and protocol: `evoquality.experiments.self_evolution`. Prints the per-round table (mean ± std
over seeds), the gains after the last round and the differences between evo and each other arm
(both paired by seed, with 95 % t-intervals over seeds), writes the plot into docs/img/ and the
raw numbers into ``--out``/results.json. A finished arm (and the base's scores per seed) are kept
in ``--out`` and reused, so processes that split the seeds or arms between them share one
``--out``, and a last run over all of them only tabulates (after a change to the code, not the
spec, use a fresh ``--out``: the kept results are keyed by spec and ``--n-eval`` only).
Every checkpoint is also probed without sampling (expected-digit SRCC, comparison accuracy), so
sharpening (sampled SRCC rises, expected-digit SRCC does not) is told apart from re-ranking.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import yaml

from evoquality.experiments.self_evolution import (
    ARMS,
    arm_spec,
    probe_model,
    run_arm,
    score_model,
)

ROOT = Path(__file__).resolve().parents[1]


def cell(values) -> str:
    values = [v for v in values if v is not None and np.isfinite(v)]
    if not values:
        return "-"
    return f"{np.mean(values):.3f} ± {np.std(values):.3f}"


def interval(values) -> tuple[float, float, float]:
    """Mean and 95 % t-interval over seeds."""
    from scipy.stats import t

    x = np.asarray(values, dtype=float)
    if len(x) < 2:
        return float(x.mean()), float("nan"), float("nan")
    half = t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / np.sqrt(len(x))
    return float(x.mean()), float(x.mean() - half), float(x.mean() + half)


def table(results: list[dict], base: dict[int, dict]) -> str:
    lines = [
        "| arm | round | SRCC (1 sample) | SRCC (mean of n) | PLCC (mean of n) "
        "| expected-digit SRCC | comparison acc. | vote agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    bases = list(base.values())
    lines.append(
        f"| base | - | {cell([b['srcc1'] for b in bases])} | {cell([b['srcc'] for b in bases])} "
        f"| {cell([b['plcc'] for b in bases])} | {cell([b['expected_srcc'] for b in bases])} "
        f"| {cell([b['compare_acc'] for b in bases])} | - |"
    )
    for arm in dict.fromkeys(r["arm"] for r in results):
        runs = [r for r in results if r["arm"] == arm]
        for k in range(len(runs[0]["rounds"])):
            rows = [r["rounds"][k] for r in runs if len(r["rounds"]) > k]
            lines.append(
                f"| {arm} | {k} | {cell([x['srcc1'] for x in rows])} "
                f"| {cell([x['srcc'] for x in rows])} | {cell([x['plcc'] for x in rows])} "
                f"| {cell([x['expected_srcc'] for x in rows])} "
                f"| {cell([x['compare_acc'] for x in rows])} "
                f"| {cell([x.get('agreement') for x in rows])} |"
            )
    n = len({r["seed"] for r in results})
    lines.append(f"\nmean ± std over {n} seed(s); round r = the policy after round r's training")
    return "\n".join(lines)


def gains(results: list[dict], base: dict[int, dict]) -> str:
    """Each arm's gain over the base after its last round, paired by seed, with 95 % CIs."""
    stats = (("srcc", "mean-of-n SRCC"), ("srcc1", "single-sample SRCC"))
    stats += (("expected_srcc", "expected-digit SRCC"), ("compare_acc", "comparison acc."))
    head = " | ".join(f"{name} gain (95 % CI)" for _, name in stats)
    lines = [f"| arm | {head} | seeds gaining (mean of n) |", "|---" * (len(stats) + 2) + "|"]
    for arm in dict.fromkeys(r["arm"] for r in results):
        runs = [r for r in results if r["arm"] == arm]
        cells = []
        for key, _ in stats:
            mean, lo, hi = interval([r["rounds"][-1][key] - base[r["seed"]][key] for r in runs])
            cells.append(f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        up = sum(r["rounds"][-1]["srcc"] > base[r["seed"]]["srcc"] for r in runs)
        lines.append(f"| {arm} | {' | '.join(cells)} | {up} of {len(runs)} |")
    return "\n".join(lines)


def differences(results: list[dict], reference: str = "evo") -> str:
    """``reference`` minus each other arm after the last round, paired by seed, with 95 % CIs."""
    final = {(r["arm"], r["seed"]): r["rounds"][-1] for r in results}
    stats = (("srcc", "mean-of-n SRCC"), ("srcc1", "single-sample SRCC"))
    lines = [f"| {reference} minus | " + " | ".join(f"{n} (95 % CI)" for _, n in stats) + " |"]
    lines.append("|---" * (len(stats) + 1) + "|")
    for arm in dict.fromkeys(r["arm"] for r in results):
        seeds = [s for a, s in final if a == arm and (reference, s) in final]
        if arm == reference or len(seeds) < 2:
            continue
        cells = []
        for key, _ in stats:
            diff = [final[reference, s][key] - final[arm, s][key] for s in seeds]
            mean, lo, hi = interval(diff)
            cells.append(f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]")
        lines.append(f"| {arm} ({len(seeds)} seeds) | {' | '.join(cells)} |")
    return "\n".join(lines)


def plot(results: list[dict], base: dict[int, dict], path: Path) -> None:
    """One figure: held-out SRCC per round and arm (mean ± std over seeds), sampled and probed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = (("srcc", "mean-of-n SRCC"), ("srcc1", "single-sample SRCC"))
    panels += (("expected_srcc", "expected-digit SRCC (no sampling)"),)
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6), dpi=90, sharey=True)
    for ax, (key, title) in zip(axes, panels, strict=True):
        for arm in dict.fromkeys(r["arm"] for r in results):
            runs = [r for r in results if r["arm"] == arm]
            curves = np.array(
                [[base[r["seed"]][key]] + [x[key] for x in r["rounds"]] for r in runs]
            )
            x = np.arange(curves.shape[1])
            ax.errorbar(x, curves.mean(0), yerr=curves.std(0), label=arm, capsize=3, marker="o")
            ax.set_xticks(x)
        ax.axhline(np.mean([b[key] for b in base.values()]), color="grey", lw=0.8, ls="--")
        ax.axhline(0.0, color="black", lw=0.5)
        ax.set_xlabel("policy (0 = base, r = after round r-1)")
        ax.set_title(title)
    axes[0].set_ylabel("held-out SRCC")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


def base_scores(base_path: str, spec, cache: Path, out: Path, n_eval: int, seed: int) -> dict:
    """The base's sampled held-out scores for one seed, kept in ``out`` for later runs."""
    kept = out / f"base-seed{seed}-n{n_eval}.json"
    if not kept.exists():
        out.mkdir(parents=True, exist_ok=True)
        kept.write_text(json.dumps(score_model(base_path, spec, cache, n_eval, seed)))
    return json.loads(kept.read_text())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--arms", nargs="+", default=list(ARMS), choices=ARMS)
    parser.add_argument("--out", type=Path, default=Path("/tmp/evoquality-self-evolution"))
    parser.add_argument("--n-eval", type=int, default=16, help="sampled scores per image")
    parser.add_argument("--plot", type=Path, default=ROOT / "docs" / "img" / "self-evolution.png")
    parser.add_argument("--set", nargs="*", default=[], help="spec overrides: a.b=value (YAML)")
    args = parser.parse_args()
    from evoquality.models import resolve_model
    from evoquality.spec import parse_spec
    from evoquality.stages.context import cache_dir

    overrides = {k: yaml.safe_load(v) for k, v in (s.split("=", 1) for s in args.set)}
    cache = cache_dir()
    began = time.perf_counter()
    base_spec = parse_spec({**arm_spec("evo", 0, overrides), "storage": {"uri": str(args.out)}})
    base_path = resolve_model(base_spec.model.base, cache)
    print(f"base model {base_path} ready after {time.perf_counter() - began:.0f} s", flush=True)
    probed = probe_model(base_path, base_spec, cache)  # deterministic: the same for every seed
    base = {
        s: {**base_scores(base_path, base_spec, cache, args.out, args.n_eval, s), **probed}
        for s in args.seeds
    }
    print(f"base: {json.dumps(base)}", flush=True)
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            results.append(run_arm(arm, seed, args.out, cache, args.n_eval, overrides))
    print(table(results, base))
    print(gains(results, base))
    print(f"\n{differences(results)}")
    (args.out / "results.json").write_text(json.dumps({"base": base, "runs": results}, indent=1))
    plot(results, base, args.plot)
    print(f"total {time.perf_counter() - began:.0f} s; plot {args.plot}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
