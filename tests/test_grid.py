"""The benchmark grid as Ray Tune trials: the same table as the in-process path, and a run whose process is
killed is retried and continues from its folder."""
from __future__ import annotations

import csv
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from benchmarks import table  # noqa: E402

TWO = "random,amc+ddpg"  # a baseline and an RL search: both resume paths


@pytest.fixture(scope="module", autouse=True)
def local_ray():
    """One Ray for the module (it takes seconds to start); the grid joins an already started Ray."""
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.fixture(autouse=True)
def restore_dirs(monkeypatch):
    """``main`` reassigns the module's RUNS / RESULTS; put them back after each test."""
    monkeypatch.setattr(table, "RUNS", table.RUNS)
    monkeypatch.setattr(table, "RESULTS", table.RESULTS)


def _rows(path: Path, drop: set[str]) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return [{k: v for k, v in r.items() if k not in drop} for r in csv.DictReader(f)]


def test_ray_grid_writes_the_same_table_as_the_sequential_path(tmp_path):
    for way, flags in (("seq", ["--sequential"]), ("ray", [])):
        table.main(["smoke", *flags, "--cpus-per-run", "1", "--methods", TWO, "--skip-finetune",
                    "--runs", str(tmp_path / way / "runs"), "--results", str(tmp_path / way / "results")])
    timing = {"search_seconds", "machine"}
    seq, via_ray = (_rows(tmp_path / w / "results" / "smoke.csv", timing) for w in ("seq", "ray"))
    assert len(seq) == 4 and seq == via_ray  # 2 methods × 2 seeds, the same numbers
    for folder in (tmp_path / "seq" / "runs" / "smoke").iterdir():
        if folder.is_dir():  # and the same episodes, action for action
            ray_folder = tmp_path / "ray" / "runs" / "smoke" / folder.name
            assert _rows(folder / "episodes.csv", {"seconds"}) == _rows(ray_folder / "episodes.csv", {"seconds"})
    machines = {json.loads((f / "machine.json").read_text())["sessions"][-1]["runs_in_parallel"]
                for f in (tmp_path / "ray" / "runs" / "smoke").glob("*-s*")}
    assert machines == {2}  # two 1-CPU trials at once on the 2 CPUs


def _kill_one_mid_run(runs: Path, episodes: int, killed: dict, stop: threading.Event) -> None:
    """SIGKILLs the first trial process seen between its first and its last episodes."""
    while not stop.is_set() and not killed:
        for lock in runs.glob("*/*/.lock"):
            try:
                pid = int(lock.read_text().split()[0])
                rows = len(_rows(lock.parent / "episodes.csv", set()))
            except (OSError, ValueError):
                continue
            if pid != os.getpid() and 1 <= rows <= episodes - 5:
                os.kill(pid, signal.SIGKILL)
                killed.update(folder=lock.parent, rows=rows)
                return
        time.sleep(0.02)


def test_a_killed_trial_is_retried_and_the_table_is_complete(tmp_path, monkeypatch):
    episodes = 40  # long enough to be caught mid-run on the tiny env
    config = table.GridConfig("smoke_kill", "AGMCTest-Tiny-v0", "tiny", episodes=episodes, warmup=2, seeds=(0,))
    monkeypatch.setattr(table, "RUNS", tmp_path / "runs")
    monkeypatch.setattr(table, "RESULTS", tmp_path / "results")
    killed: dict = {}
    stop = threading.Event()
    killer = threading.Thread(target=_kill_one_mid_run, args=(tmp_path / "runs", episodes, killed, stop))
    killer.start()
    try:
        table.execute(config, finetune=False, only=set(TWO.split(",")), cpus_per_run=1, max_failures=2)
    finally:
        stop.set()
        killer.join()
    assert killed, "no run was caught mid-way: the tiny runs finished too fast"
    log = _rows(killed["folder"] / "episodes.csv", set())
    assert [int(r["episode"]) for r in log] == list(range(episodes))  # continued: none lost, none twice
    assert len(json.loads((killed["folder"] / "machine.json").read_text())["sessions"]) == 2  # it was restarted
    table.render(config, [])
    assert [r["method"] for r in _rows(tmp_path / "results" / "smoke_kill.csv", set())] == ["random", "amc+ddpg"]


def test_the_settings_sweep_ranks_seeded_samples_on_the_reward_split(tmp_path):
    from benchmarks import sweep

    args = ["smoke", "--samples", "2", "--episodes", "4", "--cpus-per-run", "1", "--runs", str(tmp_path / "runs"),
            "--results", str(tmp_path / "results")]
    sweep.main(args)
    rows = _rows(tmp_path / "results" / "sweep_smoke.csv", set())
    assert len(rows) == 2 and float(rows[0]["val_accuracy"]) >= float(rows[1]["val_accuracy"])
    for row in rows:
        assert len(_rows(Path(row["folder"]) / "episodes.csv", set())) == 4
        assert not (Path(row["folder"]) / "test.json").exists()  # scored on the reward split only
    assert "| rank | reward-split acc. (%)" in (tmp_path / "results" / "sweep_smoke.md").read_text()
    sweep.main(args)  # the same command draws the same samples: their finished folders are reused
    assert sorted(r["folder"] for r in _rows(tmp_path / "results" / "sweep_smoke.csv", set())) == \
        sorted(r["folder"] for r in rows)
