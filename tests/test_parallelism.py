"""Several searches at once never oversubscribe the cores (4 threads on 2 cores slowed a search ~8×): the grid
gives each run its cores' worth of torch threads, and runs without Ray when it is not installed."""
from __future__ import annotations

import importlib.util

import pytest
import torch

from agents.cli import main
from benchmarks import grid, table


def test_cli_threads_flag_sets_torch_threads(tmp_path):
    before = torch.get_num_threads()
    try:
        assert main(["baseline", "AGMCTest-Tiny-v0", "--method", "uniform", "--no-progress", "--threads", "1",
                     "--out", str(tmp_path)]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)


def test_without_ray_the_grid_runs_in_process_and_says_how_to_parallelise(tmp_path, monkeypatch, capsys):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    monkeypatch.setattr(table, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(table, "RESULTS", tmp_path / "results")
    before = torch.get_num_threads()
    try:
        table.main(["smoke", "--methods", "uniform", "--skip-finetune", "--cpus-per-run", "1",
                    "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")])
        assert torch.get_num_threads() == 1  # --cpus-per-run sets the threads in-process too
    finally:
        torch.set_num_threads(before)
    assert 'pip install -e ".[grid]"' in capsys.readouterr().out
    assert (tmp_path / "runs" / "smoke" / "uniform-s0" / "best.json").exists()


def test_more_cpus_per_run_than_a_node_has_is_refused():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        with pytest.raises(SystemExit, match="--cpus-per-run 3: no Ray node has that many.*--cpus-per-run 2"):
            grid.start(None, 3, 0)
        with pytest.raises(SystemExit, match="--gpus-per-run 0.5"):
            grid.start(None, 1, 0.5)
    finally:
        ray.shutdown()
