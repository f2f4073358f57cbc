"""The CPU self-evolution experiment's arms, shared by `benchmarks/self_evolution.py` and the
learning checks (`tests/e2e/test_self_evolution_short.py`, `benchmarks/learning_checks.py`).

Arms (same budget: same spec, pairs, GRPO steps; only the labels differ):

* ``evo``: examples/quickstart.yaml as is (hard majority of K votes);
* ``oracle``: p* from the true MOS of the round's planned pairs (the upper bound; MOS is read HERE,
  in experiment code, never by a library stage);
* ``k1``: one vote per pair;
* ``shuffled``: the hard-majority labels with p* permuted across pairs (must not improve);
* ``bt``: global Bradley-Terry labels (``ranking.labels: bradley-terry``);
* ``oracle-shuffled`` / ``oracle-inverted`` / ``oracle-zero``: the oracle labels with p* permuted
  across pairs / turned into 1 - p* / every pair's confidence weight set to 0, so the fidelity
  reward is 0 for every sample (the broken controls of the short oracle check; no voting).

Vote and train run through the stage entry point (`evoquality.stages.run_stage`); for ``oracle`` and
``shuffled`` the round's rank attempt is committed here (labels.parquet + scores.parquet, the rank
stage's schema) before training. Every round's checkpoint is scored on the held-out references
with n sampled scores per image: single-sample SRCC (averaged over the n samples) and mean-of-n
SRCC/PLCC, and probed without sampling (`probe.Probe`): the SRCC of the expected first score digit
and the comparison accuracy, which tell re-ranking from sharpening. The spec is the source
checkout's examples/quickstart.yaml.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import yaml

SPEC = Path(__file__).resolve().parents[2] / "examples" / "quickstart.yaml"
ARMS = ("evo", "oracle", "k1", "shuffled", "bt")
# Arms whose labels come from the MOS (no voting).
ORACLE_ARMS = ("oracle", "oracle-shuffled", "oracle-inverted", "oracle-zero")
# The short oracle check's label variants: the correct pipeline and its broken controls.
SHORT_VARIANTS = {
    "oracle": "oracle",
    "shuffled": "oracle-shuffled",
    "inverted": "oracle-inverted",
    "zero": "oracle-zero",
}
# The short oracle check (tests/e2e/test_self_evolution_short.py): one round with twice the pairs,
# four times the steps and three times the learning rate of one experiment round, scored with 16
# samples per held-out image (lr 1e-4 left seed 1 at +0.00: docs/self-evolution.md).
SHORT_ORACLE = {
    "rounds": 1,
    "training.maxSteps": 128,
    "training.learningRate": 3e-4,
    "voting.pairsPerRound": 256,
}
SHORT_N_EVAL = 16


def arm_spec(arm: str, seed: int, overrides: dict | None = None) -> dict:
    doc = yaml.safe_load(SPEC.read_text())
    spec = doc["spec"]
    spec["seed"] = seed
    if arm == "k1":
        spec["voting"]["votesPerPair"] = 1
    if arm == "bt":
        spec["ranking"]["labels"] = "bradley-terry"
    if arm == "oracle-zero":  # weights 0 zero the reward only where weights apply
        spec["ranking"]["confidenceWeighting"] = True
        spec["training"]["scaleRewards"] = "batch"
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


def heldout(spec_obj, cache: Path):
    """The spec's first benchmark as the model sees it: (manifest, prepared images)."""
    from evoquality.data.images import load_images, prepare_image
    from evoquality.pool import load_manifest

    bench = spec_obj.evaluation.benchmarks[0]
    manifest = load_manifest(bench.manifest, cache, bench.max_images)
    raw, _ = load_images(manifest.images)
    m = spec_obj.model
    return manifest, [prepare_image(img, m.min_pixels, m.max_pixels) for img in raw]


def probe_model(model_path: str, spec_obj, cache: Path) -> dict:
    """Held-out perception without sampling (`probe.Probe.measure`): expected-digit SRCC, its
    spread, the expected Kendall tau of one sampled digit, comparison accuracy over both orders
    and position bias; deterministic."""
    from evoquality.experiments.probe import Probe

    manifest, images = heldout(spec_obj, cache)
    families = [str(d) for d in manifest.columns["distortion"]]
    measured = Probe(Path(model_path)).measure(
        images, np.asarray(manifest.mos, dtype=np.float64), families
    )
    return {
        "expected_srcc": measured["srcc"],
        "sample_tau": measured["sample_tau"],
        "spread": measured["spread"],
        "compare_acc": measured["compare_acc"],
        "position_bias": measured["position_bias"],
    }


