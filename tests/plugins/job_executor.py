"""Pytest plugin: a Job executor playing the Job controller and the kubelet for the KMock cluster.

For every Job in a namespace of the emulated cluster it starts each pod's container as a local
process group, running the rendered `command` + `args` with Kubernetes' `$(VAR)` expansion and the
rendered `env`/`envFrom` (values, `fieldRef`, Secret and ConfigMap keys read from the emulated
cluster). As the Job controller it follows `completionMode: Indexed` (`JOB_COMPLETION_INDEX`, the
completion-index annotation and label, hostnames `<job>-<index>` under the pod's `subdomain`),
`parallelism`, `backoffLimit`, `backoffLimitPerIndex`, `maxFailedIndexes`, `podFailurePolicy`,
`suspend` and `activeDeadlineSeconds` (rules in `job_semantics`), writes a Pod per attempt with
the container's real exit code and termination message, and the Job's status and conditions, so
the operator reads real summaries. Pods of a Job that fails or is suspended are terminated
(SIGTERM, then SIGKILL after `grace_s`) and deleted, as the Job controller does.

Rewrites, the only fields that do not run as rendered:

1. image -> a local stand-in (`LocalImage`): its bin folder first on PATH (by default this
   interpreter's venv), HOME a folder of the pod, and the image's own ENV lines given with it.
2. volume mount paths -> folders: every env value, argument (or `--option=` value) and
   `workingDir` equal to a `volumeMounts[].mountPath` or under it points into the volume's
   folder instead (configMap: its keys written as files; emptyDir: a folder of the pod;
   persistentVolumeClaim: a folder per claim shared by every pod of the test). A path inside a
   longer string (a shell script) is not rewritten: pass paths as whole values.
3. the termination-message path -> a file of the pod, rewritten like a mount path wherever the
   rendered env names it; its content becomes the pod's termination message
   (`FallbackToLogsOnError`: the log's tail when it is empty and the container failed).
4. pod hostnames -> 127.0.0.1: `<job>-<index>.<subdomain>[.<namespace>[.svc[.cluster.local]]]`,
   only while a Service named `<subdomain>` exists (without one the name does not resolve).
5. declared `containerPort`s -> one free port per Job (its pods share 127.0.0.1), wherever an
   env value or argument is that number or ends in `:<port>` / `=<port>`.
6. GPUs: `nvidia.com/gpu` requests need no device; the processes run on the CPU, as many as the
   rendered launcher settings start (`PET_NPROC_PER_NODE=N` for N GPUs). Nothing is rewritten.

Native sidecars (init containers with `restartPolicy: Always`) run as the kubelet runs them: each
started first as a process group of its own (its image, env, mounts and ports rewritten as
above; its log beside the pod's), the main container started once every sidecar's `startupProbe`
(`httpGet`) answers 200, every sidecar stopped (SIGTERM, then SIGKILL) when the main container
exits or the pod is terminated. A sidecar that exits or fails its probe past `failureThreshold` x
`periodSeconds` fails the pod (the kubelet would restart it until a deadline).

Not emulated: NonIndexed Jobs of more than one completion, more than one container per pod, init
containers that are not native sidecars, image entrypoints (a container needs `command`),
liveness and readiness probes, sidecar restarts, resource limits, retry backoff (a failed index
restarts after `retry_delay_s`, not 10 s doubled), eviction.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import logging
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from tests.plugins import job_semantics as ks
from tests.plugins.kmock_cluster import ClusterHandle, free_port, now_iso

log = logging.getLogger(__name__)
DEFAULT_TERMINATION_PATH = "/dev/termination-log"
MESSAGE_LIMIT = 4096  # bytes of a termination message
LOG_FALLBACK_LINES = 80
LOG_FALLBACK_BYTES = 2048


@dataclass(frozen=True)
class LocalImage:
    """What stands for an image here: a bin folder first on PATH and the image's ENV lines."""

    bin_dir: Path = Path(sys.executable).parent
    env: Mapping[str, str] = field(default_factory=lambda: {"PYTHONUNBUFFERED": "1"})


