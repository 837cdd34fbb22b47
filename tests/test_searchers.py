"""Whole-episode searchers (ask / tell): built-in uniform and random, a user's own, and exact resume."""
from __future__ import annotations

import csv
import json
import os

import numpy as np
import pytest

import agmc_env  # noqa: F401  (registers the ids, AGMCTest-Tiny-v0 too)
from agents import run_folder
from agents.run_folder import RunError, SearchConfig
from agents.searchers import RandomSearcher, Searcher, run_baseline, run_searcher


def _log(folder):
    return [(r["reward"], r["keep_ratios"], r["flops_ratio"]) for r in csv.DictReader(open(folder / "episodes.csv"))]


def test_random_search_resumes_exactly(tmp_path, killed_after):
    def run(folder):
        return run_baseline("random", "AGMCTest-Tiny-v0", tmp_path / folder, episodes=6, seed=4, progress=False)

    run("full")
    killed_after(4, lambda: run("cut"))
    assert len(_log(tmp_path / "cut")) == 4
    run("cut")
    assert _log(tmp_path / "cut") == _log(tmp_path / "full")


def test_random_search_draws_the_seeded_plan(tmp_path):
    run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=3, seed=7, progress=False)
    plan = np.random.default_rng(7).uniform(0.0, 1.0, (3, 6))
    logged = [line for line in (tmp_path / "trajectories.jsonl").read_text().splitlines()]
    import json

    assert np.allclose([json.loads(t)["actions"] for t in logged], 2 * plan - 1)


def test_uniform_is_one_episode_at_one_ratio(tmp_path):
    best = run_baseline("uniform", "AGMCTest-Tiny-v0", tmp_path, episodes=50, progress=False)
    assert len(_log(tmp_path)) == 1
    # one ratio (rounded to channel counts per width); the window may raise the last decision to the floor
    assert len(set(best["keep_ratios"][:-1])) <= 2
    assert 0.59 <= best["flops_ratio"] <= 0.6


class Ascending(Searcher):
    """A user's searcher: tries ever larger uniform actions and remembers what it was told."""

    def setup(self, env, seed):
        self.T, self.step, self.told = env.num_decisions, 0, []

    def ask(self):
        self.step += 1
        return np.full(self.T, self.step / 10)

    def tell(self, actions, reward, info):
        self.told.append(reward)

    def state_dict(self):
        return {"step": self.step, "told": list(self.told)}

    def load_state_dict(self, state):
        self.step, self.told = state["step"], state["told"]


def test_a_users_searcher_gets_the_same_run_folder(tmp_path):
    searcher = Ascending()
    config = SearchConfig("AGMCTest-Tiny-v0", algo="ascending", embedding="none", episodes=3, warmup=0)
    best = run_searcher(searcher, config, tmp_path, progress=False)
    rows = list(csv.DictReader(open(tmp_path / "episodes.csv")))
    assert len(rows) == 3 and searcher.told == [float(r["reward"]) for r in rows]
    for name in ("run.json", "best.json", "best_pruned.pt", "checkpoint.pt", "trajectories.jsonl"):
        assert (tmp_path / name).exists(), name
    assert best["algorithm"] == "ascending"
    config.episodes = 5  # extend: the state comes back from the checkpoint
    run_searcher(Ascending(), config, tmp_path, progress=False)
    assert len(list(csv.DictReader(open(tmp_path / "episodes.csv")))) == 5


def test_a_run_killed_before_its_first_checkpoint_starts_its_log_over(tmp_path, monkeypatch):
    def boom(self, state):
        raise KeyboardInterrupt

    monkeypatch.setattr(run_folder.RunFolder, "save_checkpoint", boom)
    with pytest.raises(KeyboardInterrupt):
        run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=3, seed=1, progress=False)
    monkeypatch.undo()
    run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=3, seed=1, progress=False)
    assert [int(r["episode"]) for r in csv.DictReader(open(tmp_path / "episodes.csv"))] == [0, 1, 2]


def test_random_searcher_state_round_trips():
    class Env:
        num_decisions = 4

    a, b = RandomSearcher(), RandomSearcher()
    a.setup(Env(), 3)
    a.ask()
    b.setup(Env(), 99)
    b.load_state_dict(a.state_dict())
    assert np.array_equal(a.ask(), b.ask())


