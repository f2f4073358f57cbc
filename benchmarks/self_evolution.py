"""The CPU self-evolution experiment with its controls (docs/self-evolution.md).

    HF_HUB_OFFLINE=1 EVOQUALITY_CACHE=/tmp/evo-cache python benchmarks/self_evolution.py \\
        --seeds 0 1 2 --arms evo oracle k1 shuffled bt --out /tmp/evo-bench

Arms (same budget: same spec, pairs, GRPO steps; only the labels differ):

* ``evo``: examples/self-evolution-cpu.yaml as is (hard majority of K votes);
* ``oracle``: p* from the true MOS of the round's planned pairs (the upper bound; MOS is read HERE,
  in the benchmark, never by a library stage);
* ``k1``: one vote per pair;
* ``shuffled``: the hard-majority labels with p* permuted across pairs (must not improve);
* ``bt``: global Bradley-Terry labels (``ranking.labels: bradley-terry``).

Vote and train run through the stage entry point (`evoquality.stages.run_stage`); for ``oracle`` and
``shuffled`` this script commits the round's rank attempt itself (labels.parquet + scores.parquet,
the rank stage's schema) before training. Every round's checkpoint is scored on the held-out
references with n sampled scores per image: single-sample SRCC (averaged over the n samples) and
mean-of-n SRCC/PLCC. Prints a table and writes plots into docs/img/.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "examples" / "self-evolution-cpu.yaml"
ARMS = ("evo", "oracle", "k1", "shuffled", "bt")


def arm_spec(arm: str, seed: int, overrides: dict | None = None) -> dict:
    doc = yaml.safe_load(SPEC.read_text())
    spec = doc["spec"]
    spec["seed"] = seed
    if arm == "k1":
        spec["voting"]["votesPerPair"] = 1
    if arm == "bt":
        spec["ranking"]["labels"] = "bradley-terry"
    for dotted, value in (overrides or {}).items():
        node = spec
        *path, last = dotted.split(".")
        for part in path:
            node = node[part]
        node[last] = value
    return spec


def _stage(stage: str, run_uri: str, spec_file: Path, round_index: int | None) -> dict:
    from evoquality.stages import StageArgs, run_stage

    shard = (0, 1) if stage == "vote" else (None, None)
    with contextlib.redirect_stdout(io.StringIO()):
        return run_stage(
            StageArgs(stage, run_uri, round_index, shard[0], shard[1], spec_file=spec_file)
        )


def commit_labels(run_uri: str, round_index: int, labels: pa.Table, note: str) -> None:
    """A rank attempt written by the benchmark (oracle / shuffled labels)."""
    from evoquality import artifacts
    from evoquality.stages.rank import LABELS_SCHEMA
    from evoquality.storage import open_store

    store = open_store(run_uri)
    keys = sorted(set(labels["image_a"].to_pylist()) | set(labels["image_b"].to_pylist()))
    attempt = artifacts.StageAttempt(store, "rank", round_index, attempt_id=f"benchmark-{note}")
    attempt.put_table("labels.parquet", labels.cast(LABELS_SCHEMA))
    attempt.put_table(
        "scores.parquet", pa.table({"image": keys, "score": np.zeros(len(keys), dtype=np.float64)})
    )
    attempt.commit({"metrics": {"labels": labels.num_rows, "label_mode": note}})


def oracle_labels(spec_obj, round_index: int, cache: Path) -> pa.Table:
    """p* from the pool's true MOS for the round's planned pairs (benchmark only)."""
    from evoquality.pool import plan_round_pairs, round_pool

    pool = round_pool(spec_obj, round_index, cache, with_truth=True)
    pairs = plan_round_pairs(spec_obj, round_index, pool)
    truth = np.array([img.truth for img in pool.images])
    a, b = truth[pairs[:, 0]], truth[pairs[:, 1]]
    p_star = np.where(a > b, 1.0, np.where(a < b, 0.0, 0.5))
    ones = np.ones(len(pairs))
    return pa.table(
        {
            "image_a": [pool.images[i].key for i in pairs[:, 0]],
            "image_b": [pool.images[i].key for i in pairs[:, 1]],
            "p_star": p_star,
            "confidence": ones,
            "weight": ones,
        }
    )


def shuffled_labels(run_uri: str, round_index: int, seed: int) -> tuple[pa.Table, dict]:
    """The hard-majority labels of the round's votes with p* permuted across pairs."""
    from evoquality import artifacts
    from evoquality.ranking import pseudo_labels
    from evoquality.storage import open_store
    from evoquality.voting import agreement

    store = open_store(run_uri)
    summary = artifacts.read_summary(store, "vote", round_index, 0, 1)
    votes = artifacts.read_table(store, artifacts.resolve(store, summary, "votes.parquet"))
    va, vb = votes["votes_a"].to_numpy().astype(np.int64), votes["votes_b"].to_numpy()
    vb = vb.astype(np.int64)
    labels = pseudo_labels(va, vb, mode="hard")
    keep = labels.keep
    p_star = np.random.default_rng(seed).permutation(labels.p_star[keep])
    table = pa.table(
        {
            "image_a": votes["image_a"].to_numpy(zero_copy_only=False)[keep],
            "image_b": votes["image_b"].to_numpy(zero_copy_only=False)[keep],
            "p_star": p_star,
            "confidence": labels.confidence[keep],
            "weight": labels.weight[keep],
        }
    )
    agree = agreement(va, vb)
    return table, {"agreement": float(np.nanmean(agree))}


