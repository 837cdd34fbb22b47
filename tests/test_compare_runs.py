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


def test_a_setting_turned_off_against_its_default_is_shown(tmp_path):
    """Off flags are left out of the settings column, except one whose default is on (here the arm's only
    difference)."""
    from agents.run_folder import SearchConfig
    from agents.search import run_search

    for arm, noise in (("default", True), ("uniform-warmup", False)):
        run_search(SearchConfig("AGMCTest-Tiny-v0", embedding="amc", episodes=2, warmup=1, warmup_noise=noise),
                   tmp_path / "runs" / f"{arm}-s0", progress=False)
    out = tmp_path / "compare.md"
    compare_runs.main([str(tmp_path / "runs"), "--out", str(out)])
    rows = {line.split(" | ")[0]: line for line in out.read_text().splitlines() if line.startswith("| ")}
    assert '"warmup_noise": false' in rows["| uniform-warmup"] and '"warmup_noise": true' in rows["| default"]
    assert '"applied_actions"' not in rows["| default"]  # off by default: left out
