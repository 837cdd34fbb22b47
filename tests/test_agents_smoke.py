"""Every algorithm × embedding trains a few episodes on a tiny env and writes every output."""
from __future__ import annotations

import csv
import json

import pytest
import torch

import agmc_env  # noqa: F401  (registers the ids, AGMCTest-Tiny-v0 too)
from agents.checkpoint_io import task_for, load_pruned
from agents.search import SearchConfig, run_search

OUTPUTS = ("run.json", "episodes.csv", "trajectories.jsonl", "best.json", "best_pruned.pt", "checkpoint.pt",
           "agent.zip", "tb")


@pytest.mark.parametrize("embedding", ["gnn", "gnn-lstm", "amc"])
@pytest.mark.parametrize("algo", ["ddpg", "td3", "sac"])
def test_search_writes_all_outputs(tmp_path, algo, embedding):
    best = run_search(SearchConfig("AGMCTest-Tiny-v0", algo=algo, embedding=embedding, episodes=4, warmup=2, seed=0),
                      tmp_path, progress=False)
    for name in OUTPUTS:
        assert (tmp_path / name).exists(), name
    rows = list(csv.DictReader(open(tmp_path / "episodes.csv")))
    assert [int(r["episode"]) for r in rows] == [0, 1, 2, 3]
    assert all(float(r["flops_ratio"]) <= 0.6 for r in rows)
    assert len(json.loads(rows[0]["keep_ratios"])) == 6
    saved = json.loads((tmp_path / "best.json").read_text())
    assert saved["accuracy"] == best["accuracy"] == max(float(r["accuracy"]) for r in rows)
    assert saved["algorithm"] == algo and saved["embedding"] == embedding


def test_best_pruned_evaluates_to_logged_accuracy(tmp_path):
    best = run_search(SearchConfig("AGMCTest-Tiny-v0", algo="td3", embedding="amc", episodes=3, warmup=1, seed=2),
                      tmp_path, progress=False)
    model, meta = load_pruned(tmp_path / "best_pruned.pt")
    task = task_for(meta)
    assert task.evaluator.accuracy(model) == best["accuracy"]
    assert sum(p.numel() for p in model.parameters()) < task.cost.base_params
    assert model(torch.randn(1, 3, 16, 16)).shape == (1, 10)


def test_fine_grained_search_and_uniform_baseline(tmp_path):
    """The same agents drive the fine-grained mode; the best model is exported dense (zeros applied) and sparse."""
    from agents.searchers import run_baseline
    from agmc_env.sparsity import load_sparse, nonzero_params

    kwargs = {"granularity": "fine", "params_target": 0.5, "lbound": 0.1}
    best = run_search(SearchConfig("AGMCTest-Tiny-v0", algo="ddpg", embedding="gnn", episodes=3, warmup=1, seed=0,
                                   env_kwargs=kwargs), tmp_path / "ddpg", progress=False)
    model, meta = load_pruned(tmp_path / "ddpg" / "best_pruned.pt")
    nonzero, _ = nonzero_params(model)
    assert nonzero == best["nonzero_params"] and best["params_ratio"] <= 0.5 and best["flops_ratio"] == 1.0
    task = task_for(meta)
    dense = load_sparse(task.analysis.gm, tmp_path / "ddpg" / "best_sparse.pt")
    assert nonzero_params(dense)[0] == nonzero
    from agents.evaluation import evaluate_checkpoint

    report = evaluate_checkpoint(str(tmp_path / "ddpg" / "best_pruned.pt"), split="val", device="cpu")
    assert report["nonzero_params"] == nonzero and report["accuracy"] == best["accuracy"]
    uniform = run_baseline("uniform", "AGMCTest-Tiny-v0", tmp_path / "uniform", env_kwargs=kwargs, progress=False)
    assert 0.45 <= uniform["params_ratio"] <= 0.5  # one density for every layer, as high as the budget allows