@dataclass(frozen=True)
class Rewrites:
    """The executor's rewrites of strings (mount paths, pod hostnames, ports): pure."""

    mounts: tuple[tuple[str, str], ...] = ()  # (path in the container, folder here)
    hosts: tuple[str, ...] = ()
    ports: Mapping[str, str] = field(default_factory=dict)

    def path(self, text: str) -> str:
        for inside, outside in sorted(self.mounts, key=lambda m: -len(m[0])):
            if text == inside or text.startswith(inside.rstrip("/") + "/"):
                return outside + text[len(inside.rstrip("/")) :]
        return text

    def __call__(self, text: str) -> str:
        key, sep, value = text.partition("=")
        text = key + sep + self.path(value) if sep and key.startswith("-") else self.path(text)
        for host in self.hosts:
            text = re.sub(rf"(?<![\w.-]){re.escape(host)}(?![\w-])", "127.0.0.1", text)
        for port, local in self.ports.items():
            if text == port:
                return local
            text = re.sub(rf"([:=]){port}$", rf"\g<1>{local}", text)
        return text


def host_names(job: str, indexes: int, subdomain: str, namespace: str) -> tuple[str, ...]:
    """The DNS names of an Indexed Job's pods under a headless Service, longest first."""
    names = []
    for i in range(indexes):
        short = f"{job}-{i}.{subdomain}"
        for suffix in (".svc.cluster.local", ".svc", ""):
            names.append(f"{short}.{namespace}{suffix}")
        names.append(short)
    return tuple(names)


