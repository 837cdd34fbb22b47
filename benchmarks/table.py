"""Benchmark grids: every method × seed on one env, through the same code paths as ``agmc search`` /
``agmc baseline``, rendered as a table, a per-run CSV and learning curves.

    python -m benchmarks.table resnet20_flops50 [--cpus-per-run 1] [--gpus-per-run 0.25] [--address auto]

Each run is a Ray Tune trial (``benchmarks.grid``: Ray on this machine, or ``--address`` a cluster; a trial
whose process dies is retried); without Ray (or with ``--sequential``) the runs go one after the other in
this process. Runs live in ``benchmarks/runs/<config>/<method>-s<seed>/`` (git-ignored, resumable: finished
runs are skipped, interrupted ones continue). The command (or ``--render-only``) then records what has finished
in ``benchmarks/results/records/<config>/`` (committed: ``benchmarks.records``; a recorded cell counts as done on
any checkout) and renders the records into ``benchmarks/results/``:
``<config>.md`` (table + paper numbers + provenance), ``<config>.csv`` (one row per run),
``<config>_curves.csv`` and ``<config>_curves.png`` (best-so-far reward-split accuracy per episode).
"""
from __future__ import annotations

import argparse
import csv
import datetime
import json
import os
import platform
import re
import resource
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks import finetune_rows, grid, records

ROOT = Path(__file__).parent
RESULTS, RUNS = ROOT / "results", ROOT / "runs"


@dataclass(frozen=True)
class Method:
    name: str
    kind: str  # "search" | "baseline"
    algo: str  # SB3 algorithm, or the baseline method
    embedding: str = "none"
    stochastic: bool = True
    env: tuple[tuple[str, Any], ...] = ()  # env options of this row on top of the grid's (an ablation)
    search: tuple[tuple[str, Any], ...] = ()  # SearchConfig fields other than the defaults (an ablation)
    grids: tuple[str, ...] = ()  # the grid configs this row runs in (empty: every one)


NO_REPAIR = (("repair", "none"),)
# The DDPG rows that ran before the floor of 27 gradient steps per episode became DDPG's default: one per transition.
# On ResNet-56 (27 decisions) the floor changes nothing: there these rows ran what the defaults run.
ONE_PER_TRANSITION = (("min_updates_per_episode", 0),)
SIL_OFF = (("self_imitation", 0.0),)
# The DDPG rows that ran before self-imitation became DDPG's default (and the ablations measured against them).
NO_SIL = SIL_OFF + ONE_PER_TRANSITION
# The DDPG rows that ran before 5 elites became self-imitation's default.
ONE_ELITE = (("imitation_elites", 1),) + ONE_PER_TRANSITION
AGMC_SETTINGS = (("credit", "terminal"), ("exploration", "amc"), ("actor_lr", None), ("reward_baseline", False))
METHODS = [
    Method("uniform", "baseline", "uniform", stochastic=False),
    Method("random", "baseline", "random"),
    Method("cmaes", "baseline", "cmaes"),
    Method("tpe", "baseline", "tpe"),
    # without self-imitation, as they ran before it became the default; ResNet-20's runs again with the floor
    Method("amc+ddpg", "search", "ddpg", "amc", search=SIL_OFF),
    Method("gnn+ddpg", "search", "ddpg", "gnn"),
    Method("gnn-lstm+ddpg", "search", "ddpg", "gnn-lstm", search=SIL_OFF),
    Method("gnn+td3", "search", "td3", "gnn"),
    Method("gnn+sac", "search", "sac", "gnn"),
    # ablation: one gradient step per transition (AMC's; the default before the floor of 27 per episode), not run
    # on ResNet-56, where it is what the defaults run
    Method("gnn+ddpg (one gradient step per transition)", "search", "ddpg", "gnn", search=ONE_PER_TRANSITION,
           grids=("resnet20_flops50", "smoke")),
    # ablation: self-imitation taken back (the default before it)
    Method("gnn+ddpg (no self-imitation)", "search", "ddpg", "gnn", search=NO_SIL),
    # ablation: self-imitation of the best episode only (the default before 5 elites)
    Method("gnn+ddpg (imitating the best episode only)", "search", "ddpg", "gnn", search=ONE_ELITE),
    # ablation: ... and with its Q-filter (the default before the unfiltered pull)
    Method("gnn+ddpg (Q-filtered self-imitation)", "search", "ddpg", "gnn",
           search=(("imitation_filter", True),) + ONE_ELITE),
    # ablation: the RL settings before AMC's code became the default (terminal reward, σ × 0.95, one rate)
    Method("gnn+ddpg (AGMC settings)", "search", "ddpg", "gnn", search=AGMC_SETTINGS + NO_SIL),
    # ablations: one of the defaults taken back at a time, from "no self-imitation"
    Method("gnn+ddpg (terminal reward)", "search", "ddpg", "gnn",
           search=(("credit", "terminal"), ("reward_baseline", False)) + NO_SIL),
    Method("gnn+ddpg (sigma x 0.95 per episode)", "search", "ddpg", "gnn", search=(("exploration", "amc"),) + NO_SIL),
    Method("gnn+ddpg (one lr)", "search", "ddpg", "gnn", search=(("actor_lr", None),) + NO_SIL),
    # the reward path without least-squares repair, for comparison
    Method("uniform (no repair)", "baseline", "uniform", stochastic=False, env=NO_REPAIR),
    Method("gnn+ddpg (no repair)", "search", "ddpg", "gnn", env=NO_REPAIR, search=NO_SIL),
]

