"""Whether a faster scoring precision keeps the ranking of policies: the reward of random policies (random
search through the budget wall) scored in float32 and in each other precision this machine runs natively
(oneDNN int8 on an x86 CPU; bf16 where native), each by its own env, on the reward split only.

    python -m benchmarks.precision_fidelity [--env AGMC-ResNet56-v0] [--policies 120]

Writes benchmarks/results/precision_fidelity_<cpu kind>.md (+ .csv, one row per policy, appended as it goes:
re-running resumes). Spearman's ρ and Kendall's τ against float32, the mean and largest |Δ reward|, and whether
the best policy stays the best — the same columns as calibration_size.md, whose "other 500" row (another set of
calibration images) is the noise floor of the reward itself.
"""
from __future__ import annotations

import csv
import datetime
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks.calibration_size import policy_parser, ranking_cells, write_results
from benchmarks.step_speed import cpu_capability, cpu_kind, cpu_name

RESULTS = Path(__file__).parent / "results"


def precisions() -> list[str]:
    """The non-fp32 ``amp`` settings this machine runs natively."""
    from agmc_env.evaluate import bf16_supported
    from agmc_env.quantized import int8_supported

    return (["bf16"] if bf16_supported(torch.device("cpu")) else []) + (["int8"] if int8_supported() else [])


def measure(env_id: str, policies: int, amps: list[str], out_csv: Path, seed: int) -> None:
    from agmc_env import AGMCEnv, make_task

    envs = {amp: AGMCEnv(task=make_task(env_id, val_size=1000, device="cpu", amp=amp)) for amp in ["off", *amps]}
    done = len(list(csv.DictReader(open(out_csv)))) if out_csv.exists() else 0
    plans = np.random.default_rng(seed).uniform(0.0, 1.0, (policies, envs["off"].num_decisions))
    with open(out_csv, "a", newline="") as f:
        writer = csv.writer(f)
        if done == 0:
            writer.writerow(["policy", "flops_ratio", *[f"acc_{amp}" for amp in ["off", *amps]],
                             *[f"seconds_{amp}" for amp in ["off", *amps]]])
        for i in range(done, policies):
            accs, secs, ratio = [], [], None
            for env in envs.values():
                start = time.perf_counter()
                info = env.run_actions(plans[i])
                secs.append(round(time.perf_counter() - start, 3))
                accs.append(info["accuracy"])
                ratio = info["flops_ratio"]
            writer.writerow([i, round(ratio, 5), *accs, *secs])
            f.flush()
            print(f"policy {i}: {dict(zip(envs, accs))}", flush=True)


def render(out_csv: Path, amps: list[str], argv: list[str], env_id: str) -> str:
    rows = list(csv.DictReader(open(out_csv)))
    ref = np.array([float(r["acc_off"]) for r in rows])
    lines = [
        f"# Scoring precision vs the ranking of policies ({env_id})", "",
        f"Command: `python -m benchmarks.precision_fidelity {' '.join(argv)}`  ",
        f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}  ",
        f"Machine: {cpu_name()} ({cpu_capability()}), {torch.get_num_threads()} thread(s), torch "
        f"{torch.__version__}, Python {platform.python_version()}  ",
        f"{len(rows)} random policies (uniform actions through the budget wall, seeded), reward = top-1 on the "
        "1000-image reward split after the env's own episode (repair, BN recalibration on 128 calibration "
        "images) in float32 (`amp=\"off\"`) and in each precision below, by separate envs. The test split is "
        "not used. For scale, the reward's own noise on ResNet-56: another 500 calibration images give ρ 0.9941, "
        "mean |Δ| 0.58 pt, max 1.70 pt against the first 500 (calibration_size.md).", "",
        "| precision | Spearman ρ vs fp32 | Kendall τ | mean abs Δ (pt) | max abs Δ (pt) | mean Δ (pt) | "
        "best policy = fp32's best | top-10 overlap | median s / episode (fp32) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    fp32_s = np.median([float(r["seconds_off"]) for r in rows])
    for amp in amps:
        acc = np.array([float(r[f"acc_{amp}"]) for r in rows])
        secs = np.median([float(r[f"seconds_{amp}"]) for r in rows])
        lines.append(f"| {amp} | {ranking_cells(acc, ref)} | {secs:.2f} ({fp32_s:.2f}) |")
    lines += ["", f"Reward range over the policies in fp32: {100 * ref.min():.1f}–{100 * ref.max():.1f} %.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = policy_parser(__doc__)
    p.add_argument("--out", default=None, help="path without suffix (default: results/precision_fidelity_<cpu>)")
    args = p.parse_args(argv)
    amps = precisions()
    if not amps:
        raise SystemExit("this machine has neither native bf16 nor oneDNN int8: nothing to compare with fp32")
    out = Path(args.out) if args.out else RESULTS / f"precision_fidelity_{cpu_kind()}"
    write_results(out, lambda csv_path: measure(args.env, args.policies, amps, csv_path, args.seed),
                  lambda csv_path: render(csv_path, amps, argv, args.env))


if __name__ == "__main__":
    main()
