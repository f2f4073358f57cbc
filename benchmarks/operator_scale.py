"""Operator scale: N concurrent EvoQualityRuns in one namespace against KMock's emulator.

The operator runs as its own process (`python -m evoquality_operator`, the console script's code)
against the emulator on 127.0.0.1; this script plays the Job controller and measures

- the operator's memory (VmRSS sampled from /proc, and VmHWM = peak RSS),
- event-handling latency: from a Job's completion (the status PATCH) to the creation of the
  next stage's Job of the same run (Job watch event -> reconcile -> create),
- wall time until all runs succeed.

Prints the numbers; it is a measurement, not a pass/fail test.

    .venv/bin/python benchmarks/operator_scale.py [--runs 50] [--rounds 2]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "operator"))

from tests.plugins.kmock_cluster import (  # noqa: E402
    ClusterHandle,
    JobController,
    free_port,
)

NS = "bench"
RUNS_PATH = f"/apis/evoquality.io/v1alpha1/namespaces/{NS}/evoqualityruns"


def manifest(name: str, rounds: int) -> dict:
    return {
        "apiVersion": "evoquality.io/v1alpha1",
        "kind": "EvoQualityRun",
        "metadata": {"name": name, "namespace": NS},
        "spec": {
            "data": {"manifest": "s3://pool/images.csv"},
            "storage": {"uri": "s3://artifacts/runs"},
            "rounds": rounds,
            "voting": {"shards": 2},
            "evaluation": {"benchmarks": [{"name": "syniqa", "manifest": "s3://b/s.csv"}]},
        },
    }


def succeed(job: dict) -> tuple[str, list[dict]]:
    completions = int(job["spec"].get("completions") or 1)
    stage = job["metadata"]["labels"]["evoquality.io/stage"]
    metrics = {
        "vote": {"pairs": 100, "votes": 800, "agreement": 0.8, "abstention_rate": 0.01},
        "rank": {"labels": 190},
        "train": {"reward_mean": 0.7, "kl": 0.02, "checkpoint": "s3://c/x"},
        "eval": {"syniqa.srcc": 0.6, "syniqa.plcc": 0.6, "wavg.srcc": 0.6},
    }[stage]
    return "succeed", [metrics] * completions


def rss_kib(pid: int) -> tuple[int, int]:
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values.get("VmRSS", 0), values.get("VmHWM", 0)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * (len(ordered) - 1) + 0.5))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=300.0)
    args = parser.parse_args()

    workdir = Path(tempfile.mkdtemp(prefix="operator-scale-"))
    cluster = ClusterHandle()
    cluster.start(workdir)
    os.environ["KUBECONFIG"] = str(cluster.kubeconfig)
    os.environ.pop("KUBERNETES_SERVICE_HOST", None)
    cluster.install_crd()
    port = free_port()
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "operator")]),
        "KUBECONFIG": str(cluster.kubeconfig),
    }
    log = (workdir / "operator.log").open("w")
    command = [
        sys.executable,
        "-m",
        "evoquality_operator",
        "--all-namespaces",
        "--metrics-addr",
        "127.0.0.1",
        "--metrics-port",
        str(port),
        "--health-port",
        "0",
    ]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        # wait (bounded) for the metrics endpoint: the operator finished starting
        import urllib.request

        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=1).read()
                break
            except OSError:
                if time.monotonic() > deadline or process.poll() is not None:
                    raise SystemExit(f"operator did not start; see {log.name}") from None
                time.sleep(0.1)
        idle_rss, _ = rss_kib(process.pid)

        started = time.monotonic()
        for i in range(args.runs):
            cluster.put(RUNS_PATH, manifest(f"run-{i:03d}", args.rounds))
        controller = JobController(cluster, NS, succeed)
        samples = []
        jobs_per_run = 1 + 4 * args.rounds  # base eval + vote/rank/train/eval per round
        while True:
            controller.tick()
            samples.append(rss_kib(process.pid)[0])
            if len(controller.finished) >= args.runs * jobs_per_run:
                runs = cluster.api.request("GET", RUNS_PATH)["items"]
                if all((r.get("status") or {}).get("phase") == "Succeeded" for r in runs):
                    break
            if time.monotonic() - started > args.timeout:
                raise SystemExit("timed out before all runs succeeded")
            time.sleep(0.05)
        wall = time.monotonic() - started
        rss, peak = rss_kib(process.pid)
        operator_cpu = cpu_seconds(process.pid)
        own_cpu = time.process_time()

        # latency: Job completion -> next Job of the same run created
        created = cluster.call(lambda: list(cluster.emulator.created_at))
        creations: dict[str, list[tuple[float, str]]] = {}
        for plural, _, name, at in created:
            if plural == "jobs":
                creations.setdefault(name.split("-r")[0].split("-base")[0], []).append((at, name))
        latencies = []
        for name, done_at in controller.finished_at.items():
            run = name.split("-r")[0].split("-base")[0]
            later = [at for at, _ in creations.get(run, []) if at > done_at]
            if later:
                latencies.append(min(later) - done_at)
        duplicates = len(created) - len({(p, n) for p, _, n, _ in created})
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
        cluster.stop()

    print(
        f"operator scale: {args.runs} runs x {args.rounds} rounds in one namespace, "
        f"{len(controller.finished)} Jobs"
    )
    print(f"  wall time to all Succeeded      {wall:8.1f} s")
    print(
        f"  operator RSS idle / end / peak  {idle_rss / 1024:8.1f} / {rss / 1024:.1f} / "
        f"{peak / 1024:.1f} MiB (mean while running {statistics.mean(samples) / 1024:.1f} MiB)"
    )
    print(
        f"  completion -> next Job created  p50 {percentile(latencies, 0.5) * 1000:7.0f} ms   "
        f"p95 {percentile(latencies, 0.95) * 1000:7.0f} ms   "
        f"max {max(latencies) * 1000:7.0f} ms   (n={len(latencies)})"
    )
    print(f"  CPU: operator {operator_cpu:.1f} s, emulator + Job controller {own_cpu:.1f} s")
    print(f"  duplicate creations             {duplicates}")
    print(f"  operator log                    {log.name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