@pytest.mark.parametrize("method", ["cmaes", "tpe"])
def test_library_searchers_resume_exactly(tmp_path, killed_after, method):
    """CMA-ES (mid-population) and TPE continue after a kill exactly as an uninterrupted run."""
    def run(folder):
        return run_baseline(method, "AGMCTest-Tiny-v0", tmp_path / folder, episodes=7, seed=2, progress=False)

    run("full")
    killed_after(4, lambda: run("cut"))
    np.random.seed(123)  # another library drawing from numpy's global RNG between the kill and the resume
    run("cut")
    assert _log(tmp_path / "cut") == _log(tmp_path / "full")


def test_cmaes_tells_whole_populations():
    class Env:
        num_decisions = 3

    from agents.searchers import CMAESSearcher

    s = CMAESSearcher(popsize=4)
    s.setup(Env(), 0)
    for i in range(4):
        x = s.ask()
        assert x.shape == (3,) and np.all((0 <= x) & (x <= 1))
        s.tell(x, float(-np.sum((x - 0.8) ** 2)), {})
    assert s.es.countiter == 1 and len(s.rewards) == 4
    s.ask()
    assert s.rewards == []  # a new population


def test_a_run_whose_env_defaults_changed_is_not_continued_silently(tmp_path):
    run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=2, seed=0, progress=False)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["task_options"]["calib_size"] == 32
    run["task_options"]["calib_size"] = 500  # as if the run had started under another default
    (tmp_path / "run.json").write_text(json.dumps(run))
    with pytest.raises(RunError, match="started with calib_size=500 but the env now gives calib_size=32.*"
                                       "--calib-size 500"):
        run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=3, seed=0, progress=False)


def test_a_run_scored_in_another_precision_is_not_continued_silently(tmp_path):
    """amp='auto' resolves per machine (bf16, int8 or fp32): a run moved to a CPU where it resolves otherwise, or
    started before int8 existed, must not change its reward mid-run; asking for its precision by name continues."""
    run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=2, seed=0, progress=False)
    run = json.loads((tmp_path / "run.json").read_text())
    assert run["task_options"]["scoring"] == "fp32" and run["task_options"]["amp"] == "off"  # the tiny task's
    run["task_options"].update(scoring="int8", amp="auto")  # as if started where auto picked int8
    (tmp_path / "run.json").write_text(json.dumps(run))
    with pytest.raises(RunError, match="scored in int8 but the env now scores in fp32.*--amp int8"):
        run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=3, seed=0, progress=False)
    run["task_options"].update(scoring="fp32")  # the same precision, asked for as auto there, by name here
    (tmp_path / "run.json").write_text(json.dumps(run))
    run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=3, seed=0, progress=False)


def test_two_processes_never_write_one_run_folder(tmp_path):
    """A second process on a run folder that another live process is writing is refused; a dead one's is taken."""
    import subprocess
    import sys

    run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=2, seed=0, progress=False)
    run = json.loads((tmp_path / "run.json").read_text())
    run["finished"] = False
    (tmp_path / "run.json").write_text(json.dumps(run))
    other = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        (tmp_path / ".lock").write_text(str(other.pid))
        with pytest.raises(RunError, match=f"another process \\(pid {other.pid}\\)"):
            run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=3, seed=0, progress=False)
        with pytest.raises(RunError, match=f"another process \\(pid {other.pid}\\)"):  # --force deletes nothing
            run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=3, seed=0, progress=False, force=True)
        assert (tmp_path / "run.json").exists() and (tmp_path / "episodes.csv").exists()
    finally:
        other.kill()
        other.wait()
    run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=3, seed=0, progress=False)  # its owner is gone
    assert not (tmp_path / ".lock").exists()  # released when the run finishes


def test_a_lock_from_another_host_is_taken_over_with_a_warning(tmp_path):
    """A run folder on a shared disk, its Ray trial retried on another node: that host's pid means nothing here."""
    run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=2, seed=0, progress=False)
    run = json.loads((tmp_path / "run.json").read_text())
    run["finished"] = False
    (tmp_path / "run.json").write_text(json.dumps(run))
    (tmp_path / ".lock").write_text(f"{os.getpid()} node-that-died")  # a pid alive here, but on another host
    with pytest.warns(UserWarning, match="last written by pid .* on node-that-died; taking it over"):
        run_baseline("random", "AGMCTest-Tiny-v0", tmp_path, episodes=3, seed=0, progress=False)
