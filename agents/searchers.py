"""Searchers that propose whole episodes: one action per decision at once, then are told the result.

The interface (:class:`Searcher`) is ask / tell plus a state for exact resume; :func:`run_searcher` plays
the proposals through the env (the same budget wall, the same episode-end pipeline) and writes the same
run folder, ``episodes.csv``, best export and checkpoint as an RL search. Built in (``SEARCHERS``): the
uniform rule, random search, CMA-ES (``cma``) and TPE (``optuna``); any object with these methods can be
passed from Python::

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

import importlib
import os
import pickle
import time
import warnings
from abc import ABC, abstractmethod
from typing import Any

import numpy as np

from agents.envs import make_env
from agents.run_folder import RunFolder, SearchConfig


class Searcher(ABC):
    """Proposes action vectors (one action in [0, 1] per decision) and learns from their rewards."""

    #: how many proposals the searcher makes at most (None: as many as the run's episodes)
    max_episodes: int | None = None
    #: the optional package it needs (checked before the run folder is touched)
    package: str | None = None

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


class MissingPackage(ImportError):
    """A searcher's optional package is not installed (the message says how to install it)."""


def _optional(module: str):
    """A searcher's library, or an error that says how to install it."""
    try:
        with warnings.catch_warnings():  # cma: "Could not import matplotlib.pyplot" (plots are not used)
            warnings.simplefilter("ignore", UserWarning)
            return importlib.import_module(module)
    except ImportError as exc:
        raise MissingPackage(f"this searcher needs the {module!r} package: pip install -e \".[search]\" "
                             f"(or pip install {module})") from exc


class CMAESSearcher(Searcher):
    """CMA-ES (Hansen's ``cma`` package) over the action vector in [0, 1]^T: a population of ``popsize``
    proposals is handed out one at a time and told back as a whole (``cma`` minimises −reward)."""

    package = "cma"

    def __init__(self, popsize: int = 10, sigma0: float = 0.25, x0: float = 0.5) -> None:
        self.popsize, self.sigma0, self.x0 = popsize, sigma0, x0

    def setup(self, env, seed: int) -> None:
        cma = _optional(self.package)
        # cma's seed 0 means "from the clock": offset it; cma samples from numpy's global RNG (saved below)
        self.es = cma.CMAEvolutionStrategy([self.x0] * env.num_decisions, self.sigma0,
                                           {"bounds": [0.0, 1.0], "popsize": self.popsize, "seed": seed + 1,
                                            "verbose": -9})
        self.population: list[np.ndarray] = []
        self.rewards: list[float] = []

    def ask(self) -> np.ndarray:
        if len(self.rewards) == len(self.population):  # the last population is told: sample the next
            self.population, self.rewards = [np.asarray(x) for x in self.es.ask()], []
        return np.clip(self.population[len(self.rewards)], 0.0, 1.0)

    def tell(self, actions: np.ndarray, reward: float, info: dict[str, Any]) -> None:
        self.rewards.append(reward)
        if len(self.rewards) == len(self.population):
            self.es.tell(self.population, [-r for r in self.rewards])

    def state_dict(self) -> dict[str, Any]:
        return {"es": pickle.dumps(self.es), "population": self.population, "rewards": self.rewards,
                "numpy_rng": np.random.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.es = pickle.loads(state["es"])
        self.population, self.rewards = state["population"], state["rewards"]
        np.random.set_state(state["numpy_rng"])


class TPESearcher(Searcher):
    """Optuna's tree-structured Parzen estimator (seeded ``TPESampler``, optuna's defaults), one float in
    [0, 1] per decision, maximising the reward through optuna's ask / tell."""

    package = "optuna"

    def setup(self, env, seed: int) -> None:
        optuna = _optional(self.package)
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.names = [f"a{t}" for t in range(env.num_decisions)]
        self.study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=seed))
        self.trial = None

    def ask(self) -> np.ndarray:
        self.trial = self.study.ask()
        return np.array([self.trial.suggest_float(name, 0.0, 1.0) for name in self.names])

    def tell(self, actions: np.ndarray, reward: float, info: dict[str, Any]) -> None:
        self.study.tell(self.trial, reward)
        self.trial = None

    def state_dict(self) -> dict[str, Any]:
        return {"study": pickle.dumps(self.study)}  # in-memory study, sampler RNG included

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.study = pickle.loads(state["study"])


SEARCHERS: dict[str, type[Searcher]] = {"uniform": UniformSearcher, "random": RandomSearcher,
                                        "cmaes": CMAESSearcher, "tpe": TPESearcher}


def run_searcher(searcher: Searcher, config: SearchConfig, out: str | os.PathLike, *, force: bool = False,
                 progress: bool = True) -> dict[str, Any]:
    """Run (or resume) ``searcher`` for ``config.episodes`` episodes (fewer if it proposes fewer); writes the
    run folder and returns the best record."""
    if searcher.max_episodes is not None:
        config.episodes = min(config.episodes, searcher.max_episodes)
    if searcher.package is not None:
        _optional(searcher.package)  # a missing package fails before the folder is touched
    folder = RunFolder(out, config, "baseline")  # the kind whole-episode searchers' folders have always had
    folder.check(force)
    base = make_env(config.env_id, **config.env_kwargs).unwrapped  # bad options fail before the folder is touched
    resume = folder.prepare(force)
    folder.check_task(base.task.options, base.task.evaluator.precision)
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
        info = base.run_actions(actions)
        reward = float(info["reward"])
        searcher.tell(actions, reward, info)
        # Logged in SB3's scaled action units, like the RL search, so logs are interchangeable.
        folder.log_episode(info, reward, [float(2 * a - 1) for a in actions], time.perf_counter() - start, base)
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
