"""Several searches at once never oversubscribe the cores (4 threads on 2 cores slowed a search ~8×)."""
from __future__ import annotations

import os

import pytest
import torch

from agents.cli import main
from benchmarks.table import threads_per_process


@pytest.mark.parametrize("processes", [1, 2, 3, 16])
def test_parallel_grid_threads_fit_the_cores(monkeypatch, processes):
    monkeypatch.setattr(os, "cpu_count", lambda: 8)
    threads = threads_per_process(processes)
    if processes == 1:
        assert threads is None  # one run: torch's default, one thread per core
    else:
        assert threads >= 1 and (processes * threads <= 8 or threads == 1)


def test_an_oversubscribing_thread_count_is_refused(monkeypatch):
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    with pytest.raises(SystemExit, match="oversubscribed.*--threads 1"):
        threads_per_process(2, 2)
    assert threads_per_process(2, 1) == 1


def test_cli_threads_flag_sets_torch_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        assert main(["baseline", "AGMCTest-Tiny-v0", "--method", "uniform", "--no-progress", "--threads", "1",
                     "--out", str(tmp_path)]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
