"""`evoquality report RUN_URI`: an HTML page of a run's progress with PNG plots beside it.

Reads only committed summaries, the eval tables and the training step logs: held-out SRCC/PLCC
per benchmark vs round (the self-evolution curve) on a fixed axis that includes 0, with the base
model as a reference line and a bootstrap 95% band over the benchmark's images (how much the
number moves on another draw of the same images: sampling noise is not mistaken for a trend), a
table of each round's gain over the base, vote agreement and tie rate vs round, reward and KL per
GRPO step, the position bias of the votes, and the raw data folded away.
"""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from evoquality import artifacts  # noqa: E402
from evoquality.metrics import correlation_interval  # noqa: E402
from evoquality.spec import parse_spec  # noqa: E402
from evoquality.storage import NotFound, Store, open_store  # noqa: E402
from evoquality.summaries import eval_protocols, merge_vote_metrics  # noqa: E402


def collect(store: Store) -> dict:
    """Everything the report shows, as plain data (also handy for tests and notebooks)."""
    try:
        spec = parse_spec(json.loads(store.get_bytes(artifacts.SPEC_KEY))["spec"])
    except NotFound:
        raise NotFound(f"{store.uri_for(artifacts.SPEC_KEY)}: not an EvoQuality run") from None
    data: dict = {"rounds": [], "eval": {}, "steps": {}, "intervals": {}}
    base = artifacts.read_summary(store, "eval", None)
    if base is not None:
        data["eval"]["base"] = base["metrics"]
        data["intervals"]["base"] = _intervals(store, base)
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
            data["intervals"][r] = _intervals(store, evaluation)
        data["rounds"].append(entry)
    return data


def _intervals(store: Store, summary: dict) -> dict[str, dict[str, list[float]]]:
    """Bootstrap 95% intervals of SRCC and PLCC per evaluated manifest (from its table)."""
    out: dict[str, dict[str, list[float]]] = {}
    for name in summary.get("objects", {}):
        if not name.endswith(".parquet"):
            continue
        table = artifacts.read_table(store, artifacts.resolve(store, summary, name)).to_pydict()
        pred = np.asarray(table["pred"], dtype=np.float64)
        mos = np.asarray(table["mos"], dtype=np.float64)
        out[name.removesuffix(".parquet")] = {
            metric: list(correlation_interval(pred, mos, metric)) for metric in ("srcc", "plcc")
        }
    return out


def _benchmarks(evals: dict) -> list[str]:
    """Benchmarks with an SRCC; `wavg` only when it averages more than one test benchmark."""
    names = {k.rsplit(".", 1)[0] for m in evals.values() for k in m if k.endswith(".srcc")}
    tests = names - {"wavg", "validation"}
    return sorted(names - ({"wavg"} if len(tests) <= 1 else set()))


def _order(data: dict) -> list:
    return [k for k in ["base", *range(len(data["rounds"]))] if k in data["eval"]]


def _value(metrics: dict, key: str) -> float:
    value = metrics.get(key)
    return float("nan") if value is None else float(value)


def _plot_eval(data: dict, path: Path) -> None:
    evals, intervals = data["eval"], data.get("intervals", {})
    order = _order(data)
    x = np.arange(len(order))
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
    for ax, metric in zip(axes, ("srcc", "plcc"), strict=True):
        lows = [0.0]
        for index, bench in enumerate(_benchmarks(evals)):
            color = f"C{index}"
            ys = np.array([_value(evals[k], f"{bench}.{metric}") for k in order])
            band = np.array(
                [intervals.get(k, {}).get(bench, {}).get(metric, [np.nan, np.nan]) for k in order],
                dtype=np.float64,
            )
            ax.fill_between(x, band[:, 0], band[:, 1], color=color, alpha=0.15, linewidth=0)
            ax.plot(x, ys, marker="o", color=color, label=bench)
            if "base" in evals:
                base = _value(evals["base"], f"{bench}.{metric}")
                ax.axhline(base, color=color, linestyle="--", linewidth=1, alpha=0.7)
            lows += [v for v in (*ys, *band[:, 0]) if np.isfinite(v)]
        ax.set_ylim(min(lows) - 0.05, 1.0)  # fixed top, bottom at or below 0: no zoomed noise
        ax.set_xticks(x, ["base" if k == "base" else f"r{k}" for k in order])
        ax.set_title(f"held-out {metric.upper()} (dashed: base; band: 95% bootstrap)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle("Evaluation per round (model after round r's training)")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def gains_table(data: dict) -> str:
    """HTML table: the base's SRCC / PLCC, then each round's value and gain over the base."""
    evals, intervals = data["eval"], data.get("intervals", {})
    benches = _benchmarks(evals)
    header = "".join(f"<th>{html.escape(b)} SRCC</th><th>PLCC</th>" for b in benches)
    rows = []
    for key in _order(data):
        cells = []
        for bench in benches:
            for metric in ("srcc", "plcc"):
                value = _value(evals[key], f"{bench}.{metric}")
                text = f"{value:.3f}"
                if key != "base" and "base" in evals:
                    gain = value - _value(evals["base"], f"{bench}.{metric}")
                    text += f" ({gain:+.3f})"
                low, high = intervals.get(key, {}).get(bench, {}).get(metric, [None, None])
                band = f"95% bootstrap: {low:.3f} to {high:.3f}" if low is not None else ""
                cells.append(f"<td title='{band}'>{text}</td>")
        label = "base" if key == "base" else f"round {key}"
        rows.append(f"<tr><td>{label}</td>{''.join(cells)}</tr>")
    return f"<table><tr><th>model</th>{header}</tr>{''.join(rows)}</table>"


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
    raw = html.escape(json.dumps(data, indent=1, default=str))
    page = (
        "<!doctype html><meta charset='utf-8'><title>EvoQuality report</title>"
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}"
        "td,th{padding:4px 10px;border-bottom:1px solid #ddd;text-align:right}"
        "td:first-child{text-align:left}img{max-width:100%}</style>"
        f"<h1>EvoQuality run {html.escape(run_uri)}</h1>"
        "<h2>Held-out quality per round (gain over the base in brackets)</h2>"
        + gains_table(data)
        + f"<p>Evaluation protocol: {html.escape(eval_protocols(data['eval']))}</p>"
        + "".join(sections)
        + f"<details><summary>Raw data (JSON)</summary><pre>{raw}</pre></details>"
    )
    path = out_dir / "report.html"
    path.write_text(page)
    return path
