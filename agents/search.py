"""The RL search: an SB3 agent on an AGMC env, in SB3's own step-by-step loop, with the run folder's episode
log, best-so-far export and exact resume (``agents.run_folder`` names the files).

The checkpoint holds the agent (SB3 zip bytes), the episode counter, the best so far and every RNG state,
written atomically after each episode's update; the replay buffer is not saved but rebuilt on resume from
``trajectories.jsonl`` (observations are a deterministic function of the actions; rewards are logged), so
checkpoints stay a few MB instead of hundreds. A search killed at any point loses at most the episode in
flight; re-running the same command continues it and yields the same episode log as an uninterrupted run.
"""
from __future__ import annotations

import io
import json
import os
import random
import time
import zipfile
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.algorithms import ALGORITHMS, make_agent
from agents.envs import make_env
from agents.run_folder import AGENT, CHECKPOINT, RUN, TENSORBOARD, RunError, RunFolder, SearchConfig

__all__ = ["RunError", "SearchConfig", "run_search"]


def save_agent_checkpoint(folder: RunFolder, model: OffPolicyAlgorithm) -> None:
    """The agent and every RNG state, so a resumed search continues exactly."""
    agent = io.BytesIO()
    model.save(agent)
    noise = model.action_noise
    folder.save_checkpoint({"agent": agent.getvalue(), "algo": folder.config.algo, "state": {
        "num_timesteps": model.num_timesteps, "python_rng": random.getstate(), "numpy_rng": np.random.get_state(),
        "torch_rng": torch.get_rng_state(), "action_space_rng": model.action_space.np_random.bit_generator.state,
        "noise": noise.state() if noise is not None else None,
        "baseline": getattr(model.replay_buffer, "baseline", None),
        "reward_std": getattr(model.replay_buffer, "reward_std", None),
    }})


class SearchCallback(BaseCallback):
    """Logs finished episodes and checkpoints at each rollout start (i.e. after the episode's update)."""

    def __init__(self, folder: RunFolder, total_episodes: int, progress: bool = True) -> None:
        super().__init__()
        self.folder, self.total = folder, total_episodes
        self.actions: list[float] = []
        self._episode_start = time.perf_counter()
        self._checkpointed_at = folder.episodes
        self._started = time.perf_counter()
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_episodes, initial=folder.episodes, unit="ep", dynamic_ncols=True)

    def _on_rollout_start(self) -> None:
        if self.folder.episodes > self._checkpointed_at:
            save_agent_checkpoint(self.folder, self.model)
            self._checkpointed_at = self.folder.episodes

    def _on_step(self) -> bool:
        self.actions.append(float(self.locals["buffer_actions"][0][0]))
        if not self.locals["dones"][0]:
            return True
        info = self.locals["infos"][0]
        env = self.training_env.envs[0].unwrapped
        seconds = time.perf_counter() - self._episode_start
        self.folder.log_episode(info, float(self.locals["rewards"][0]), self.actions, seconds, env)
        self.logger.record("search/accuracy", info["accuracy"])
        self.logger.record("search/flops_ratio", info["flops_ratio"])
        self.logger.record("search/best_reward", self.folder.best["reward"])
        self.actions = []
        self._episode_start = time.perf_counter()
        if self.bar is not None:
            elapsed = time.perf_counter() - self._started
            done_here = self.bar.n + 1 - self.bar.initial
            self.bar.set_postfix(best=f"{self.folder.best['accuracy']:.4f}", flops=f"{info['flops_ratio']:.3f}",
                                 ep_min=f"{60 * done_here / max(elapsed, 1e-9):.1f}")
            self.bar.update(1)
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rebuild_buffer(model, env, trajectories: list[dict[str, Any]]) -> None:
    """Refill the replay buffer exactly as the logged episodes filled it."""
    base = env.unwrapped
    for traj in trajectories:
        scaled = np.asarray(traj["actions"], dtype=np.float32).reshape(-1, 1)
        env_actions = model.policy.unscale_action(scaled)
        observations = base.trajectory(env_actions)
        if model.applied_actions:  # as AppliedActions stored them
            scaled = model.policy.scale_action(np.asarray(base.applied_actions(), dtype=np.float32).reshape(-1, 1))
        T = len(scaled)
        for t in range(T):
            done = t == T - 1
            model.replay_buffer.add(
                {k: v[None] for k, v in observations[t].items()}, {k: v[None] for k, v in observations[t + 1].items()},
                scaled[t][None], np.array([traj["reward"] if done else 0.0], dtype=np.float32),
                np.array([done]), [{}])


