"""The search loop: an SB3 agent on an AGMC env, with logging, best-so-far export and exact resume.

Files in the output folder:

- ``run.json`` — the run's configuration (a different run in the same folder is refused);
- ``episodes.csv`` — one row per finished episode, flushed as it goes;
- ``trajectories.jsonl`` — the agent's (scaled) actions per episode, from which the replay buffer is
  rebuilt on resume (observations are a deterministic function of the actions; rewards are logged),
  so checkpoints stay a few MB instead of hundreds;
- ``best.json`` / ``best_pruned.pt`` — the best episode and its physically pruned model (fine-grained
  mode: the dense model with the zeros applied, plus ``best_sparse.pt``, its sparse COO state dict);
- ``checkpoint.pt`` — agent (SB3 zip bytes), episode counter, best so far, every RNG state; written
  atomically (write, then rename) after each episode's update;
- ``agent.zip`` and ``tb/`` (TensorBoard, via SB3's logger) when the search finishes.

A search killed at any point loses at most the episode in flight; re-running the same command continues it
and yields the same episode log as an uninterrupted run.
"""
from __future__ import annotations

import csv
import io
import json
import os
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import configure
from stable_baselines3.common.vec_env import DummyVecEnv

from agents.algorithms import ALGORITHMS, make_agent
from agents.envs import make_env
from agents.noise import AMCNoise
from agmc_env.sparsity import save_sparse

EPISODE_FIELDS = ["episode", "reward", "accuracy", "flops_ratio", "params_ratio", "keep_ratios", "seconds"]


class RunError(RuntimeError):
    """The output folder cannot be used for this run (finished, different run, corrupt checkpoint)."""


