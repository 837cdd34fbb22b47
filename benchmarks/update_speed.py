"""Seconds per RL update (SB3 ``train()`` after one episode: one gradient step per decision, batch 64) on an AGMC
env's graph, without running the env's pruning or scoring: the replay buffer is filled with ``--episodes`` seeded
random episodes (observations from ``AGMCEnv.trajectory``, random final rewards), as a search's would be after
that many episodes. Isolates the update from the env's step, so before / after a change of the update can be
compared in seconds, in one process per code version.

    OMP_NUM_THREADS=1 python -m benchmarks.update_speed [--env AGMC-ResNet56-v0] [--episodes 40] [--reps 6]
        [--algo ddpg] [--embedding gnn] [--self-imitation 10 0] [--imitation-elites 1 5] [--threads 1 2]
        [--prefetch off on] [--draws live prepared]

Prints one JSON object per variant (each weight × each K × each thread count × each prefetch setting × each way of
drawing: median, runs); each variant is an agent built with the same seed on the same buffer contents, and the
variants' repetitions alternate. ``--draws prepared`` draws (and unrolls) a call's batches before its timer starts, so
its time is the gradient steps alone: what the update would cost if drawing batches were free.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
from stable_baselines3.common.logger import configure

import agmc_env  # noqa: F401  (registers the env ids)
from agents.algorithms import make_agent
from benchmarks.search_speed import PREFETCH
from benchmarks.step_speed import cpu_capability, cpu_name


def fill(model, env, episodes: int, seed: int) -> None:
    """``episodes`` random episodes into ``model``'s replay buffer (actions in SB3's [-1, 1] units)."""
    rng = np.random.default_rng(seed)
    T = env.num_decisions
    for _ in range(episodes):
        actions = rng.uniform(-1, 1, size=(T, 1)).astype(np.float32)
        obs = env.trajectory((actions + 1) / 2)
        final = float(rng.uniform(0.3, 0.9))
        for t in range(T):
            done = t == T - 1
            model.replay_buffer.add({k: v[None] for k, v in obs[t].items()}, {k: v[None] for k, v in obs[t + 1].items()},
                                    actions[t][None], np.array([final if done else 0.0], np.float32),
                                    np.array([done]), [{}])


def prepare_draws(model, steps: int) -> None:
    """Draw the next ``steps`` batches now, as ``train`` would (the same calls in the same order), and let ``train``
    take them from a list: an instance attribute that shadows ``_draw`` until deleted."""
    batches = [model._draw(model.batch_size) for _ in range(steps)]
    model._draw = lambda batch_size: batches.pop(0)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--env", default="AGMC-ResNet56-v0")
    p.add_argument("--episodes", type=int, default=40, help="random episodes in the buffer before timing")
    p.add_argument("--reps", type=int, default=6)
    p.add_argument("--algo", default="ddpg")
    p.add_argument("--embedding", default="gnn")
    p.add_argument("--self-imitation", type=float, nargs="+", default=[10.0], help="one variant per weight")
    p.add_argument("--imitation-elites", type=int, nargs="+", default=[None],
                   help="one variant per K (default: the search's, 5 with self-imitation)")
    p.add_argument("--threads", type=int, nargs="+", default=[None],
                   help="one variant per intra-op thread count (default: torch's current)")
    p.add_argument("--prefetch", nargs="+", choices=tuple(PREFETCH), default=["auto"],
                   help="one variant per setting of the agents' prefetch_batches (auto: on with ≥ 2 threads, CPU)")
    p.add_argument("--draws", nargs="+", choices=("live", "prepared"), default=["live"],
                   help="one variant per way: drawn during train() (live), or before its timer starts (prepared)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    threads = [t or torch.get_num_threads() for t in args.threads]
    if "prepared" in args.draws and args.algo not in ("ddpg", "td3"):
        p.error(f"--draws prepared needs DDPG's or TD3's update (agents.algorithms.TD3Update), not {args.algo!r}")
    env = gym.make(args.env).unwrapped
    T = env.num_decisions
    models = {}
    for weight in args.self_imitation:
        for elites in args.imitation_elites:
            torch.manual_seed(args.seed)
            model = make_agent(args.algo, env, embedding=args.embedding, episodes=max(300, args.episodes), warmup=0,
                               seed=args.seed, self_imitation=weight, imitation_elites=elites)
            model.set_logger(configure(None, [""]))
            fill(model, env, args.episodes, args.seed)
            model.train(T, model.batch_size)  # first call: caches, allocator
            models[weight, model.replay_buffer.elites] = model
    runs: dict[tuple[float, int, int, str, str], list[float]] = {
        (*key, t, f, d): [] for key in models for t in threads for f in args.prefetch for d in args.draws}
    for _ in range(args.reps):
        for (weight, elites, t, prefetch, draws), times in runs.items():
            torch.set_num_threads(t)
            model = models[weight, elites]
            model.prefetch_batches = PREFETCH[prefetch]
            if draws == "prepared":
                prepare_draws(model, max(T * model.updates_per_step, model.min_updates_per_episode))
            start = time.perf_counter()
            model.train(T, model.batch_size)
            times.append(time.perf_counter() - start)
            model.__dict__.pop("_draw", None)
    for (weight, elites, t, prefetch, draws), times in runs.items():
        print(json.dumps({"env": args.env, "algo": args.algo, "embedding": args.embedding, "self_imitation": weight,
                          "imitation_elites": elites, "episodes_in_buffer": args.episodes,
                          "machine": f"{cpu_name()} ({cpu_capability()})", "torch": torch.__version__,
                          "threads": t, "prefetch": prefetch, "draws": draws,
                          "train_s_median": round(statistics.median(times), 4),
                          "runs": [round(seconds, 4) for seconds in times]}))


if __name__ == "__main__":
    main()