@dataclass
class PodRun:
    """One pod: its object in the cluster and the local process group running its container."""

    name: str
    job: str
    index: int
    folder: Path
    obj: dict[str, Any]
    proc: subprocess.Popen | None = None
    exit_code: int | None = None
    message: str = ""
    terminated: bool = False  # killed by the Job controller (Job failed, suspended or deleted)
    config_error: str = ""
    argv: list[str] = field(default_factory=list)  # as executed (after the rewrites)
    env: dict[str, str] = field(default_factory=dict)
    started_at: float | None = None  # monotonic
    ended_at: float | None = None
    disrupted: bool = False  # evicted or preempted (DisruptionTarget)
    sidecars: list[subprocess.Popen] = field(default_factory=list)  # native sidecars, started first

    @property
    def log_path(self) -> Path:
        return self.folder / "log"

    def seconds(self) -> str:
        """When the container ran, in seconds of the executor's clock."""
        if self.started_at is None:
            return "(not started)"
        end = f"{self.ended_at:.1f}" if self.ended_at is not None else "..."
        return f"({self.started_at:.1f}-{end} s)"

    def log_tail(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""


@dataclass
class _JobState:
    tracker: ks.JobTracker
    uid: str
    ports: dict[str, str] = field(default_factory=dict)
    start_time: str | None = None
    started_at: float | None = None  # monotonic, for activeDeadlineSeconds
    not_before: dict[int, float] = field(default_factory=dict)  # retry delay per index
    written: dict[str, Any] | None = None


class JobExecutor:
    """Runs the Jobs of `namespace` in the emulated cluster; use as a context manager."""

    def __init__(
        self,
        cluster: ClusterHandle,
        namespace: str,
        root: Path,
        images: Mapping[str, LocalImage] | None = None,
        default_image: LocalImage | None = None,
        retry_delay_s: float = 0.2,
        grace_s: float = 5.0,
        poll_s: float = 1.0,
    ) -> None:
        self.cluster = cluster
        self.namespace = namespace
        self.root = root
        self.images = dict(images or {})
        self.default_image = default_image or LocalImage()
        self.retry_delay_s = retry_delay_s
        self.grace_s = grace_s
        self.poll_s = poll_s
        self.pods: dict[str, PodRun] = {}  # every pod ever started, by name
        self.errors: list[str] = []
        self._jobs: dict[str, _JobState] = {}
        self._exits: queue.Queue[str] = queue.Queue()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def __enter__(self) -> JobExecutor:
        self.cluster.add_listener(self._wake.set)
        self._thread = threading.Thread(target=self._loop, name="job-executor", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(60)
        self.cluster.remove_listener(self._wake.set)
        with self._lock:
            for pod in self.pods.values():
                self._kill(pod)

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.poll_s)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                with self._lock:
                    self._sync()
            except Exception as exc:  # reported to the test through `errors`
                log.exception("job executor pass failed")
                self.errors.append(f"{type(exc).__name__}: {exc}")

    # --- what tests use ----------------------------------------------------------------------

    def pods_of(self, job: str) -> list[PodRun]:
        return [p for p in self.pods.values() if p.job == job]

    def active(self, job: str) -> list[PodRun]:
        """Pods of the Job that have not ended (Pending or Running)."""
        return [p for p in self.pods_of(job) if p.exit_code is None and not p.terminated]

    def running(self, job: str) -> list[PodRun]:
        return [p for p in self.active(job) if p.proc is not None]

    def signal(self, pod: PodRun, sig: int, pick: Callable[[Any], bool] | None = None) -> int:
        """Send `sig` to the pod's main process, or to the first descendant `pick` accepts (a
        psutil.Process; e.g. a torchrun rank); returns the pid signalled."""
        import psutil

        assert pod.proc is not None, f"{pod.name} has no process"
        target = psutil.Process(pod.proc.pid)
        if pick is not None:
            found = [p for p in target.children(recursive=True) if pick(p)]
            assert found, f"{pod.name}: no process matched"
            target = found[0]
        target.send_signal(sig)
        return target.pid

    def evict(self, pod: PodRun) -> None:
        """Evict a running pod as the kubelet or a preemption does: the pod gets the condition
        `DisruptionTarget=True`, then its container is stopped (SIGTERM, SIGKILL after grace)."""
        pod.disrupted = True
        condition = {
            "type": "DisruptionTarget",
            "status": "True",
            "reason": "TerminationByKubelet",
            "message": "The node was low on resource: memory.",
            "lastTransitionTime": now_iso(),
        }
        with self._lock:
            self._patch_pod(pod, {"conditions": [condition]})
        threading.Thread(target=self._kill, args=(pod,), daemon=True).start()

    def describe(self) -> str:
        """Every pod's outcome and log tail (for assertion messages)."""
        parts = []
        for pod in self.pods.values():
            state = pod.config_error or f"exit {pod.exit_code}"
            parts.append(f"--- {pod.name}: {state} {pod.seconds()}\n{pod.log_tail()}")
            for sidecar in sorted(pod.folder.glob("*.log")):
                tail = sidecar.read_text(errors="replace").splitlines()[-20:]
                parts.append(f"--- {pod.name} sidecar {sidecar.stem}:\n" + "\n".join(tail))
        return "\n".join(parts + self.errors)

    # --- one pass ----------------------------------------------------------------------------

    def _api(self, method: str, path: str, body: Any = None, merge: bool = False) -> dict:
        kind = "application/merge-patch+json" if merge else "application/json"
        return self.cluster.api.request(method, path, body=body, content_type=kind)

    def _path(self, plural: str, name: str = "", group: str = "api/v1") -> str:
        base = f"/{group}/namespaces/{self.namespace}/{plural}"
        return f"{base}/{name}" if name else base

    def _sync(self) -> None:
        jobs = self.cluster.api.list("batch/v1", "Job", self.namespace, "")
        self._reap()
        names = set()
        for job in jobs:
            name = job["metadata"]["name"]
            names.add(name)
            state = self._jobs.get(name)
            if state is None:
                if _finished(job):
                    continue  # finished before this executor started
                state = _JobState(ks.JobTracker.from_job(job), job["metadata"].get("uid", ""))
                self._jobs[name] = state
            self._drive(job, state)
        for name in set(self._jobs) - names:  # deleted Jobs: their pods go too
            for pod in self.active(name):
                self._terminate(pod)

    def _drive(self, job: dict[str, Any], state: _JobState) -> None:
        name = job["metadata"]["name"]
        tracker = state.tracker
        suspended = bool(job["spec"].get("suspend"))
        deadline = job["spec"].get("activeDeadlineSeconds")
        if (
            deadline
            and state.started_at is not None
            and not tracker.finished
            and time.monotonic() - state.started_at > float(deadline)
        ):
            tracker.deadline_exceeded()
        if tracker.finished or suspended:
            for pod in self.active(name):
                self._terminate(pod)
                tracker.active.discard(pod.index)
        else:
            self._start_pods(job, state)
            for pod in self.active(name):
                if pod.config_error:
                    self._launch(pod, state)
        self._write_status(name, state, suspended)

    def _start_pods(self, job: dict[str, Any], state: _JobState) -> None:
        now = time.monotonic()
        for index in state.tracker.to_start():
            if state.not_before.get(index, 0.0) > now:
                self._wake_at(state.not_before[index])
                continue
            pod = self._create_pod(job, state, index)
            state.tracker.started(index)
            if state.start_time is None:
                state.start_time, state.started_at = now_iso(), now
            self._launch(pod, state)

    def _wake_at(self, when: float) -> None:
        timer = threading.Timer(max(when - time.monotonic(), 0.0), self._wake.set)
        timer.daemon = True
        timer.start()

    # --- pods --------------------------------------------------------------------------------

    def _create_pod(self, job: dict[str, Any], state: _JobState, index: int) -> PodRun:
        meta, spec = job["metadata"], job["spec"]
        name = meta["name"]
        indexed = state.tracker.indexed
        template = copy.deepcopy(spec["template"])
        labels = {
            **(template.get("metadata") or {}).get("labels", {}),
            "job-name": name,
            "batch.kubernetes.io/job-name": name,
            "controller-uid": state.uid,
            "batch.kubernetes.io/controller-uid": state.uid,
        }
        annotations = dict((template.get("metadata") or {}).get("annotations") or {})
        pod_spec = template["spec"]
        if indexed:
            labels[ks.COMPLETION_INDEX] = annotations[ks.COMPLETION_INDEX] = str(index)
            for container in pod_spec.get("containers") or []:
                container.setdefault("env", []).append(
                    {
                        "name": "JOB_COMPLETION_INDEX",
                        "valueFrom": {
                            "fieldRef": {
                                "fieldPath": f"metadata.annotations['{ks.COMPLETION_INDEX}']"
                            }
                        },
                    }
                )
            if pod_spec.get("subdomain"):
                pod_spec["hostname"] = f"{name}-{index}"
        suffix = uuid.uuid4().hex[:5]
        pod_name = f"{name}-{index}-{suffix}" if indexed else f"{name}-{suffix}"
        obj = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {
                "name": pod_name,
                "namespace": self.namespace,
                "labels": labels,
                "annotations": annotations,
                "ownerReferences": [
                    {
                        "apiVersion": "batch/v1",
                        "kind": "Job",
                        "name": name,
                        "uid": state.uid,
                        "controller": True,
                        "blockOwnerDeletion": True,
                    }
                ],
            },
            "spec": {**pod_spec, "nodeName": "127.0.0.1"},
            "status": {"phase": "Pending", "podIP": "127.0.0.1", "hostIP": "127.0.0.1"},
        }
        self._api("POST", self._path("pods"), obj)
        pod = PodRun(pod_name, name, index, self.root / "pods" / pod_name, obj)
        pod.folder.mkdir(parents=True, exist_ok=True)
        self.pods[pod_name] = pod
        return pod

    def _launch(self, pod: PodRun, state: _JobState) -> None:
        """Configure and start the container (after its native sidecars, once their startup
        probes pass); a missing reference leaves the pod Pending."""
        try:  # sidecars first: their declared ports are rewritten in the main container too
            sidecars = [
                (c, *self._container_process(pod, state, c))
                for c in _native_sidecars(pod.obj["spec"])
            ]
            argv, env, cwd = self._container_process(pod, state, _container(pod.obj["spec"]))
        except ks.ConfigError as exc:
            if pod.config_error != str(exc):
                pod.config_error = str(exc)
                waiting = {"reason": "CreateContainerConfigError", "message": str(exc)}
                self._patch_pod(pod, _container_status(pod, {"waiting": waiting}, "Pending"))
            self._wake_at(time.monotonic() + 0.5)
            return
        pod.config_error = ""
        pod.argv, pod.env = argv, env
        if not sidecars:
            self._start(pod, argv, env, cwd)
            return
        for container, *process in sidecars:
            log_path = pod.folder / f"{container['name']}.log"
            with open(log_path, "ab") as out:
                pod.sidecars.append(_popen(process, out))
        waiting = {"reason": "PodInitializing"}
        self._patch_pod(pod, _container_status(pod, {"waiting": waiting}, "Pending"))
        threading.Thread(
            target=self._start_after_probes,
            args=(pod, state, [c for c, *_ in sidecars], (argv, env, cwd)),
            daemon=True,
        ).start()

    def _start_after_probes(
        self, pod: PodRun, state: _JobState, sidecars: list[dict], main: tuple
    ) -> None:
        """The kubelet's gate: the main container starts once every sidecar's startupProbe
        (httpGet) passed. A sidecar that exits or a probe past its failureThreshold fails the
        pod here (the kubelet would restart the sidecar until the pod's deadline)."""
        for container, proc in zip(sidecars, pod.sidecars, strict=True):
            probe = container.get("startupProbe") or {}
            http = probe.get("httpGet")
            if http is None:
                continue
            port = state.ports.get(str(http["port"]), str(http["port"]))
            url = f"http://127.0.0.1:{port}{http.get('path', '/')}"
            limit = probe.get("periodSeconds", 10) * probe.get("failureThreshold", 3)
            deadline = time.monotonic() + limit
            while not _http_ok(url):
                if pod.terminated:
                    return
                if proc.poll() is not None or time.monotonic() > deadline:
                    message = f"sidecar {container['name']}: startup probe failed"
                    self._fail_unstarted(pod, 1, message)
                    return
                time.sleep(0.5)
        with self._lock:
            if not pod.terminated:
                self._start(pod, *main)

    def _start(self, pod: PodRun, argv: list[str], env: dict[str, str], cwd: str) -> None:
        with open(pod.log_path, "ab") as out:
            try:
                pod.proc = _popen((argv, env, cwd), out)
            except OSError as exc:  # the runtime cannot start it: StartError, exit 128
                start_error = str(exc)
        if pod.proc is None:
            self._fail_unstarted(pod, 128, start_error)
            return
        pod.started_at = time.monotonic()
        threading.Thread(target=self._wait, args=(pod,), daemon=True).start()
        running = _container_status(pod, {"running": {"startedAt": now_iso()}}, "Running")
        self._patch_pod(pod, {**running, "startTime": now_iso()})

    def _fail_unstarted(self, pod: PodRun, code: int, message: str) -> None:
        """The main container never started: log why, stop the sidecars, exit ``code``."""
        with open(pod.log_path, "ab") as out:
            out.write(f"{message}\n".encode())
        self._stop_sidecars(pod)
        pod.exit_code = code
        self._exits.put(pod.name)
        self._wake.set()

    def _stop_sidecars(self, pod: PodRun) -> None:
        """The kubelet stops a pod's sidecars once its main container has exited."""
        for proc in pod.sidecars:
            _stop_group(proc, self.grace_s)

    def _container_process(
        self, pod: PodRun, state: _JobState, container: Mapping[str, Any]
    ) -> tuple[list[str], dict[str, str], str]:
        image = self.images.get(container.get("image", ""), self.default_image)
        mounts = self._volumes(pod, container)
        message_path = container.get("terminationMessagePath", DEFAULT_TERMINATION_PATH)
        message_file = pod.folder / "termination-log"
        message_file.write_text("")
        mounts.append((message_path, str(message_file)))
        for port in container.get("ports") or []:
            key = str(port["containerPort"])
            state.ports.setdefault(key, str(free_port()))
        rewrite = Rewrites(tuple(mounts), self._hosts(pod), dict(state.ports))
        declared = ks.container_env(container, pod.obj, self._lookup)
        declared = {k: rewrite(v) for k, v in declared.items()}
        home = pod.folder / "home"
        home.mkdir(exist_ok=True)
        hostname = pod.obj["spec"].get("hostname") or pod.name
        env = {
            "PATH": f"{image.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}",
            "HOME": str(home),
            "HOSTNAME": hostname,
            **image.env,
            **declared,
        }
        words = [*(container.get("command") or []), *(container.get("args") or [])]
        argv = [rewrite(ks.expand(word, declared)) for word in words]
        if not argv:
            raise ks.ConfigError("the container has no command (image entrypoints not emulated)")
        program = shutil.which(argv[0], path=env["PATH"]) or argv[0]  # else: StartError
        working = container.get("workingDir")
        cwd = rewrite(working) if working else str(home)
        return [program, *argv[1:]], env, cwd

    def _volumes(self, pod: PodRun, container: Mapping[str, Any]) -> list[tuple[str, str]]:
        folders: dict[str, Path] = {}
        for volume in pod.obj["spec"].get("volumes") or []:
            name = volume["name"]
            if "persistentVolumeClaim" in volume:
                folder = self.root / "pvc" / volume["persistentVolumeClaim"]["claimName"]
            else:
                folder = pod.folder / "volumes" / name
            folder.mkdir(parents=True, exist_ok=True)
            for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
                if key in volume:
                    ref = volume[key]
                    ref_name = ref.get("name") or ref.get("secretName")
                    data = self._lookup(kind, ref_name)
                    if data is None:
                        raise ks.ConfigError(f'{kind.lower()} "{ref_name}" not found')
                    for item, text in data.items():
                        (folder / item).write_text(text)
            folders[name] = folder
        mounts = []
        for mount in container.get("volumeMounts") or []:
            if mount["name"] not in folders:
                raise ks.ConfigError(f"volume {mount['name']!r} is not declared")
            folder = folders[mount["name"]] / mount.get("subPath", "")
            mounts.append((mount["mountPath"], str(folder)))
        return mounts

    def _hosts(self, pod: PodRun) -> tuple[str, ...]:
        subdomain = pod.obj["spec"].get("subdomain")
        if not subdomain or not self._exists("services", subdomain):
            return ()
        tracker = self._jobs[pod.job].tracker
        return host_names(pod.job, tracker.completions, subdomain, self.namespace)

    def _exists(self, plural: str, name: str) -> bool:
        try:
            self._api("GET", self._path(plural, name))
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    def _lookup(self, kind: str, name: str) -> dict[str, str] | None:
        plural = {"Secret": "secrets", "ConfigMap": "configmaps"}[kind]
        try:
            obj = self._api("GET", self._path(plural, name))
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        data = dict(obj.get("data") or {})
        if kind == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in data.items()}
            data.update(obj.get("stringData") or {})
        return data

    def _wait(self, pod: PodRun) -> None:
        assert pod.proc is not None
        code = pod.proc.wait()
        pod.ended_at = time.monotonic()
        self._stop_sidecars(pod)
        pod.exit_code = 128 - code if code < 0 else code  # killed by a signal: 128 + signal
        self._exits.put(pod.name)
        self._wake.set()

    def _reap(self) -> None:
        """Finished containers: write the pod's terminated state, update its Job's tracker."""
        while True:
            try:
                pod = self.pods[self._exits.get_nowait()]
            except queue.Empty:
                return
            if pod.terminated:
                continue
            assert pod.exit_code is not None
            pod.message = self._termination_message(pod)
            container = pod.obj["spec"]["containers"][0]["name"]
            ok = pod.exit_code == 0
            terminated = {
                "exitCode": pod.exit_code,
                "reason": "Completed" if ok else "Error",
                "message": pod.message,
                "finishedAt": now_iso(),
            }
            phase = "Succeeded" if ok else "Failed"
            self._patch_pod(pod, _container_status(pod, {"terminated": terminated}, phase))
            state = self._jobs.get(pod.job)
            if state is None:
                continue
            if ok:
                state.tracker.pod_succeeded(pod.index)
            else:
                conditions = frozenset({"DisruptionTarget"} if pod.disrupted else ())
                exit_ = ks.PodExit(
                    pod.exit_code, container, conditions, f"{self.namespace}/{pod.name}"
                )
                state.tracker.pod_failed(pod.index, exit_)
                state.not_before[pod.index] = time.monotonic() + self.retry_delay_s

    def _termination_message(self, pod: PodRun) -> str:
        container = pod.obj["spec"]["containers"][0]
        raw = (pod.folder / "termination-log").read_bytes()[:MESSAGE_LIMIT]
        text = raw.decode(errors="replace")
        policy = container.get("terminationMessagePolicy", "File")
        if not text.strip() and pod.exit_code != 0 and policy == "FallbackToLogsOnError":
            tail = pod.log_tail(LOG_FALLBACK_LINES).encode()[-LOG_FALLBACK_BYTES:]
            text = tail.decode(errors="replace")
        return text

    def _patch_pod(self, pod: PodRun, status: dict[str, Any]) -> None:
        pod.obj["status"].update(status)
        self._api("PATCH", self._path("pods", pod.name), {"status": status}, merge=True)

    def _kill(self, pod: PodRun) -> None:
        """SIGTERM the pod's process groups, SIGKILL after the grace period."""
        if pod.proc is not None:
            _stop_group(pod.proc, self.grace_s)
        self._stop_sidecars(pod)

    def _terminate(self, pod: PodRun) -> None:
        """The Job controller removes an active pod (Job failed, suspended or deleted)."""
        if pod.terminated or pod.exit_code is not None:
            return
        pod.terminated = True
        self._kill(pod)
        with contextlib.suppress(ApiException):
            self._api("DELETE", self._path("pods", pod.name))

    # --- Job status --------------------------------------------------------------------------

    def _write_status(self, name: str, state: _JobState, suspended: bool) -> None:
        tracker = state.tracker
        status = tracker.status()
        status["ready"] = len(self.running(name))  # a started container counts as Ready
        if state.start_time:
            status["startTime"] = state.start_time
        conditions = []
        if suspended and not tracker.finished:
            conditions.append(_condition("Suspended", "JobSuspended", "Job suspended"))
        if tracker.verdict is not None:
            kind, reason, message = tracker.verdict
            first = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
            conditions += [_condition(first, reason, message), _condition(kind, reason, message)]
        status["conditions"] = conditions
        if state.written is not None and _same(state.written, status):
            return
        if tracker.verdict is not None and tracker.verdict[0] == "Complete":
            status["completionTime"] = now_iso()
        path = self._path("jobs", f"{name}/status", group="apis/batch/v1")
        self._api("PATCH", path, {"status": status}, merge=True)
        state.written = status