# Published numbers on real CIFAR-10 (not comparable in absolute terms with our JPEG-derived copy).
PAPER = {
    "resnet56": [("AGMC (AGMC README), 50% FLOPs, no FT (most likely)", 93.39, 92.00),
                 ("AMC (paper), 50% FLOPs, after fine-tuning", 92.8, 91.9)],
    "resnet20": [("AGMC (AGMC README), 50% FLOPs", 91.73, 88.42)],
}


@dataclass
class GridConfig:
    name: str
    env_id: str
    model: str
    episodes: int = 300
    warmup: int = 25
    seeds: tuple[int, ...] = (0, 1, 2)
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    finetune_epochs: int = 20
    finetune_policies: tuple[str, ...] = (finetune_rows.BEST_SEARCH, "uniform")


def _jpeg_weights(model: str) -> dict[str, str]:
    """The JPEG-adapted checkpoint when $AGMC_WEIGHTS_DIR holds one (our realistic baseline here), as an absolute
    path: Ray runs each trial in its own working directory."""
    folder = os.environ.get("AGMC_WEIGHTS_DIR")
    path = (Path(folder) / f"{model}-cifar10jpeg.pt").resolve() if folder else None
    return {"weights": str(path)} if path is not None and path.is_file() else {}


def preset(name: str) -> GridConfig:
    presets = {
        "resnet20_flops50": lambda: GridConfig(name, "AGMC-ResNet20-v0", "resnet20",
                                               env_kwargs={"val_size": 1000, **_jpeg_weights("resnet20")}),
        "resnet56_flops50": lambda: GridConfig(name, "AGMC-ResNet56-v0", "resnet56",
                                               env_kwargs={"val_size": 1000, **_jpeg_weights("resnet56")}),
        # a seconds-long grid on the test id, for trying the pipeline out
        "smoke": lambda: GridConfig(name, "AGMCTest-Tiny-v0", "tiny", episodes=6, warmup=2, seeds=(0, 1),
                                    finetune_epochs=1),
    }
    if name not in presets:
        raise SystemExit(f"unknown grid config {name!r}; choose one of {sorted(presets)}")
    return presets[name]()


def methods_of(config: GridConfig) -> list[Method]:
    """The rows of ``config``'s table, in ``METHODS``' order."""
    return [m for m in METHODS if not m.grids or config.name in m.grids]


def runs_of(config: GridConfig) -> list[tuple[Method, int]]:
    """Seed-major order, so a partly finished grid has every method at its first seeds."""
    return [(m, s) for s in config.seeds for m in methods_of(config) if m.stochastic or s == config.seeds[0]]


def run_dir(config: GridConfig, method: Method, seed: int, runs: Path | None = None) -> Path:
    """``runs`` (default ``RUNS``) is explicit in Ray trials: another process never sees ``main``'s ``RUNS``."""
    slug = re.sub(r"[^\w+.-]+", "-", method.name).strip("-")  # "uniform (no repair)" → "uniform-no-repair"
    return (runs or RUNS) / config.name / f"{slug}-s{seed}"


def _finished(folder: Path) -> bool:
    try:
        return json.loads((folder / "run.json").read_text()).get("finished", False)
    except (OSError, json.JSONDecodeError):
        return False


def machine() -> dict[str, Any]:
    """What a run ran on, written beside it: tables may mix machines, and timings only compare on one."""
    import torch

    from benchmarks.step_speed import cpu_capability, cpu_name

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {"device": gpu or f"{cpu_name()} ({cpu_capability()})", "cpu_count": os.cpu_count(), "torch": torch.__version__,
            "python": platform.python_version(), "torch_threads": torch.get_num_threads()}


