"""The embedded executor: run a manifest's stages on this machine, resumable, with progress.

It starts the same stage commands the operator's Jobs run (as subprocesses) and reads only their
summaries: a stage whose summary exists is done, so a killed run continues from the first stage
without one, and a finished run does no work. Vote shards and evaluations run side by side up to
`jobs` processes. The plan (which stage waits for which) is a pure function, `plan_tasks`.
Vote and eval stages of a spec with ``model.engine: vllm`` run with the vLLM venv's Python
(`evoquality.engines.vllm_env`), every other stage with this one.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from evoquality import artifacts
from evoquality.engines.vllm_env import vllm_python
from evoquality.spec import EvoQualityRun, spec_to_dict
from evoquality.stages.progress import parse_line
from evoquality.storage import Store, open_store
from evoquality.summaries import best_round, eval_protocols, merge_vote_metrics, should_stop_early
from evoquality.telemetry import RunMetrics

LOG_TAIL_LINES = 25


class RunError(RuntimeError):
    """The run cannot go on (a stage failed, a bad work dir); the message says what to do."""


@dataclass(frozen=True)
class Task:
    stage: str
    round: int | None
    shard: int | None = None
    num_shards: int | None = None
    deps: tuple[str, ...] = field(default=(), compare=False)

    @property
    def name(self) -> str:
        where = "base" if self.round is None else f"r{self.round}"
        shard = "" if self.shard is None else f"-shard{self.shard}of{self.num_shards}"
        return f"{self.stage}-{where}{shard}"

    def args(self) -> list[str]:
        out = ["stage", self.stage, "--round", "base" if self.round is None else str(self.round)]
        if self.shard is not None:
            out += ["--shard", str(self.shard), "--num-shards", str(self.num_shards)]
        return out


def plan_tasks(run: EvoQualityRun) -> list[Task]:
    """Every stage of the run in a valid order, each naming the tasks it waits for.

    eval(base) runs beside vote(0); eval(r) beside vote(r+1), unless early stopping makes
    vote(r+1) wait for eval(r).
    """
    spec = run.spec
    evaluates = bool(spec.evaluation.benchmarks or spec.evaluation.validation)
    tasks: list[Task] = []
    if evaluates and spec.evaluation.evaluate_base:
        tasks.append(Task("eval", None))
    shards = spec.voting.shards
    for r in range(spec.rounds):
        before: tuple[str, ...] = ()
        if r > 0:
            before = (Task("train", r - 1).name,)
            if spec.evaluation.early_stopping and evaluates:
                before += (Task("eval", r - 1).name,)
        votes = [Task("vote", r, i, shards, before) for i in range(shards)]
        rank = Task("rank", r, deps=tuple(t.name for t in votes))
        train = Task("train", r, deps=(rank.name,))
        tasks += [*votes, rank, train]
        if evaluates:
            tasks.append(Task("eval", r, deps=(train.name,)))
    return tasks


INFERENCE_STAGES = ("vote", "eval")


def stage_python(stage: str, engine: str, default: str, vllm: str | None) -> str:
    """The interpreter that runs ``stage``: the vLLM one for vLLM inference, else ``default``."""
    if stage not in INFERENCE_STAGES or engine != "vllm":
        return default
    if vllm is None:
        raise RunError(
            "model.engine is vllm but no Python here imports vLLM: run `make vllm-venv` "
            "(or set EVOQUALITY_VLLM_PYTHON)"
        )
    return vllm


def run_root(run: EvoQualityRun, workdir: Path) -> str:
    """`<storage uri>/<namespace>/<name>`; a relative local storage path lives in the work dir."""
    uri = run.spec.storage.uri.rstrip("/")
    if not uri.startswith(("s3://", "file://")) and not Path(uri).is_absolute():
        uri = str((workdir / uri).resolve())
    return f"{uri}/{run.metadata.namespace}/{run.metadata.name}"


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold Ctrl-C (SIGINT) until the block ends, then raise it: a stage process started inside
    is registered before the interrupt stops the run, so it is terminated, never orphaned."""
    ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # e.g. started with `&` or nohup
    if ignored or threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler if previous is None else previous)
    if caught:
        raise KeyboardInterrupt


