"""The README's first command: `evoquality run examples/quickstart.yaml` end to end, then again.

Runs the real CLI in a subprocess, from a cold cache (SynIQA generated on first use; the committed
`tiny-weak` base), and checks the run's artifacts, its table, its report, and that a second run of
the finished manifest does no work. Whether the quickstart's SRCC rises is measured over seeds in
docs/self-evolution.md; the learning check that guards the loop in CI is
tests/e2e/test_self_evolution_short.py.
"""

import json
import os
import re
import subprocess
import sys
from html import unescape
from pathlib import Path

import pytest

from evoquality import artifacts
from evoquality.spec import load_run
from evoquality.storage import open_store

ROOT = Path(__file__).resolve().parents[2]
QUICKSTART = ROOT / "examples" / "quickstart.yaml"


def evoquality(*args, workdir: Path, cache: Path, timeout=900):
    env = {**os.environ, "EVOQUALITY_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    return subprocess.run(
        [sys.executable, "-m", "evoquality.cli", *args, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        cwd=ROOT,
    )


@pytest.mark.slow
def test_quickstart_runs_end_to_end_and_is_idempotent(tmp_path):
    workdir, cache = tmp_path / "work", tmp_path / "cache"
    first = evoquality("run", str(QUICKSTART), workdir=workdir, cache=cache)
    assert first.returncode == 0, first.stderr[-4000:]
    run = load_run(QUICKSTART)
    store = open_store(str(workdir / "runs" / "default" / "quickstart"))
    for r in range(run.spec.rounds):
        for stage in ("rank", "train", "eval"):
            assert artifacts.read_summary(store, stage, r) is not None, (stage, r)
        assert artifacts.read_shard_summaries(store, "vote", r, run.spec.voting.shards).complete
    base = artifacts.read_summary(store, "eval", None)
    assert base is not None and "syniqa-heldout.srcc" in base["metrics"]
    assert "SRCC / PLCC per benchmark" in first.stderr
    assert f"round {run.spec.rounds - 1}" in first.stderr

    logs = list((workdir / "logs").rglob("*.log"))
    per_round = run.spec.voting.shards + 3  # vote shards, rank, train, eval
    assert len(logs) == 1 + per_round * run.spec.rounds  # and the base's eval
    for log in logs:  # stage logs hold messages, not tqdm bars
        assert not re.search(r"\d+%\|", log.read_text(errors="replace")), log.name
    report = workdir / "report"
    html = (report / "report.html").read_text()
    for png in ("eval.png", "votes.png", "training.png"):
        assert (report / png).stat().st_size > 5000, f"{png} looks empty"
        assert png in html
    data = json.loads(unescape(html.split("<pre>", 1)[1].split("</pre>", 1)[0]))
    assert set(data["eval"]) == {"base", *(str(r) for r in range(run.spec.rounds))}

    second = evoquality("run", str(QUICKSTART), workdir=workdir, cache=cache)
    assert second.returncode == 0, second.stderr[-4000:]
    assert "already complete" in second.stderr
    assert "✓" not in second.stderr  # no stage ran
