"""The `evoquality` command line: run, stage, report, validate, make-tiny-model, syniqa, manifest.

Every error a user can cause ends in one clear message and a non-zero exit code: 2 for bad input
(manifests, arguments, missing artifacts), 1 for a failed stage, 130 for Ctrl-C.
"""

from __future__ import annotations

import os
import sys
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from evoquality.pretrain import WEAK_RECIPE
from evoquality.spec import SpecError, load_run

app = typer.Typer(
    help="EvoQuality: self-supervised post-training of VLMs for image quality assessment.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
manifest_app = typer.Typer(help="Image manifests (CSV: image, optional mos, extra columns).")
app.add_typer(manifest_app, name="manifest")
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = 2) -> None:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@app.command()
def run(
    manifest: Annotated[Path, typer.Argument(help="EvoQualityRun manifest (YAML).")],
    workdir: Annotated[Path, typer.Option(help="Artifacts, cache and logs.")] = Path(
        "evoquality-work"
    ),
    resume: Annotated[
        bool, typer.Option(help="Continue a run started before (the default behaviour).")
    ] = True,
    jobs: Annotated[int, typer.Option(min=1, help="Stage processes at once.")] = os.cpu_count()
    or 1,
    metrics_port: Annotated[
        int | None, typer.Option(help="Serve the evoquality_* Prometheus metrics on this port.")
    ] = None,
    report: Annotated[bool, typer.Option(help="Write the HTML report at the end.")] = True,
) -> None:
    """Run every round of a manifest on this machine (resumable: rerun to continue)."""
    from evoquality import artifacts
    from evoquality.report import write_report
    from evoquality.runner import RunError, Runner
    from evoquality.telemetry import RunMetrics

    try:
        spec_run = load_run(manifest)
    except SpecError as exc:
        fail(str(exc))
    metrics = None
    if metrics_port is not None:
        metrics = RunMetrics()
        metrics.serve(metrics_port)
        err.print(f"metrics on http://127.0.0.1:{metrics_port}/metrics")
    try:
        runner = Runner(spec_run, workdir.resolve(), jobs=jobs, metrics=metrics, console=err)
    except RunError as exc:  # a bad work dir is bad input
        fail(str(exc))
    if not resume and runner.store.exists(artifacts.SPEC_KEY):
        fail(f"run {spec_run.metadata.name} exists under {runner.root}; drop --no-resume")
    try:
        outcome = runner.execute()
    except RunError as exc:
        fail(str(exc), code=1)
    except KeyboardInterrupt:
        err.print("[yellow]stopped[/]: run the same command again to continue where it stopped")
        raise typer.Exit(130) from None
    except Exception as exc:  # storage and other setup errors: one line, not a traceback
        fail(f"{type(exc).__name__}: {exc}")
    err.print(runner.results_table())
    if report and (outcome["ran"] or not (workdir / "report" / "report.html").exists()):
        path = write_report(
            runner.root, workdir.resolve() / "report", spec_run.spec.storage.endpoint
        )
        err.print(f"report: {path}")


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="vote, rank, train or eval.")],
    run_uri: Annotated[str, typer.Option("--run", help="Run root: <storage>/<namespace>/<name>.")],
    round_: Annotated[str, typer.Option("--round", help="Round number, or `base` (eval only).")],
    shard: Annotated[
        int | None, typer.Option(help="Vote shard (default $JOB_COMPLETION_INDEX).")
    ] = None,
    num_shards: Annotated[int | None, typer.Option(help="Vote shards in all.")] = None,
    spec: Annotated[Path | None, typer.Option(help="Spec file (the operator mounts it).")] = None,
) -> None:
    """Run one stage (the container command); prints its summary as the last line."""
    from evoquality.stages import StageArgs, StageError, run_stage
    from evoquality.stages.context import parse_round

    if num_shards is not None and shard is None:
        index = os.environ.get("JOB_COMPLETION_INDEX")
        if index is None:
            fail("--num-shards needs --shard (or $JOB_COMPLETION_INDEX in an Indexed Job)")
        shard = int(index)
    try:
        args = StageArgs(name, run_uri, parse_round(round_), shard, num_shards, spec)
        run_stage(args)
    except (StageError, SpecError, ValueError, FileNotFoundError, KeyError) as exc:
        fail(f"stage {name}: {exc}")