def run_one(config: GridConfig, method: Method, seed: int, runs_in_process: int = 1, parallel: int = 1,
            runs: Path | None = None) -> None:
    """One grid cell through the same code paths as ``agmc search`` / ``agmc baseline``; resumes if interrupted."""
    from agents.run_folder import SearchConfig
    from agents.search import run_search
    from agents.searchers import run_baseline

    folder = run_dir(config, method, seed, runs)
    print(f"[{config.name}] {method.name} seed {seed} → {folder}", flush=True)
    folder.mkdir(parents=True, exist_ok=True)
    _record_machine(folder, {**machine(), "runs_in_parallel": parallel})
    env_kwargs = {**config.env_kwargs, **dict(method.env)}
    if method.kind == "baseline":
        run_baseline(method.algo, config.env_id, folder, episodes=config.episodes, seed=seed,
                     env_kwargs=env_kwargs, progress=False)
    else:
        run_search(SearchConfig(config.env_id, method.algo, method.embedding, config.episodes, config.warmup,
                                seed, env_kwargs=env_kwargs, **dict(method.search)), folder, progress=False)
    # Process-wide peak so far: exact for a process's first run, an upper bound after that.
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    (folder / "peak_rss.json").write_text(json.dumps({"peak_rss_mb": peak, "runs_in_process": runs_in_process}))
    test_accuracy(folder)


def _record_machine(folder: Path, entry: dict[str, Any]) -> None:
    """Appends this (re)start's machine: a resumed run may have run on several."""
    sessions = _machines(folder)
    (folder / "machine.json").write_text(json.dumps({"sessions": [*sessions, entry]}, indent=1))


def _machines(folder: Path) -> list[dict[str, Any]]:
    try:
        return json.loads((folder / "machine.json").read_text())["sessions"]
    except (OSError, json.JSONDecodeError, KeyError):
        return []


def _record_path(config: GridConfig, method: Method, seed: int) -> Path:
    return records.folder(RESULTS, config.name) / f"{run_dir(config, method, seed).name}.json"


def _pending(config: GridConfig, only: set[str] | None) -> list[tuple[Method, int]]:
    return [(m, s) for m, s in runs_of(config) if (only is None or m.name in only)
            and not _finished(run_dir(config, m, s)) and not _record_path(config, m, s).is_file()]


def method_named(name: str) -> Method:
    return next(m for m in METHODS if m.name == name)


def execute(config: GridConfig, finetune: bool = True, only: set[str] | None = None, *, sequential: bool = False,
            address: str | None = None, cpus_per_run: float | None = None, gpus_per_run: float = 0.0,
            max_failures: int = 3, finetune_rows: set[str] | None = None) -> None:
    """Runs the pending cells: as Ray Tune trials (here or on ``address``'s cluster), or one after the other
    in this process (``sequential``, or Ray not installed); then the fine-tuned rows (``finetune_rows``: only
    these), in this process. ``only=set()`` runs no grid cell."""
    pending = _pending(config, only)
    if not sequential and not grid.ray_available():
        print(f"[{config.name}] Ray is not installed: running the grid in this process, one run at a time "
              f"({grid.INSTALL_HINT})", flush=True)
        sequential = True
    if sequential:
        grid.set_threads(cpus_per_run)
        for n, (method, seed) in enumerate(pending, 1):
            run_one(config, method, seed, n)
    elif pending:
        _run_on_ray(config, pending, address, cpus_per_run or 1, gpus_per_run, max_failures)
    for method, seed in runs_of(config):
        if _finished(run_dir(config, method, seed)):
            test_accuracy(run_dir(config, method, seed))
    if finetune:
        grid.set_threads(cpus_per_run)
        run_finetunes(config, finetune_rows)


def _run_on_ray(config: GridConfig, pending: list[tuple[Method, int]], address: str | None, cpus: float,
                gpus: float, max_failures: int) -> None:
    from ray import tune

    grid.start(address, cpus, gpus)
    runs = RUNS.resolve()  # trials run in other processes (other machines): RUNS is this process's
    trainable = tune.with_parameters(_trial, grid_config=config, runs=str(runs), cpus=cpus,
                                     parallel=grid.concurrent_runs(cpus, gpus, len(pending)))
    cells = [{"method": m.name, "seed": s} for m, s in pending]
    results = grid.fit(trainable, {"cell": tune.grid_search(cells)}, name=f"{config.name}-{_stamp()}",
                       storage=runs / "_ray", cpus_per_run=cpus, gpus_per_run=gpus, max_failures=max_failures,
                       dirname=lambda trial: run_dir(config, method_named(trial.config["cell"]["method"]),
                                                     trial.config["cell"]["seed"]).name)
    for result in results:
        if result.error is not None:  # it stays pending: re-running the command continues it
            print(f"[{config.name}] {result.config['cell']} FAILED after {max_failures} retries: {result.error!r}",
                  flush=True)


def _stamp() -> str:
    return datetime.datetime.now().strftime("%Y%m%d-%H%M%S")


def _trial(params: dict[str, Any], *, grid_config: GridConfig, runs: str, cpus: float, parallel: int) -> None:
    """One Ray Tune trial: one grid cell; a retried trial resumes the cell's run folder."""
    from ray import tune

    grid.set_threads(cpus)
    cell = params["cell"]
    run_one(grid_config, method_named(cell["method"]), cell["seed"], parallel=parallel, runs=Path(runs))
    folder = run_dir(grid_config, method_named(cell["method"]), cell["seed"], Path(runs))
    tune.report({"val_accuracy": json.loads((folder / "best.json").read_text())["accuracy"],
                 "test_accuracy": test_accuracy(folder)})


