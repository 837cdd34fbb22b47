"""A Ray Tune sweep over the RL search's own settings, scored on the reward split only, so the search defaults
are chosen by a reproducible sweep instead of by hand.

    python -m benchmarks.sweep resnet20_flops50 --samples 16 --episodes 100 [--cpus-per-run 1] [--address auto]

Each sample is one search (``agents.search.run_search``) on the preset's env with SearchConfig fields drawn at
random (seeded: the same command draws the same samples): exploration schedule, actor learning rate, warm-up,
reward credit and baseline. A sample runs in its own run folder, ``<runs>/sweep-<config>/<algo>-<embedding>-<hash>``
(resumable: re-running the command continues unfinished samples and skips finished ones), and is scored by its
best episode's reward-split accuracy; the test split is never read. Writes ``sweep_<config>.md`` and ``.csv``
(best first) into ``--results``. Needs Ray: ``pip install -e ".[grid]"``.
"""
from __future__ import annotations

import argparse
import csv
import datetime
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from benchmarks import grid
from benchmarks.step_speed import cpu_capability, cpu_name
from benchmarks.table import RESULTS, RUNS, GridConfig, _finished, preset

WARMUP_FRACTIONS = (0.05, 0.1, 0.2)  # of the episodes; AMC's 100 of 400 is 0.25, the presets' 25 of 300 ≈ 0.08
ACTOR_LR = (1e-5, 1e-3)  # log-uniform; the critic's rate is 1e-3


@dataclass(frozen=True)
class Sweep:
    """What every sample shares."""
    grid_config: GridConfig
    algo: str
    embedding: str
    episodes: int
    seed: int
    runs: str  # absolute: trials run in other processes, in their own folders


def space(episodes: int) -> dict[str, Any]:
    """The SearchConfig fields swept (the ones with a knob in ``make_agent``)."""
    from ray import tune

    from agents.algorithms import CREDITS, EXPLORATIONS

    return {"exploration": tune.choice(list(EXPLORATIONS)), "actor_lr": tune.loguniform(*ACTOR_LR),
            "warmup": tune.choice(sorted({max(1, round(f * episodes)) for f in WARMUP_FRACTIONS})),
            "credit": tune.choice(list(CREDITS)), "reward_baseline": tune.choice([True, False])}


def search_config(sweep: Sweep, params: dict[str, Any]):
    from agents.run_folder import SearchConfig

    c = sweep.grid_config
    return SearchConfig(c.env_id, sweep.algo, sweep.embedding, sweep.episodes, int(params["warmup"]), sweep.seed,
                        env_kwargs=dict(c.env_kwargs), credit=params["credit"], exploration=params["exploration"],
                        actor_lr=float(f"{params['actor_lr']:.3g}"),  # 3 digits: a readable table and folder name
                        reward_baseline=bool(params["reward_baseline"]))


def sample_dir(sweep: Sweep, params: dict[str, Any]) -> Path:
    """Named by the sample's settings, so a re-run finds the same folder for the same sample."""
    identity = json.dumps(search_config(sweep, params).identity(), sort_keys=True)
    digest = hashlib.sha1(identity.encode()).hexdigest()[:10]
    return Path(sweep.runs) / f"sweep-{sweep.grid_config.name}" / f"{sweep.algo}-{sweep.embedding}-{digest}"


def _trial(params: dict[str, Any], *, sweep: Sweep, cpus: float) -> None:
    """One Ray Tune trial: one sample's search; a retried trial resumes its folder."""
    from ray import tune

    from agents.search import run_search

    grid.set_threads(cpus)
    folder = sample_dir(sweep, params)
    if not _finished(folder):
        run_search(search_config(sweep, params), folder, progress=False)
    tune.report({"val_accuracy": json.loads((folder / "best.json").read_text())["accuracy"]})


