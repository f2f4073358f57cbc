"""Choosing the pairwise base's recipe by cross-validation over the TRAINING photos only
(docs/self-evolution.md, "The pairwise base").

    HF_HUB_OFFLINE=1 EVOQUALITY_CACHE=/tmp/evo-cache python benchmarks/base_search.py --workers 2
    python benchmarks/base_search.py --table-only          # the table and the choice, from the log
    python benchmarks/base_search.py --candidate NAME --fold 1   # one candidate's fold (repeatable)
    python benchmarks/base_search.py --candidate NAME --fold 0 --seed 1 --seed 2  # seed spread
    python benchmarks/base_search.py --final --out /tmp/base  # the chosen recipe, held-out once

The 7 training photos of `syniqa:train` are split into 3 folds (sorted names, every third). For
each candidate recipe (`CANDIDATES`, fixed before the search ran) and fold, the base is
pre-trained on the other photos and probed on the fold's photos (`probe.Probe.asymmetry`: a
comparison vote's accuracy and the K = 8 majority's over both orders, against the pair accuracy of
single and mean-of-16 sampled scores). While the search runs, `syniqa:test` and `syniqa:all` are
sealed (`pool.sealed_splits`): any read of the held-out photos raises. Every build is appended as
one JSON line to ``docs/base-search/search.jsonl`` (a rerun skips the builds already there).

The rule, stated before the search: the paper's premise is that the K-vote majority of comparisons
is more reliable than the model's scores, so the chosen recipe maximises the mean of
``majority_acc - mean_score_pair_acc`` (the asymmetry) among the candidates whose mean
``majority_acc`` is at least `MIN_MAJORITY_ACC` (labels that carry a signal); ties by the higher
majority accuracy. From the seventh search on (the sixth found that one fold's numbers move more
with the build's seed than between candidates), the means are over 9 builds, every fold with each
of `SEEDS`, and only a candidate with all 9 is eligible; searches one to six ruled on seed 0 alone
(their table rows still show those means, with the number of builds they rest on).
The chosen recipe is then built on all 7 training photos
(`pretrain.pretrain_weak_base`) and only then measured on the held-out photos, once (``--final``:
it takes no candidate, only the rule's choice, refuses a second measurement, and appends its row
to ``docs/base-search/final.jsonl``). (First search,
docs/self-evolution.md: no candidate's comparisons beat chance on the validation photos, so none
was chosen and nothing was built. Second to eighth searches: the two-stage candidates, see the
docs; the eighth search's 9,000-step candidate is the first the rule chose, and its ``--final``
row is in the log. That build, seed 0 on all 7 training photos, is the committed `tiny-weak` v4,
and the candidate's settings are `pretrain.WEAK_RECIPE`: the printed choice says whether the two
still agree.)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import multiprocessing
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

FOLDS = 3
SEEDS = (0, 1, 2)  # builds per fold the rule rests on (seventh search on)
MIN_MAJORITY_ACC = 0.60
# What every candidate of the second and third searches shares: the vision stage on the photos
# and the extra pictures, comparisons in both orders.
TWO_STAGES = {"extra_pictures": True, "vision_steps": 1500, "compare_both_orders": True}
# What every candidate of the fourth and fifth searches shares: the third search's best
# (comparisons 80 %, scores noise 2, 6,000 steps) with `syniqa:more`'s pictures.
MORE_PICTURES_80 = {
    **TWO_STAGES,
    "more_pictures": True,
    "compare_share": 0.8,
    "score_noise": 2.0,
    "steps": 6000,
}
# What the seventh search's last candidate and the eighth search's share: comparisons in 90 % of
# the draws, a format warm-up that leaves the vision tower as initialised, a third text layer.
TOWER_FREE_3_LAYERS = {
    **MORE_PICTURES_80,
    "compare_share": 0.9,
    "tiny_warmup_tower": False,
    "layers": 3,
}
# Every candidate is `PretrainSettings()` (the dataclass defaults: the tiny-weak v3 recipe) with
# these changes.
CANDIDATES: dict[str, dict] = {
    "v3 recipe": {},
    "comparisons 50 %, both orders": {"compare_share": 0.5, "compare_both_orders": True},
    "comparisons 50 %, both orders, noisy scores": {
        "compare_share": 0.5,
        "compare_both_orders": True,
        "score_noise": 1.0,
    },
    "comparisons 50 %, both orders, noisy scores, wider LM": {
        "compare_share": 0.5,
        "compare_both_orders": True,
        "score_noise": 1.0,
        "hidden_size": 128,
    },
    # Second search, added after the diagnosis (docs/self-evolution.md, "Second search") and before
    # any of its folds ran: the vision tower first learns alone, on the photos and
    # `syniqa:extra`'s pictures, then the answers are taught.
    **{
        f"two stages, extra pictures, comparisons 50 %, both orders, noisy scores, {label} steps": {
            **TWO_STAGES,
            "compare_share": 0.5,
            "score_noise": 1.0,
            "steps": steps,
        }
        for label, steps in (("6,000", 6000), ("12,000", 12000))
    },
    # Third search, added after the second and before any of its folds ran: the two-stage
    # 6,000-step recipe with noisier scoring targets (the mean of 16 scores is what the majority
    # has to beat), alone and with a larger comparison share.
    **{
        f"two stages, extra pictures, comparisons {share * 100:.0f} %, both orders, "
        "scores noise 2, 6,000 steps": {
            **TWO_STAGES,
            "compare_share": share,
            "score_noise": 2.0,
            "steps": 6000,
        }
        for share in (0.5, 0.8)
    },
    # Added after those two and before any of its folds ran: their majorities sit at the expected
    # digit's pair accuracy, and in fold 2 the full build lost most of what the tower alone had
    # learned to transfer (expected-digit SRCC 0.10), so the tower's later steps are 5x smaller.
    "two stages, extra pictures, comparisons 80 %, both orders, scores noise 2, 6,000 steps, "
    "tower lr x0.2 after its stage": {
        **TWO_STAGES,
        "compare_share": 0.8,
        "score_noise": 2.0,
        "steps": 6000,
        "visual_lr_scale": 0.2,
    },
    # Fourth search, added after the third and before any of its folds ran: the third search's
    # best (comparisons 80 %, scores noise 2) with 5 more pictures for perception that transfers
    # (`syniqa:more`), alone and with a brightness bias in the scoring targets only (half the
    # pseudo-MOS's standard deviation of 1.0 per standard deviation of brightness): a bias that
    # the mean of 16 scores keeps and the comparisons never learn.
    **{
        "two stages, extra and more pictures, comparisons 80 %, both orders, "
        f"scores noise 2{label}, 6,000 steps": {**MORE_PICTURES_80, "score_brightness_bias": bias}
        for label, bias in (("", 0.0), (" and brightness bias 0.5", 0.5))
    },
    # Fifth search, added after the fourth and before any of its folds ran: more pictures raised
    # the majority (0.572 to 0.584) and the expected digit's SRCC (0.235 to 0.373), the brightness
    # bias did not widen the asymmetry; so two more levers on perception, on the fourth search's
    # recipe without the bias: twice the scenes per picture, and a vision tower twice as wide.
    **{
        "two stages, extra and more pictures, comparisons 80 %, both orders, scores noise 2, "
        f"6,000 steps, {label}": {**MORE_PICTURES_80, **change}
        for label, change in (
            ("64 scenes per picture", {"crops": 64}),
            ("vision tower width 64", {"vision_hidden_size": 64}),
        )
    },
    # Sixth search, added after the fifth and before any of its folds ran: perception transfers
    # (the expected digit orders unseen pairs at 0.58-0.66) but the majority trails it, so three
    # levers on the language model's side, the part that has to contrast two images: a third
    # text layer, a text model twice as wide (4 heads, 2 KV heads), and comparisons in 90 % of
    # the draws.
    **{
        "two stages, extra and more pictures, comparisons 80 %, both orders, scores noise 2, "
        f"6,000 steps, {label}": {**MORE_PICTURES_80, **change}
        for label, change in (
            ("3 text layers", {"layers": 3}),
            ("text width 128", {"hidden_size": 128}),
        )
    },
    "two stages, extra and more pictures, comparisons 90 %, both orders, scores noise 2, "
    "6,000 steps": {**MORE_PICTURES_80, "compare_share": 0.9},
    # Added after the sixth search's seed diagnosis (seed 2 fails outright on two recipes) and
    # before any of its builds ran: the same without the tiny model's format warm-up (100 steps
    # at lr 6e-3 of answers that do not depend on the random images they come with).
    "two stages, extra and more pictures, comparisons 90 %, both orders, scores noise 2, "
    "6,000 steps, no format warm-up": {
        **MORE_PICTURES_80,
        "compare_share": 0.9,
        "tiny_warmup_steps": 0,
    },
    # Seventh search, added with its 9-build rule (`SEEDS`) before any of its builds ran: the
    # comparisons-90 % recipe with the answer stage's learning rate warmed up over 300 steps and
    # decayed to 0 (cosine) instead of constant, for a build that lands alike whatever its seed.
    "two stages, extra and more pictures, comparisons 90 %, both orders, scores noise 2, "
    "6,000 steps, cosine learning rate": {
        **MORE_PICTURES_80,
        "compare_share": 0.9,
        "answer_lr_schedule": "cosine",
    },
    # Added after the cosine candidate's folds 0-1 and the DIAGNOSTICS (the build follows the tiny
    # model's seed, not the examples'; the format warm-up blows the tower's output up and leaves
    # seed 2's answers blind to the image) and before any of its builds ran: the comparisons-90 %
    # recipe with a format warm-up that leaves the vision tower as initialised.
    "two stages, extra and more pictures, comparisons 90 %, both orders, scores noise 2, "
    "6,000 steps, format warm-up without the tower": {
        **MORE_PICTURES_80,
        "compare_share": 0.9,
        "tiny_warmup_tower": False,
    },
    # Added after that candidate's 9 builds (majority 0.593, no build blind to the images) and
    # before any of its own ran: the same with a third text layer, which failed in the sixth
    # search the way the warm-up's blind builds do.
    "two stages, extra and more pictures, comparisons 90 %, both orders, scores noise 2, "
    "6,000 steps, format warm-up without the tower, 3 text layers": TOWER_FREE_3_LAYERS,
    # Added after that candidate's 9 builds (majority 0.594; fold 2's photos the limit) and before
    # any of their builds ran: the two widths that failed in the fifth and sixth searches the way
    # the warm-up's blind builds do (majority 0.500), now with the tower-free warm-up and the third
    # text layer: a vision tower twice as wide (perception of the unseen photos), and a text model
    # twice as wide (the part that contrasts two images).
    **{
        "two stages, extra and more pictures, comparisons 90 %, both orders, scores noise 2, "
        f"6,000 steps, format warm-up without the tower, 3 text layers, {label}": {
            **TOWER_FREE_3_LAYERS,
            **change,
        }
        for label, change in (
            ("vision tower width 64", {"vision_hidden_size": 64}),
            ("text width 128", {"hidden_size": 128}),
        )
    },
    # Added after those two (the wider tower: majority 0.589 over 9 builds, scores improved more
    # than comparisons; the wider text model: fold 0's 3 builds at 0.457-0.525, stopped) and
    # before any of its builds ran: the tower-free 3-layer recipe with an answer stage half as
    # long again, so the comparisons (90 % of the draws) get 50 % more examples.
    "two stages, extra and more pictures, comparisons 90 %, both orders, scores noise 2, "
    "9,000 steps, format warm-up without the tower, 3 text layers": {
        **TOWER_FREE_3_LAYERS,
        "steps": 9000,
    },
}
# Builds that explain rather than compete: run like candidates (`--candidate`), logged to
# `SEED_LOG`, shown in the seed table, never ruled on. Added after the seventh search's first
# builds (seed 2 failed with the cosine schedule too) and before any of their builds ran: the
# comparisons-90 % recipe with the tiny model of one seed (tokenizer, initial weights, format
# warm-up) and the examples of another (`--seed`), to tell which of the two a build follows.
DIAGNOSTICS: dict[str, dict] = {
    f"comparisons 90 % recipe, tiny model of seed {tiny}": {
        **MORE_PICTURES_80,
        "compare_share": 0.9,
        "tiny_seed": tiny,
    }
    for tiny in (0, 2)
}
PROBE_PAIRS = 1000
LOG = Path("docs/base-search/search.jsonl")
# Builds with another seed than the search's 0 (`--seed`): how much a candidate's numbers move
# with the seed alone, logged apart so that the rule's table keeps one build per candidate and fold.
SEED_LOG = Path("docs/base-search/seeds.jsonl")
FINAL_LOG = Path("docs/base-search/final.jsonl")


def training_photos() -> list[str]:
    from evoquality.data.syniqa import split_references

    return sorted(split_references(0.75, seed=0)[0])


def folds() -> list[list[str]]:
    photos = training_photos()
    return [photos[f::FOLDS] for f in range(FOLDS)]


def settings_of(candidate: str, photos: list[str] | None, seed: int = 0):
    from evoquality.pretrain import PretrainSettings

    return dataclasses.replace(
        PretrainSettings(),
        **{**CANDIDATES, **DIAGNOSTICS}[candidate],
        seed=seed,
        photos=photos and tuple(photos),
    )


def probe_split(path: Path, cache: Path, split: str, size: int, photos=None) -> dict:
    """`Probe.asymmetry` on 4 scenes of each photo of the split (only ``photos`` when given),
    with its ``gap`` (majority minus mean-of-16 pair accuracy)."""
    from evoquality.experiments.probe import Probe, load_split

    images, mos, _ = load_split(f"syniqa:{split}?size={size}&crops=4", cache, size, None, photos)
    measured = Probe(path).asymmetry(images, mos, pairs=PROBE_PAIRS)
    return {**measured, "gap": measured["majority_acc"] - measured["mean_score_pair_acc"]}


def run_fold(candidate: str, fold: int, cache: Path, seed: int = 0) -> dict:
    """Build the candidate (with ``seed``) without the fold's photos and probe it on them (test
    split sealed)."""
    from evoquality.determinism import pinned_cpu
    from evoquality.pool import sealed_splits
    from evoquality.pretrain import pretrain_weak_base

    held = folds()[fold]
    fit = [p for p in training_photos() if p not in held]
    settings = settings_of(candidate, fit, seed)
    began = time.perf_counter()
    with sealed_splits("test", "all"), tempfile.TemporaryDirectory() as tmp, pinned_cpu(1):
        path = pretrain_weak_base(Path(tmp) / "base", cache, settings)
        built = time.perf_counter() - began
        measured = probe_split(path, cache, "train", settings.image_size, held)
    return {
        "candidate": candidate,
        "fold": fold,
        "seed": seed,
        "validation_photos": held,
        **measured,
        "build_seconds": round(built, 1),
    }


def rule_builds(rows: list[dict], candidate: str) -> tuple[list[dict], bool]:
    """The builds a candidate's means rest on, and whether the rule may choose it: every fold
    with each of `SEEDS` (all 9), else seed 0's folds alone (never eligible)."""
    group = [r for r in rows if r["candidate"] == candidate]
    full = [r for r in group if r.get("seed", 0) in SEEDS]
    wanted = {(f, s) for f in range(FOLDS) for s in SEEDS}
    if {(r["fold"], r.get("seed", 0)) for r in full} == wanted:
        return full, True
    return [r for r in group if r.get("seed", 0) == 0], False


