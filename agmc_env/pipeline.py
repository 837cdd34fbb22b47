"""The episode end as an explicit pipeline: prune → repair → BN recalibration → score → reward.

Each stage is a callable ``stage(task, end)`` that reads and fills the :class:`EpisodeEnd` in place, with
the whole task at hand (its mode, evaluator and images: ``task.evaluator.calib`` are the calibration
images, ``task.evaluator.images`` the scored ones). Stages are named, timed (``info["timing"]`` holds
``<name>_s``) and replaceable: ``task.pipeline.replace("repair", my_repair)``.
"""
from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from torch import nn

from agmc_env.budget import count_module

if TYPE_CHECKING:
    from agmc_env.task import PruningTask


@dataclass
class EpisodeEnd:
    """What the stages pass along: the decided counts, the network being built, the episode's final info."""

    counts: list[int]
    model: nn.Module | None = None
    info: dict[str, Any] = field(default_factory=dict)


Stage = Callable[["PruningTask", EpisodeEnd], None]


def prune(task: PruningTask, end: EpisodeEnd) -> None:
    """Build the pruned network (physically smaller in channel mode)."""
    end.model = task.mode.build(end.counts)


def no_repair(task: PruningTask, end: EpisodeEnd) -> None:
    """``repair="none"``: keep the sliced weights (``repair="lstsq"`` puts :class:`agmc_env.repair.LstsqRepair` here,
    which refits the layers that consume pruned channels)."""


def recalibrate(task: PruningTask, end: EpisodeEnd) -> None:
    """Adaptive BN: re-estimate BatchNorm statistics on the calibration images."""
    if task.options["bn_recalibration"]:
        task.evaluator.recalibrate(end.model)


def score(task: PruningTask, end: EpisodeEnd) -> None:
    """Top-1 / top-5 on the scored split, and MACs / params measured on the real module."""
    scores = task.evaluator.scores(end.model)
    macs, params = count_module(end.model, task.example)
    end.info.update(accuracy=scores[task.options["reward_metric"]], **scores,
                    flops_ratio=macs / task.cost.base_macs,
                    params_ratio=task.mode.kept_params(end.model, params) / task.cost.base_params,
                    macs=macs, params=params, **task.mode.report(end.model, params), counts=end.counts)


def reward(task: PruningTask, end: EpisodeEnd) -> None:
    end.info["reward"] = float(task.reward(end.info))


class EpisodePipeline:
    """Named stages run in order; ``run`` returns the finished :class:`EpisodeEnd`."""

    def __init__(self, stages: list[tuple[str, Stage]] | None = None) -> None:
        self.stages: list[tuple[str, Stage]] = stages if stages is not None else [
            ("prune", prune), ("repair", no_repair), ("calibrate", recalibrate), ("evaluate", score),
            ("reward", reward)]

    def replace(self, name: str, stage: Stage) -> None:
        """Swap the stage called ``name`` (e.g. ``"repair"``) for another callable ``stage(task, end)``."""
        names = [n for n, _ in self.stages]
        if name not in names:
            raise ValueError(f"no stage {name!r} in the pipeline; stages: {names}")
        self.stages[names.index(name)] = (name, stage)

    def run(self, task: PruningTask, counts: list[int]) -> EpisodeEnd:
        end = EpisodeEnd(counts)
        timing = {}
        for name, stage in self.stages:
            start = time.perf_counter()
            stage(task, end)
            timing[f"{name}_s"] = time.perf_counter() - start
        end.info["timing"] = timing
        return end
