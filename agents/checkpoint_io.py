"""Loading pruned-model checkpoints (``best_pruned.pt``, fine-tuned ones) and the task they came from."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from agmc_env.task import PruningTask, make_task


class CheckpointFileError(RuntimeError):
    """A pruned-model checkpoint is missing or unreadable."""


def load_pruned(path: str | os.PathLike) -> tuple[torch.nn.Module, dict[str, Any]]:
    """(module, meta) from a file written by ``agents.run_folder.save_pruned``."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointFileError(f"no checkpoint at {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
        return obj["model"], obj["meta"]
    except Exception as exc:
        raise CheckpointFileError(f"{path} is not a readable agmc pruned-model checkpoint ({exc})") from exc


def task_for(meta: dict[str, Any], **overrides: Any) -> PruningTask:
    """The pruning task a checkpoint was searched in, with option overrides (split, device, ...)."""
    return make_task(meta["env_id"], **{**meta.get("env_kwargs", {}), **overrides})