class Runner:
    """Executes `plan_tasks(run)` with stage subprocesses."""

    def __init__(
        self,
        run: EvoQualityRun,
        workdir: Path,
        jobs: int | None = None,
        metrics: RunMetrics | None = None,
        console: Console | None = None,
        python: str = sys.executable,
    ):
        self.run = run
        self.workdir = workdir
        self.jobs = max(1, jobs or os.cpu_count() or 1)
        self.metrics = metrics
        self.console = console or Console(stderr=True)
        self.python = python
        self.vllm_python = vllm_python()
        self.root = run_root(run, workdir)
        self._prepare_workdir()
        self.store: Store = open_store(self.root, run.spec.storage.endpoint)
        self.spec_file = (
            self.workdir / "specs" / f"{run.metadata.namespace}.{run.metadata.name}.json"
        )
        import json

        self.spec_file.parent.mkdir(parents=True, exist_ok=True)
        self.spec_file.write_text(json.dumps(spec_to_dict(run.spec), indent=2))
        self.logs = self.workdir / "logs" / run.metadata.name
        self.logs.mkdir(parents=True, exist_ok=True)

    def _prepare_workdir(self) -> None:
        try:
            self.workdir.mkdir(parents=True, exist_ok=True)
            probe = self.workdir / ".write-test"
            probe.write_text("ok")
            probe.unlink()
        except OSError as exc:
            raise RunError(f"work dir {self.workdir} is not writable: {exc.strerror}") from None

    # -- state ------------------------------------------------------------------------------

    def is_done(self, task: Task) -> bool:
        return (
            artifacts.read_summary(self.store, task.stage, task.round, task.shard, task.num_shards)
            is not None
        )

    def _summary(self, task: Task) -> dict | None:
        return artifacts.read_summary(
            self.store, task.stage, task.round, task.shard, task.num_shards
        )

    def eval_metrics(self) -> dict[int | None, dict]:
        out: dict[int | None, dict] = {}
        rounds: list[int | None] = [None, *range(self.run.spec.rounds)]
        for r in rounds:
            summary = artifacts.read_summary(self.store, "eval", r)
            if summary is not None:
                out[r] = summary.get("metrics", {})
        return out

    # -- execution --------------------------------------------------------------------------

    def _env(self, threads: int) -> dict[str, str]:
        env = dict(os.environ)
        env.setdefault("EVOQUALITY_CACHE", str(self.workdir / "cache"))
        env["EVOQUALITY_PROGRESS"] = "jsonl"
        # the runner draws each stage's bar from its progress lines: no tqdm bars (trainer,
        # loaders, hub) flooding the stage logs, which a failure prints
        env["TQDM_DISABLE"] = "1"
        env["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
        env["OMP_NUM_THREADS"] = str(threads)
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def _launch(self, task: Task, threads: int, on_progress: Callable[[dict], None]):
        engine = self.run.spec.model.engine
        command = [
            stage_python(task.stage, engine, self.python, self.vllm_python),
            "-m",
            "evoquality.cli",
            *task.args(),
            "--run",
            self.root,
            "--spec",
            str(self.spec_file),
        ]
        log_path = self.logs / f"{task.name}.log"
        log = log_path.open("a")
        log.write(f"$ {' '.join(command)}\n")
        log.flush()
        proc = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.PIPE,
            text=True,
            env=self._env(threads),
            start_new_session=True,
        )

        def pump() -> None:
            assert proc.stderr is not None
            for line in proc.stderr:
                event = parse_line(line)
                if event is not None:
                    on_progress(event)
                else:
                    log.write(line)
            log.flush()

        reader = threading.Thread(target=pump, daemon=True)
        reader.start()
        return proc, reader, log, log_path

    def execute(self) -> dict:
        """Run every stage not yet done; returns the names run and skipped, and an early stop."""
        tasks = plan_tasks(self.run)
        by_name = {t.name: t for t in tasks}
        done = {t.name for t in tasks if self.is_done(t)}
        skipped = sorted(done)
        ran: list[str] = []
        name = self.run.metadata.name
        ns = self.run.metadata.namespace
        if self.metrics:
            self.metrics.set_phase(ns, name, "Running")
        if len(done) == len(tasks):
            self.console.print(f"[green]run {name} is already complete[/]: nothing to do")
            return {"ran": ran, "skipped": skipped, "stopped": False}
        if done:
            self.console.print(f"resuming run {name}: {len(done)} of {len(tasks)} stages done")
        running: dict[str, tuple] = {}
        stopped_early = False
        bar = Progress(
            TextColumn("{task.description:<28}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            console=self.console,
        )
        try:
            with bar:
                while len(done) < len(tasks) or running:
                    ready = [
                        t
                        for t in tasks
                        if t.name not in done
                        and t.name not in running
                        and all(d in done for d in t.deps)
                        and not (stopped_early and t.stage == "vote")
                    ]
                    if stopped_early:
                        ready = [t for t in ready if t.stage == "eval"]
                    slots = self.jobs - len(running)
                    launch = ready[: max(0, slots)]
                    threads = max(1, (os.cpu_count() or 1) // max(1, len(running) + len(launch)))
                    for task in launch:
                        bar_id = bar.add_task(task.name, total=None)
                        started = time.monotonic()

                        def on_progress(event: dict, bar_id=bar_id) -> None:
                            bar.update(bar_id, total=event["total"], completed=event["done"])

                        with deferred_interrupt():  # a started stage is always in `running`
                            running[task.name] = (
                                *self._launch(task, threads, on_progress),
                                bar_id,
                                started,
                            )
                        if self.metrics:
                            self.metrics.stage_started(ns, name, task.round, task.stage)
                    if not running:
                        if stopped_early:
                            break
                        raise RunError("no stage can start: the plan has a cycle (a bug)")
                    finished = self._wait_any(running)
                    proc, reader, log, log_path, bar_id, started = running.pop(finished)
                    reader.join()
                    log.close()
                    task = by_name[finished]
                    if proc.returncode != 0:
                        self._fail(task, log_path, proc.returncode, running)
                    duration = time.monotonic() - started
                    done.add(finished)
                    ran.append(finished)
                    summary = self._summary(task) or {}
                    bar.update(bar_id, completed=1, total=1, visible=False)
                    self.console.print(self._one_line(task, summary, duration))
                    self._observe(task, summary, duration)
                    if (
                        task.stage == "eval"
                        and task.round is not None
                        and self.run.spec.evaluation.early_stopping
                        and should_stop_early(self.eval_metrics(), task.round)
                    ):
                        stopped_early = True
                        self.console.print(
                            f"[yellow]early stop[/]: validation SRCC of round {task.round} fell"
                        )
                        tasks = [t for t in tasks if t.name in done or t.name in running]
        except KeyboardInterrupt:
            self._terminate(running)
            raise
        if self.metrics:
            self.metrics.set_phase(ns, name, "Succeeded")
        return {"ran": ran, "skipped": skipped, "stopped": stopped_early}

    @staticmethod
    def _wait_any(running: dict[str, tuple]) -> str:
        while True:
            for task_name, entry in running.items():
                if entry[0].poll() is not None:
                    return task_name
            time.sleep(0.2)

    def _terminate(self, running: dict[str, tuple]) -> None:
        for proc, *_ in running.values():
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc, *_ in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)

    def _fail(self, task: Task, log_path: Path, code: int, running: dict) -> None:
        self._terminate(running)
        if self.metrics:
            ns, name = self.run.metadata.namespace, self.run.metadata.name
            self.metrics.stage_failed(ns, name, task.round, task.stage)
            self.metrics.set_phase(ns, name, "Failed")
        lines = log_path.read_text(errors="replace").splitlines()[-LOG_TAIL_LINES:]
        raise RunError(
            f"stage {task.name} failed (exit {code}); last lines of {log_path}:\n"
            + "\n".join("  " + line for line in lines)
            + "\nfix the cause and run the same command again: finished stages are kept"
        )

    def _observe(self, task: Task, summary: dict, duration: float) -> None:
        if not self.metrics:
            return
        ns, name = self.run.metadata.namespace, self.run.metadata.name
        metrics = summary.get("metrics", {})
        if task.stage == "vote":
            shards = artifacts.read_shard_summaries(self.store, "vote", task.round, task.num_shards)
            if not shards.complete:
                return
            metrics = merge_vote_metrics([s.get("metrics", {}) for s in shards.summaries])
        if task.round is not None:
            self.metrics.set_round(ns, name, task.round)
        self.metrics.observe_summary(ns, name, task.round, task.stage, metrics, duration)

    @staticmethod
    def _one_line(task: Task, summary: dict, duration: float) -> str:
        metrics = summary.get("metrics", {})
        shown = {
            "vote": ("pairs", "agreement", "abstention_rate", "pairs_per_s"),
            "rank": ("labels", "agreement", "tie_rate"),
            "train": ("steps", "reward_mean", "kl", "loss"),
            "eval": tuple(k for k in metrics if k.endswith(".srcc") or k.endswith(".plcc")),
        }[task.stage]
        parts = []
        for key in shown:
            value = metrics.get(key)
            if value is not None:
                parts.append(f"{key}={value:.3f}" if isinstance(value, float) else f"{key}={value}")
        return f"[green]✓[/] {task.name:<24} {duration:6.1f}s  " + "  ".join(parts)

    def results_table(self) -> Table:
        """SRCC / PLCC per benchmark per round (base first)."""
        evals = self.eval_metrics()
        names = sorted(
            {k.rsplit(".", 1)[0] for m in evals.values() for k in m if k.endswith(".srcc")}
        )
        if len(names) == 2 and "wavg" in names:  # one benchmark: its average adds nothing
            names.remove("wavg")
        table = Table(
            title=f"{self.run.metadata.name}: SRCC / PLCC per benchmark",
            caption=f"evaluation: {eval_protocols(evals)}",
        )
        table.add_column("model")
        for bench in names:
            table.add_column(bench, justify="right")
        best, _ = best_round(evals)
        for r, metrics in sorted(
            evals.items(), key=lambda item: -1 if item[0] is None else item[0]
        ):
            label = "base" if r is None else f"round {r}"
            if r == best and len(evals) > 1:
                label += " *"
            cells = []
            for bench in names:
                s, p = metrics.get(f"{bench}.srcc"), metrics.get(f"{bench}.plcc")
                cells.append(
                    "-" if s is None else f"{s:.3f} / {p:.3f}" if p is not None else f"{s:.3f}"
                )
            table.add_row(label, *cells)
        return table
