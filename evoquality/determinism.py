"""CPU determinism for learning runs: a fixed thread count and deterministic torch kernels.

CPU training is reproducible only for one torch build, one instruction set and one thread count:
reductions split across threads sum in another order. The learning checks, their calibration
script and the weak-base recipe run under `pinned_cpu` so that a 1-core and a 2-core machine run
the same float path (docs/self-evolution.md, "Learning checks").
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS")


@contextlib.contextmanager
def pinned_cpu(threads: int = 1) -> Iterator[None]:
    """Run the block with ``threads`` intra-op threads and deterministic torch algorithms.

    Also sets the BLAS/OpenMP thread variables for child processes; everything is restored on
    exit. Inter-op threads are not touched (torch allows setting them once per process only).
    """
    import torch

    if threads < 1:
        raise ValueError(f"threads must be >= 1, not {threads}")
    saved_env = {name: os.environ.get(name) for name in THREAD_ENV}
    saved_threads = torch.get_num_threads()
    saved_deterministic = torch.are_deterministic_algorithms_enabled()
    saved_warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    os.environ.update({name: str(threads) for name in THREAD_ENV})
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True, warn_only=True)
    try:
        yield
    finally:
        torch.set_num_threads(saved_threads)
        torch.use_deterministic_algorithms(saved_deterministic, warn_only=saved_warn_only)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value
