"""Compare finished run folders grouped by arm (the folder name without its ``-s<seed>`` suffix): best
reward-split accuracy (what the search optimises, and what selects settings), the episode it was found at,
MACs kept, and the best net's test accuracy (reporting only), mean ± std over seeds.

    python -m benchmarks.compare_runs benchmarks/runs/r20_credit --out benchmarks/results/search_settings_r20.md

Test accuracies are computed once per run (``test.json`` beside it, as in ``benchmarks.table``). ``--grid
resnet20_flops50:gnn+ddpg,random`` adds those methods' rows from the table's committed records (the same env and
search length; their run folders need not be on this machine).
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import re
import sys
from collections import defaultdict
from pathlib import Path

from agents.run_folder import SearchConfig
from benchmarks import records, table
from benchmarks.step_speed import cpu_capability, cpu_name
from benchmarks.table import _finished, _fmt, _machine_label, test_accuracy

NOT_SETTINGS = ("env_id", "episodes", "seed", "env_kwargs")  # the run's identity less what makes an arm


def arms(root: Path) -> dict[str, list[Path]]:
    groups: dict[str, list[Path]] = defaultdict(list)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and _finished(p)):
        groups[re.sub(r"-s\d+$", "", folder.name)].append(folder)
    return dict(groups)


def row(name: str, folders: list[Path]) -> str:
    best = [json.loads((f / "best.json").read_text()) for f in folders]
    run = json.loads((folders[0] / "run.json").read_text())["identity"]
    val = [b["accuracy"] for b in best]
    test = [test_accuracy(f) for f in folders]
    rl = run.get("embedding", "none") != "none"  # the RL settings mean nothing to a whole-episode searcher
    fields = {f.name: f.default for f in dataclasses.fields(SearchConfig) if f.name not in NOT_SETTINGS}
    keys = list(fields) if rl else ["algo"]
    # "off" flags are left out, unless off is not the flag's default (warmup_noise=False)
    settings = {k: run.get(k) for k in keys
                if run.get(k) not in (None, False) or (run.get(k) is False and fields.get(k) is not False)}
    seeds = ", ".join(f"s{b['seed']}: {100 * v:.1f}" for b, v in zip(best, val))
    return (f"| {name} | `{json.dumps(settings)}` | {len(folders)} | {_fmt(val, 100)} ({seeds}) | "
            f"{_fmt([b['episode'] + 1 for b in best], digits=0)} | {min(b['flops_ratio'] for b in best):.4f}–"
            f"{max(b['flops_ratio'] for b in best):.4f} | {_fmt(test, 100)} |")


def grid_rows(spec: str) -> list[str]:
    """``CONFIG:METHOD[,METHOD…]``: one row per method from the grid's records."""
    name, _, methods = spec.partition(":")
    config = table.preset(name)
    lines = []
    for method in (table.method_named(m) for m in methods.split(",")):
        recs = [r for m, s in table.runs_of(config) if m == method
                and (r := records.read(table._record_path(config, m, s))) is not None]
        if not recs:
            raise SystemExit(f"no records of {method.name!r} in {records.folder(table.RESULTS, name)}")
        val, macs = [r["val_accuracy"] for r in recs], [r["macs_kept"] for r in recs]
        seeds = ", ".join(f"s{r['seed']}: {100 * r['val_accuracy']:.1f}" for r in recs)
        lines.append(f"| grid: {method.name} | `{name}` table records | {len(recs)} | {_fmt(val, 100)} ({seeds}) | – | "
                     f"{min(macs):.4f}–{max(macs):.4f} | {_fmt([r['test_accuracy'] for r in recs], 100)} |")
    return lines


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("root", help="a folder of run folders named <arm>-s<seed>")
    p.add_argument("--out", required=True)
    p.add_argument("--title", default="")
    p.add_argument("--note", default="", help="a paragraph under the table: what was varied and why")
    p.add_argument("--grid", action="append", default=[],
                   help="CONFIG:METHOD[,METHOD…]: add these methods' rows from a benchmark table's records")
    args = p.parse_args(argv)
    root = Path(args.root)
    groups = arms(root)
    first = next(iter(groups.values()))[0]
    env = json.loads((first / "run.json").read_text())["identity"]
    lines = [f"# {args.title or root.name}", "",
             f"Command: `python -m benchmarks.compare_runs {' '.join(argv)}`  ",
             f"Date: {datetime.datetime.now().isoformat(timespec='seconds')}  ",
             f"Runs: `{root}` — {env['env_id']}, env options {json.dumps(env['env_kwargs'])}; ran on "
             f"{_machine_label(first) if (first / 'machine.json').exists() else f'{cpu_name()} ({cpu_capability()})'}",
             "", "| arm | settings | runs | best reward-split acc. (%) | episode found | MACs kept | test acc. of the "
             "best (%) |", "|---|---|---|---|---|---|---|"]
    lines += [row(name, folders) for name, folders in groups.items()]
    lines += [line for spec in args.grid for line in grid_rows(spec)]
    lines += ["", "Mean ± sample std over seeds. Settings are selected on the reward-split column only; the test "
              "column is for reporting.", ""] + ([args.note, ""] if args.note else [])
    out = Path(args.out)
    out.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
