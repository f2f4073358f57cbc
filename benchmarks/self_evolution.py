"""The CPU self-evolution experiment with its controls (docs/self-evolution.md).

    HF_HUB_OFFLINE=1 EVOQUALITY_CACHE=/tmp/evo-cache python benchmarks/self_evolution.py \\
        --seeds 0 1 2 --arms evo oracle k1 shuffled bt --out /tmp/evo-bench

Arms and protocol: `evoquality.experiments.self_evolution`. Prints a table and writes plots into
docs/img/.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np
import yaml

from evoquality.experiments.self_evolution import ARMS, arm_spec, run_arm, score_model

ROOT = Path(__file__).resolve().parents[1]


def table(results: list[dict], base: dict[int, dict]) -> str:
    lines = [
        "| arm | round | SRCC (1 sample) | PLCC (1 sample) | SRCC (mean of n) | PLCC (mean of n) "
        "| SRCC gain over base (1 sample / mean of n) | vote agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]

    def cell(values):
        values = [v for v in values if v is not None and np.isfinite(v)]
        if not values:
            return "-"
        return f"{np.mean(values):.3f} ± {np.std(values):.3f}"

    bases = list(base.values())
    lines.append(
        f"| base | - | {cell([b['srcc1'] for b in bases])} | {cell([b['plcc1'] for b in bases])} "
        f"| {cell([b['srcc'] for b in bases])} "
        f"| {cell([b['plcc'] for b in bases])} | - | - |"
    )
    for arm in dict.fromkeys(r["arm"] for r in results):
        runs = [r for r in results if r["arm"] == arm]
        for k in range(len(runs[0]["rounds"])):
            paired = [(r["rounds"][k], base[r["seed"]]) for r in runs if len(r["rounds"]) > k]
            rows = [x for x, _ in paired]
            gain1 = cell([x["srcc1"] - b["srcc1"] for x, b in paired])
            gain = cell([x["srcc"] - b["srcc"] for x, b in paired])
            lines.append(
                f"| {arm} | {k} | {cell([x['srcc1'] for x in rows])} | "
                f"{cell([x['plcc1'] for x in rows])} | "
                f"{cell([x['srcc'] for x in rows])} | {cell([x['plcc'] for x in rows])} | "
                f"{gain1} / {gain} | {cell([x.get('agreement') for x in rows])} |"
            )
    n = len({r["seed"] for r in results})
    lines.append(f"\nmean ± std over {n} seed(s)")
    return "\n".join(lines)


def plot(results: list[dict], base: dict[int, dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), dpi=90)
    base_mean = {k: np.mean([b[k] for b in base.values()]) for k in ("srcc1", "srcc")}
    for ax, key, title in zip(
        axes, ("srcc1", "srcc"), ("single-sample SRCC", "mean-of-n SRCC"), strict=True
    ):
        for arm in dict.fromkeys(r["arm"] for r in results):
            runs = [r for r in results if r["arm"] == arm]
            curves = np.array(
                [[base[r["seed"]][key]] + [x[key] for x in r["rounds"]] for r in runs]
            )
            x = np.arange(curves.shape[1])
            ax.errorbar(x, curves.mean(0), yerr=curves.std(0), label=arm, capsize=3, marker="o")
        ax.axhline(base_mean[key], color="grey", lw=0.8, ls="--")
        ax.set_xlabel("policy (0 = base, r = after round r-1)")
        ax.set_title(title)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)


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
    base = {s: score_model(base_path, base_spec, cache, args.n_eval, s) for s in args.seeds}
    print(f"base: {json.dumps(base)}", flush=True)
    results = []
    for seed in args.seeds:
        for arm in args.arms:
            results.append(run_arm(arm, seed, args.out, cache, args.n_eval, overrides))
    print(table(results, base))
    (args.out / "results.json").write_text(json.dumps({"base": base, "runs": results}, indent=1))
    plot(results, base, args.plot)
    print(f"total {time.perf_counter() - began:.0f} s; plot {args.plot}")


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
