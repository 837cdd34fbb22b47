"""Episode time of AGMC-ResNet56-v0 against a reference-style step, measured in the same run.

Reference style (the published AGMC / GNN-RL code): deepcopy the model, mask the lowest-L1 filters with
``torch.nn.utils.prune.ln_structured`` (nothing removed), then evaluate NCHW float32. Both sides use the
same keep ratios, the same L1 criterion, the same reward-split and calibration images, and adaptive BN.

    python -m benchmarks.step_speed [--reps 5] [--device auto]

Writes benchmarks/results/step_speed.md; the last printed line is ``speedup: X.XX``.
"""
from __future__ import annotations

import argparse
import copy
import datetime
import platform
import statistics
import sys
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune

import agmc_env  # noqa: F401  (registers the ids)
from agmc_env.evaluate import Evaluator

RESULTS = Path(__file__).parent / "results"


def reference_step(task, counts: list[int]) -> float:
    """One reference-style evaluation: deepcopy + structured L1 masks + BN recalibration + fp32 NCHW eval."""
    model = copy.deepcopy(task.analysis.gm)
    modules = dict(model.named_modules())
    target = {n.name: n.target for n in model.graph.nodes}
    for gid, k in zip(task.analysis.decisions, counts):
        for producer in task.analysis.groups[gid].producers:
            conv = modules[target[producer]]
            prune.ln_structured(conv, "weight", amount=conv.out_channels - k, n=1, dim=0)
    ev = task.evaluator
    images = ev.images.contiguous()
    calib = ev.calib.contiguous()
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.reset_running_stats()
            m.momentum = None
    model.train()
    with torch.no_grad():
        for s in range(0, len(calib), ev.batch_size):
            model(calib[s:s + ev.batch_size])
    model.eval()
    correct = 0
    with torch.no_grad():
        for s in range(0, len(images), ev.batch_size):
            correct += (model(images[s:s + ev.batch_size]).argmax(1) == ev.labels[s:s + ev.batch_size]).sum().item()
    return correct / len(images)


def timed(fn, reps: int) -> tuple[float, list[float], object]:
    fn()  # warm-up: allocator, oneDNN kernels
    times, out = [], None
    for _ in range(reps):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return statistics.median(times), times, out


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--val-size", type=int, default=1000)
    parser.add_argument("--calib-size", type=int, default=500)
    parser.add_argument("--out", default=str(RESULTS / "step_speed.md"))
    args = parser.parse_args(argv)

    common = dict(val_size=args.val_size, calib_size=args.calib_size, device=args.device)
    env = gym.make("AGMC-ResNet56-v0", **common).unwrapped  # amp="auto"
    env_fp32 = gym.make("AGMC-ResNet56-v0", amp="off", **common).unwrapped
    rng = np.random.default_rng(0)
    actions = rng.uniform(0, 1, env.num_decisions).astype(np.float32)

    def episode(e):
        def run():
            e.reset(seed=0)
            info = {}
            for a in actions:
                *_, info = e.step(np.array([a], dtype=np.float32))
            return info
        return run

    ours_s, ours_all, info = timed(episode(env), args.reps)
    fp32_s, _, info32 = timed(episode(env_fp32), args.reps)
    ref_s, ref_all, ref_acc = timed(lambda: reference_step(env.task, info["counts"]), args.reps)
    parts = {k: [] for k in info["timing"]}
    for _ in range(args.reps):
        for k, v in episode(env)()["timing"].items():
            parts[k].append(v)
    breakdown = {k: statistics.median(v) for k, v in parts.items()}
    ev: Evaluator = env.task.evaluator
    device = env.task.device
    card = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{cpu_name()}, {torch.get_num_threads()} threads"
    speedup = ref_s / ours_s
    cmd = "python -m benchmarks.step_speed " + " ".join(argv if argv is not None else sys.argv[1:])
    lines = [
        "# Episode time: agmc vs reference-style step (AGMC-ResNet56-v0)",
        "",
        f"Command: `{cmd.strip()}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}  ",
        f"Machine: {device.type} — {card}  ",
        f"torch {torch.__version__}, Python {platform.python_version()}  ",
        f"Model: akamaster ResNet-56 (27 decisions), reward split {args.val_size} images, "
        f"BN recalibration on {args.calib_size} images (both sides), batch {ev.batch_size}, {args.reps} reps, medians.",
        "",
        "| variant | median s / episode | runs (s) | reward-split accuracy |",
        "|---|---|---|---|",
        f"| reference style: deepcopy + `prune.ln_structured` masks + NCHW fp32 | {ref_s:.3f} | "
        f"{', '.join(f'{t:.2f}' for t in ref_all)} | {ref_acc:.4f} |",
        f"| agmc, fp32 (physical prune, BN folded, channels_last) | {fp32_s:.3f} | | {info32['accuracy']:.4f} |",
        f"| agmc, default (amp=auto → {'bf16' if ev.dtype == torch.bfloat16 else 'fp32'}) | {ours_s:.3f} | "
        f"{', '.join(f'{t:.2f}' for t in ours_all)} | {info['accuracy']:.4f} |",
        "",
        f"Breakdown of agmc's default episode (medians): prune {breakdown['prune_s'] * 1000:.1f} ms, "
        f"BN recalibration {breakdown['calibrate_s'] * 1000:.0f} ms, evaluation {breakdown['evaluate_s'] * 1000:.0f} ms; "
        f"the 27 decision steps take the rest.",
        "",
        f"bf16 check on the unpruned net (reward split): {ev.amp_check or 'not run (amp not auto on CPU)'}; "
        f"bf16 is used only if it is within 0.2 pt of fp32.",
        f"Pruned net: MACs ratio {info['flops_ratio']:.4f}, params ratio {info['params_ratio']:.4f}.",
        "",
        f"**Speed-up of agmc's episode over the reference-style step: {speedup:.2f}×** "
        f"(fp32 alone: {ref_s / fp32_s:.2f}×).",
        "",
    ]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines))
    print("\n".join(lines))
    print(f"speedup: {speedup:.2f}")


if __name__ == "__main__":
    main()
