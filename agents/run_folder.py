"""A search's output folder: the one place that knows its file names, writes them atomically, and decides
whether a folder starts, resumes or is refused.

- ``run.json`` — the run's identity (a different run in the same folder is refused) and whether it finished;
- ``episodes.csv`` — one row per finished episode, flushed as it goes;
- ``trajectories.jsonl`` — the actions (SB3's scaled units, [-1, 1]) and reward of each episode, from
  which an RL replay buffer is rebuilt on resume (observations are a deterministic function of the actions);
- ``best.json`` / ``best_pruned.pt`` — the best episode and its pruned model, plus what the pruning mode
  exports beside it (fine mode: ``best_sparse.pt``, a sparse COO state dict);
- ``checkpoint.pt`` — the searcher's state (agent, RNGs, episode counter, best so far), written after each
  episode; ``agent.zip`` and ``tb/`` (RL searches) when the search finishes.
"""
from __future__ import annotations

import csv
import io
import json
import os
import socket
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from agents.algorithms import (ALGORITHMS, CREDITS, EXPLORATIONS, IMITATION_FILTER, default_imitation_elites,
                               default_min_updates, default_self_imitation)
from agents.extractors import EMBEDDINGS
from agents.noise import check_sigma_floor
from agmc_env.evaluate import AMP_OF
from agmc_env.options import KINDS

RUN, EPISODES, TRAJECTORIES = "run.json", "episodes.csv", "trajectories.jsonl"
BEST, BEST_MODEL, CHECKPOINT, AGENT, TENSORBOARD = "best.json", "best_pruned.pt", "checkpoint.pt", "agent.zip", "tb"
EPISODE_FIELDS = ["episode", "reward", "accuracy", "flops_ratio", "params_ratio", "keep_ratios", "seconds"]
LOCK = ".lock"
BEST_EXTRAS = ("top1", "top5", "sparsity", "nonzero_params")


class RunError(RuntimeError):
    """The output folder cannot be used for this run (finished, different run, corrupt checkpoint)."""


# What a run recorded before these fields existed had: terminal reward, AMC's σ decay, one learning rate.
LEGACY = {"credit": "terminal", "exploration": "amc", "actor_lr": None, "updates_per_step": 1,
          "sigma_floor": 0.05, "reward_scale": False, "self_imitation": 0.0,
          "applied_actions": False, "imitation_elites": 1, "gamma": 1.0,
          "min_updates_per_episode": 0, "warmup_noise": True}
# imitation_filter, for a run recorded before it existed: on (Q-filtered) with self-imitation, else None (no meaning).


