"""`helm test` GPU smoke check: a tiny one-round EvoQualityRun on the real stage images.

Runs in the operator image (it has evoquality, boto3 and the kubernetes client):
1. builds a few SynIQA images with `evoquality syniqa` and uploads them to SMOKE_DATA_URI (s3://);
2. (re)creates the EvoQualityRun from SMOKE_RUN_FILE in SMOKE_NAMESPACE;
3. waits until its phase is Succeeded (exit 0), Failed (exit 1, with its conditions) or the
   deadline SMOKE_TIMEOUT_S passes (exit 1).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

GROUP, VERSION, PLURAL = "evoquality.io", "v1alpha1", "evoqualityruns"
POLL_S = 10.0


def log(message: str) -> None:
    print(f"[gpu-smoke] {message}", flush=True)


def split_s3(uri: str) -> tuple[str, str]:
    """s3://bucket/prefix -> (bucket, prefix without slashes at either end)."""
    if not uri.startswith("s3://") or len(uri) <= 5:
        raise ValueError(f"not an s3:// URI: {uri!r}")
    bucket, _, prefix = uri[5:].partition("/")
    return bucket, prefix.strip("/")


def upload_dir(local: Path, uri: str, endpoint: str | None) -> int:
    import boto3

    bucket, prefix = split_s3(uri)
    client = boto3.client("s3", endpoint_url=endpoint or None)
    count = 0
    for path in sorted(local.rglob("*")):
        if path.is_file():
            key = "/".join(p for p in (prefix, path.relative_to(local).as_posix()) if p)
            client.upload_file(str(path), bucket, key)
            count += 1
    return count


def verdict(status: dict | None) -> str | None:
    """'ok' when Succeeded, 'failed' when Failed, None while the run goes on."""
    phase = (status or {}).get("phase")
    if phase == "Succeeded":
        return "ok"
    if phase == "Failed":
        return "failed"
    return None


def describe(status: dict | None) -> str:
    status = status or {}
    lines = [f"phase={status.get('phase')} round={status.get('round')} stage={status.get('stage')}"]
    for cond in status.get("conditions") or []:
        lines.append(
            f"  {cond.get('type')}={cond.get('status')} {cond.get('reason', '')}: "
            f"{cond.get('message', '')}"
        )
    return "\n".join(lines)


def main() -> int:
    storage = os.environ.get("SMOKE_STORAGE_URI", "")
    if not storage.startswith("s3://"):
        log(
            "gpuSmoke.storage.uri is not set to an s3:// URI: set it (and gpuSmoke.storage."
            "secretName, a Secret with AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY) with "
            "`helm upgrade --reuse-values --set gpuSmoke.storage.uri=s3://bucket/prefix ...`, "
            "then run `helm test` again"
        )
        return 1
    import yaml
    from kubernetes import client, config
    from kubernetes.client.exceptions import ApiException

    namespace = os.environ["SMOKE_NAMESPACE"]
    endpoint = os.environ.get("AWS_ENDPOINT_URL_S3") or None
    data_uri = os.environ["SMOKE_DATA_URI"]
    deadline = time.monotonic() + float(os.environ.get("SMOKE_TIMEOUT_S", "1800"))

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "syniqa"
        log(f"building SynIQA images in {out}")
        subprocess.run(["evoquality", "syniqa", str(out)], check=True)
        log(f"uploaded {upload_dir(out, data_uri, endpoint)} files to {data_uri}")

    run = yaml.safe_load(Path(os.environ["SMOKE_RUN_FILE"]).read_text())
    name = run["metadata"]["name"]
    config.load_incluster_config()
    api = client.CustomObjectsApi()
    try:
        api.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        log(f"deleted the previous {name}")
        while time.monotonic() < deadline:
            api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
            time.sleep(2)
    except ApiException as exc:
        if exc.status != 404:
            raise
    api.create_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, run)
    log(f"created EvoQualityRun {namespace}/{name}; waiting for Succeeded")

    last = ""
    while time.monotonic() < deadline:
        obj = api.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        status = obj.get("status")
        text = describe(status)
        if text != last:
            log(text)
            last = text
        result = verdict(status)
        if result == "ok":
            log("Succeeded")
            return 0
        if result == "failed":
            log(f"FAILED (kubectl -n {namespace} describe evoqualityrun {name})")
            return 1
        time.sleep(POLL_S)
    log(f"timed out; last status:\n{last}")
    return 1


if __name__ == "__main__":
    sys.exit(main())