def test_accuracy(folder: Path) -> float:
    """Test accuracy of the run's best pruned net (already BN-recalibrated), cached in test.json."""
    cache = folder / "test.json"
    if cache.exists():
        return json.loads(cache.read_text())["test_accuracy"]
    from agents.checkpoint_io import load_pruned, task_for

    model, meta = load_pruned(folder / "best_pruned.pt")
    task = task_for(meta, split="test", amp="off", repair="none")  # scores a saved net: no episode to repair
    acc = task.evaluator.accuracy(model.to(task.device))
    cache.write_text(json.dumps({"test_accuracy": acc, "split": "test", "images": len(task.evaluator.images)}))
    return acc


def unpruned(config: GridConfig) -> dict[str, float]:
    cache = records.folder(RESULTS, config.name) / "unpruned.json"
    if (cached := records.read(cache)) is not None:
        return cached
    from agmc_env import make_task

    kwargs = {**config.env_kwargs, "amp": "off", "flops_target": 1.0, "repair": "none"}
    val = make_task(config.env_id, **kwargs)
    test = make_task(config.env_id, **kwargs, split="test")
    result = {"val_accuracy": val.evaluator.accuracy(val.analysis.gm),
              "test_accuracy": test.evaluator.accuracy(test.analysis.gm),
              "macs": val.cost.base_macs, "params": val.cost.base_params}
    return records.write(cache, result)


def _recorded_weights(config: GridConfig) -> str | None:
    """The checkpoint the grid's runs recorded (not the one this render's environment would pick): a render
    without ``$AGMC_WEIGHTS_DIR`` must not relabel runs made on the JPEG-adapted weights."""
    for method, seed in runs_of(config):
        record = records.read(_record_path(config, method, seed))
        if record is not None:
            return record["weights"]
    return config.env_kwargs.get("weights")


def _weights_of(folder: Path) -> str | None:
    return json.loads((folder / "run.json").read_text())["identity"]["env_kwargs"].get("weights")


def policy_source(config: GridConfig, policy: str) -> Path | None:
    """The finished run a fine-tuned row starts from: the best search by reward split, or a method's first seed.
    Where that run's folder is not on this machine but its record is, the record's policy stands in for it
    (:func:`_record_source`)."""
    if policy == finetune_rows.BEST_SEARCH:  # pinned in the records: the choice outlives the run folders
        candidates = [(m, s) for m, s in runs_of(config) if m.stochastic and not m.env]
        try:
            return finetune_rows.pinned_best_run([run_dir(config, m, s) for m, s in candidates
                                                  if _finished(run_dir(config, m, s))],
                                                 records.folder(RESULTS, config.name) / "finetune")
        except FileNotFoundError as exc:
            pinned = json.loads((records.folder(RESULTS, config.name) / "finetune" / "best-search.json").read_text())
            cell = next(((m, s) for m, s in candidates if run_dir(config, m, s).name == pinned["run"]), None)
            source = _record_source(config, *cell) if cell else None
            if source is None:
                raise SystemExit(f"{exc}" + (f"; or run it again (same seed, same run on the same kind of CPU): "
                                             f"{_rerun_hint(config, *cell)}" if cell else "")) from exc
            return source
    method = method_named(policy)
    folder = run_dir(config, method, config.seeds[0])
    if _finished(folder):
        return folder
    source = _record_source(config, method, config.seeds[0])
    if source is None and _record_path(config, method, config.seeds[0]).is_file():  # recorded without its policy
        print(f"[{config.name}] the {policy} rows need the run folder {folder}, which this machine does not have "
              f"(its record has no keep ratios): {_rerun_hint(config, method, config.seeds[0])}", flush=True)
    return source


def _record_source(config: GridConfig, method: Method, seed: int) -> Path | None:
    """A stand-in for a run folder this machine lacks, built from the run's committed record: the ``best.json``
    a fine-tuned row's start replays (:func:`benchmarks.finetune_rows.start_checkpoint`) — the recorded keep
    ratios in this machine's env of the grid. The start's weights then differ from the original machine's by
    the BN recalibration's float rounding only (another CPU kind, bf16 or not): the same ratios, the same
    channels, the same least-squares repair."""
    path = _record_path(config, method, seed)
    record = records.read(path)
    if record is None or record.get("keep_ratios") is None:  # rebuilt records may lack the policy
        return None
    weights = config.env_kwargs.get("weights")
    if record.get("weights") and Path(record["weights"]).name != Path(weights or "").name:
        raise SystemExit(f"{path} was searched on {Path(record['weights']).name}, but "
                         f"this machine's {config.name} grid would load {weights or 'the published checkpoint'}: set "
                         f"$AGMC_WEIGHTS_DIR to the folder holding {Path(record['weights']).name}")
    folder = RUNS / config.name / "finetune" / "from-records" / run_dir(config, method, seed).name
    folder.mkdir(parents=True, exist_ok=True)
    best = {"env_id": config.env_id, "env_kwargs": {**config.env_kwargs, **dict(method.env)},
            "keep_ratios": record["keep_ratios"], "accuracy": record["val_accuracy"],
            "record": str(path)}
    (folder / "best.json").write_text(json.dumps(best, indent=1))
    print(f"[{config.name}] {folder.name}'s run folder is not on this machine: its recorded policy is replayed "
          f"instead ({folder})", flush=True)
    return folder