@app.command("rollout-server")
def rollout_server(
    run_uri: Annotated[str, typer.Option("--run", help="Run root: <storage>/<namespace>/<name>.")],
    round_: Annotated[str, typer.Option("--round", help="The training round.")],
    spec: Annotated[Path | None, typer.Option(help="Spec file (the operator mounts it).")] = None,
    gpus: Annotated[int, typer.Option(min=0, help="GPUs (0: vLLM's CPU build).")] = 0,
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
) -> None:
    """The vLLM rollout server of a train stage (the train pod's sidecar): fetches the round's
    policy, then becomes vLLM's OpenAI server (`training.rollouts.engine: vllm`)."""
    from evoquality.rollout_server import exec_server
    from evoquality.stages import StageArgs, StageError
    from evoquality.stages.context import StageContext, parse_round

    try:
        ctx = StageContext(StageArgs("train", run_uri, parse_round(round_), spec_file=spec))
        model = ctx.policy_model(ctx.round)
    except (StageError, SpecError, ValueError, FileNotFoundError, KeyError) as exc:
        fail(f"rollout-server: {exc}")
    exec_server(ctx.spec, model, gpus, port)


@app.command()
def report(
    run_uri: Annotated[str, typer.Argument(help="Run root: <storage>/<namespace>/<name>.")],
    out: Annotated[Path, typer.Option(help="Output folder.")] = Path("evoquality-report"),
    endpoint: Annotated[str | None, typer.Option(help="S3 endpoint URL.")] = None,
) -> None:
    """Write report.html and PNG plots for a run."""
    from evoquality.report import write_report

    try:
        path = write_report(run_uri, out, endpoint)
    except (FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    err.print(f"report: {path}")


@app.command()
def validate(manifest: Annotated[Path, typer.Argument(help="EvoQualityRun manifest.")]) -> None:
    """Check a manifest; prints the spec hash when valid."""
    from evoquality.spec import spec_hash

    try:
        spec_run = load_run(manifest)
    except SpecError as exc:
        fail(str(exc))
    print(
        f"{manifest}: valid ({spec_run.metadata.name}, spec hash {spec_hash(spec_run.spec)[:12]})"
    )


@app.command()
def defaults() -> None:
    """Print every method default with its source (paper, model card, VisualQuality-R1, ours)."""
    import json

    from evoquality.spec_sources import sourced_defaults

    print("| setting | default | source |")
    print("|---|---|---|")
    for path, (value, source) in sourced_defaults().items():
        print(f"| `{path}` | `{json.dumps(value)}` | {source} |")


@app.command("make-tiny-model")
def make_tiny_model_cmd(
    out_dir: Annotated[Path, typer.Argument(help="Where to save the model.")],
    seed: Annotated[int, typer.Option()] = 0,
    pretrain: Annotated[
        bool,
        typer.Option(
            help="Give it weak quality perception: a short supervised fine-tune on the "
            "pseudo-MOS of SynIQA training photos (the recipe of the committed `tiny-weak` "
            "base, ~10 min of one CPU core)."
        ),
    ] = False,
    pretrain_steps: Annotated[
        int, typer.Option(min=1, help="Supervised answer steps.")
    ] = WEAK_RECIPE.steps,
    label_noise: Annotated[
        float, typer.Option(min=0.0, help="Std of the noise added to the pseudo-MOS targets.")
    ] = WEAK_RECIPE.label_noise,
) -> None:
    """Build a tiny random Qwen2.5-VL-architecture model offline (tests, quickstart)."""
    if pretrain:
        from evoquality.pretrain import pretrain_weak_base
        from evoquality.stages.context import cache_dir

        settings = replace(WEAK_RECIPE, seed=seed, steps=pretrain_steps, label_noise=label_noise)
        path = pretrain_weak_base(out_dir, cache_dir(), settings)
        err.print(f"weak base model: {path}")
        return
    from evoquality.tiny_model import make_tiny_model

    path = make_tiny_model(out_dir, seed=seed)
    err.print(f"tiny model: {path}")


@app.command()
def syniqa(
    out_dir: Annotated[Path, typer.Argument(help="Where to write images and manifest.csv.")],
    size: Annotated[int, typer.Option(min=28, help="Image side in pixels.")] = 112,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Build SynIQA: scikit-image photos x distortions x 5 levels, with pseudo-MOS."""
    from evoquality.data.syniqa import build_syniqa

    path = build_syniqa(out_dir, size=size, seed=seed)
    err.print(f"SynIQA manifest: {path}")


@manifest_app.command("convert-pyiqa")
def convert_pyiqa_cmd(
    meta_csv: Annotated[Path, typer.Argument(help="pyiqa meta-info CSV.")],
    image_dir: Annotated[str, typer.Argument(help="Folder or s3:// prefix of the images.")],
    out: Annotated[Path, typer.Argument(help="Output manifest CSV.")],
) -> None:
    """Convert a pyiqa meta-info CSV (image name, MOS, ...) to an EvoQuality manifest."""
    from evoquality.data.manifest import convert_pyiqa

    try:
        rows = convert_pyiqa(meta_csv, image_dir, out)
    except (ValueError, FileNotFoundError) as exc:
        fail(str(exc))
    err.print(f"{out}: {rows} images")


@app.command()
def crd() -> None:
    """Print the EvoQualityRun CRD generated from the spec models."""
    from evoquality.crd import render_crd

    sys.stdout.write(render_crd())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