@dataclass
class SearchConfig:
    env_id: str
    algo: str = "ddpg"
    embedding: str = "gnn"
    episodes: int = 300
    warmup: int = 25
    seed: int = 0
    # RL defaults = AMC's released code (chosen on the reward split: benchmarks/results/search_settings_*.md)
    reward_baseline: bool = True  # subtract AMC's moving-average reward baseline
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    credit: str = "episode"  # "episode" (AMC: every transition gets the final reward) or "terminal" (the env's)
    exploration: str = "scaled"  # DDPG/TD3: "scaled" (σ floor at 2/3 of the episodes), "amc" (σ × 0.95 per episode)
    # or "adaptive" (the 1/5th success rule)
    actor_lr: float | None = 1e-4  # RL: the actor's learning rate (None: the critic's, 1e-3)
    updates_per_step: int = 1  # RL: gradient steps per collected transition
    sigma_floor: float = 0.05  # DDPG/TD3 with exploration="scaled" or "adaptive": σ's floor on [0, 1]
    reward_scale: bool = False  # RL: divide rewards by the warm-up episodes' reward std
    # DDPG/TD3: weight of the pull towards the best episodes' actions (None: DDPG 10, TD3/SAC 0)
    self_imitation: float | None = None
    applied_actions: bool = False  # RL: store the action the env applied (after rounding and the wall)
    # DDPG/TD3 self-imitation: how many best episodes the actor is pulled towards (None: IMITATION_ELITES with
    # self-imitation, 1 without)
    imitation_elites: int | None = None
    gamma: float = 1.0  # RL: discount (AMC's 1; 0 with credit="episode": each step's critic regresses the final reward)
    # DDPG/TD3 self-imitation: only where the critic rates the best's actions higher (None: IMITATION_FILTER with
    # self-imitation, and stays None without it)
    imitation_filter: bool | None = None
    # RL: a floor on the gradient steps per episode (None: DDPG 27, ResNet-56's one per transition; TD3/SAC 0)
    min_updates_per_episode: int | None = None
    # DDPG/TD3: the warm-up's uniform actions plus one draw of the initial noise, clipped (False: uniform, AMC's)
    warmup_noise: bool = True

    def __post_init__(self) -> None:
        if self.self_imitation is None:  # resolved here: the run folder records the value the run used
            self.self_imitation = default_self_imitation(self.algo)
        if self.imitation_elites is None:
            self.imitation_elites = default_imitation_elites(self.self_imitation)
        if self.imitation_filter is None and self.self_imitation:
            self.imitation_filter = IMITATION_FILTER
        if self.min_updates_per_episode is None:
            self.min_updates_per_episode = default_min_updates(self.algo)
        # 0 episodes would finish a run with no best to report; a negative warm-up is no warm-up by accident.
        for name, kind in (("episodes", "positive int"), ("warmup", "count"), ("seed", "int"),
                           ("updates_per_step", "positive int"), ("self_imitation", "number ≥ 0"),
                           ("imitation_elites", "positive int"), ("gamma", "unit interval"),
                           ("min_updates_per_episode", "count")):
            value = getattr(self, name)
            if not KINDS[kind].fits(value):
                raise ValueError(f"{name}={value!r} must be {KINDS[kind].what}")
        check_sigma_floor(self.sigma_floor)  # before a run folder records it: make_agent would refuse it
        # RL settings that make_agent would refuse only after the folder recorded them (searchers ignore them)
        for name, choices in (("embedding", EMBEDDINGS), ("credit", CREDITS), ("exploration", EXPLORATIONS)):
            if self.algo in ALGORITHMS and getattr(self, name) not in choices:
                raise ValueError(f"unknown {name} {getattr(self, name)!r}; choose one of {sorted(choices)}")
        if self.algo in ALGORITHMS and self.actor_lr is not None and not KINDS["positive number"].fits(self.actor_lr):
            raise ValueError(f"actor_lr={self.actor_lr!r} must be a number > 0, or None (the critic's rate)")
        if self.self_imitation and self.algo == "sac":
            raise ValueError("self_imitation is for DDPG/TD3 (SAC's update is SB3's own): leave it at 0 with SAC")
        if self.imitation_elites != 1 and not self.self_imitation:
            raise ValueError(f"imitation_elites={self.imitation_elites} has no effect without self-imitation: "
                             "give a self_imitation weight > 0 (DDPG's default) or leave imitation_elites at 1")
        if not self.warmup_noise and self.algo == "sac":
            raise ValueError("warmup_noise=False has no effect with SAC (its warm-up is uniform already): leave it on")
        if self.imitation_filter is not None and not self.self_imitation:
            raise ValueError(f"imitation_filter={self.imitation_filter} has no effect without self-imitation: give a "
                             "self_imitation weight > 0 (DDPG's default) or leave imitation_filter unset")

    def identity(self) -> dict[str, Any]:
        """What must match for a folder's run to be resumed (the episode count may be extended)."""
        d = asdict(self)
        d.pop("episodes")
        return d

    def same_run(self, identity: dict[str, Any]) -> bool:
        """Whether a folder's recorded identity is this run's; fields added since it was written count as the
        values runs had before them, so older run folders still resume as what they were."""
        legacy = {**LEGACY, "imitation_filter": True if identity.get("self_imitation", LEGACY["self_imitation"]) else None}
        return {**legacy, **identity} == json.loads(json.dumps(self.identity()))


def atomic_write(path: Path, data: bytes) -> None:
    """Write, flush, then rename: a reader never sees half a file, whenever the process dies."""
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
    atomic_write(Path(path), buf.getvalue())


def _lock_owner(lock: Path) -> tuple[int | None, str | None]:
    """(pid, host) of a ``.lock`` ("PID HOST"; locks written before the host was recorded hold the pid alone)."""
    try:
        pid, _, host = lock.read_text().strip().partition(" ")
        return int(pid), host or None
    except (OSError, ValueError):
        return None, None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive
        return True
    return True


def _read_csv(path: Path) -> list[dict[str, str]]:
    if not path.exists():
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


