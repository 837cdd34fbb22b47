"""A table renders from its committed records: it keeps every run and fine-tuned row after their run folders are
gone (a fresh checkout), and a recorded cell is not run again."""
from __future__ import annotations

import json
import shutil

import pytest

from benchmarks import records, table


def _table_lines(path) -> list[str]:
    return [line for line in path.read_text().splitlines() if line.startswith("|")]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory):
    root = tmp_path_factory.mktemp("grid")
    argv = ["smoke", "--runs", str(root / "runs"), "--results", str(root / "results")]
    try:
        table.main([*argv, "--sequential", "--skip-finetune", "--methods", "uniform,random"])
        table.main([*argv, "--finetune-only", "--finetune-rows", "uniform-none"])
    finally:  # main reassigns the module's folders
        table.RUNS, table.RESULTS = table.ROOT / "runs", table.ROOT / "results"
    return root, argv


def test_a_table_outlives_its_run_folders(rendered, monkeypatch):
    root, argv = rendered
    before = _table_lines(root / "results" / "smoke.md")
    assert any(line.startswith("| uniform (uniform-s0) | not repaired | no | ") for line in before)
    shutil.rmtree(root / "runs")
    table.main([*argv, "--render-only"])
    assert _table_lines(root / "results" / "smoke.md") == before
    monkeypatch.setattr(table, "RESULTS", root / "results")
    config = table.preset("smoke")
    assert [(m.name, s) for m, s in table._pending(config, {"uniform", "random"})] == []  # recorded: done


def test_a_record_without_keep_ratios_is_named_not_drawn(rendered, monkeypatch):
    root, argv = rendered
    config = table.preset("smoke")
    monkeypatch.setattr(table, "RESULTS", root / "results")
    method, seed = table.method_named("random"), 1
    path = table._record_path(config, method, seed)
    record = json.loads(path.read_text())
    records.write(path, {**record, "keep_ratios": None, "keep_ratios_in": "an older picture"})
    table.main([*argv, "--render-only"])
    md = (root / "results" / "smoke.md").read_text()
    assert "1 runs' records were rebuilt" in md and "an older picture (1 runs)" in md
    assert "| random | 2/2 |" in md  # still in the table


def test_a_row_whose_policy_is_not_recorded_names_how_to_run_it_again(rendered, capsys, monkeypatch):
    """A record rebuilt without keep ratios cannot stand in for its run folder (a record with them can:
    tests/test_finetune_rows.py)."""
    root, argv = rendered
    monkeypatch.setattr(table, "RESULTS", root / "results")
    path = table._record_path(table.preset("smoke"), table.method_named("uniform"), 0)
    records.write(path, {**json.loads(path.read_text()), "keep_ratios": None, "keep_ratios_in": "an older picture"})
    shutil.rmtree(root / "runs", ignore_errors=True)
    table.main([*argv, "--finetune-only", "--finetune-rows", "uniform-lstsq"])
    out = capsys.readouterr().out
    assert "which this machine does not have" in out and "uniform-s0.json and run" in out and '--methods "uniform"' in out
    assert not (root / "runs" / "smoke" / "finetune" / "uniform-lstsq-e1").exists()  # nothing was fine-tuned


def test_the_late_gain_is_the_best_so_far_rise_after_an_episode():
    curve = [0.50, 0.60, 0.60, 0.70]  # best-so-far after episodes 1..4
    assert table._late_gain(curve, 2) == pytest.approx(0.10)
    assert table._late_gain(curve, 3) == pytest.approx(0.10)
    assert table._late_gain([0.5, 0.5, 0.5], 1) == 0  # frozen
    assert table._late_gain([0.5], 1) is None  # a one-episode rule (uniform) has no second half
