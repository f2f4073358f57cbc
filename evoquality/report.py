"""`evoquality report RUN_URI`: an HTML page of a run's progress with PNG plots beside it.

Reads only committed summaries and the training step logs: eval SRCC/PLCC per benchmark vs round
(the self-evolution curve), vote agreement and tie rate vs round, reward and KL per GRPO step,
and the position bias of the votes.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evoquality import artifacts  # noqa: E402
from evoquality.spec import parse_spec  # noqa: E402
from evoquality.storage import NotFound, Store, open_store  # noqa: E402
from evoquality.summaries import eval_protocols, merge_vote_metrics  # noqa: E402


def collect(store: Store) -> dict:
    """Everything the report shows, as plain data (also handy for tests and notebooks)."""
    try:
        spec = parse_spec(json.loads(store.get_bytes(artifacts.SPEC_KEY))["spec"])
    except NotFound:
        raise NotFound(f"{store.uri_for(artifacts.SPEC_KEY)}: not an EvoQuality run") from None
    data: dict = {"rounds": [], "eval": {}, "steps": {}}
    base = artifacts.read_summary(store, "eval", None)
    if base is not None:
        data["eval"]["base"] = base["metrics"]
    for r in range(spec.rounds):
        shards = artifacts.read_shard_summaries(store, "vote", r, spec.voting.shards)
        entry: dict = {"round": r}
        if shards.complete:
            entry["vote"] = merge_vote_metrics([s["metrics"] for s in shards.summaries])
        for stage in ("rank", "train"):
            summary = artifacts.read_summary(store, stage, r)
            if summary is not None:
                entry[stage] = summary["metrics"]
                if stage == "train":
                    key = artifacts.resolve(store, summary, "steps.jsonl")
                    lines = store.get_bytes(key).decode().splitlines()
                    data["steps"][r] = [json.loads(line) for line in lines if line]
        evaluation = artifacts.read_summary(store, "eval", r)
        if evaluation is not None:
            data["eval"][r] = evaluation["metrics"]
        data["rounds"].append(entry)
    return data


def _benchmarks(evals: dict) -> list[str]:
    return sorted({k.rsplit(".", 1)[0] for m in evals.values() for k in m if k.endswith(".srcc")})


def _plot_eval(data: dict, path: Path) -> None:
    evals = data["eval"]
    order = [k for k in ["base", *range(len(data["rounds"]))] if k in evals]
    x = list(range(len(order)))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    for ax, metric in zip(axes, ("srcc", "plcc"), strict=True):
        for bench in _benchmarks(evals):
            ys = [evals[k].get(f"{bench}.{metric}") for k in order]
            ax.plot(x, [float("nan") if y is None else y for y in ys], marker="o", label=bench)
        ax.set_xticks(x, ["base" if k == "base" else f"r{k}" for k in order])
        ax.set_title(metric.upper())
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Evaluation per round (model after round r's training)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_votes(data: dict, path: Path) -> None:
    rounds = [e for e in data["rounds"] if "vote" in e]
    x = [e["round"] for e in rounds]
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for key, label in (
        ("agreement", "vote agreement"),
        ("tie_rate", "tie rate"),
        ("abstention_rate", "abstentions"),
        ("position_bias", "first image wins"),
    ):
        ys = [e["vote"].get(key) for e in rounds]
        ax.plot(x, [float("nan") if y is None else y for y in ys], marker="o", label=label)
    ax.set_xlabel("round")
    ax.set_xticks(x)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Votes per round (position bias: 0.5 = none)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _plot_steps(data: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    offset = 0
    for r, steps in sorted(data["steps"].items()):
        xs = [offset + i + 1 for i in range(len(steps))]
        for ax, key in zip(axes, ("reward_mean", "kl"), strict=True):
            ax.plot(xs, [s.get(key, float("nan")) for s in steps], marker=".", label=f"round {r}")
        offset += len(steps)
    for ax, title in zip(axes, ("fidelity reward", "KL to reference"), strict=True):
        ax.set_title(title)
        ax.set_xlabel("GRPO step (all rounds)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


PLOTS = (
    ("eval.png", "Self-evolution: SRCC / PLCC per benchmark", _plot_eval),
    ("votes.png", "Vote agreement, ties, abstentions and position bias", _plot_votes),
    ("training.png", "GRPO reward and KL per step", _plot_steps),
)


def write_report(run_uri: str, out_dir: Path, endpoint_url: str | None = None) -> Path:
    """Write `report.html` and its PNG plots into `out_dir`; returns the HTML path."""
    store = open_store(run_uri, endpoint_url)
    data = collect(store)
    out_dir.mkdir(parents=True, exist_ok=True)
    sections = []
    for filename, title, plot in PLOTS:
        plot(data, out_dir / filename)
        sections.append(f"<h2>{html.escape(title)}</h2><img src='{filename}' alt='{title}'>")
    rows = []
    for key, metrics in data["eval"].items():
        label = "base" if key == "base" else f"round {key}"
        cells = "".join(
            f"<td>{metrics.get(f'{b}.srcc', float('nan')):.3f} / "
            f"{metrics.get(f'{b}.plcc', float('nan')):.3f}</td>"
            for b in _benchmarks(data["eval"])
        )
        rows.append(f"<tr><td>{label}</td>{cells}</tr>")
    header = "".join(f"<th>{html.escape(b)}</th>" for b in _benchmarks(data["eval"]))
    page = (
        "<!doctype html><meta charset='utf-8'><title>EvoQuality report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd}</style>"
        f"<h1>EvoQuality run {html.escape(run_uri)}</h1>"
        f"<table><tr><th>model</th>{header}</tr>{''.join(rows)}</table>"
        f"<p>Evaluation protocol: {html.escape(eval_protocols(data['eval']))}</p>"
        + "".join(sections)
        + f"<h2>Raw data</h2><pre>{html.escape(json.dumps(data, indent=1, default=str))}</pre>"
    )
    path = out_dir / "report.html"
    path.write_text(page)
    return path
