"""Any torchvision CNN through AGMC-v0: decisions, graph size, pruning exactness and episode time.

Random-weight torchvision models on synthetic ImageNet-sized images (an ImageFolder tree this script
writes into a temporary folder: 256 reward images + 128 calibration images, 224×224 after the standard
resize/centre-crop), on whatever device the env picks:

    python -m benchmarks.episode_time [--models mobilenet_v2,vgg16,resnet18,efficientnet_b0] [--episodes 3]

Writes benchmarks/results/episode_time.md. Exactness = max |pruned − masked original| over the logits of
two images, relative to the logits' scale (the equivalence the tests assert on small inputs).
"""
from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
import torch
from PIL import Image

import agmc_env  # noqa: F401  (registers the ids)
from agmc_env.imagefolder import ImageFolderDataset

RESULTS = Path(__file__).parent / "results"
TARGETS = {"mobilenet_v2": 0.7, "vgg16": 0.2}  # the paper's budgets; others: 0.5


def write_images(root: Path, n_train: int, n_val: int, classes: int = 10, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        for i in range(n):
            folder = root / split / f"c{i % classes:02d}"
            folder.mkdir(parents=True, exist_ok=True)
            h, w = rng.integers(240, 400, size=2)
            Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(folder / f"{i}.JPEG", quality=90)


def measure(name: str, data: ImageFolderDataset, episodes: int, val_size: int, calib_size: int) -> dict:
    torch.manual_seed(0)
    start = time.perf_counter()
    env = gym.make("AGMC-v0", model=name, dataset=data, weights=False, val_size=val_size, calib_size=calib_size,
                   flops_target=TARGETS.get(name, 0.5), amp="off", max_episode_steps=-1).unwrapped
    setup = time.perf_counter() - start
    rng = np.random.default_rng(0)
    times, info = [], {}
    for _ in range(episodes):
        t0 = time.perf_counter()
        info = env.run_ratios(rng.uniform(env.lbound, env.rbound, env.num_decisions))
        times.append(time.perf_counter() - t0)
    pruner = env.mode.pruner
    kept = pruner.kept(info["counts"])
    x = env.task.evaluator.images[:2]
    with torch.no_grad():
        out, ref = pruner.prune(kept).eval()(x), pruner.masked(kept).eval()(x)
    return {"model": name, "decisions": env.num_decisions, "nodes": env.op_graph.num_nodes,
            "target": env.task.options["flops_target"], "flops_ratio": info["flops_ratio"], "setup_s": setup,
            "episode_s": statistics.median(times), "timing": info["timing"],
            "rel_err": float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-12))}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--models", default="mobilenet_v2,vgg16,resnet18,efficientnet_b0")
    p.add_argument("--episodes", type=int, default=3)
    p.add_argument("--val-size", type=int, default=256)
    p.add_argument("--calib-size", type=int, default=128)
    p.add_argument("--out", default=str(RESULTS / "episode_time.md"))
    args = p.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        write_images(Path(tmp), args.val_size + args.calib_size, 10)
        data = ImageFolderDataset(tmp)
        for name in args.models.split(","):
            rows.append(measure(name, data, args.episodes, args.val_size, args.calib_size))
            print(rows[-1], flush=True)
    device = "cuda — " + torch.cuda.get_device_name(0) if torch.cuda.is_available() else \
        f"{platform.machine()} CPU, {os.cpu_count()} cores, {torch.get_num_threads()} threads"
    lines = [
        "# Episode time of torchvision CNNs through AGMC-v0 (synthetic ImageNet-sized data)", "",
        f"Command: `python -m benchmarks.episode_time {' '.join(sys.argv[1:] if argv is None else argv)}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}; machine: {device}; torch {torch.__version__}  ",
        f"Random-weight torchvision models, {args.val_size} reward + {args.calib_size} BN-calibration JPEGs "
        "(random pixels, 10 classes) decoded to 224×224, fp32 (`amp=\"off\"`), random keep ratios through the "
        f"wall; median of {args.episodes} episodes. An episode = the decision steps, physical pruning, BN "
        "recalibration and evaluation.", "",
        "| model | decisions | graph nodes | MACs target | MACs kept | exact (max rel. error) | env setup (s) | "
        "episode (s) | prune / BN recal / eval (s) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        t = r["timing"]
        lines.append(f"| {r['model']} | {r['decisions']} | {r['nodes']} | {r['target']:.2f} | {r['flops_ratio']:.3f} | "
                     f"{r['rel_err']:.1e} | {r['setup_s']:.1f} | {r['episode_s']:.2f} | "
                     f"{t['prune_s']:.2f} / {t['calibrate_s']:.2f} / {t['evaluate_s']:.2f} |")
    lines.append("")
    Path(args.out).write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