def score_model(model_path: str, spec_obj, cache: Path, n: int, seed: int) -> dict:
    """Held-out SRCC/PLCC: single-sample (mean over the n samples) and mean-of-n."""
    from evoquality.data.images import load_images, prepare_image
    from evoquality.engines.base import EngineImage, Sampling, make_engine
    from evoquality.metrics import evaluate
    from evoquality.pool import load_manifest
    from evoquality.prompts import parse_score

    bench = spec_obj.evaluation.benchmarks[0]
    manifest = load_manifest(bench.manifest, cache, bench.max_images)
    raw, _ = load_images(manifest.images)
    m = spec_obj.model
    items = [
        EngineImage(k, prepare_image(img, m.min_pixels, m.max_pixels))
        for k, img in zip(manifest.ids, raw, strict=True)
    ]
    engine = make_engine(m, model_path, seed=seed)
    sampling = Sampling(1.0, 1.0, spec_obj.evaluation.max_new_tokens, seed)
    texts: list[list[str]] = []
    for lo in range(0, len(items), 16):
        texts += engine.score(items[lo : lo + 16], n, sampling)
    engine.close()
    scores = np.array(
        [[np.nan if (v := parse_score(t)) is None else v for t in row] for row in texts]
    )
    mos = np.asarray(manifest.mos, dtype=np.float64)
    singles = [evaluate(scores[:, k], mos) for k in range(n)]
    with np.errstate(all="ignore"):
        mean = evaluate(np.nanmean(scores, axis=1), mos)
    return {
        "srcc1": float(np.nanmean([s["srcc"] for s in singles])),
        "plcc1": float(np.nanmean([s["plcc"] for s in singles])),
        "srcc": float(mean["srcc"]),
        "plcc": float(mean["plcc"]),
        "parse_rate": float(np.isfinite(scores).mean()),
    }


def run_arm(arm: str, seed: int, out: Path, cache: Path, n_eval: int, overrides=None) -> dict:
    from evoquality import artifacts
    from evoquality.models import resolve_model
    from evoquality.spec import parse_spec
    from evoquality.storage import open_store

    run_dir = out / f"{arm}-seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    spec = arm_spec(arm, seed, overrides)
    spec["storage"]["uri"] = str(run_dir)
    spec_file = run_dir / "spec.yaml"
    spec_file.write_text(yaml.safe_dump(spec))
    spec_obj = parse_spec(spec)
    run_uri = str(run_dir / "run")
    rounds = []
    for r in range(spec_obj.rounds):
        began = time.perf_counter()
        info: dict = {"round": r}
        if arm == "oracle":
            if r == 0:  # pin the spec (the first stage normally does it)
                from evoquality.stages.context import pin_spec

                pin_spec(open_store(run_uri), spec_obj)
            commit_labels(run_uri, r, oracle_labels(spec_obj, r, cache), "oracle")
        else:
            vote = _stage("vote", run_uri, spec_file, r)
            info["agreement"] = vote["metrics"].get("agreement")
            info["abstention"] = vote["metrics"].get("abstention_rate")
            if arm == "shuffled":
                table, _ = shuffled_labels(run_uri, r, seed * 1000 + r)
                commit_labels(run_uri, r, table, "shuffled")
            else:
                _stage("rank", run_uri, spec_file, r)
        train = _stage("train", run_uri, spec_file, r)
        info["reward"] = train["metrics"].get("reward_mean")
        store = open_store(run_uri)
        ckpt = artifacts.resolve(store, artifacts.read_summary(store, "train", r), "checkpoint")
        model_path = resolve_model(store.uri_for(ckpt), cache)
        info.update(score_model(model_path, spec_obj, cache, n_eval, seed))
        info["seconds"] = round(time.perf_counter() - began, 1)
        print(f"  {arm} seed {seed} round {r}: {json.dumps(info)}", flush=True)
        rounds.append(info)
    return {"arm": arm, "seed": seed, "rounds": rounds}


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