@dataclass
class SearchConfig:
    env_id: str
    algo: str = "ddpg"
    embedding: str = "gnn"
    episodes: int = 300
    warmup: int = 25
    seed: int = 0
    reward_baseline: bool = False
    env_kwargs: dict[str, Any] = field(default_factory=dict)

    def identity(self) -> dict[str, Any]:
        """What must match for a folder's run to be resumed (the episode count may be extended)."""
        d = asdict(self)
        d.pop("episodes")
        return d


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save_pruned(path: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """A self-contained pruned model: ``torch.load(path, weights_only=False)["model"]`` is the module."""
    buf = io.BytesIO()
    torch.save({"model": model, "meta": meta}, buf)
    _atomic_write(path, buf.getvalue())


class Recorder:
    """Episode log, best-so-far export and checkpoints for one output folder."""

    def __init__(self, out: Path, config: SearchConfig) -> None:
        self.out, self.config = out, config
        self.episodes = 0
        self.best: dict[str, Any] | None = None

    def truncate_to(self, episodes: int) -> list[dict[str, Any]]:
        """Keep the first ``episodes`` rows of the logs (drop an episode logged after the last checkpoint)."""
        rows = _read_csv(self.out / "episodes.csv")[:episodes]
        trajectories = _read_jsonl(self.out / "trajectories.jsonl")[:episodes]
        if len(rows) < episodes or len(trajectories) < episodes:
            raise RunError(f"{self.out}: the logs hold fewer episodes than the checkpoint ({episodes}); "
                           f"the folder was edited — start over with --force")
        _write_csv(self.out / "episodes.csv", rows)
        _atomic_write(self.out / "trajectories.jsonl", "".join(json.dumps(t) + "\n" for t in trajectories).encode())
        self.episodes = episodes
        return trajectories

    def log_episode(self, info: dict[str, Any], reward: float, actions: list[float], seconds: float,
                    env) -> None:
        row = {"episode": self.episodes, "reward": reward, "accuracy": info["accuracy"],
               "flops_ratio": info["flops_ratio"], "params_ratio": info["params_ratio"],
               "keep_ratios": json.dumps([round(r, 6) for r in info["keep_ratios"]]), "seconds": round(seconds, 4)}
        path = self.out / "episodes.csv"
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=EPISODE_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        with open(self.out / "trajectories.jsonl", "a") as f:
            f.write(json.dumps({"episode": self.episodes, "actions": actions, "reward": reward}) + "\n")
        if self.best is None or reward > self.best["reward"]:
            self.best = {"episode": self.episodes, "reward": reward, "accuracy": info["accuracy"],
                         "flops_ratio": info["flops_ratio"], "params_ratio": info["params_ratio"],
                         "keep_ratios": info["keep_ratios"], "counts": info["counts"],
                         **{k: info[k] for k in ("top1", "top5", "sparsity", "nonzero_params") if k in info},
                         **self._meta()}
            save_pruned(self.out / "best_pruned.pt", env.pruned_model(), self.best)
            if getattr(env, "granularity", "channel") == "fine":  # zeros stored as a sparse state dict too
                buf = io.BytesIO()
                save_sparse(env.pruned_model(), buf)
                _atomic_write(self.out / "best_sparse.pt", buf.getvalue())
            _atomic_write(self.out / "best.json", json.dumps(self.best, indent=2).encode())
        self.episodes += 1

    def _meta(self) -> dict[str, Any]:
        c = self.config
        return {"env_id": c.env_id, "env_kwargs": c.env_kwargs, "seed": c.seed, "algorithm": c.algo,
                "embedding": c.embedding}

    def checkpoint(self, model, noise: AMCNoise | None) -> None:
        agent = io.BytesIO()
        model.save(agent)
        state = {
            "episodes": self.episodes, "best": self.best, "num_timesteps": model.num_timesteps,
            "python_rng": random.getstate(), "numpy_rng": np.random.get_state(), "torch_rng": torch.get_rng_state(),
            "action_space_rng": model.action_space.np_random.bit_generator.state,
            "noise": noise.state() if noise is not None else None,
            "baseline": getattr(model.replay_buffer, "baseline", None),
        }
        buf = io.BytesIO()
        torch.save({"agent": agent.getvalue(), "state": state}, buf)
        _atomic_write(self.out / "checkpoint.pt", buf.getvalue())


class SearchCallback(BaseCallback):
    """Logs finished episodes and checkpoints at each rollout start (i.e. after the episode's update)."""

    def __init__(self, recorder: Recorder, total_episodes: int, progress: bool = True) -> None:
        super().__init__()
        self.recorder, self.total = recorder, total_episodes
        self.actions: list[float] = []
        self._episode_start = time.perf_counter()
        self._checkpointed_at = recorder.episodes
        self._started = time.perf_counter()
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=total_episodes, initial=recorder.episodes, unit="ep", dynamic_ncols=True)

    def _on_rollout_start(self) -> None:
        if self.recorder.episodes > self._checkpointed_at:
            self.recorder.checkpoint(self.model, self.model.action_noise)
            self._checkpointed_at = self.recorder.episodes

    def _on_step(self) -> bool:
        self.actions.append(float(self.locals["buffer_actions"][0][0]))
        if not self.locals["dones"][0]:
            return True
        info = self.locals["infos"][0]
        env = self.training_env.envs[0].unwrapped
        seconds = time.perf_counter() - self._episode_start
        self.recorder.log_episode(info, float(self.locals["rewards"][0]), self.actions, seconds, env)
        self.logger.record("search/accuracy", info["accuracy"])
        self.logger.record("search/flops_ratio", info["flops_ratio"])
        self.logger.record("search/best_reward", self.recorder.best["reward"])
        self.actions = []
        self._episode_start = time.perf_counter()
        if self.bar is not None:
            elapsed = time.perf_counter() - self._started
            done_here = self.bar.n + 1 - self.bar.initial
            self.bar.set_postfix(best=f"{self.recorder.best['accuracy']:.4f}", flops=f"{info['flops_ratio']:.3f}",
                                 ep_min=f"{60 * done_here / max(elapsed, 1e-9):.1f}")
            self.bar.update(1)
        return True

    def _on_training_end(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _write_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=EPISODE_FIELDS)
    writer.writeheader()
    writer.writerows(rows)
    _atomic_write(path, buf.getvalue().encode())


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_out(out: Path, config: SearchConfig, *, force: bool, kind: str = "search") -> bool:
    """Create or validate the output folder; returns True when a checkpoint there should be resumed."""
    run_file = out / "run.json"
    if run_file.exists() and not force:
        try:
            previous = json.loads(run_file.read_text())
        except json.JSONDecodeError as exc:
            raise RunError(f"{run_file} is corrupt ({exc}); use --force to start over") from exc
        if previous.get("kind") != kind or previous.get("identity") != json.loads(json.dumps(config.identity())):
            raise RunError(f"{out} holds a different run ({run_file}); choose another --out or pass --force to overwrite")
        if previous.get("finished") and previous.get("episodes", 0) >= config.episodes:
            raise RunError(f"{out} holds a finished run of {previous['episodes']} episodes; pass --force to overwrite "
                           f"or a larger --episodes to extend it")
        return (out / "checkpoint.pt").exists()
    if force and out.exists():
        for name in ("run.json", "episodes.csv", "trajectories.jsonl", "best.json", "best_pruned.pt", "checkpoint.pt",
                     "agent.zip", "best_pruned.pt2"):
            (out / name).unlink(missing_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    _atomic_write(run_file, json.dumps({"kind": kind, "identity": config.identity(), "episodes": config.episodes,
                                        "finished": False}, indent=2).encode())
    return False


def _mark_finished(out: Path, episodes: int) -> None:
    run = json.loads((out / "run.json").read_text())
    run.update(finished=True, episodes=episodes)
    _atomic_write(out / "run.json", json.dumps(run, indent=2).encode())


def _rebuild_buffer(model, env, trajectories: list[dict[str, Any]]) -> None:
    """Refill the replay buffer exactly as the logged episodes filled it."""
    base = env.unwrapped
    for traj in trajectories:
        scaled = np.asarray(traj["actions"], dtype=np.float32).reshape(-1, 1)
        env_actions = model.policy.unscale_action(scaled)
        observations = base.trajectory(env_actions)
        T = len(scaled)
        for t in range(T):
            done = t == T - 1
            model.replay_buffer.add(
                {k: v[None] for k, v in observations[t].items()}, {k: v[None] for k, v in observations[t + 1].items()},
                scaled[t][None], np.array([traj["reward"] if done else 0.0], dtype=np.float32),
                np.array([done]), [{}])


def run_search(config: SearchConfig, out: str | os.PathLike, *, force: bool = False, progress: bool = True,
               device: str = "auto") -> dict[str, Any]:
    """Run (or resume) a search; returns the best episode's record."""
    if config.algo not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {config.algo!r}; choose one of {sorted(ALGORITHMS)}")
    out = Path(out)
    resume = prepare_out(out, config, force=force)
    seed_everything(config.seed)
    env = make_env(config.env_id, **config.env_kwargs)
    vec = DummyVecEnv([lambda: env])
    T = env.unwrapped.num_decisions
    recorder = Recorder(out, config)
    if resume:
        try:
            ckpt = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
            state = ckpt["state"]
            model = ALGORITHMS[config.algo].load(io.BytesIO(ckpt["agent"]), env=vec, device=device)
        except Exception as exc:
            raise RunError(f"checkpoint {out / 'checkpoint.pt'} is corrupt or unreadable ({exc}); "
                           f"pass --force to start the run over") from exc
        trajectories = recorder.truncate_to(state["episodes"])
        recorder.best = state["best"]
        _rebuild_buffer(model, env, trajectories)
        if state["baseline"] is not None:
            model.replay_buffer.baseline = state["baseline"]
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
                           device=device)
        remaining = config.episodes * T
    model.set_logger(configure(str(out / "tb"), ["tensorboard"] if _has_tensorboard() else ["csv"]))
    callback = SearchCallback(recorder, config.episodes, progress)
    if remaining > 0:
        model.learn(total_timesteps=remaining, callback=callback, reset_num_timesteps=not resume)
    recorder.checkpoint(model, model.action_noise)
    model.save(out / "agent.zip")
    _mark_finished(out, config.episodes)
    return recorder.best


def _has_tensorboard() -> bool:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        return False
    return True
