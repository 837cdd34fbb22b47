"""The settings comparison: one row per arm of run folders, plus rows from a grid table's committed records."""
from __future__ import annotations

from agents.searchers import run_baseline
from benchmarks import compare_runs, records, table


def test_arms_and_recorded_grid_rows_side_by_side(tmp_path, monkeypatch):
    for seed in (0, 1):
        run_baseline("random", "AGMCTest-Tiny-v0", tmp_path / "runs" / f"random-s{seed}", episodes=3, seed=seed,
                     progress=False)
    monkeypatch.setattr(table, "RESULTS", tmp_path / "results")
    config = table.preset("smoke")
    for seed, acc in ((0, 0.5), (1, 0.7)):
        records.write(table._record_path(config, table.method_named("gnn+ddpg"), seed),
                      {"seed": seed, "val_accuracy": acc, "macs_kept": 0.495, "test_accuracy": acc - 0.1})
    out = tmp_path / "compare.md"
    compare_runs.main([str(tmp_path / "runs"), "--out", str(out), "--grid", "smoke:gnn+ddpg"])
    text = out.read_text()
    assert "| random | `{\"algo\": \"random\"}` | 2 |" in text
    assert "| grid: gnn+ddpg | `smoke` table records | 2 | 60.00 ± 14.14 (s0: 50.0, s1: 70.0) | – | 0.4950–0.4950 | 50.00 ± 14.14 |" in text
