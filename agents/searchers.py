"""Searchers that propose whole episodes: one action per decision at once, then are told the result.

The interface (:class:`Searcher`) is ask / tell plus a state for exact resume; :func:`run_searcher` plays
the proposals through the env (the same budget wall, the same episode-end pipeline) and writes the same
run folder, ``episodes.csv``, best export and checkpoint as an RL search. Uniform and random search are
built in (``SEARCHERS``); any object with these methods can be passed from Python::

    class MySearcher(Searcher):
        def setup(self, env, seed): self.rng = np.random.default_rng(seed); self.T = env.num_decisions
        def ask(self): return self.rng.uniform(0.3, 1.0, self.T)
        def tell(self, actions, reward, info): ...
        def state_dict(self): return {"rng": self.rng.bit_generator.state}
        def load_state_dict(self, state): self.rng.bit_generator.state = state["rng"]

    run_searcher(MySearcher(), SearchConfig("AGMC-ResNet20-v0", algo="mine", embedding="none", episodes=100), "runs/x")

Actions are in the env's action units ([0, 1] per decision, mapped to ``[lbound, rbound]``); RL agents
keep SB3's own step-by-step loop (``agents.search``).
"""
from __future__ import annotations

import os
import time
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from agents.envs import make_env
from agents.run_folder import RunFolder, SearchConfig


class Searcher(ABC):
    """Proposes action vectors (one action in [0, 1] per decision) and learns from their rewards."""

    #: how many proposals the searcher makes at most (None: as many as the run's episodes)
    max_episodes: int | None = None

    @abstractmethod
    def setup(self, env, seed: int) -> None:
        """Called once per run before anything else, with the unwrapped env (its task, mode, wall)."""

    @abstractmethod
    def ask(self) -> np.ndarray:
        """The next episode's actions, shape [num_decisions], in [0, 1]."""

    def tell(self, actions: np.ndarray, reward: float, info: dict[str, Any]) -> None:
        """The result of the episode played with ``actions`` (``info``: the env's final info)."""

    @abstractmethod
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly (picklable)."""

    @abstractmethod
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def uniform_ratio(env, tol: float = 1e-4) -> float:
    """The largest single keep ratio whose (rounded) counts meet the budget (MACs, or non-zero params)."""
    mode = env.mode

    def cost(r: float) -> float:
        return mode.kept_cost(np.array([mode.desired(t, r) for t in range(env.num_decisions)]))

    lo, hi = env.lbound, env.rbound
    if cost(hi) <= mode.budget:
        return hi
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if cost(mid) <= mode.budget else (lo, mid)
    return lo


class UniformSearcher(Searcher):
    """The classic hand-made rule: one keep ratio for every decision, the largest (by bisection) whose
    network fits the budget without the wall having to clip anything. One episode."""

    max_episodes = 1

    def setup(self, env, seed: int) -> None:
        span = env.rbound - env.lbound
        action = (uniform_ratio(env) - env.lbound) / span if span > 0 else 1.0
        self.actions = np.full(env.num_decisions, action)

    def ask(self) -> np.ndarray:
        return self.actions

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


class RandomSearcher(Searcher):
    """Uniformly random actions (seeded) through the budget wall; the run keeps the best."""

    def setup(self, env, seed: int) -> None:
        self.rng = np.random.default_rng(seed)
        self.num_decisions = env.num_decisions

    def ask(self) -> np.ndarray:
        return self.rng.uniform(0.0, 1.0, self.num_decisions)

    def state_dict(self) -> dict[str, Any]:
        return {"rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["rng"]


SEARCHERS: dict[str, type[Searcher]] = {"uniform": UniformSearcher, "random": RandomSearcher}


def run_searcher(searcher: Searcher, config: SearchConfig, out: str | os.PathLike, *, force: bool = False,
                 progress: bool = True, kind: str = "baseline", env=None) -> dict[str, Any]:
    """Run (or resume) ``searcher`` for ``config.episodes`` episodes (fewer if it proposes fewer); writes the
    run folder and returns the best record. ``env``: an env to use instead of ``make_env(config...)``."""
    if searcher.max_episodes is not None:
        config.episodes = min(config.episodes, searcher.max_episodes)
    folder = RunFolder(out, config, kind)
    resume = folder.prepare(force)
    env = make_env(config.env_id, **config.env_kwargs) if env is None else env
    base = env.unwrapped
    searcher.setup(base, config.seed)
    if resume:
        searcher.load_state_dict(folder.load_checkpoint()["searcher"])
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=config.episodes, initial=folder.episodes, unit="ep", dynamic_ncols=True)
    while folder.episodes < config.episodes:
        start = time.perf_counter()
        actions = np.asarray(searcher.ask(), dtype=np.float64).reshape(-1)
        env.reset(seed=config.seed)
        reward, info = 0.0, {}
        for a in actions:
            _, reward, *_, info = env.step(np.array([a], dtype=np.float32))
        searcher.tell(actions, float(reward), info)
        # Logged in SB3's scaled action units, like the RL search, so logs are interchangeable.
        folder.log_episode(info, float(reward), [float(2 * a - 1) for a in actions], time.perf_counter() - start, base)
        folder.save_checkpoint({"searcher": searcher.state_dict()})
        if bar is not None:
            bar.set_postfix(best=f"{folder.best['accuracy']:.4f}", flops=f"{info['flops_ratio']:.3f}")
            bar.update(1)
    if bar is not None:
        bar.close()
    folder.finish()
    return folder.best


def run_baseline(method: str, env_id: str, out: str | os.PathLike, *, episodes: int = 300, seed: int = 0,
                 env_kwargs: dict[str, Any] | None = None, force: bool = False, progress: bool = True) -> dict[str, Any]:
    """A built-in searcher by name (``SEARCHERS``) on an env id: what ``agmc baseline`` runs."""
    if method not in SEARCHERS:
        raise ValueError(f"unknown baseline method {method!r}; choose one of {sorted(SEARCHERS)}")
    config = SearchConfig(env_id, algo=method, embedding="none", episodes=episodes, warmup=0, seed=seed,
                          env_kwargs=env_kwargs or {})
    return run_searcher(SEARCHERS[method](), config, out, force=force, progress=progress)
