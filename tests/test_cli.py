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


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Finished tiny ddpg and td3 runs, a ddpg run whose checkpoint is td3's (recorded, and as older checkpoints
    without the name), and a plain file."""
    import shutil

    import torch

    root = tmp_path_factory.mktemp("cli")
    for algo in ("ddpg", "td3"):
        assert _search(root / algo, "--algo", algo) == 0
    for name, legacy in (("mixed", False), ("mixed_legacy", True)):
        shutil.copytree(root / "ddpg", root / name)
        ckpt = torch.load(root / "td3" / "checkpoint.pt", weights_only=False)
        if legacy:
            del ckpt["algo"]
        torch.save(ckpt, root / name / "checkpoint.pt")
        run = json.loads((root / name / "run.json").read_text())
        (root / name / "run.json").write_text(json.dumps({**run, "finished": False}))
    (root / "afile").write_text("not a folder")
    return root


# Every bad invocation seen so far (issue 14 and since): ``{d}`` is the folders fixture. Each must print one line
# naming the problem and exit with status 2, never a traceback. Add new cases here; the list only grows.
BAD_INVOCATIONS = [
    (["search", *TINY, "--episodes", "0", "--out", "{d}/e0"], r"argument --episodes: 0 is not an integer ≥ 1"),
    (["search", *TINY, "--episodes", "-1", "--out", "{d}/e1"], r"argument --episodes: -1 is not an integer ≥ 1"),
    (["search", *TINY, "--episodes", "x", "--out", "{d}/ex"], r"argument --episodes: 'x' is not an integer ≥ 1"),
    (["baseline", *TINY, "--method", "random", "--episodes", "0", "--out", "{d}/b0"], r"--episodes: 0 is not"),
    (["search", *TINY, "--warmup", "-3", "--out", "{d}/w"], r"argument --warmup: -3 is not an integer ≥ 0"),
    (["search", *TINY, "--threads", "0", "--out", "{d}/t"], r"argument --threads: 0 is not an integer ≥ 1"),
    (["search", *TINY, "--actor-lr", "0", "--out", "{d}/a"], r"argument --actor-lr: 0 is not a number > 0"),
    (["search", *TINY, "--algo", "random", "--episodes", "0", "--out", "{d}/r0"], r"--episodes: 0 is not"),
    (["search", *TINY, "--val-size", "-5", "--out", "{d}/v"], r"argument --val-size: -5 is not an integer ≥ 1"),
    (["search", *TINY, "--flops-target", "2", "--out", "{d}/f"], r"argument --flops-target: 2 is not a number in"),
    (["search", *TINY, "--flops-target", "nan", "--out", "{d}/f"], r"argument --flops-target: nan is not a number"),
    (["search", *TINY, "--channel-round", "0", "--out", "{d}/c"], r"argument --channel-round: 0 is not an integer"),
    (["search", *TINY, "--calib-size", "0", "--out", "{d}/cs"], r"calib_size=0 leaves no images for BN recal.*"
                                                                r"bn_recalibration=False"),
    (["search", *TINY, "--device", "banana", "--out", "{d}/dev"], r"device='banana' is not a torch device"),
    (["search", *TINY, "--out", "{d}/afile"], r"--out .*afile is a file; give a folder"),
    (["search", *TINY, "--out", "{d}/afile/sub"], r"--out .*afile/sub is under the file .*afile"),
    (["search", *TINY, "--out", "/proc/agmc-out"], r"--out /proc/agmc-out is not writable"),
    (["search", *TINY, "--episodes", "3", "--seed", "3", "--out", "{d}/ddpg"],
     r"holds a different run .*seed=0 there, 3 here"),
    (["search", *TINY, "--episodes", "3", "--warmup", "1", "--out", "{d}/mixed"],
     r"checkpoint\.pt holds a TD3 agent but the run is ddpg"),
    (["search", *TINY, "--episodes", "3", "--warmup", "1", "--out", "{d}/mixed_legacy"],
     r"checkpoint\.pt holds a TD3 agent but the run is ddpg"),
    (["evaluate", "{d}/ddpg/best_pruned.pt", "--split", "val", "--device", "banana"], r"device='banana' is not"),
    (["evaluate", "{d}/ddpg"], r"no checkpoint at"),
    (["finetune", "{d}/ddpg/best_pruned.pt", "--epochs", "-1", "--out", "{d}/ft"], r"--epochs: -1 is not an integer ≥ 0"),
    (["finetune", "{d}/ddpg/best_pruned.pt", "--batch-size", "0", "--out", "{d}/ft"], r"--batch-size: 0 is not an"),
    (["finetune", "{d}/ddpg/best_pruned.pt", "--lr", "-1", "--out", "{d}/ft"], r"--lr: -1 is not a number > 0"),
    (["finetune", "{d}/ddpg/best_pruned.pt", "--weight-decay", "-1", "--out", "{d}/ft"], r"--weight-decay: -1 is not"),
    (["finetune", "{d}/ddpg/best_pruned.pt", "--device", "banana", "--out", "{d}/ft"], r"device='banana' is not"),
    (["finetune", "{d}/ddpg/best_pruned.pt", "--out", "{d}/afile"], r"--out .*afile is a file"),
]


@pytest.mark.parametrize("argv, match", BAD_INVOCATIONS, ids=[" ".join(a[:1] + a[3:6]) for a, _ in BAD_INVOCATIONS])
def test_bad_invocation_is_one_line_and_status_2(folders, argv, match, capsys):
    import re

    argv = [a.replace("{d}", str(folders)) for a in argv]
    try:
        status = main(argv)
    except SystemExit as exc:  # argparse's own refusals
        status = exc.code
    err = capsys.readouterr().err
    assert status == 2
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    assert re.search(match, err), err
    assert not (folders / "e0").exists() and not (folders / "dev").exists()  # refused runs leave no folder


@pytest.mark.parametrize("method, package", [("cmaes", "cma"), ("tpe", "optuna")])
def test_a_missing_searcher_package_says_how_to_install_it_and_writes_nothing(tmp_path, monkeypatch, capsys, method,
                                                                               package):
    import sys

    monkeypatch.setitem(sys.modules, package, None)  # import fails as if it were not installed
    assert main(["search", *TINY, "--algo", method, "--episodes", "2", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and f"needs the '{package}' package: pip install" in err, err
    assert not (tmp_path / "run").exists()


def test_rl_settings_given_to_a_whole_episode_searcher_are_refused(tmp_path, capsys):
    argv = ["search", *TINY, "--algo", "cmaes", "--episodes", "2", "--out", str(tmp_path / "run")]
    assert main([*argv, "--embedding", "gnn-lstm", "--no-reward-baseline"]) == 2
    err = capsys.readouterr().err
    assert "--embedding, --reward-baseline: RL settings, which --algo cmaes (a whole-episode searcher) ignores" in err
    assert not (tmp_path / "run").exists()
    assert main([*argv, "--embedding", "gnn"]) == 0  # a default, spelled out, is no setting


def test_zero_episodes_from_python_never_finishes_a_run(tmp_path):
    from agents.run_folder import SearchConfig

    with pytest.raises(ValueError, match="episodes=0 must be an integer ≥ 1"):
        SearchConfig("AGMCTest-Tiny-v0", episodes=0)
    with pytest.raises(ValueError, match="warmup=-3 must be an integer ≥ 0"):
        SearchConfig("AGMCTest-Tiny-v0", warmup=-3)


@pytest.mark.parametrize("field, value, match", [
    ("embedding", "gcn", r"unknown embedding 'gcn'; choose one of \['amc', 'gnn'"),
    ("credit", "final", r"unknown credit 'final'; choose one of \['episode', 'terminal'\]"),
    ("exploration", "ou", r"unknown exploration 'ou'; choose one of \['adaptive', 'amc', 'scaled'\]"),
    ("actor_lr", 0.0, r"actor_lr=0.0 must be a number > 0, or None"),
])
def test_a_python_typo_is_refused_before_it_reaches_a_run_folder(tmp_path, field, value, match):
    """run.json records the config: a typo recorded there would make the corrected rerun 'a different run'."""
    from agents.run_folder import SearchConfig
    from agents.search import run_search

    with pytest.raises(ValueError, match=match):
        run_search(SearchConfig("AGMCTest-Tiny-v0", episodes=1, **{field: value}), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_internal_errors_keep_their_traceback(monkeypatch):
    import agents.cli

    def broken(*args, **kwargs):
        raise KeyError("a bug, not a user error")

    monkeypatch.setattr(agents.cli, "run_search", broken)
    with pytest.raises(KeyError):
        main(["search", *TINY, "--episodes", "1", "--out", "/tmp/agmc-never-written"])