def run(sweep: Sweep, samples: int, *, address: str | None = None, cpus_per_run: float = 1,
        gpus_per_run: float = 0.0, max_failures: int = 3) -> list[dict[str, Any]]:
    """Runs (or resumes) the sweep; returns one row per finished sample, best reward-split accuracy first."""
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    grid.start(address, cpus_per_run, gpus_per_run)
    name = f"sweep-{sweep.grid_config.name}-{datetime.datetime.now():%Y%m%d-%H%M%S}"
    results = grid.fit(tune.with_parameters(_trial, sweep=sweep, cpus=cpus_per_run), space(sweep.episodes),
                       name=name, storage=Path(sweep.runs) / "_ray", cpus_per_run=cpus_per_run,
                       gpus_per_run=gpus_per_run, max_failures=max_failures, num_samples=samples,
                       search_alg=BasicVariantGenerator(random_state=sweep.seed),  # the same samples every time
                       dirname=lambda trial: sample_dir(sweep, trial.config).name)
    rows = []
    for result in results:
        folder = sample_dir(sweep, result.config)
        if result.error is not None or not _finished(folder):
            print(f"[sweep] {folder.name} FAILED: {result.error!r}", flush=True)
            continue
        with open(folder / "episodes.csv", newline="") as f:
            seconds = sum(float(r["seconds"]) for r in csv.DictReader(f))
        config = search_config(sweep, result.config)
        rows.append({"val_accuracy": json.loads((folder / "best.json").read_text())["accuracy"],
                     "exploration": config.exploration, "actor_lr": config.actor_lr, "warmup": config.warmup,
                     "credit": config.credit, "reward_baseline": config.reward_baseline,
                     "search_seconds": round(seconds, 1), "folder": str(folder)})
    return sorted(rows, key=lambda r: -r["val_accuracy"])


def write(sweep: Sweep, rows: list[dict[str, Any]], results: Path, argv: list[str]) -> Path:
    """``sweep_<config>.csv`` and ``.md``, best first, with the command and the machine."""
    import torch

    from agents.algorithms import EXPLORATIONS

    results.mkdir(parents=True, exist_ok=True)
    stem = results / f"sweep_{sweep.grid_config.name}"
    with open(stem.with_suffix(".csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=["val_accuracy", "exploration", "actor_lr", "warmup", "credit",
                                               "reward_baseline", "search_seconds", "folder"])
        writer.writeheader()
        writer.writerows(rows)
    c = sweep.grid_config
    lines = [f"# Search settings sweep: {c.name} ({c.env_id}), {sweep.algo} + {sweep.embedding}", "",
             f"Command: `python -m benchmarks.sweep {' '.join(argv)}`, {datetime.datetime.now():%Y-%m-%dT%H:%M:%S}  ",
             f"Machine: {cpu_name()} ({cpu_capability()}, {os.cpu_count()} cores) driving Ray, "
             f"torch {torch.__version__}  ",
             f"Protocol: samples drawn at random (sampler seed {sweep.seed}) — exploration ∈ {{{', '.join(EXPLORATIONS)}}}, actor lr "
             f"log-uniform in [{ACTOR_LR[0]:g}, {ACTOR_LR[1]:g}], warm-up ∈ {WARMUP_FRACTIONS} × episodes, credit ∈ "
             "{episode, terminal}, reward baseline on/off; each a "
             f"{sweep.episodes}-episode search (seed {sweep.seed}) scored by its best episode's reward-split "
             "accuracy. The test split is never read: choose defaults here, report them on test in the grid.", "",
             "| rank | reward-split acc. (%) | exploration | actor lr | warm-up | credit | reward baseline | "
             "search time (min) |", "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {i} | {100 * r['val_accuracy']:.2f} | {r['exploration']} | {r['actor_lr']:g} | {r['warmup']} | "
              f"{r['credit']} | {'yes' if r['reward_baseline'] else 'no'} | {r['search_seconds'] / 60:.1f} |"
              for i, r in enumerate(rows, 1)]
    stem.with_suffix(".md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return stem.with_suffix(".md")


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config", help="a benchmarks.table preset: its env and env options")
    p.add_argument("--samples", type=int, default=16, help="settings drawn (one search each)")
    p.add_argument("--episodes", type=int, help="episodes per search (default: the preset's)")
    p.add_argument("--algo", default="ddpg")
    p.add_argument("--embedding", default="gnn")
    p.add_argument("--seed", type=int, default=0, help="the searches' seed and the sampler's")
    grid.add_arguments(p)
    p.add_argument("--results", default=str(RESULTS), help="where sweep_<config>.md/.csv go")
    p.add_argument("--runs", default=str(RUNS), help="where the samples' run folders live")
    args = p.parse_args(argv)
    if not grid.ray_available():
        raise SystemExit(f"the sweep runs on Ray Tune: {grid.INSTALL_HINT}")
    config = preset(args.config)
    sweep = Sweep(config, args.algo, args.embedding, args.episodes or config.episodes, args.seed,
                  str(Path(args.runs).resolve()))
    rows = run(sweep, args.samples, address=args.address, cpus_per_run=args.cpus_per_run or 1,
               gpus_per_run=args.gpus_per_run, max_failures=args.max_failures)
    write(sweep, rows, Path(args.results), argv)


if __name__ == "__main__":
    # as the importable ``benchmarks.sweep``: Ray ships the trial function to its workers by module name
    from benchmarks.sweep import main as sweep_main

    sweep_main()