def score_model(model_path: str, spec_obj, cache: Path, n: int, seed: int) -> dict:
    """Held-out SRCC/PLCC: single-sample (mean over the n samples) and mean-of-n."""
    from evoquality.engines import EngineImage, Sampling, make_engine
    from evoquality.metrics import evaluate
    from evoquality.prompts import parse_score

    manifest, images = heldout(spec_obj, cache)
    items = [EngineImage(k, img) for k, img in zip(manifest.ids, images, strict=True)]
    engine = make_engine(spec_obj.model, model_path, seed=seed)
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
    done_file = run_dir / "result.json"  # a finished arm, reused while its spec and n_eval hold
    if done_file.exists():
        done = json.loads(done_file.read_text())
        if done["spec"] == spec and done["n_eval"] == n_eval:
            return done["result"]
    spec_obj = parse_spec(spec)
    run_uri = str(run_dir / "run")
    rounds = []
    for r in range(spec_obj.rounds):
        began = time.perf_counter()
        info: dict = {"round": r}
        if arm in ORACLE_ARMS:
            if r == 0:  # pin the spec (the first stage normally does it)
                from evoquality.stages.context import pin_spec

                pin_spec(open_store(run_uri), spec_obj)
            labels = oracle_labels(spec_obj, r, cache)
            p_star = labels["p_star"].to_numpy()
            if arm == "oracle-shuffled":
                p_star = np.random.default_rng(seed * 1000 + r).permutation(p_star)
            elif arm == "oracle-inverted":
                p_star = 1.0 - p_star
            labels = labels.set_column(
                labels.schema.get_field_index("p_star"), "p_star", pa.array(p_star)
            )
            if arm == "oracle-zero":
                zeros = pa.array(np.zeros(labels.num_rows))
                labels = labels.set_column(labels.schema.get_field_index("weight"), "weight", zeros)
            commit_labels(run_uri, r, labels, arm)
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
        if n_eval:
            info.update(score_model(model_path, spec_obj, cache, n_eval, seed))
        info.update(probe_model(model_path, spec_obj, cache))
        info["seconds"] = round(time.perf_counter() - began, 1)
        print(f"  {arm} seed {seed} round {r}: {json.dumps(info)}", flush=True)
        rounds.append(info)
    result = {"arm": arm, "seed": seed, "rounds": rounds}
    done_file.write_text(json.dumps({"spec": spec, "n_eval": n_eval, "result": result}))
    return result


def short_oracle_check(
    seed: int, out: Path, cache: Path, labels: str = "oracle", n_eval: int = SHORT_N_EVAL
) -> dict:
    """The short oracle check: the base's and the trained policy's held-out perception, probed
    (expected-digit SRCC, comparison accuracy) and, with ``n_eval`` > 0, sampled (n_eval scores
    per image; the CI test's statistic).

    ``labels``: a key of `SHORT_VARIANTS`: ``oracle`` (true-MOS p*), ``shuffled`` (the same p*
    permuted across pairs), ``inverted`` (1 - p*) or ``zero`` (a reward of 0 everywhere)."""
    from evoquality.models import resolve_model
    from evoquality.spec import parse_spec

    arm = SHORT_VARIANTS[labels]
    spec = parse_spec({**arm_spec(arm, seed, SHORT_ORACLE), "storage": {"uri": str(out)}})
    base_path = resolve_model(spec.model.base, cache)
    base = probe_model(base_path, spec, cache)
    if n_eval:
        base.update(score_model(base_path, spec, cache, n_eval, seed))
    run = run_arm(arm, seed, out, cache, n_eval, SHORT_ORACLE)
    return {"base": base, "after": run["rounds"][-1]}


def short_check_gains(result: dict) -> dict:
    """A `short_oracle_check` result's gains of the trained policy over the base: the probed ones
    (``gain_tau``: the expected Kendall tau of one sampled digit, the CI test's statistic;
    ``gain_expected``: expected-digit SRCC; ``gain_compare``: comparison accuracy) and, when the
    check sampled scores, ``gain1`` (single-sample SRCC) and ``gain`` (mean-of-n SRCC)."""
    base, after = result["base"], result["after"]
    gains = {
        "gain_tau": after["sample_tau"] - base["sample_tau"],
        "gain_expected": after["expected_srcc"] - base["expected_srcc"],
        "gain_compare": after["compare_acc"] - base["compare_acc"],
    }
    if "srcc1" in after:
        gains.update(gain1=after["srcc1"] - base["srcc1"], gain=after["srcc"] - base["srcc"])
    return gains


def _pinned_short_oracle_check(seed: int, out: Path, cache: Path, labels: str, n_eval: int) -> dict:
    from evoquality.determinism import pinned_cpu

    with pinned_cpu(threads=1):
        return short_oracle_check(seed, out, cache, labels, n_eval)


def short_oracle_checks(
    seeds: list[int],
    out: Path,
    cache: Path,
    labels: str = "oracle",
    workers: int = 2,
    n_eval: int = SHORT_N_EVAL,
) -> list[dict]:
    """`short_oracle_check` for each seed, each on one CPU thread, ``workers`` processes at once
    (spawned: a fresh interpreter per worker, so no thread pool or RNG state leaks between)."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    outs = [Path(out) / f"{labels}-seed-{seed}" for seed in seeds]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        runs = pool.map(
            _pinned_short_oracle_check,
            seeds,
            outs,
            [Path(cache)] * len(seeds),
            [labels] * len(seeds),
            [n_eval] * len(seeds),
        )
        return list(runs)
