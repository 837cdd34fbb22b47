"""Tiny synthetic nets, data and envs for tests, examples and smoke grids (like SB3's ``common/envs``):
everything runs in seconds on a CPU and needs no dataset or checkpoint.

``gym.make("AGMCTest-Tiny-v0")`` is :func:`tiny_env` (a CIFAR-style ResNet-14 with random weights and
non-trivial BN statistics, 16×16 random images); its keyword options override the defaults below.
"""
from __future__ import annotations

from typing import Any

import torch

from agmc_env.data import ImageDataset
from agmc_env.env import AGMCEnv
from agmc_env.models import cifar_resnet
from agmc_env.task import PruningTask


def randomise_bn(model: torch.nn.Module, seed: int = 0) -> torch.nn.Module:
    """Non-trivial BN statistics and shifts, so a wrongly kept/dropped channel shows in the output."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(m.num_features, generator=g) * 2 - 1)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
    return model.eval()


def tiny_dataset(n_train: int = 256, n_test: int = 64, size: int = 16, seed: int = 0) -> ImageDataset:
    """Random uint8 images and labels over 10 classes."""
    g = torch.Generator().manual_seed(seed)
    return ImageDataset(
        train_images=torch.randint(0, 256, (n_train, 3, size, size), generator=g, dtype=torch.uint8),
        train_labels=torch.randint(0, 10, (n_train,), generator=g),
        test_images=torch.randint(0, 256, (n_test, 3, size, size), generator=g, dtype=torch.uint8),
        test_labels=torch.randint(0, 10, (n_test,), generator=g),
        num_classes=10, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25),
    )


def tiny_options(**overrides: Any) -> dict[str, Any]:
    """The tiny task's options: ResNet-14 (random weights), tiny data, CPU, fp32, keep ≤ 60 % of MACs, repair
    statistics from 64 images."""
    torch.manual_seed(0)
    options = dict(model=randomise_bn(cifar_resnet(14)), dataset=tiny_dataset(), val_size=64, calib_size=32,
                   repair_size=64, device="cpu", amp="off", flops_target=0.6)
    options.update(overrides)
    return options


def tiny_task(**overrides: Any) -> PruningTask:
    return PruningTask(**tiny_options(**overrides))


def tiny_env(task: PruningTask | None = None, **overrides: Any) -> AGMCEnv:
    """The tiny env (entry point of ``AGMCTest-Tiny-v0``); ``task=`` shares an already built tiny task."""
    if task is not None:
        return AGMCEnv(task=task, **overrides)
    return AGMCEnv(**tiny_options(**overrides))
