"""Ray Tune plumbing shared by the benchmark grid (``benchmarks.table``) and the settings sweep
(``benchmarks.sweep``): start or join Ray, check the per-run resources fit a node, run trials with retries.

One trial = one search in its own run folder. The folders already resume exactly, so a retried trial (Ray
restarts a trial whose worker died, up to ``max_failures`` times) simply continues its folder; Tune's own
checkpoints are not used. Ray is the optional ``grid`` extra: ``pip install -e ".[grid]"``.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
from pathlib import Path
from typing import Any, Callable

INSTALL_HINT = 'pip install -e ".[grid]" runs the grid as parallel Ray Tune trials'
# passed to every Ray worker as absolute paths: Tune starts a trial in its own folder, where a relative
# AGMC_DATA_DIR (as run.sh sets) would point nowhere
PATH_VARIABLES = ("AGMC_DATA_DIR", "AGMC_WEIGHTS_DIR")


def ray_available() -> bool:
    return importlib.util.find_spec("ray") is not None


def add_arguments(p: argparse.ArgumentParser) -> None:
    """The resource flags the grid and the sweep share."""
    p.add_argument("--address", help="join this Ray cluster (`auto`, or HEAD:6379 after `ray start --head`); "
                   "default: start Ray on this machine")
    p.add_argument("--cpus-per-run", type=float, help="CPU cores per run; torch gets as many threads "
                   "(default 1 with Ray; in-process: torch's default)")
    p.add_argument("--gpus-per-run", type=float, default=0.0, help="GPUs per run, fractions allowed (0.25: four "
                   "runs share a GPU)")
    p.add_argument("--max-failures", type=int, default=3, help="retries of a run whose trial died (it continues "
                   "from its run folder)")


def start(address: str | None, cpus_per_run: float, gpus_per_run: float) -> None:
    """Starts Ray here (all cores) or joins ``address``; refuses per-run resources no node has."""
    import ray

    if not ray.is_initialized():
        env = {k: str(Path(os.environ[k]).resolve()) for k in PATH_VARIABLES if os.environ.get(k)}
        ray.init(address=address, num_cpus=None if address else os.cpu_count(), include_dashboard=False,
                 runtime_env={"env_vars": env}, log_to_driver=True)
    nodes = [n["Resources"] for n in ray.nodes() if n["Alive"]]
    for name, wanted in (("CPU", cpus_per_run), ("GPU", gpus_per_run)):
        most = max((r.get(name, 0.0) for r in nodes), default=0.0)
        if wanted > most:
            flag = f"--{name.lower()}s-per-run"
            raise SystemExit(f"{flag} {wanted:g}: no Ray node has that many ({name}s per node at most: {most:g}); "
                             f"a run cannot span nodes, so use {flag} {most:g} or less")


def concurrent_runs(cpus_per_run: float, gpus_per_run: float, runs: int) -> int:
    """How many runs the cluster holds at once (recorded beside each run: timings only compare alike)."""
    import ray

    total = ray.cluster_resources()
    fits = int(total.get("CPU", 1) // cpus_per_run) if cpus_per_run else runs
    if gpus_per_run:
        fits = min(fits, int(total.get("GPU", 0) // gpus_per_run))
    return max(1, min(fits, runs))


def set_threads(cpus_per_run: float | None) -> None:
    """torch threads = the run's cores: more threads than cores slowed a search several-fold."""
    if cpus_per_run:
        import torch

        torch.set_num_threads(max(1, int(cpus_per_run)))


def fit(trainable: Callable[[dict[str, Any]], None], param_space: dict[str, Any], *, name: str, storage: Path,
        cpus_per_run: float, gpus_per_run: float, max_failures: int, dirname: Callable[[Any], str],
        num_samples: int = 1, search_alg: Any = None) -> Any:
    """Runs the trials; returns Tune's ResultGrid (a trial that failed ``max_failures`` + 1 times is in its
    ``errors``; the others still finish)."""
    from ray import tune

    tuner = tune.Tuner(
        tune.with_resources(trainable, {"cpu": cpus_per_run, "gpu": gpus_per_run}),
        param_space=param_space,
        tune_config=tune.TuneConfig(num_samples=num_samples, search_alg=search_alg, trial_name_creator=dirname,
                                    trial_dirname_creator=dirname, reuse_actors=False),  # a fresh process per run: its peak memory is its own
        run_config=tune.RunConfig(name=name, storage_path=str(storage.resolve()), verbose=1,
                                  failure_config=tune.FailureConfig(max_failures=max_failures)),
    )
    return tuner.fit()
