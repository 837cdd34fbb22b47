"""The agmc command line: outputs, baselines, and every refusal with a clear message."""
from __future__ import annotations

import json

import pytest

import agmc_env  # noqa: F401  (registers the ids, AGMCTest-Tiny-v0 too)
from agents.cli import main

TINY = ["AGMCTest-Tiny-v0", "--no-progress"]


def _search(out, *extra):
    return main(["search", *TINY, "--episodes", "3", "--warmup", "1", "--out", str(out), *extra])


def test_search_then_evaluate(tmp_path, capsys):
    assert _search(tmp_path / "r") == 0
    best = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert main(["evaluate", str(tmp_path / "r" / "best_pruned.pt"), "--split", "val"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["accuracy"] == best["accuracy"]
    assert report["flops_ratio"] == pytest.approx(best["flops_ratio"])
    assert report["latency_ms_batch1"] > 0


def test_finished_run_needs_force(tmp_path, capsys):
    assert _search(tmp_path) == 0
    assert _search(tmp_path) == 2
    err = capsys.readouterr().err
    assert "finished run" in err and "--force" in err
    assert _search(tmp_path, "--force") == 0


def test_different_run_in_out_is_refused(tmp_path, capsys):
    assert _search(tmp_path) == 0
    assert _search(tmp_path, "--algo", "td3") == 2
    assert "holds a different run" in capsys.readouterr().err


def test_corrupt_checkpoint_is_named(tmp_path, capsys):
    out = tmp_path / "r"
    main(["search", *TINY, "--episodes", "3", "--warmup", "1", "--out", str(out)])
    run = json.loads((out / "run.json").read_text())
    run["finished"] = False
    (out / "run.json").write_text(json.dumps(run))
    (out / "checkpoint.pt").write_bytes(b"garbage")
    assert _search(out) == 2
    assert "checkpoint.pt is corrupt" in capsys.readouterr().err


@pytest.mark.parametrize("argv, match", [
    (["search", *TINY, "--algo", "ppo", "--out", "x"], "invalid choice: 'ppo'"),
    (["search", *TINY, "--embedding", "gin", "--out", "x"], "invalid choice: 'gin'"),
    (["search", "AGMC-ResNet57-v0", "--out", "x"], r"unknown env id 'AGMC-ResNet57-v0'; choose one of \["),
    (["baseline", *TINY, "--method", "greedy", "--out", "x"], "invalid choice: 'greedy'"),
])
def test_unknown_choices_are_listed(argv, match, capsys):
    with pytest.raises(SystemExit):
        main(argv)
    import re

    assert re.search(match, capsys.readouterr().err)


def test_missing_checkpoint_file(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope.pt")]) == 2
    assert "no checkpoint at" in capsys.readouterr().err


def test_uniform_baseline_is_tight_and_random_logs_n(tmp_path):
    assert main(["baseline", *TINY, "--method", "uniform", "--out", str(tmp_path / "u")]) == 0
    best = json.loads((tmp_path / "u" / "best.json").read_text())
    # one ratio per width's rounding; the budget window may raise the last decision to the floor
    assert len(set(best["keep_ratios"][:-1])) <= 2 and 0.59 <= best["flops_ratio"] <= 0.6
    assert main(["baseline", *TINY, "--method", "random", "--episodes", "4", "--out", str(tmp_path / "r")]) == 0
    assert len((tmp_path / "r" / "episodes.csv").read_text().splitlines()) == 5


def test_finetune_runs_and_saves(tmp_path, capsys):
    assert _search(tmp_path / "r") == 0
    assert main(["finetune", str(tmp_path / "r" / "best_pruned.pt"), "--epochs", "1", "--batch-size", "64",
                 "--out", str(tmp_path / "ft")]) == 0
    assert "epoch 1: test accuracy" in capsys.readouterr().out
    assert (tmp_path / "ft" / "finetuned.pt").exists() and (tmp_path / "ft" / "finetune.csv").exists()
