"""Effect of least-squares repair (``repair="lstsq"`` vs ``"none"``) on AGMC-ResNet56-v0, same policies.

Scores the uniform policy and ``--policies`` seeded random policies (uniform actions in [0, 1] through the
budget wall) on the REWARD split with each repair, and — for reporting only, never for choosing — the test
accuracy of the uniform policy both ways. Both variants share one task (the same images, trace and
statistics); only the pipeline's repair stage is swapped.

    AGMC_DATA_DIR=... AGMC_WEIGHTS_DIR=... OMP_NUM_THREADS=1 python -m benchmarks.repair_effect \\
        --weights $AGMC_WEIGHTS_DIR/resnet56-cifar10jpeg.pt

Writes benchmarks/results/repair_effect.md.
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

import agmc_env
from agents.searchers import uniform_ratio
from agmc_env.pipeline import no_repair
from benchmarks.step_speed import cpu_name

RESULTS = Path(__file__).parent / "results"


def play(env, actions, repair) -> dict:
    env.task.pipeline.replace("repair", repair)
    return env.run_actions(actions)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--env", default="AGMC-ResNet56-v0")
    parser.add_argument("--weights", default=os.path.join(os.environ.get("AGMC_WEIGHTS_DIR", "."),
                                                          "resnet56-cifar10jpeg.pt"))
    parser.add_argument("--policies", type=int, default=20)
    parser.add_argument("--repair-size", type=int, default=500)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--no-test", action="store_true", help="skip the uniform policy's test accuracy")
    parser.add_argument("--out", default=str(RESULTS / "repair_effect.md"))
    args = parser.parse_args(argv)

    common = dict(weights=args.weights, repair="lstsq", repair_size=args.repair_size, device=args.device)
    t0 = time.perf_counter()
    task = agmc_env.make_task(args.env, **common)
    build_s = time.perf_counter() - t0
    lstsq = task.repair
    env = agmc_env.AGMCEnv(task=task)
    span = env.rbound - env.lbound
    uniform = np.full(env.num_decisions, (uniform_ratio(env) - env.lbound) / span)
    policies = [("uniform", uniform)] + [
        (f"random {s}", np.random.default_rng(s).uniform(0.0, 1.0, env.num_decisions)) for s in range(args.policies)]
    rows = []
    for name, actions in policies:
        a = play(env, actions, no_repair)
        b = play(env, actions, lstsq)
        rows.append((name, a["flops_ratio"], a["accuracy"], b["accuracy"], a["timing"], b["timing"]))
        print(f"{name}: MACs {a['flops_ratio']:.4f}  none {a['accuracy']:.4f}  lstsq {b['accuracy']:.4f}  "
              f"(repair {b['timing']['repair_s'] * 1000:.0f} ms)", flush=True)
    test = None
    if not args.no_test:
        test_task = agmc_env.make_task(args.env, split="test", **common)
        test_env = agmc_env.AGMCEnv(task=test_task)
        test = (play(test_env, uniform, no_repair)["accuracy"], play(test_env, uniform, test_task.repair)["accuracy"])
        print(f"uniform, test split: none {test[0]:.4f}  lstsq {test[1]:.4f}", flush=True)

    gains = [100 * (b - a) for _, _, a, b, _, _ in rows]
    rand = gains[1:]
    best_none = max(a for _, _, a, _, _, _ in rows[1:]) if rand else float("nan")
    best_lstsq = max(b for _, _, _, b, _, _ in rows[1:]) if rand else float("nan")
    device = task.device
    machine = (torch.cuda.get_device_name(device) if device.type == "cuda" else
               f"{cpu_name()}, torch.backends.cpu.get_cpu_capability() = {torch.backends.cpu.get_cpu_capability()}, "
               f"{torch.get_num_threads()} threads")
    cmd = "python -m benchmarks.repair_effect " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        f"# Least-squares repair vs none ({args.env})",
        "",
        f"Command: `OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', '')} {cmd.strip()}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}  ",
        f"Machine: {device.type} — {machine}  ",
        f"torch {torch.__version__}, Python {platform.python_version()}  ",
        f"Weights: `{Path(args.weights).name}`; reward split {len(task.evaluator.images)} training images, BN "
        f"recalibration on {len(task.evaluator.calib)} others (both variants), precision "
        f"{'bf16' if task.evaluator.dtype == torch.bfloat16 else 'fp32'}.  ",
        f"Repair statistics: {lstsq.num_images} other training images, {len(lstsq.consumers)} consumers, "
        f"{lstsq.nbytes / 2**20:.1f} MiB ({lstsq.nbytes} bytes), computed in {lstsq.build_s:.1f} s (whole task build "
        f"{build_s:.1f} s).",
        "",
        "| policy | MACs ratio | reward-split top-1, none | lstsq | gain (pt) | repair ms |",
        "|---|---|---|---|---|---|",
    ]
    for (name, flops, a, b, _, tb), g in zip(rows, gains):
        lines.append(f"| {name} | {flops:.4f} | {100 * a:.2f} | {100 * b:.2f} | {g:+.2f} | "
                     f"{tb['repair_s'] * 1000:.0f} |")
    lines += [
        "",
        f"Uniform policy, reward split: {100 * rows[0][2]:.2f} → {100 * rows[0][3]:.2f} ({gains[0]:+.2f} pt).  ",
    ]
    if rand:
        lines += [
            f"{len(rand)} random policies, reward split: gain mean {statistics.mean(rand):+.2f} pt, median "
            f"{statistics.median(rand):+.2f} pt, min {min(rand):+.2f}, max {max(rand):+.2f}; lstsq better in "
            f"{sum(g > 0 for g in rand)}/{len(rand)}; best policy {100 * best_none:.2f} (none) vs "
            f"{100 * best_lstsq:.2f} (lstsq).  ",
        ]
    if test is not None:
        lines.append(f"Uniform policy, **test split** (reporting only; nothing is chosen on it): "
                     f"{100 * test[0]:.2f} (none) → {100 * test[1]:.2f} (lstsq).")
    lines.append("")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