def _rerun_hint(config: GridConfig, method: Method, seed: int) -> str:
    return (f"delete {_record_path(config, method, seed)} and run `python -m benchmarks.table {config.name} "
            f"--methods \"{method.name}\" --skip-finetune`")


def run_finetunes(config: GridConfig, names: set[str] | None = None) -> None:
    """The fine-tuned rows (``names``: only these) whose policy's run has finished (each resumes where it
    stopped)."""
    for row in finetune_rows.planned(config.finetune_policies):
        if names is not None and row.name not in names:
            continue
        source = policy_source(config, row.policy)
        if source is not None:
            finetune_rows.run(row, source, RUNS / config.name / "finetune", config.finetune_epochs,
                              log=lambda msg: print(f"[{config.name}] {msg}", flush=True))


def _finetune_lines(config: GridConfig, base_test: float) -> list[str]:
    epochs = config.finetune_epochs
    lines = ["", f"Fine-tuned rows: {epochs} epochs of `agmc finetune` (SGD + Nesterov, lr 0.01 cosine, wd 5e-4, "
             "batch 128, crop + flip, full training split; distillation: `--distill`, T = 4, α = 0.9, teacher = the "
             "unpruned net; `--amp auto`: bf16 autocast where the device has native bf16, fp32 elsewhere — the "
             "precision column says which the epochs ran in; \"?\": recorded before the precision was). Each starts "
             "from its policy replayed for one episode with least-squares repair (\"repaired\") or without; "
             "\"best search\" = the search run with the highest reward-split accuracy "
             "when its first row started (pinned in `finetune/best-search.json`). Rows still running show the epochs "
             "done (they resume). Wall minutes are the epochs' wall-clock time, including any time the process was "
             "paused or shared its core (the CPU rows ran beside searches, one thread each).", "",
             "| policy (run) | start weights | distillation | test before (%) | test after (%) | Δ test after (pt) | "
             "epochs done | precision | wall minutes |", "|---|---|---|---|---|---|---|---|---|"]
    for row in finetune_rows.planned(config.finetune_policies):
        r = _finetune_result(config, row)
        source = f" ({r['source']})" if r else ""
        start = "repaired" if row.repair != "none" else "not repaired"
        head = f"| {row.policy}{source} | {start} | {'yes' if row.distill else 'no'} |"
        lines.append(f"{head} not run yet | | | | | |" if r is None else
                     f"{head} {100 * r['before']:.2f} | {100 * r['after']:.2f} | {100 * (r['after'] - base_test):+.2f} | "
                     f"{r['epochs']}/{epochs} | {r.get('precision', '?')} | {r['minutes']:.0f} |")
    return lines


def _finetune_result(config: GridConfig, row: finetune_rows.FinetuneRow) -> dict[str, Any] | None:
    """The row's result from its fine-tune folder (refreshing its record), else from its record."""
    path = records.folder(RESULTS, config.name) / "finetune" / f"{row.folder(Path(), config.finetune_epochs)}.json"
    r = finetune_rows.result(row, RUNS / config.name / "finetune", config.finetune_epochs)
    return records.read(path) if r is None else records.write(path, r)


def _episodes(folder: Path) -> list[dict[str, str]]:
    with open(folder / "episodes.csv", newline="") as f:
        return list(csv.DictReader(f))


def _run_row(config: GridConfig, method: Method, seed: int, base_test: float) -> dict[str, Any] | None:
    """The cell's table row from its finished run folder (refreshing its record), else from its record."""
    folder, path = run_dir(config, method, seed), _record_path(config, method, seed)
    if not _finished(folder):
        record = records.read(path)
        return None if record is None else {**record, "delta_test": record["test_accuracy"] - base_test}
    rows = _episodes(folder)
    acc = np.array([float(r["accuracy"]) for r in rows])
    best_so_far = np.maximum.accumulate(acc)
    best = json.loads((folder / "best.json").read_text())
    test = test_accuracy(folder)
    return records.write(path, {
        "method": method.name, "seed": seed, "episodes": len(rows), "macs_kept": best["flops_ratio"],
        "params_kept": best["params_ratio"], "val_accuracy": best["accuracy"], "test_accuracy": test,
        "delta_test": test - base_test,
        "episodes_to_within_0.5pt": int(np.argmax(best_so_far >= best_so_far[-1] - 0.005)) + 1,
        "search_seconds": sum(float(r["seconds"]) for r in rows),
        "machine": _machine_label(folder),
        "curve": best_so_far.tolist(), "keep_ratios": best["keep_ratios"], "weights": _weights_of(folder),
    })


