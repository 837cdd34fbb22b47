"""A pruning task: everything fixed for (model, data, options), built once and shared.

Building one loads the data, builds the model, moves the scored and calibration images to the device,
traces the network, builds the cost model, the pruning mode (decisions, wall, pruner) and the evaluator,
and chooses the evaluation precision. Envs (``gym.make(id, task=task)``), fine-tuning, evaluation and the
benchmark tables all take a task instead of building their own, so N envs on one task load and trace once.
A task is never changed by an episode: each episode prunes a fresh copy of the analysed network.
"""
from __future__ import annotations

import os
from typing import Any

import gymnasium as gym
import torch
from torch import nn

from agmc_env import checkpoints, options, zoo
from agmc_env.budget import CostModel
from agmc_env.data import ImageDataset, held_out_split, normalised
from agmc_env.decisions import analyse
from agmc_env.evaluate import Evaluator, resolve_device
from agmc_env.imagefolder import ImageFolderDataset
from agmc_env.modes import PruningMode, make_mode
from agmc_env.pipeline import EpisodeEnd, EpisodePipeline
from agmc_env.repair import LstsqRepair
from agmc_env.rewards import make_reward


class PruningTask:
    """The fixed part of the pruning problem. Options: ``agmc_env.options.OPTIONS`` (task scope).

    Attributes: ``options`` (resolved, defaults filled in), ``model_name``, ``dataset``, ``device``,
    ``example`` (one input image), ``analysis`` (traced channel analysis; ``analysis.gm`` is the unpruned
    network), ``cost`` (exact MACs / params), ``mode`` (the :class:`~agmc_env.modes.PruningMode`),
    ``evaluator`` (BN recalibration and scoring, with the scored and calibration images on the device),
    ``reward`` (a callable of the final ``info``), ``pipeline`` (the episode-end stages) and ``repair`` (the
    :class:`~agmc_env.repair.LstsqRepair` stage with its statistics, or None with ``repair="none"``).
    """

    def __init__(self, **kwargs: Any) -> None:
        opts = options.resolve(kwargs)
        self.options = opts
        self.reward = make_reward(opts["reward"])  # before any data is loaded or model traced
        self.device = resolve_device(opts["device"])
        self.dataset, net = self._load(opts)
        options.data_fit(opts, self.dataset.num_train, self.dataset.num_test)
        split = held_out_split(self.dataset.num_train, opts["val_size"], opts["calib_size"], opts["split_seed"])
        raw, labels = (self.dataset.test_set(opts["test_size"]) if opts["split"] == "test"
                       else self.dataset.train_subset(split.reward))
        images = self._normalised(raw)
        calib = self._normalised(self.dataset.train_subset(split.calib)[0]) if opts["bn_recalibration"] else images[:0]
        self.example = images[:1].contiguous()
        check_logits(net, images[:2], self.dataset.num_classes, self.model_name)
        self.analysis = analyse(net, self.example, prune_residual=opts["prune_residual"],
                                prune_linear=opts["prune_linear"])
        self.cost = CostModel(self.analysis)  # dense MACs / params, reported in every mode
        self.mode: PruningMode = make_mode(self.analysis, self.cost, opts)
        if opts["repair"] != "none" and not self.mode.repairable:
            if "repair" in kwargs:
                raise ValueError(f"repair={opts['repair']!r} refits the layers that read pruned channels; "
                                 f"granularity={opts['granularity']!r} removes no channel: use repair='none'")
            opts["repair"] = "none"  # the default is a no-op in a mode that removes no channel
        self.evaluator = Evaluator(images, labels.to(self.device), calib, self.device, opts["batch_size"], opts["amp"])
        self.evaluator.choose_precision(self.analysis.gm)
        self.pipeline = EpisodePipeline()
        self.repair: LstsqRepair | None = None
        if opts["repair"] == "lstsq":
            self.repair = LstsqRepair.from_task(self, self._repair_images(split, opts["repair_size"]))
            self.pipeline.replace("repair", self.repair)

    def _load(self, opts: dict[str, Any]) -> tuple[ImageDataset | ImageFolderDataset, nn.Module]:
        model, dataset, weights = opts["model"], opts["dataset"], opts["weights"]
        if not isinstance(model, (str, nn.Module)):
            raise TypeError(f"model={model!r} must be a preset or torchvision model name (str) or an nn.Module")
        if not (dataset is None or isinstance(dataset, (str, ImageDataset, ImageFolderDataset))):
            raise TypeError(f"dataset={dataset!r} must be 'cifar10', 'imagenet', an agmc_env.data.ImageDataset or an "
                            "agmc_env.imagefolder.ImageFolderDataset (None: the model preset's)")
        if not (weights is None or weights is False or isinstance(weights, (str, os.PathLike))):
            raise TypeError(f"weights={weights!r} must be a checkpoint path, None (the preset's checkpoint, or the "
                            "module's own weights) or False (random init)")
        if isinstance(model, str):
            dataset = zoo.default_dataset(model) if dataset is None else dataset
        dataset = "cifar10" if dataset is None else dataset
        opts["dataset"] = dataset
        data = dataset if not isinstance(dataset, str) else zoo.load_dataset(dataset, opts["data_dir"], opts["download"])
        if isinstance(model, str):
            self.model_name = model
            net = zoo.build_model(model, data.num_classes, True if weights is None else weights, opts["cache_dir"],
                                  dataset if isinstance(dataset, str) else None)
        else:
            self.model_name = type(model).__name__
            net = model
            if weights not in (None, False):
                checkpoints.load_state_dict(net, weights)
        return data, net.to(self.device).eval()

    def _repair_images(self, split, size: int) -> torch.Tensor:
        """The first ``size`` of the seeded remaining training images (not reward, not calibration); all of them
        when fewer are left (a small dataset: ``task.repair.num_images`` says how many)."""
        if len(split.train) == 0:  # repair_size ≥ 1 is checked with the other options
            raise ValueError(f"repair='lstsq' needs training images left after the reward and calibration splits "
                             f"(none left); lower val_size or calib_size, or use repair='none'")
        return self._normalised(self.dataset.train_subset(split.train[:size])[0])

    def _normalised(self, raw: torch.Tensor) -> torch.Tensor:
        return normalised(raw, self.dataset.mean, self.dataset.std, self.device)

    @property
    def num_decisions(self) -> int:
        return len(self.mode.widths)

    def finish(self, counts: list[int]) -> EpisodeEnd:
        """Run the episode-end pipeline on one vector of decided counts."""
        return self.pipeline.run(self, counts)

    def conflicts(self, given: dict[str, Any]) -> list[str]:
        """The given options that differ from this task's (objects compare by identity)."""
        bad = []
        for name, value in given.items():
            mine = self.options.get(name)
            same = mine is value if isinstance(value, (nn.Module, ImageDataset, ImageFolderDataset)) else mine == value
            if not same:
                bad.append(f"{name}={value!r} (the task has {mine!r})")
        return bad


