"""How many BN-recalibration images keep the ranking of policies: the reward of random policies (random
search through the budget wall) after recalibrating on the first k of the calibration images, against
k = the largest size, on the reward split only.

    python -m benchmarks.calibration_size [--env AGMC-ResNet56-v0] [--policies 120] [--sizes 32,64,128,256,500]

Writes benchmarks/results/calibration_size.md (+ .csv, one row per policy, appended as it goes: re-running
resumes). Spearman's ρ and Kendall's τ against the largest size, the mean and largest |Δ reward|, and
whether the best policy stays the best.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import platform
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from benchmarks.step_speed import cpu_name

RESULTS = Path(__file__).parent / "results"


def measure(env_id: str, policies: int, sizes: list[int], out_csv: Path, seed: int) -> None:
    from agmc_env import AGMCEnv, make_task

    # twice the largest size: the second half is an independent set of the largest size, the noise floor
    task = make_task(env_id, calib_size=2 * max(sizes), val_size=1000)
    env = AGMCEnv(task=task)
    ev = task.evaluator
    full = ev.calib
    done = len(list(csv.DictReader(open(out_csv)))) if out_csv.exists() else 0
    rng = np.random.default_rng(seed)
    plans = rng.uniform(0.0, 1.0, (policies, env.num_decisions))
    new = done == 0
    with open(out_csv, "a", newline="") as f:
        writer = csv.writer(f)
        if new:
            writer.writerow(["policy", "flops_ratio", *[f"acc_calib{k}" for k in sizes], "acc_other", "seconds"])
        for i in range(done, policies):
            start = time.perf_counter()
            info = env.run_actions(plans[i])
            model = env.pruned_model()
            accs = []
            for calib in [full[:k] for k in sizes] + [full[max(sizes):]]:
                ev.calib = calib
                ev.recalibrate(model)
                accs.append(ev.accuracy(model))
            ev.calib = full
            writer.writerow([i, round(info["flops_ratio"], 5), *accs, round(time.perf_counter() - start, 2)])
            f.flush()
            print(f"policy {i}: {accs}", flush=True)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks with ties averaged (accuracies on 1000 images tie often)."""
    order = np.argsort(x, kind="stable")
    ranks = np.empty(len(x))
    ranks[order] = np.arange(len(x), dtype=float)
    for value in np.unique(x):
        tied = x == value
        ranks[tied] = ranks[tied].mean()
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(_ranks(a), _ranks(b))[0, 1])


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall's τ-b."""
    i, j = np.triu_indices(len(a), 1)
    da, db = np.sign(a[i] - a[j]), np.sign(b[i] - b[j])
    return float((da * db).sum() / np.sqrt((da != 0).sum() * (db != 0).sum()))


def ranking_cells(acc: np.ndarray, ref: np.ndarray) -> str:
    """Table cells comparing rewards ``acc`` with ``ref`` (the same policies): Spearman ρ, Kendall τ, mean and
    largest |Δ| and mean Δ in points, whether the best policy is the same one, and the top-10 overlap."""
    d = 100 * (acc - ref)
    top10 = set(np.argsort(-ref)[:10])
    return (f"{spearman(acc, ref):.4f} | {kendall(acc, ref):.4f} | {np.abs(d).mean():.2f} | {np.abs(d).max():.2f} | "
            f"{d.mean():+.2f} | {'yes' if np.argmax(acc) == np.argmax(ref) else 'no'} | "
            f"{len(top10 & set(np.argsort(-acc)[:10]))}/10")


def render(out_csv: Path, sizes: list[int], argv: list[str], env_id: str) -> str:
    rows = list(csv.DictReader(open(out_csv)))
    acc = np.array([[float(r[f"acc_calib{k}"]) for k in sizes] + [float(r["acc_other"])] for r in rows])
    ref = acc[:, -2]
    lines = [
        f"# BN-recalibration images vs the ranking of policies ({env_id})", "",
        f"Command: `python -m benchmarks.calibration_size {' '.join(argv)}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}  ",
        f"Machine: {cpu_name()} (capability {torch.backends.cpu.get_cpu_capability()}, native bf16 "
        f"{bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())}), {torch.get_num_threads()} thread(s), torch "
        f"{torch.__version__}, Python {platform.python_version()}  ",
        f"{len(rows)} random policies (uniform actions through the budget wall, seeded), reward = top-1 on the "
        f"1000-image reward split after recalibrating BN on the first k of {sizes[-1]} calibration images "
        f"(training images disjoint from the reward split); \"other {sizes[-1]}\": {sizes[-1]} different calibration "
        "images, i.e. the noise floor of the ranking itself. The test split is not used.", "",
        f"| k | Spearman ρ vs k={sizes[-1]} | Kendall τ | mean abs Δ (pt) | max abs Δ (pt) | mean Δ (pt) | "
        f"best policy = k={sizes[-1]}'s best | top-10 overlap |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for j, k in enumerate([*sizes, f"other {sizes[-1]}"]):
        lines.append(f"| {k} | {ranking_cells(acc[:, j], ref)} |")
    lines += ["", f"Reward range over the policies at k={sizes[-1]}: {100 * ref.min():.1f}–{100 * ref.max():.1f} %.", ""]
    return "\n".join(lines)


def policy_parser(doc: str) -> argparse.ArgumentParser:
    """The options of a benchmark over seeded random policies: the env, how many policies, their seed."""
    p = argparse.ArgumentParser(description=doc.split("\n")[0])
    p.add_argument("--env", default="AGMC-ResNet56-v0")
    p.add_argument("--policies", type=int, default=120)
    p.add_argument("--seed", type=int, default=0)
    return p


def write_results(out: Path, measure_into: Callable[[Path], None], render_from: Callable[[Path], str]) -> None:
    """Measure into ``out``.csv (appending: a re-run resumes), render ``out``.md from it and print it."""
    out.parent.mkdir(parents=True, exist_ok=True)
    measure_into(out.with_suffix(".csv"))
    text = render_from(out.with_suffix(".csv"))
    out.with_suffix(".md").write_text(text)
    print(text)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = policy_parser(__doc__)
    p.add_argument("--sizes", default="32,64,128,256,500")
    p.add_argument("--out", default=str(RESULTS / "calibration_size"))
    args = p.parse_args(argv)
    sizes = sorted(int(k) for k in args.sizes.split(","))
    write_results(Path(args.out), lambda csv_path: measure(args.env, args.policies, sizes, csv_path, args.seed),
                  lambda csv_path: render(csv_path, sizes, argv, args.env))


if __name__ == "__main__":
    main()
