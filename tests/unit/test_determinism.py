"""`determinism.pinned_cpu`: the thread count, BLAS variables and deterministic mode inside the
block, everything restored afterwards (also when the block raises)."""

import os

import pytest
import torch

from evoquality.determinism import THREAD_ENV, pinned_cpu


def test_pins_threads_and_restores_them(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setenv("MKL_NUM_THREADS", "7")
    before = torch.get_num_threads()
    target = 1 if before != 1 else 2
    with pinned_cpu(target):
        assert torch.get_num_threads() == target
        assert torch.are_deterministic_algorithms_enabled()
        assert all(os.environ[name] == str(target) for name in THREAD_ENV)
    assert torch.get_num_threads() == before
    assert not torch.are_deterministic_algorithms_enabled()
    assert "OMP_NUM_THREADS" not in os.environ and os.environ["MKL_NUM_THREADS"] == "7"


def test_restores_after_an_error_and_refuses_zero_threads():
    before = torch.get_num_threads()
    with pytest.raises(RuntimeError, match="boom"), pinned_cpu(1):
        raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with pytest.raises(ValueError, match="threads"), pinned_cpu(0):
        pass