def check_logits(net: nn.Module, batch: torch.Tensor, num_classes: int, name: str) -> None:
    """The model must map a batch to logits [B, num_classes]: checked once, on one batch, before anything is traced."""
    with torch.no_grad():
        out = net(batch)
    expected = f"logits [batch, {num_classes}] for the dataset's {num_classes} classes"
    if not isinstance(out, torch.Tensor):
        raise ValueError(f"model {name} returned a {type(out).__name__}, not a tensor; it must return {expected} "
                         "(wrap it in a module whose forward returns the logits tensor)")
    if tuple(out.shape) != (len(batch), num_classes):
        raise ValueError(f"model {name} returned shape {tuple(out.shape)} for a batch of {len(batch)}; it must return "
                         f"{expected} (a classifier head of {num_classes} outputs)")


def make_task(source: str | nn.Module = "resnet56", **kwargs: Any) -> PruningTask:
    """A task from an env id (``"AGMC-ResNet56-v0"``: the id's options, then ``kwargs``), a model name or a module.

    Share it: ``gym.make(id, task=task)`` builds envs on it without reloading or retracing anything.
    """
    if isinstance(source, str) and source.split(":", 1)[-1] in gym.registry:
        spec = gym.spec(source)
        from agmc_env.env import AGMCEnv

        if spec.entry_point in (AGMCEnv, "agmc_env.env:AGMCEnv"):
            return PruningTask(**{**spec.kwargs, **kwargs})
        # an id with its own factory: the task of the env it makes
        return gym.make(source, max_episode_steps=-1, **kwargs).unwrapped.task
    return PruningTask(model=source, **kwargs)