class RunFolder:
    """Episode log, best-so-far export, checkpoints and the run's life cycle for one output folder."""

    def __init__(self, out: str | os.PathLike, config: SearchConfig, kind: str = "search") -> None:
        self.out, self.config, self.kind = Path(out), config, kind
        self.episodes = 0
        self.best: dict[str, Any] | None = None

    def path(self, name: str) -> Path:
        return self.out / name

    # ------------------------------------------------------------------ life cycle
    def check(self, force: bool = False) -> dict[str, Any] | None:
        """Raise ``RunError`` if the folder holds a run this one may not continue; returns that run's ``run.json``
        (None: no run there, or ``force``). Reads only: call it before the slow set-up, ``prepare`` after it."""
        run_file = self.path(RUN)
        if not run_file.exists() or force:
            return None
        try:
            previous = json.loads(run_file.read_text())
        except json.JSONDecodeError as exc:
            raise RunError(f"{run_file} is corrupt ({exc}); use --force to start over") from exc
        if previous.get("kind") != self.kind or not self.config.same_run(previous.get("identity", {})):
            identity = json.loads(json.dumps(self.config.identity()))
            theirs = {**SearchConfig(self.config.env_id).identity(), **(previous.get("identity") or {})}
            diff = [f"{k}={theirs.get(k)!r} there, {v!r} here" for k, v in identity.items() if theirs.get(k) != v]
            raise RunError(f"{self.out} holds a different run ({run_file}: {'; '.join(diff) or previous.get('kind')}); "
                           "choose another --out or pass --force to overwrite")
        if previous.get("finished") and previous.get("episodes", 0) >= self.config.episodes:
            raise RunError(f"{self.out} holds a finished run of {previous['episodes']} episodes; pass --force to "
                           "overwrite or a larger --episodes to extend it")
        return previous

    def prepare(self, force: bool = False) -> bool:
        """Create or validate the folder; returns True when a checkpoint there should be resumed."""
        run_file = self.path(RUN)
        if self.check(force) is not None:
            self._claim()
            if self.path(CHECKPOINT).exists():
                return True
            if self.path(EPISODES).exists():  # killed before its first checkpoint: start the logs over
                self.truncate_to(0)
            return False
        if force and self.out.exists():
            self._claim()  # before deleting anything: a live process's run folder is refused, not emptied
            for name in (RUN, EPISODES, TRAJECTORIES, BEST, BEST_MODEL, CHECKPOINT, AGENT):
                self.path(name).unlink(missing_ok=True)
            for extra in self.out.glob("best_*.pt"):  # what a pruning mode exported beside the best model
                extra.unlink()
        self.out.mkdir(parents=True, exist_ok=True)
        self._claim()
        atomic_write(run_file, json.dumps({"kind": self.kind, "identity": self.config.identity(),
                                           "episodes": self.config.episodes, "finished": False}, indent=2).encode())
        return False

    def _claim(self) -> None:
        """Mark the folder as this process's (``.lock`` holds its pid and host): two processes on one run folder
        would interleave their logs. A lock whose process is gone (killed, finished) is taken over. A lock from
        another host (a run folder on a shared disk, a Ray trial retried on another node) cannot be checked from
        here: it is taken over with a warning, since a trial is retried only after its process died."""
        lock, here = self.path(LOCK), socket.gethostname()
        pid, host = _lock_owner(lock)
        if pid is not None and host not in (None, here):
            warnings.warn(f"{self.out} was last written by pid {pid} on {host}; taking it over from {here} (if that "
                          "process still runs, stop it: two writers would interleave the run's logs)", stacklevel=2)
        elif pid is not None and pid != os.getpid() and _alive(pid):
            raise RunError(f"{self.out} is being written by another process (pid {pid}); wait for it, stop it, or "
                           f"choose another --out (delete {lock} if that process is not a search)")
        atomic_write(lock, f"{os.getpid()} {here}".encode())

    def check_task(self, options: dict[str, Any], scoring: str | None = None) -> None:
        """Record the env's resolved options (and ``scoring``, the precision ``amp`` resolved to) the first time;
        refuse to continue a run whose options resolve differently now (a default that changed since it started,
        or ``amp="auto"`` picking another precision on another CPU, would change its reward mid-run)."""
        plain = {k: v for k, v in options.items() if isinstance(v, (str, int, float, bool, type(None)))}
        if scoring is not None:
            plain["scoring"] = scoring
        run = json.loads(self.path(RUN).read_text())
        recorded = run.get("task_options")
        if recorded is None:
            run["task_options"] = plain
            atomic_write(self.path(RUN), json.dumps(run, indent=2).encode())
            return
        changed = {k: (recorded[k], plain.get(k)) for k in recorded if recorded[k] != plain.get(k)}
        if "scoring" in changed and "scoring" in plain:
            was, now = changed["scoring"]
            raise RunError(f"{self.out} was scored in {was} but the env now scores in {now} (amp="
                           f"{plain.get('amp')!r} on this machine); pass --amp {AMP_OF[was]} to continue the run "
                           "as it started, or --force to start over")
        if "scoring" in recorded:  # the precision matched: how it was asked for (auto or by name) does not matter
            changed.pop("amp", None)
        if changed:
            name, (was, now) = next(iter(changed.items()))
            raise RunError(f"{self.out} was started with {name}={was!r} but the env now gives {name}={now!r} (a "
                           f"changed default?); pass it explicitly (--{name.replace('_', '-')} {was}) to continue "
                           f"the run, or --force to start over" + (f"; also differs: {sorted(changed)[1:]}"
                                                                    if len(changed) > 1 else ""))

    def finish(self) -> None:
        run = json.loads(self.path(RUN).read_text())
        run.update(finished=True, episodes=self.config.episodes)
        atomic_write(self.path(RUN), json.dumps(run, indent=2).encode())
        self.path(LOCK).unlink(missing_ok=True)

    # ------------------------------------------------------------------ logs
    def truncate_to(self, episodes: int) -> list[dict[str, Any]]:
        """Keep the first ``episodes`` rows of the logs (drop an episode logged after the last checkpoint);
        returns the kept trajectories."""
        rows = _read_csv(self.path(EPISODES))[:episodes]
        trajectories = _read_jsonl(self.path(TRAJECTORIES))[:episodes]
        if len(rows) < episodes or len(trajectories) < episodes:
            raise RunError(f"{self.out}: the logs hold fewer episodes than the checkpoint ({episodes}); "
                           f"the folder was edited — start over with --force")
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=EPISODE_FIELDS)
        writer.writeheader()
        writer.writerows(rows)
        atomic_write(self.path(EPISODES), buf.getvalue().encode())
        atomic_write(self.path(TRAJECTORIES), "".join(json.dumps(t) + "\n" for t in trajectories).encode())
        self.episodes = episodes
        return trajectories

    def log_episode(self, info: dict[str, Any], reward: float, actions: list[float], seconds: float, env) -> None:
        """Append one finished episode; export it if it is the best so far (``env``: the unwrapped env)."""
        row = {"episode": self.episodes, "reward": reward, "accuracy": info["accuracy"],
               "flops_ratio": info["flops_ratio"], "params_ratio": info["params_ratio"],
               "keep_ratios": json.dumps([round(r, 6) for r in info["keep_ratios"]]), "seconds": round(seconds, 4)}
        path = self.path(EPISODES)
        new = not path.exists()
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=EPISODE_FIELDS)
            if new:
                writer.writeheader()
            writer.writerow(row)
        with open(self.path(TRAJECTORIES), "a") as f:
            f.write(json.dumps({"episode": self.episodes, "actions": actions, "reward": reward}) + "\n")
        if self.best is None or reward > self.best["reward"]:
            self._export_best(info, reward, env)
        self.episodes += 1

    def _export_best(self, info: dict[str, Any], reward: float, env) -> None:
        c = self.config
        self.best = {"episode": self.episodes, "reward": reward, "accuracy": info["accuracy"],
                     "flops_ratio": info["flops_ratio"], "params_ratio": info["params_ratio"],
                     "keep_ratios": info["keep_ratios"], "counts": info["counts"],
                     **{k: info[k] for k in BEST_EXTRAS if k in info},
                     "env_id": c.env_id, "env_kwargs": c.env_kwargs, "seed": c.seed, "algorithm": c.algo,
                     "embedding": c.embedding}
        model = env.pruned_model()
        save_pruned(self.path(BEST_MODEL), model, self.best)
        for suffix, data in env.mode.exports(model).items():
            atomic_write(self.path(f"best_{suffix}.pt"), data)
        atomic_write(self.path(BEST), json.dumps(self.best, indent=2).encode())

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, payload: dict[str, Any]) -> None:
        """The searcher's state after ``self.episodes`` episodes (the counter and best so far are added)."""
        buf = io.BytesIO()
        torch.save({**payload, "state": {**payload.get("state", {}), "episodes": self.episodes, "best": self.best}},
                   buf)
        atomic_write(self.path(CHECKPOINT), buf.getvalue())

    def load_checkpoint(self) -> dict[str, Any]:
        """The last checkpoint; the logs are cut back to it and the counter and best so far restored."""
        try:
            ckpt = torch.load(self.path(CHECKPOINT), map_location="cpu", weights_only=False)
            state = ckpt["state"]
            episodes = state["episodes"]
        except Exception as exc:
            raise RunError(f"checkpoint {self.path(CHECKPOINT)} is corrupt or unreadable ({exc}); "
                           "pass --force to start the run over") from exc
        ckpt["trajectories"] = self.truncate_to(episodes)
        self.best = state["best"]
        return ckpt