def _machine_label(folder: Path) -> str:
    labels = dict.fromkeys(f"{m['device']} ({m.get('torch_threads', '?')} thread(s) per run, "
                           f"{m['runs_in_parallel']} run(s) at once)" for m in _machines(folder))
    return " then ".join(labels) or "not recorded"


def _late_gain(curve: list[float], episode: int) -> float | None:
    """How much the best-so-far reward-split accuracy rose after ``episode`` (None for a run not that long): a
    search that keeps finding better policies late gains, one that has frozen gains 0."""
    return curve[-1] - curve[episode - 1] if len(curve) > episode else None


def _fmt(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    v = np.array(values) * scale
    return f"{v.mean():.{digits}f}" if len(v) == 1 else f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def render(config: GridConfig, argv: list[str]) -> None:
    from agmc_env.options import BY_NAME
    from benchmarks.step_speed import cpu_capability, cpu_name

    def option(name: str) -> Any:
        return config.env_kwargs.get(name, BY_NAME[name].default)

    base = unpruned(config)
    rows = [r for m, s in runs_of(config) if (r := _run_row(config, m, s, base["test_accuracy"])) is not None]
    RESULTS.mkdir(parents=True, exist_ok=True)
    fields = ["method", "seed", "episodes", "macs_kept", "params_kept", "val_accuracy", "test_accuracy", "delta_test",
              "episodes_to_within_0.5pt", "search_seconds", "machine"]
    with open(RESULTS / f"{config.name}.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows({k: v for k, v in r.items() if k in fields} for r in rows)
    with open(RESULTS / f"{config.name}_curves.csv", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["method", "seed", "episode", "best_so_far_val_accuracy"])
        for r in rows:
            writer.writerows([r["method"], r["seed"], i + 1, round(v, 5)] for i, v in enumerate(r["curve"]))
    _plot(config, rows)
    _plot_ratios(config, rows)

    import torch

    weights = _recorded_weights(config) or f"akamaster {config.model} (published checkpoint)"
    lines = [
        f"# {config.name}: {config.env_id}, every method at the preset's MACs budget", "",
        f"Regenerate: `AGMC_DATA_DIR=../shared/data/cifar10 AGMC_WEIGHTS_DIR=../shared/weights python -m benchmarks.table {config.name}`"
        " (Ray Tune trials: `--cpus-per-run C --gpus-per-run G` per run, `--address` for a cluster)  ",
        f"This render: `python -m benchmarks.table {' '.join(argv)}`, {datetime.datetime.now().isoformat(timespec='seconds')}  ",
        f"Rendered on: {cpu_name()} ({cpu_capability()}, {os.cpu_count()} cores), torch {torch.__version__}, Python {platform.python_version()}  ",
        "Runs ran on: " + "; ".join(f"{label} ({n} runs)" for label, n in
                                    sorted(Counter(r["machine"] for r in rows).items())) + " (search time compares only within one machine)  ",
        f"Checkpoint: `{Path(weights).name}`; data: `$AGMC_DATA_DIR` = CIFAR-10 JPEG-derived copy (see ../shared/data/cifar10/README.md)  ",
        f"Protocol: {config.episodes} episodes per search ({config.warmup} warm-up), reward = top-1 on "
        f"{config.env_kwargs.get('val_size', 1000)} training images held out (seed 0), after least-squares repair "
        f"(statistics from {option('repair_size')} other training images; rows marked \"no repair\" skip it) and "
        f"BN recalibration on {option('calib_size')} other training images, every episode within [target − 1 %, "
        "target] MACs; test accuracy = the best episode's pruned net on the 10,000 test images (no fine-tuning). "
        "Random search uses as many evaluations as an RL run. FLOPs = MACs of conv + linear layers. "
        "The reward split comes from training images the checkpoint was trained on, so its accuracies run high; "
        "the test column is the honest one.", "",
        f"Unpruned: reward-split {100 * base['val_accuracy']:.2f} %, test {100 * base['test_accuracy']:.2f} %, "
        f"{base['macs'] / 1e6:.2f} M MACs, {base['params'] / 1e6:.3f} M params.", "",
        "| method | runs | MACs kept (min–max) | params kept | reward-split acc. (%) | test acc. (%) | Δ test (pt) | "
        f"episodes to within 0.5 pt | reward-split gain after episode {config.episodes // 2} (pt) | search time (min) |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| unpruned | – | 1.000 | 1.000 | {100 * base['val_accuracy']:.2f} | {100 * base['test_accuracy']:.2f} | 0 | – | – "
        "| – |",
    ]
    for m in methods_of(config):
        mine = [r for r in rows if r["method"] == m.name]
        expected = len(config.seeds) if m.stochastic else 1
        if not mine:
            lines.append(f"| {m.name} | 0/{expected} | not run yet | | | | | | | |")
            continue
        g = lambda k: [r[k] for r in mine]  # noqa: E731
        late = [gain for r in mine if (gain := _late_gain(r["curve"], config.episodes // 2)) is not None]
        lines.append(
            f"| {m.name} | {len(mine)}/{expected} | {_fmt(g('macs_kept'), digits=3)} ({min(g('macs_kept')):.3f}–"
            f"{max(g('macs_kept')):.3f}) | {_fmt(g('params_kept'), digits=3)} | "
            f"{_fmt(g('val_accuracy'), 100)} | {_fmt(g('test_accuracy'), 100)} | {_fmt(g('delta_test'), 100)} | "
            f"{_fmt(g('episodes_to_within_0.5pt'), digits=0)} | {_fmt(late, 100) if late else '–'} | "
            f"{_fmt(g('search_seconds'), 1 / 60, 1)} |")
    missing = sum((len(config.seeds) if m.stochastic else 1) - sum(r["method"] == m.name for r in rows)
                  for m in methods_of(config))
    if missing:
        lines += ["", f"**Partial grid**: {missing} runs have not finished (rows show finished/planned runs); "
                  "re-running the command above resumes the grid where it stopped."]
    val, test = [r["val_accuracy"] for r in rows], [r["test_accuracy"] for r in rows]
    if len(rows) >= 3 and min(len(set(val)), len(set(test))) < 2:  # a rank correlation needs two distinct values
        lines += ["", f"Reward split vs test over every run's best policy ({len(rows)} runs): Spearman ρ undefined "
                  "(every run scored the same on one of the two splits)."]
    elif len(rows) >= 3:
        lines += ["", f"Reward split vs test over every run's best policy ({len(rows)} runs): Spearman ρ = "
                  f"{_spearman(val, test):.3f} — how far "
                  "the search's objective ranks pruned networks as the held-out test set does."]
    from agents.algorithms import IMITATION_ELITES, MIN_UPDATES_PER_EPISODE, SELF_IMITATION

    ddpg = [m for m in methods_of(config) if m.kind == "search" and m.algo == "ddpg"]
    no_sil = [m.name for m in ddpg if ("self_imitation", 0.0) in m.search]
    no_floor = [m.name for m in ddpg if ONE_PER_TRANSITION[0] in m.search]
    lines += ["", f"Mean ± sample std over seeds. \"Episodes to within 0.5 pt\": the first episode whose best-so-far "
              "reward-split accuracy is within 0.5 pt of the run's final best; \"gain after episode "
              f"{config.episodes // 2}\": how much the best-so-far rose in the second half of the search (0: the "
              "search found nothing better in its last half). "
              f"Self-imitation (λ = {SELF_IMITATION:g}, `--self-imitation`, at every step of the best "
              f"{IMITATION_ELITES} episodes so far, `--imitation-elites`; "
              "`--imitation-filter` restricts it to the steps where the critic rates the best's action higher) is "
              "DDPG's default (TD3 and "
              f"SAC run without it); these DDPG rows ran without it (λ = 0), and the ablations are measured against \"gnn+ddpg (no "
              f"self-imitation)\": {', '.join(no_sil)}. "
              f"DDPG takes at least {MIN_UPDATES_PER_EPISODE} gradient steps per episode (`--min-updates-per-episode`: "
              "3 per transition on ResNet-20's 9 decisions, one on ResNet-56's 27, where the floor changes nothing); "
              f"these DDPG rows ran with one per transition (AMC's), from before the floor: {', '.join(no_floor)}."]
    lines += _finetune_lines(config, base["test_accuracy"])
    lines += ["", "Published numbers (real CIFAR-10, not this JPEG copy; compare Δ only):", "",
              "| source | base (%) | pruned (%) | Δ (pt) |", "|---|---|---|---|"]
    for label, b, p in PAPER.get(config.model, []):
        lines.append(f"| {label} | {b:.2f} | {p:.2f} | {p - b:+.2f} |")
    lost = [r for r in rows if r["keep_ratios"] is None]
    if lost:
        lines += ["", f"{len(lost)} runs' records were rebuilt from earlier renders' CSVs after their run folders were "
                  "lost, without their keep ratios: the ratios picture leaves them out; they are drawn in "
                  + "; ".join(f"{where} ({n} runs)" for where, n in Counter(r["keep_ratios_in"] for r in lost).items())
                  + "."]
    lines += ["", f"Curves: `{config.name}_curves.png` (data in `{config.name}_curves.csv`); what each search learned — "
              f"the best policy's keep ratio per decision, per method: `{config.name}_ratios.png`; per-run rows: "
              f"`{config.name}.csv`.", ""]
    (RESULTS / f"{config.name}.md").write_text("\n".join(lines))
    print("\n".join(lines))


def _spearman(a: list[float], b: list[float]) -> float:
    from benchmarks.calibration_size import spearman

    return spearman(np.array(a), np.array(b))


def _plot_ratios(config: GridConfig, rows: list[dict[str, Any]]) -> None:
    """The best policy's keep ratio per decision (layer index vs ratio, as the AMC and AGMC papers show): one
    panel per method, one line per seed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in rows if r["keep_ratios"] is not None]  # records rebuilt without them: see the table's note
    methods = [m for m in METHODS if any(r["method"] == m.name for r in rows)]
    if not methods:
        return
    cols = min(4, len(methods))
    fig, axes = plt.subplots(-(-len(methods) // cols), cols, figsize=(3.2 * cols, 2.4 * -(-len(methods) // cols)),
                             sharex=True, sharey=True, squeeze=False)
    for ax, m in zip(axes.flat, methods):
        for r in (r for r in rows if r["method"] == m.name):
            ax.plot(range(1, len(r["keep_ratios"]) + 1), r["keep_ratios"], marker=".", lw=1,
                    label=f"s{r['seed']}: {100 * r['test_accuracy']:.1f} %")
        ax.set_title(m.name, fontsize=9)
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    for ax in axes.flat[len(methods):]:
        ax.axis("off")
    for ax in axes[-1]:
        ax.set_xlabel("decision (forward order)", fontsize=8)
    for ax in axes[:, 0]:
        ax.set_ylabel("keep ratio", fontsize=8)
    fig.suptitle(f"{config.name}: best policy per run (legend: test accuracy)", fontsize=10)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{config.name}_ratios.png", dpi=110)
    plt.close(fig)


def _plot(config: GridConfig, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = plt.get_cmap("tab20").colors  # more methods than the default cycle's 10 colours: none repeats
    for i, m in enumerate(METHODS):
        curves = [r["curve"] for r in rows if r["method"] == m.name]
        if not curves or not m.stochastic:
            continue
        n = min(len(c) for c in curves)
        arr = 100 * np.array([c[:n] for c in curves])
        x = np.arange(1, n + 1)
        mean = arr.mean(0)
        line, = ax.plot(x, mean, color=colours[i % len(colours)], label=f"{m.name} (n={len(curves)})")
        if len(curves) > 1:
            ax.fill_between(x, arr.min(0), arr.max(0), color=line.get_color(), alpha=0.15)
    uniform = [r for r in rows if r["method"] == "uniform"]
    if uniform:
        ax.axhline(100 * uniform[0]["val_accuracy"], color="k", ls="--", lw=1, label="uniform")
    ax.set_xlabel("episode")
    ax.set_ylabel("best-so-far reward-split top-1 (%)")
    ax.set_title(f"{config.name}: search progress (mean, band = min–max over seeds)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(RESULTS / f"{config.name}_curves.png", dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    global RESULTS, RUNS
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("config")
    grid.add_arguments(p)
    p.add_argument("--sequential", action="store_true", help="run in this process, one run at a time (no Ray)")
    p.add_argument("--render-only", action="store_true")
    p.add_argument("--skip-finetune", action="store_true", help="do not run the fine-tuned rows")
    p.add_argument("--finetune-only", action="store_true", help="run no search, only the fine-tuned rows")
    p.add_argument("--finetune-rows", help="comma-separated fine-tuned rows to run (default: all), e.g. "
                   "best-search-lstsq-distill,uniform-none")
    p.add_argument("--methods", help="comma-separated method names: run only these")
    p.add_argument("--results", help="where the table, CSVs and plots go (default benchmarks/results)")
    p.add_argument("--runs", help="where the run folders live (default benchmarks/runs)")
    args = p.parse_args(argv)
    RESULTS, RUNS = Path(args.results or RESULTS), Path(args.runs or RUNS)
    config = preset(args.config)
    if not args.render_only:
        only = set(args.methods.split(",")) if args.methods else None
        if only and only - {m.name for m in METHODS}:
            raise SystemExit(f"unknown methods {sorted(only - {m.name for m in METHODS})}; "
                             f"choose from {[m.name for m in METHODS]}")
        rows = set(args.finetune_rows.split(",")) if args.finetune_rows else None
        names = [r.name for r in finetune_rows.planned(config.finetune_policies)]
        if rows and rows - set(names):
            raise SystemExit(f"unknown fine-tuned rows {sorted(rows - set(names))}; choose from {names}")
        execute(config, finetune=not args.skip_finetune, only=set() if args.finetune_only else only,
                sequential=args.sequential or args.finetune_only, address=args.address,
                cpus_per_run=args.cpus_per_run, gpus_per_run=args.gpus_per_run, max_failures=args.max_failures,
                finetune_rows=rows)
    render(config, argv)


if __name__ == "__main__":
    # Run as the importable ``benchmarks.table``, not ``__main__``: Ray ships the trial function to its
    # workers by module name, and they can import ``benchmarks.table`` but not this process's ``__main__``.
    from benchmarks.table import main as table_main

    table_main()