def table(rows: list[dict]) -> tuple[str, str | None]:
    """The per-candidate means (over `rule_builds`), and the candidate the rule chooses."""
    cols = ("vote_acc", "majority_acc", "score_pair_acc", "mean_score_pair_acc", "expected_srcc")
    lines = [
        "| candidate | builds | comparison vote acc. | K=8 majority acc. | single-score pair acc. "
        "| mean-of-16 pair acc. | asymmetry (majority - mean-of-16) | expected-digit SRCC "
        "| position bias |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    eligible = []
    for name in CANDIDATES:
        group, complete = rule_builds(rows, name)
        if not group:
            continue
        mean = {c: float(np.mean([r[c] for r in group])) for c in (*cols, "gap", "position_bias")}
        sd = {c: float(np.std([r[c] for r in group])) for c in ("gap", "majority_acc")}
        builds = f"{len(group)}" + ("" if complete else " (seed 0)")
        lines.append(
            f"| {name} | {builds} | {mean['vote_acc']:.3f} | {mean['majority_acc']:.3f} "
            f"± {sd['majority_acc']:.3f} | {mean['score_pair_acc']:.3f} "
            f"| {mean['mean_score_pair_acc']:.3f} | {mean['gap']:+.3f} ± {sd['gap']:.3f} "
            f"| {mean['expected_srcc']:.3f} | {mean['position_bias']:+.3f} |"
        )
        if complete and mean["majority_acc"] >= MIN_MAJORITY_ACC:
            eligible.append((mean["gap"], mean["majority_acc"], name))
    chosen = max(eligible)[2] if eligible else None
    return "\n".join(lines), chosen


def read_log(path: Path = LOG) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def append_row(path: Path, row: dict) -> None:
    print(json.dumps(row), flush=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(row) + "\n")


def build_final(candidate: str, cache: Path, out: Path) -> None:
    """The chosen recipe built on all 7 training photos into ``out``, then measured once on
    the held-out photos (`syniqa:test`, 4 scenes per photo)."""
    from evoquality.determinism import pinned_cpu
    from evoquality.pretrain import pretrain_weak_base

    if any(r["candidate"] == candidate for r in read_log(FINAL_LOG)):
        raise SystemExit(f"{candidate!r} was already measured on the held-out photos")
    settings = settings_of(candidate, None)
    began = time.perf_counter()
    with pinned_cpu(1):
        path = pretrain_weak_base(out, cache, settings)
        built = time.perf_counter() - began
        measured = probe_split(path, cache, "test", settings.image_size)
    append_row(
        FINAL_LOG,
        {
            "candidate": candidate,
            "settings": dataclasses.asdict(settings),
            **measured,
            "build_seconds": round(built, 1),
        },
    )


def search(
    workers: int, cache: Path, candidates: list[str], folds_wanted: list[int], seeds: list[int]
) -> None:
    """Every missing (candidate, fold, seed) build, ``workers`` at once; a candidate's seed-0 rows
    go to the search's log, other seeds' and every diagnostic's to `SEED_LOG` (rows before the
    sixth search carry no seed: 0)."""
    done = {(r["candidate"], r["fold"], r.get("seed", 0)) for r in read_log() + read_log(SEED_LOG)}
    todo = [
        (c, f, s) for c in candidates for f in folds_wanted for s in seeds if (c, f, s) not in done
    ]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = [pool.submit(run_fold, c, f, cache, s) for c, f, s in todo]
        for (candidate, _, seed), future in zip(todo, futures, strict=True):
            ruled = seed == 0 and candidate in CANDIDATES
            append_row(LOG if ruled else SEED_LOG, future.result())


def seed_table(rows: list[dict]) -> str:
    """Per candidate (or diagnostic) and fold, the builds of every seed (`SEED_LOG` and the
    search's seed 0)."""
    lines = [
        "| candidate | fold | seed | comparison vote acc. | K=8 majority acc. "
        "| mean-of-16 pair acc. | asymmetry | expected-digit SRCC | position bias |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    shown = [r for r in rows if r.get("seed", 0) or r["candidate"] in DIAGNOSTICS]
    measured = {(r["candidate"], r["fold"]) for r in shown}
    for r in sorted(
        (r for r in rows if (r["candidate"], r["fold"]) in measured),
        key=lambda r: (r["candidate"], r["fold"], r.get("seed", 0)),
    ):
        lines.append(
            f"| {r['candidate']} | {r['fold']} | {r.get('seed', 0)} | {r['vote_acc']:.3f} "
            f"| {r['majority_acc']:.3f} | {r['mean_score_pair_acc']:.3f} | {r['gap']:+.3f} "
            f"| {r['expected_srcc']:.3f} | {r['position_bias']:+.3f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=2, help="builds at once (1 thread each)")
    parser.add_argument("--table-only", action="store_true")
    parser.add_argument(
        "--candidate",
        action="append",
        choices=[*CANDIDATES, *DIAGNOSTICS],
        help="run only this candidate's folds (repeatable; default: every candidate)",
    )
    parser.add_argument(
        "--fold",
        action="append",
        type=int,
        choices=range(FOLDS),
        help="run only this fold (repeatable; default: every fold)",
    )
    parser.add_argument(
        "--seed",
        action="append",
        type=int,
        help="build with this seed (repeatable; default: each of SEEDS, which the rule needs; "
        "seeds other than 0 are logged to docs/base-search/seeds.jsonl)",
    )
    parser.add_argument(
        "--final",
        action="store_true",
        help="build the rule's choice on all training photos and measure it on the held-out ones",
    )
    parser.add_argument("--out", type=Path, help="where --final saves the built base")
    args = parser.parse_args()
    from evoquality.stages.context import cache_dir

    if not (args.table_only or args.final):
        candidates = args.candidate or list(CANDIDATES)
        folds_wanted = args.fold or list(range(FOLDS))
        search(args.workers, cache_dir(), candidates, folds_wanted, args.seed or list(SEEDS))
    text, chosen = table(read_log() + read_log(SEED_LOG))
    print(text)
    if read_log(SEED_LOG):
        print(seed_table(read_log() + read_log(SEED_LOG)))
    print(
        f"chosen (rule: max asymmetry with majority acc. >= {MIN_MAJORITY_ACC}, "
        f"over {FOLDS} folds x seeds {SEEDS}): {chosen}"
    )
    if chosen is not None:
        from evoquality.pretrain import WEAK_RECIPE

        same = settings_of(chosen, None) == WEAK_RECIPE
        print(f"the committed base's recipe (pretrain.WEAK_RECIPE) is {'' if same else 'NOT '}it")
    if args.final:
        if chosen is None or args.out is None:
            parser.error("--final needs a chosen candidate and --out")
        build_final(chosen, cache_dir(), args.out)


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