def checkpoint_algorithm(ckpt: dict[str, Any]) -> str | None:
    """The algorithm of a checkpoint's agent: as recorded, or (older checkpoints) read from SB3's saved settings —
    SAC has an entropy coefficient, SB3's DDPG is TD3 with policy_delay=1."""
    if "algo" in ckpt:
        return ckpt["algo"]
    try:
        with zipfile.ZipFile(io.BytesIO(ckpt["agent"])) as z:
            data = json.loads(z.read("data"))
    except (KeyError, ValueError, zipfile.BadZipFile):
        return None  # unreadable: SB3's load says so
    if "ent_coef" in data:
        return "sac"
    return {1: "ddpg", 2: "td3"}.get(data.get("policy_delay"))


def _check_algorithm(ckpt: dict[str, Any], config: SearchConfig, folder: RunFolder) -> None:
    algo = checkpoint_algorithm(ckpt)
    if algo is not None and algo != config.algo:
        raise RunError(f"{folder.path(CHECKPOINT)} holds a {algo.upper()} agent but the run is {config.algo} "
                       f"({folder.path(RUN)}); the folder was mixed up — use another --out, or --force to start over")


def run_search(config: SearchConfig, out: str | os.PathLike, *, force: bool = False, progress: bool = True,
               device: str = "auto") -> dict[str, Any]:
    """Run (or resume) a search; returns the best episode's record. The agent runs on ``device``; "auto": the
    env's device (its ``device`` option), so ``--device cpu`` on a CUDA machine keeps both on the CPU."""
    if config.algo not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {config.algo!r}; choose one of {sorted(ALGORITHMS)}")
    folder = RunFolder(out, config)
    folder.check(force)  # refuse another run's folder before loading anything
    seed_everything(config.seed)
    env = make_env(config.env_id, **config.env_kwargs)  # a bad option fails here, before the folder is touched
    resume = folder.prepare(force)
    folder.check_task(env.unwrapped.task.options, env.unwrapped.task.evaluator.precision)
    if device == "auto":
        device = env.unwrapped.task.device
    vec = DummyVecEnv([lambda: env])
    T = env.unwrapped.num_decisions
    if resume:
        ckpt = folder.load_checkpoint()
        _check_algorithm(ckpt, config, folder)
        state = ckpt["state"]
        try:
            model = ALGORITHMS[config.algo].load(io.BytesIO(ckpt["agent"]), env=vec, device=device)
        except Exception as exc:
            raise RunError(f"checkpoint {folder.path(CHECKPOINT)} is corrupt or unreadable ({exc}); "
                           f"pass --force to start the run over") from exc
        _rebuild_buffer(model, env, ckpt["trajectories"])
        if state["baseline"] is not None:
            model.replay_buffer.baseline = state["baseline"]
        model.replay_buffer.reward_std = state.get("reward_std")  # the rebuilt buffer holds later episodes too
        if state["noise"] is not None:
            model.action_noise.load_state(state["noise"])
        random.setstate(state["python_rng"])
        np.random.set_state(state["numpy_rng"])
        torch.set_rng_state(state["torch_rng"])
        model.action_space.np_random.bit_generator.state = state["action_space_rng"]
        model._last_obs = None  # a fresh env: let SB3 reset it
        remaining = config.episodes * T - state["num_timesteps"]
    else:
        model = make_agent(config.algo, vec, embedding=config.embedding, episodes=config.episodes,
                           warmup=config.warmup, seed=config.seed, reward_baseline=config.reward_baseline,
                           credit=config.credit, exploration=config.exploration, actor_lr=config.actor_lr,
                           updates_per_step=config.updates_per_step,
                           min_updates_per_episode=config.min_updates_per_episode, sigma_floor=config.sigma_floor,
                           warmup_noise=config.warmup_noise,
                           reward_scale=config.reward_scale, self_imitation=config.self_imitation,
                           imitation_elites=config.imitation_elites, applied_actions=config.applied_actions,
                           imitation_filter=config.imitation_filter,
                           gamma=config.gamma, device=device)
        remaining = config.episodes * T
    model.set_logger(configure(str(folder.path(TENSORBOARD)), ["tensorboard"] if _has_tensorboard() else ["csv"]))
    callback = SearchCallback(folder, config.episodes, progress)
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=callback, reset_num_timesteps=not resume)
    save_agent_checkpoint(folder, model)
    model.save(folder.path(AGENT))
    folder.finish()
    return folder.best


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
