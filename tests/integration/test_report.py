"""`evoquality report` on a run's committed artifacts: the gains table, the evaluation plot on a
fixed axis with bootstrap bands, the raw data folded away, and the page as a browser shows it
(Debian's headless Chromium takes a screenshot; the plots must have been loaded and drawn)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from html import unescape
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image

from evoquality import artifacts
from evoquality.metrics import evaluate
from evoquality.report import collect, write_report
from evoquality.spec import load_run, spec_to_dict
from evoquality.storage import open_store

ROOT = Path(__file__).resolve().parents[2]
ROUNDS = 2
NOISE = {"base": 1.6, 0: 1.0, 1: 0.6}  # the model gets better: less noise around the MOS


def fake_run(root: Path) -> str:
    """A finished 2-round run: spec, vote/rank/train summaries, eval tables and summaries."""
    run = load_run(ROOT / "examples" / "smoke.yaml")
    store = open_store(str(root))
    store.put_bytes(artifacts.SPEC_KEY, json.dumps({"spec": spec_to_dict(run.spec)}).encode())
    mos = np.random.default_rng(0).uniform(1, 5, 120)
    for key, noise in NOISE.items():
        round_index = None if key == "base" else key
        pred = mos + np.random.default_rng(7).normal(0, noise, mos.size)
        attempt = artifacts.StageAttempt(store, "eval", round_index, attempt_id="a")
        attempt.put_table("syniqa-heldout.parquet", pa.table({"mos": mos, "pred": pred}))
        metrics = {f"syniqa-heldout.{k}": v for k, v in evaluate(pred, mos).items()}
        wavg = {f"wavg.{m}": metrics[f"syniqa-heldout.{m}"] for m in ("srcc", "plcc")}
        metrics.update(wavg, protocol="greedy")
        attempt.commit({"metrics": metrics})
    shards = run.spec.voting.shards
    for r in range(ROUNDS):
        for shard in range(shards):
            vote = artifacts.StageAttempt(store, "vote", r, shard, shards, attempt_id="a")
            vote.commit({"metrics": {"pairs": 10, "votes": 40, "agreement": 0.7 + 0.1 * r}})
        artifacts.StageAttempt(store, "rank", r, attempt_id="a").commit({"metrics": {"labels": 9}})
        train = artifacts.StageAttempt(store, "train", r, attempt_id="a")
        steps = [{"step": i, "reward_mean": 0.5 + 0.01 * i, "kl": 0.001 * i} for i in range(5)]
        train.put_bytes("steps.jsonl", "\n".join(map(json.dumps, steps)).encode())
        train.commit({"metrics": {"reward_mean": 0.55}})
    return str(root)


def test_the_report_shows_gains_over_the_base_with_bands(tmp_path):
    uri = fake_run(tmp_path / "run")
    data = collect(open_store(uri))
    for key in ("base", 0, 1):
        low, high = data["intervals"][key]["syniqa-heldout"]["srcc"]
        assert low < data["eval"][key]["syniqa-heldout.srcc"] < high
    page = write_report(uri, tmp_path / "report").read_text()
    base = data["eval"]["base"]["syniqa-heldout.srcc"]
    gain = data["eval"][1]["syniqa-heldout.srcc"] - base
    assert gain > 0.1 and f"({gain:+.3f})" in page
    assert "wavg" not in page.split("<details>")[0]  # equal to the one benchmark: not drawn twice
    raw = page.split("<details><summary>Raw data (JSON)</summary><pre>", 1)[1]
    assert json.loads(unescape(raw.split("</pre>", 1)[0]))["eval"]["base"]


def test_the_report_as_a_browser_renders_it(tmp_path):
    if shutil.which("chromium") is None:  # .ci/run installs it: CI must not skip
        (pytest.fail if os.environ.get("CI") else pytest.skip)("Debian's chromium is not installed")
    report = write_report(fake_run(tmp_path / "run"), tmp_path / "report")
    shot = tmp_path / "shot.png"
    subprocess.run(
        ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={tmp_path / 'profile'}", "--hide-scrollbars",
         f"--screenshot={shot}", "--window-size=1100,1400", report.as_uri()],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    pixels = np.asarray(Image.open(shot).convert("RGB")).reshape(-1, 3).astype(int)
    # the SRCC curve's colour (matplotlib's C0, #1f77b4) is on screen: the plot image loaded
    c0 = np.abs(pixels - np.array([0x1F, 0x77, 0xB4])).sum(axis=1) < 40
    assert c0.sum() > 200, "the evaluation plot is not drawn"
    # and the page is not mostly raw JSON: most of the screen is white page or plots
    assert (pixels.sum(axis=1) > 700).mean() > 0.5
