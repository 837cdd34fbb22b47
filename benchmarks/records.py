"""Committed records: what a grid's table is rendered from, so that it survives the machine its runs ran on.

Run folders (``benchmarks/runs``, git-ignored) hold checkpoints, logs and replay buffers; they stay on the machine
that ran them, and a fresh checkout has none. A table has to keep every run it has shown and grow run by run across
machines and sessions. So each render first copies, for every finished run and every fine-tuned row with an epoch
done, the figures the table shows into one small JSON file under ``results/records/<config>/`` (committed with the
table), then renders from these files. A run folder that is present always refreshes its record; a record whose
folder is gone still renders, and its cell counts as done (delete the record to run the cell again).

    results/records/<config>/<run folder name>.json     one grid run: its table row, curve and best keep ratios
    results/records/<config>/unpruned.json               the unpruned net's accuracies and size
    results/records/<config>/finetune/<row>.json         one fine-tuned row's test accuracy before/after, epochs
    results/records/<config>/finetune/best-search.json   the search run the "best search" rows start from
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def folder(results: Path, config: str) -> Path:
    return results / "records" / config


def read(path: Path) -> dict[str, Any] | None:
    """The record at ``path``, or None when there is none."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def write(path: Path, record: dict[str, Any]) -> dict[str, Any]:
    """Writes ``record`` (sorted keys, one line per key: diffs between renders stay small) and returns it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return record