def _same(old: Mapping[str, Any], new: Mapping[str, Any]) -> bool:
    def strip(status: Mapping[str, Any]) -> dict[str, Any]:
        kept = {k: v for k, v in status.items() if k != "completionTime"}
        kept["conditions"] = [
            {k: v for k, v in c.items() if k != "lastTransitionTime"} for c in kept["conditions"]
        ]
        return kept

    return strip(old) == strip(new)


def _condition(kind: str, reason: str, message: str) -> dict[str, str]:
    return {
        "type": kind,
        "status": "True",
        "reason": reason,
        "message": message,
        "lastTransitionTime": now_iso(),
    }


def _container_status(pod: PodRun, state: dict[str, Any], phase: str) -> dict[str, Any]:
    """A pod status with its one container in `state` (waiting, running or terminated)."""
    name = pod.obj["spec"]["containers"][0]["name"]
    return {
        "phase": phase,
        "containerStatuses": [
            {"name": name, "ready": "running" in state, "restartCount": 0, "state": state}
        ],
    }


def _popen(process: tuple[list[str], dict[str, str], str], out) -> subprocess.Popen:
    argv, env, cwd = process
    return subprocess.Popen(
        argv,
        env=env,
        cwd=cwd,
        stdout=out,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
    )


def _stop_group(proc: subprocess.Popen, grace_s: float) -> None:
    """SIGTERM a process group, SIGKILL after the grace period."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace_s)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(10)


def _http_ok(url: str) -> bool:
    import urllib.error
    import urllib.request

    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status == 200
    except (urllib.error.URLError, OSError):
        return False


def _native_sidecars(pod_spec: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Init containers with `restartPolicy: Always`; other init containers are not emulated."""
    init = pod_spec.get("initContainers") or []
    if any(c.get("restartPolicy") != "Always" for c in init):
        raise ks.ConfigError("the executor runs native sidecars only (restartPolicy: Always)")
    return list(init)


def _container(pod_spec: Mapping[str, Any]) -> dict[str, Any]:
    containers = pod_spec.get("containers") or []
    if len(containers) != 1:
        raise ks.ConfigError("the executor runs pods of exactly one container")
    return containers[0]


def _finished(job: Mapping[str, Any]) -> bool:
    return any(
        c.get("type") in ("Complete", "Failed") and c.get("status") == "True"
        for c in (job.get("status") or {}).get("conditions") or []
    )


@pytest.fixture()
def job_executor(cluster: ClusterHandle, tmp_path: Path) -> Iterator[Callable[..., JobExecutor]]:
    """`job_executor(namespace, **options)`: an executor running for the rest of the test."""
    started: list[JobExecutor] = []

    def start(namespace: str, **options: Any) -> JobExecutor:
        executor = JobExecutor(cluster, namespace, tmp_path / f"executor-{namespace}", **options)
        started.append(executor.__enter__())
        return executor

    yield start
    for executor in reversed(started):
        executor.__exit__(None, None, None)
