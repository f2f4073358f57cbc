"""The eval stage: score every benchmark image with a checkpoint and correlate with MOS.

`--round r` evaluates P_{r+1} (round r's trained checkpoint); `--round base` evaluates the base
model once per run, under `base/eval/`. The protocol is the spec's (`evaluation_protocol` names it
in every summary): the prediction is the mean of `samplesPerImage` scores sampled at
`temperature` (0 = greedy) from images capped at `maxPixels`; unparseable samples are left out,
and an image with none is scored uniformly in [1, 5] (`parseFailure: random`, VisualQuality-R1's
protocol, seeded per image) or left out of the correlations (`exclude`). `<name>.parse_rate` is
the share of samples that parsed.
Metrics per benchmark (`<name>.srcc`, ...), their size-weighted average (`wavg.*`), and
`validation.*` for the held-out validation manifest. A benchmark's images go to the engine in
calls sized by `evoquality.stages.batching`; each image's samples are seeded by
``derive_seed(run seed, "eval", benchmark, image id)``: the same draws for the base and every
round's checkpoint (common random numbers), so a round's change over the base is the model's, not
a fresh draw of the sampling noise (docs/self-evolution.md, "The quickstart, 5 seeds").
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from evoquality import artifacts
from evoquality.data.images import load_images, prepare_image
from evoquality.engines import EngineImage, Sampling, derive_seed, make_engine
from evoquality.metrics import evaluate, wavg
from evoquality.pool import load_manifest
from evoquality.prompts import parse_score
from evoquality.spec import BenchmarkSpec, EvoQualityRunSpec
from evoquality.stages.batching import batches, call_memory_bytes, units_per_call
from evoquality.stages.context import StageContext, StageError, check_unreadable
from evoquality.stages.progress import progress

VALIDATION = "validation"


def eval_max_pixels(spec: EvoQualityRunSpec) -> int:
    """The pixel cap of evaluation images: ``evaluation.maxPixels``, else the model's."""
    return spec.evaluation.max_pixels or spec.model.max_pixels


def evaluation_protocol(spec: EvoQualityRunSpec) -> str:
    """How the numbers were produced, in words (summaries, the final table, the report)."""
    e = spec.evaluation
    sampling = "greedy" if e.temperature == 0 else f"T={e.temperature:g}"
    samples = f"{e.samples_per_image} sample{'s' if e.samples_per_image > 1 else ''}"
    failure = "random score" if e.parse_failure == "random" else "excluded"
    return f"{samples} ({sampling}), <= {eval_max_pixels(spec):,} px, unparseable: {failure}"


def score_benchmark(
    ctx: StageContext, engine, bench: BenchmarkSpec, label: str
) -> tuple[pa.Table, dict]:
    evaluation = ctx.spec.evaluation
    max_pixels = eval_max_pixels(ctx.spec)
    manifest = load_manifest(bench.manifest, ctx.cache, bench.max_images)
    if manifest.mos is None:
        raise StageError(f"benchmark {bench.name}: {manifest.uri} has no `mos` column")
    if engine.needs_pixels:
        raw, failures = load_images(manifest.images)
        pictures = [
            None if img is None else prepare_image(img, ctx.spec.model.min_pixels, max_pixels)
            for img in raw
        ]
    else:
        pictures, failures = [None] * len(manifest), []
    check_unreadable(failures, len(manifest))
    n = evaluation.samples_per_image
    sampling = Sampling(
        temperature=evaluation.temperature,
        top_p=1.0,
        max_new_tokens=evaluation.max_new_tokens,
        seed=ctx.spec.seed,
    )
    usable = [i for i, pic in enumerate(pictures) if pic is not None or not engine.needs_pixels]
    preds = np.full(len(manifest), np.nan)
    valid = np.zeros(len(manifest), dtype=np.int32)
    fallback = np.zeros(len(manifest), dtype=bool)
    pixels = max_pixels if engine.needs_pixels else 0
    size = units_per_call(len(usable), pixels, evaluation.batch_size, call_memory_bytes())
    with progress(f"eval {label} {bench.name}", len(usable)) as bar:
        for part in batches(len(usable), size):
            idx = usable[part]
            items = [EngineImage(manifest.ids[i], pictures[i], float(manifest.mos[i])) for i in idx]
            seeds = [derive_seed(ctx.spec.seed, "eval", bench.name, it.key) for it in items]
            for i, texts in zip(idx, engine.score(items, n, sampling, seeds), strict=True):
                scores = [s for s in (parse_score(t) for t in texts) if s is not None]
                valid[i] = len(scores)
                if scores:
                    preds[i] = float(np.mean(scores))
                elif evaluation.parse_failure == "random":
                    rng = np.random.default_rng(
                        derive_seed(ctx.spec.seed, "eval-fallback", bench.name, manifest.ids[i])
                    )
                    preds[i], fallback[i] = rng.uniform(1.0, 5.0), True
            bar.advance(len(idx))
    table = pa.table(
        {
            "image": manifest.ids,
            "mos": manifest.mos,
            "pred": preds,
            "valid_samples": valid,
            "random_fallback": fallback,
        }
    )
    result = evaluate(preds, manifest.mos)
    result["unreadable"] = len(failures)
    result["parse_rate"] = float(valid[usable].sum() / max(1, len(usable) * n))
    result["random_fallback"] = int(fallback.sum())
    return table, result


def run(ctx: StageContext) -> dict:
    round_index = ctx.args.round
    evaluation = ctx.spec.evaluation
    benches = [(b, b.name) for b in evaluation.benchmarks]
    if evaluation.validation is not None:
        benches.append((evaluation.validation, VALIDATION))
    if not benches:
        raise StageError("evaluation has no benchmarks and no validation manifest")
    model_round = None if round_index is None else round_index + 1
    simulated = ctx.spec.model.engine == "simulated"
    model_path = "" if simulated else ctx.policy_model(model_round)
    model_spec = ctx.spec.model.model_copy(update={"max_pixels": eval_max_pixels(ctx.spec)})
    engine = make_engine(model_spec, model_path, seed=ctx.spec.seed)
    label = "base" if round_index is None else f"r{round_index}"
    attempt = artifacts.StageAttempt(ctx.store, "eval", round_index)
    results: dict[str, dict[str, float]] = {}
    for bench, name in benches:
        table, result = score_benchmark(ctx, engine, bench, label)
        attempt.put_table(f"{name}.parquet", table)
        results[name] = result
    engine.close()
    metrics: dict[str, float | int | str | None] = dict(engine.summary_metrics())
    metrics["protocol"] = evaluation_protocol(ctx.spec)
    for name, result in results.items():
        keys = ("srcc", "plcc", "krcc", "plcc_logistic", "n", "n_missing", "unreadable")
        for key in (*keys, "parse_rate", "random_fallback"):
            if key in result:
                metrics[f"{name}.{key}"] = _clean(result[key])
    tests = {k: v for k, v in results.items() if k != VALIDATION}
    if tests:
        for key, value in wavg(tests).items():
            metrics[f"wavg.{key}"] = _clean(value)
    return attempt.commit({"metrics": metrics})


def _clean(value: float) -> float | int | None:
    if isinstance(value, int | np.integer):
        return int(value)
    value = float(value)
    return value if np.isfinite(value) else None
