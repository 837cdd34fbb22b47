"""Rule-based and random baselines through the same env, wall and outputs as the RL search.

- ``uniform``: one keep ratio for every decision, the largest (by bisection) whose network fits the
  budget without the wall having to clip anything — the classic hand-made rule.
- ``random``: N episodes of uniformly random actions through the budget wall (seeded), keeping the best.
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import numpy as np

from agents.envs import make_env
from agents.search import Recorder, SearchConfig, _mark_finished, _read_jsonl, prepare_out

METHODS = ("uniform", "random")


def uniform_ratio(env, tol: float = 1e-4) -> float:
    """The largest single keep ratio whose (rounded) counts meet the budget (MACs, or non-zero params)."""
    base = env.unwrapped
    wall = base.wall

    def macs(r: float) -> float:
        return base.kept_cost(np.array([wall.desired(t, r) for t in range(base.num_decisions)]))

    lo, hi = base.lbound, base.rbound
    if macs(hi) <= wall.budget:
        return hi
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if macs(mid) <= wall.budget else (lo, mid)
    return lo


def run_baseline(method: str, env_id: str, out: str | os.PathLike, *, episodes: int = 300, seed: int = 0,
                 env_kwargs: dict[str, Any] | None = None, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """Run (or resume) a baseline; writes the same files as a search and returns the best record."""
    if method not in METHODS:
        raise ValueError(f"unknown baseline method {method!r}; choose one of {METHODS}")
    episodes = 1 if method == "uniform" else episodes
    config = SearchConfig(env_id, algo=method, embedding="none", episodes=episodes, warmup=0, seed=seed,
                          env_kwargs=env_kwargs or {})
    out = Path(out)
    resume = prepare_out(out, config, force=force, kind="baseline")
    env = make_env(env_id, **config.env_kwargs)
    base = env.unwrapped
    span = base.rbound - base.lbound
    if method == "uniform":
        r = uniform_ratio(env)
        plan = np.full((1, base.num_decisions), (r - base.lbound) / span if span > 0 else 1.0)
    else:
        plan = np.random.default_rng(seed).uniform(0.0, 1.0, (episodes, base.num_decisions))
    recorder = Recorder(out, config)
    if resume or (out / "episodes.csv").exists():
        done = len(_read_jsonl(out / "trajectories.jsonl"))
        recorder.truncate_to(done)
        recorder.best = json.loads((out / "best.json").read_text()) if (out / "best.json").exists() else None
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=episodes, initial=recorder.episodes, unit="ep", dynamic_ncols=True)
    for actions in plan[recorder.episodes:]:
        start = time.perf_counter()
        env.reset(seed=seed)
        info: dict[str, Any] = {}
        reward = 0.0
        for a in actions:
            _, reward, *_, info = env.step(np.array([a], dtype=np.float32))
        # Logged in SB3's scaled action units, like the search, so logs are interchangeable.
        recorder.log_episode(info, float(reward), [float(2 * a - 1) for a in actions], time.perf_counter() - start, base)
        if bar is not None:
            bar.set_postfix(best=f"{recorder.best['accuracy']:.4f}", flops=f"{info['flops_ratio']:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    _mark_finished(out, episodes)
    return recorder.best
