"""Same seed ⇒ same episode log; an interrupted search resumes to exactly the uninterrupted log."""
from __future__ import annotations

import csv

import pytest

import agmc_env  # noqa: F401  (registers the ids, AGMCTest-Tiny-v0 too)
from agents.search import SearchConfig, run_search


def _log(folder):
    return [(r["reward"], r["keep_ratios"], r["flops_ratio"]) for r in csv.DictReader(open(folder / "episodes.csv"))]


def _config(algo, embedding, baseline=False, **extra):
    return SearchConfig("AGMCTest-Tiny-v0", algo=algo, embedding=embedding, episodes=7, warmup=2, seed=3,
                        reward_baseline=baseline, **extra)


def test_same_seed_same_log(tmp_path):
    run_search(_config("ddpg", "gnn"), tmp_path / "a", progress=False)
    run_search(_config("ddpg", "gnn"), tmp_path / "b", progress=False)
    assert _log(tmp_path / "a") == _log(tmp_path / "b")


LEGACY_SETTINGS = {"credit": "terminal", "exploration": "amc", "actor_lr": None}  # AGMC's, before the defaults moved


@pytest.mark.parametrize("algo, embedding, baseline, extra", [
    ("ddpg", "gnn", False, {}), ("td3", "amc", True, {}), ("sac", "gnn-lstm", False, {}),
    ("ddpg", "amc", False, LEGACY_SETTINGS), ("ddpg", "gnn", True, {"reward_scale": True}),
    ("td3", "gnn", True, {"self_imitation": 1.0}), ("ddpg", "gnn", True, {"applied_actions": True}),
    ("ddpg", "amc", True, {"exploration": "adaptive"})])
def test_interrupted_search_resumes_exactly(tmp_path, killed_after, algo, embedding, baseline, extra):
    config = _config(algo, embedding, baseline, **extra)
    run_search(config, tmp_path / "full", progress=False)
    killed_after(5, lambda: run_search(config, tmp_path / "cut", progress=False))
    assert len(_log(tmp_path / "cut")) == 5
    run_search(config, tmp_path / "cut", progress=False)  # same command again: resumes
    assert _log(tmp_path / "cut") == _log(tmp_path / "full")


def test_extending_a_finished_run(tmp_path):
    short = _config("td3", "amc")
    short.episodes = 4
    run_search(short, tmp_path, progress=False)
    run_search(_config("td3", "amc"), tmp_path, progress=False)
    assert len(_log(tmp_path)) == 7
