"""The tables' fine-tuned rows: the best search is chosen by reward split, a start replays its policy exactly, and a
row's result reads back what ``agmc finetune`` did."""
from __future__ import annotations

import json

import pytest
import torch

from agents.searchers import run_baseline
from benchmarks import finetune_rows as fr

ENV = "AGMCTest-Tiny-v0"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    for name, method, seed in (("random-s0", "random", 0), ("random-s1", "random", 1), ("uniform-s0", "uniform", 0)):
        run_baseline(method, ENV, root / name, episodes=4, seed=seed, progress=False)
    return root


def test_every_policy_start_and_distillation_is_planned():
    rows = fr.planned((fr.BEST_SEARCH, "uniform"))
    assert len(rows) == len(set(rows)) == 8
    assert {r.folder(fr.Path("x"), 20).name for r in rows} >= {"best-search-lstsq-e20", "uniform-none-distill-e20"}


def test_best_run_is_the_highest_reward_split_accuracy(runs):
    folders = [runs / "random-s0", runs / "random-s1"]
    accuracy = {f: json.loads((f / "best.json").read_text())["accuracy"] for f in folders}
    assert fr.best_run(folders) == max(folders, key=accuracy.get)
    assert fr.best_run([]) is None


def test_a_start_replays_the_runs_best_policy(runs, tmp_path):
    best = json.loads((runs / "random-s0" / "best.json").read_text())
    path = fr.start_checkpoint(runs / "random-s0", best["env_kwargs"].get("repair", "lstsq"), tmp_path / "s.pt",
                               log=lambda *_: None)
    meta = torch.load(path, weights_only=False)["meta"]
    assert meta["accuracy"] == best["accuracy"] and meta["flops_ratio"] == pytest.approx(best["flops_ratio"])
    unrepaired = fr.start_checkpoint(runs / "random-s0", "none", tmp_path / "n.pt", log=lambda *_: None)
    assert torch.load(unrepaired, weights_only=False)["meta"]["env_kwargs"]["repair"] == "none"
    assert fr.start_checkpoint(runs / "random-s0", "none", tmp_path / "n.pt") == unrepaired  # made once
    with pytest.raises(FileExistsError, match="replays random-s0's policy, not random-s1's: delete it"):
        fr.start_checkpoint(runs / "random-s1", "none", tmp_path / "n.pt")  # the best search was chosen again


def test_a_row_runs_once_and_reports_its_epochs(runs, tmp_path):
    row = fr.FinetuneRow("uniform", "none", distill=True)
    assert fr.result(row, tmp_path, 1) is None
    fr.run(row, runs / "uniform-s0", tmp_path, 1, log=lambda *_: None)
    result = fr.result(row, tmp_path, 1)
    assert result["epochs"] == 1 and result["source"] == "uniform-s0" and result["precision"] in ("fp32", "bf16")
    assert 0 <= result["before"] <= 1 and 0 <= result["after"] <= 1
    mtime = (row.folder(tmp_path, 1) / "finetuned.pt").stat().st_mtime
    fr.run(row, runs / "uniform-s0", tmp_path, 1, log=lambda *_: None)  # finished: left as it is
    assert (row.folder(tmp_path, 1) / "finetuned.pt").stat().st_mtime == mtime


def test_the_table_runs_only_the_fine_tuned_rows_asked_for(tmp_path, capsys):
    from benchmarks import table

    common = ["smoke", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    with pytest.raises(SystemExit, match="unknown fine-tuned rows"):
        table.main([*common, "--finetune-only", "--finetune-rows", "uniform-lstsq-kd"])
    table.main([*common, "--sequential", "--skip-finetune", "--methods", "uniform"])
    searched = sorted(p.name for p in (tmp_path / "runs" / "smoke").iterdir())
    table.main([*common, "--finetune-only", "--finetune-rows", "uniform-none-distill"])
    assert sorted(p.name for p in (tmp_path / "runs" / "smoke").iterdir()) == sorted([*searched, "finetune"])
    done = [p.name for p in (tmp_path / "runs" / "smoke" / "finetune").iterdir() if p.name != "starts"]
    assert done == ["uniform-none-distill-e1"]  # no search ran, one row fine-tuned
    rendered = (tmp_path / "results" / "smoke.md").read_text()
    assert "| uniform (uniform-s0) | not repaired | yes | " in rendered and "| 1/1 |" in rendered


def test_the_best_search_is_pinned_by_its_first_choice(runs, tmp_path):
    folders = [runs / "random-s0", runs / "random-s1"]
    first = fr.pinned_best_run(folders, tmp_path)
    assert first == fr.best_run(folders)
    other = next(f for f in folders if f != first)
    assert fr.pinned_best_run([other, first], tmp_path) == first  # a later, better run would not move it
    with pytest.raises(FileNotFoundError, match="best-search.json"):
        fr.pinned_best_run([other], tmp_path)


def test_a_row_whose_run_folder_is_gone_replays_the_recorded_policy(tmp_path):
    """On another machine only the committed records exist: the pinned best search and uniform start from their
    recorded keep ratios."""
    import shutil

    from benchmarks import table

    common = ["smoke", "--runs", str(tmp_path / "runs"), "--results", str(tmp_path / "results")]
    table.main([*common, "--sequential", "--skip-finetune", "--methods", "uniform,random"])
    table.main([*common, "--finetune-only", "--finetune-rows", "best-search-none"])  # pins the best search
    records = tmp_path / "results" / "records" / "smoke"
    pinned = json.loads((records / "finetune" / "best-search.json").read_text())["run"]
    shutil.rmtree(tmp_path / "runs")
    table.main([*common, "--finetune-only", "--finetune-rows", "best-search-lstsq,uniform-none"])
    finetune = tmp_path / "runs" / "smoke" / "finetune"
    for run, start in ((pinned, "best-search-lstsq"), ("uniform-s0", "uniform-none")):
        recorded = json.loads((records / f"{run}.json").read_text())["keep_ratios"]
        assert json.loads((finetune / "from-records" / run / "best.json").read_text())["keep_ratios"] == recorded
        meta = torch.load(finetune / "starts" / f"{start}.pt", weights_only=False)["meta"]
        assert meta["keep_ratios"] == pytest.approx(recorded)
    rendered = (tmp_path / "results" / "smoke.md").read_text()
    assert f"| best search ({pinned}) | repaired | no | " in rendered
    assert "| uniform (uniform-s0) | not repaired | no | " in rendered
    assert "ρ = nan" not in rendered  # a few tiny runs may all score alike: ρ is then said to be undefined


def test_a_rows_precision_names_each_change_in_order():
    assert fr.precision([{"precision": "bf16"}, {"precision": "bf16"}, {"precision": "fp32"}]) == "bf16 → fp32"
    assert fr.precision([{"precision": "fp32"}]) == "fp32"
    assert fr.precision([{"epoch": 1}]) == "?"  # recorded before the precision was
