"""Seconds per search episode on an AGMC env for each algorithm × embedding, split into the env's own
step time and the RL update (SB3 ``train()``) time, plus peak memory — each combination in a fresh
process, so peak RSS is its own.

    python -m benchmarks.search_speed [--env AGMC-ResNet56-v0] [--episodes 12] [--warmup 4] [--prefetch auto]
        [--amp off]

Timings are over the episodes after warm-up (when the agent acts and updates). Writes
benchmarks/results/search_speed.md.
"""
from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path

from agmc_env.evaluate import AMP_CHOICES

RESULTS = Path(__file__).parent / "results"
COMBOS = [(a, e) for a in ("ddpg", "td3", "sac") for e in ("gnn", "gnn-lstm", "amc")]


PREFETCH = {"auto": None, "off": False, "on": True}  # --prefetch → the agents' prefetch_batches


def measure(env_id: str, algo: str, embedding: str, episodes: int, warmup: int, seed: int,
            prefetch: str = "auto", amp: str | None = None) -> dict:
    import gymnasium as gym
    import numpy as np
    import torch
    from stable_baselines3.common.callbacks import BaseCallback

    import agmc_env  # noqa: F401
    from agents.algorithms import make_agent

    env = gym.make(env_id, **({"amp": amp} if amp else {}))
    T = env.unwrapped.num_decisions
    step_time = {"s": 0.0}
    inner_step = env.unwrapped.step

    def timed_step(action):
        t = time.perf_counter()
        out = inner_step(action)
        step_time["s"] += time.perf_counter() - t
        return out

    env.unwrapped.step = timed_step
    model = make_agent(algo, env, embedding=embedding, episodes=episodes, warmup=warmup, seed=seed)
    model.prefetch_batches = PREFETCH[prefetch]
    train_time = {"s": 0.0}
    inner_train = model.train

    def timed_train(*args, **kwargs):
        t = time.perf_counter()
        inner_train(*args, **kwargs)
        train_time["s"] += time.perf_counter() - t

    model.train = timed_train
    rows = []

    class PerEpisode(BaseCallback):
        def _on_rollout_start(self) -> None:
            self.t0 = time.perf_counter()
            self.train0 = train_time["s"]
            self.step0 = step_time["s"]

        def _on_step(self) -> bool:
            if self.locals["dones"][0]:
                rows.append({"episode": len(rows), "env_s": step_time["s"] - self.step0,
                             "start": self.t0, "train_before": self.train0})
            return True

    model.learn(total_timesteps=episodes * T, callback=PerEpisode())
    # Update time of episode k = train() run right after it: difference of the cumulative counter.
    starts = [r["start"] for r in rows] + [time.perf_counter()]
    trains = [r["train_before"] for r in rows] + [train_time["s"]]
    per = [{"total_s": starts[i + 1] - starts[i], "env_s": rows[i]["env_s"], "train_s": trains[i + 1] - trains[i]}
           for i in range(len(rows))]
    learned = per[warmup:]
    mean = lambda k: float(np.mean([p[k] for p in learned]))  # noqa: E731
    return {"algo": algo, "embedding": embedding, "episodes": episodes, "warmup": warmup, "decisions": T,
            "seconds_per_episode": mean("total_s"), "env_seconds": mean("env_s"), "update_seconds": mean("train_s"),
            "warmup_seconds_per_episode": float(np.mean([p["total_s"] for p in per[:warmup]])),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "torch_threads": torch.get_num_threads(), "prefetch": prefetch,
            "scoring": env.unwrapped.task.evaluator.precision}


def machine() -> str:
    """The CPU as the results should name it: model, the ISA torch uses, bf16 support, torch threads."""
    import torch

    model = platform.processor() or platform.machine()
    try:
        model = next(line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                     if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    bf16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return (f"{model} ({torch.backends.cpu.get_cpu_capability()}, bf16 {'yes' if bf16 else 'no'}), "
            f"{torch.get_num_threads()} torch threads, torch {torch.__version__}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--env", default="AGMC-ResNet56-v0")
    p.add_argument("--episodes", type=int, default=12)
    p.add_argument("--warmup", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--only", help="algo:embedding, run in this process (used internally)")
    p.add_argument("--combos", help="comma-separated algo:embedding to run (default: all nine)")
    p.add_argument("--prefetch", choices=tuple(PREFETCH), default="auto",
                   help="DDPG/TD3 hand the next batch, the target pass and the critic's view to a helper thread "
                        "(agents.prefetch); auto: with ≥ 2 torch threads on a CPU")
    p.add_argument("--amp", choices=AMP_CHOICES,
                   help="the env's scoring precision (default: the env's own, amp='auto')")
    p.add_argument("--out", default=str(RESULTS / "search_speed.md"))
    args = p.parse_args(argv)
    if args.only:
        algo, emb = args.only.split(":")
        print(json.dumps(measure(args.env, algo, emb, args.episodes, args.warmup, args.seed, args.prefetch, args.amp)))
        return
    results = []
    combos = [tuple(c.split(":")) for c in args.combos.split(",")] if args.combos else COMBOS
    for algo, emb in combos:
        cmd = [sys.executable, "-m", "benchmarks.search_speed", "--env", args.env, "--episodes", str(args.episodes),
               "--warmup", str(args.warmup), "--seed", str(args.seed), "--prefetch", args.prefetch,
               "--only", f"{algo}:{emb}", *(["--amp", args.amp] if args.amp else [])]
        out = subprocess.run(cmd, capture_output=True, text=True)
        if out.returncode:  # the child's own error, not only its exit status
            raise SystemExit(f"{' '.join(cmd)} failed ({out.returncode}):\n{out.stderr[-4000:]}")
        results.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    lines = [
        f"# Search speed on {args.env}: seconds per episode by algorithm and embedding", "",
        f"Command: `python -m benchmarks.search_speed {' '.join(argv if argv is not None else sys.argv[1:])}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}  ",
        f"Machine: {machine()}  ",
        f"{args.episodes} episodes per combination, first {args.warmup} are warm-up (random actions, no updates); "
        f"figures are means over the episodes after warm-up. One process per combination. Prefetch: {args.prefetch}. "
        f"Env scoring: {results[0]['scoring']}.",
        "",
        "| algorithm | embedding | s / episode | env step s / episode | RL update s / episode | update / env | "
        "update / episode | warm-up s / episode | peak RSS (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        lines.append(f"| {r['algo']} | {r['embedding']} | {r['seconds_per_episode']:.2f} | {r['env_seconds']:.2f} | "
                     f"{r['update_seconds']:.2f} | {r['update_seconds'] / r['env_seconds']:.2f} | "
                     f"{r['update_seconds'] / r['seconds_per_episode']:.0%} | "
                     f"{r['warmup_seconds_per_episode']:.2f} | {r['peak_rss_mb']:.0f} |")
    lines += ["", "Update time = SB3 `train()` after each episode: one gradient step per transition "
              f"({results[0]['decisions']} per episode, batch 64). Env step time includes pruning, BN recalibration "
              "and evaluation at the last step.", ""]
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
